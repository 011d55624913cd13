"""Writes .tf_configure.bazelrc: where the project's TensorFlow is, for Bazel (run with the venv's Python).

Reads everything from the installed TensorFlow (tf.sysconfig), so the build follows whatever TF the venv has.
Also records the venv's interpreter for `py_test`, and, with FUSED_RNN_CUDA=1, the CUDA toolkit to build the GPU
kernels with.
"""
import os
import shutil
import sys


def find_cuda_root():
    """The CUDA toolkit to build the GPU kernels with: $CUDA_HOME, the toolkit of the nvcc on PATH, or
    /usr/local/cuda; None when there is none (then the op library is CPU-only)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
                os.path.join(root, "lib64", "libcudart_static.a")):
            return os.path.realpath(root)
    return None


def main():
    import tensorflow as tf  # noqa: E402  (imported here: this script's only job is to ask TF)

    flags = tf.sysconfig.get_compile_flags()
    include_dir = tf.sysconfig.get_include()
    lib_dir = tf.sysconfig.get_lib()
    abi = next((f.split("=")[1] for f in flags if f.startswith("-D_GLIBCXX_USE_CXX11_ABI=")), "1")
    lib_name = next(f[len("-l:"):] for f in tf.sysconfig.get_link_flags() if f.startswith("-l:"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = [
        f"# Written by tools/configure.py for TensorFlow {tf.__version__}; do not edit.",
        f'build --repo_env=TF_HEADER_DIR="{include_dir}"',
        f'build --repo_env=TF_SHARED_LIBRARY_DIR="{lib_dir}"',
        f"build --repo_env=TF_SHARED_LIBRARY_NAME={lib_name}",
        f"build --repo_env=TF_CXX11_ABI_FLAG={abi}",
        # py_test runs the venv's interpreter (Python toolchains would pick the system one, without TF).
        "build --incompatible_use_python_toolchains=false",
        f'build --python_path="{sys.executable}"',
        # The reference data beside the checkout (../shared), for the tests that read it: a plain `bazel test //...`
        # then runs them too, as tools/test.sh does (they skip when it is absent).
        f'test --test_env=FUSED_RNN_SHARED="{os.path.join(os.path.dirname(root), "shared")}"',
    ]
    # The CUDA path is opt-in for now (FUSED_RNN_CUDA=1): its kernels are still being tuned on the device
    # harness, and a CPU-only user should not wait for nvcc.
    cuda_root = find_cuda_root() if os.environ.get("FUSED_RNN_CUDA") == "1" else None
    nvcc = os.path.join(cuda_root, "bin", "nvcc") if cuda_root else None
    if nvcc:
        lines.append(f'build --repo_env=FUSED_RNN_NVCC="{nvcc}"')
        lines.append(f'build --repo_env=FUSED_RNN_CUDA_ROOT="{cuda_root}"')
    else:
        nvcc = None
    with open(os.path.join(root, ".tf_configure.bazelrc"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"configured for TensorFlow {tf.__version__} at {lib_dir}" +
          (f"; CUDA via {nvcc}" if nvcc else "; CPU only (FUSED_RNN_CUDA=1 builds the GPU kernels)"))


if __name__ == "__main__":
    main()
