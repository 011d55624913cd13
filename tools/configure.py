"""Writes .tf_configure.bazelrc: where the project's TensorFlow is, for Bazel (run with the venv's Python).

Reads everything from the installed TensorFlow (tf.sysconfig), so the build follows whatever TF the venv has.
Also records the venv's interpreter for `py_test`, and whether CUDA can be compiled (nvcc on PATH).
"""
import os
import shutil
import sys


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
    ]
    nvcc = shutil.which("nvcc")
    if nvcc and os.environ.get("FUSED_RNN_NO_CUDA") != "1":
        lines.append(f'build --repo_env=FUSED_RNN_NVCC="{nvcc}"')
    with open(os.path.join(root, ".tf_configure.bazelrc"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"configured for TensorFlow {tf.__version__} at {lib_dir}" + (f"; CUDA via {nvcc}" if nvcc else ""))


if __name__ == "__main__":
    main()
