"""One macro for an op library, in the manner of tensorflow/addons' custom_op_library."""

load("@local_config_cuda//:defs.bzl", "CUDA_CONFIGURED")

TF_COPTS = [
    "-std=c++17",
    "-fPIC",
    "-fvisibility=hidden",  # the .so exports only what TF's registration needs
    "-Wno-sign-compare",
    "-Wno-unused-but-set-variable",
]

def fused_rnn_op_library(name, srcs = [], gpu_srcs = [], gpu_deps = [], deps = [], copts = [], linkopts = []):
    """A TensorFlow op library `name` (a .so loadable by tf.load_op_library).

    Args:
      name: the shared library's file name, ending in .so.
      srcs: C++ sources of the ops and CPU kernels.
      gpu_srcs: C++ sources of the GPU kernels, compiled with GOOGLE_CUDA=1 when CUDA is configured.
      gpu_deps: the CUDA core and runtime, linked in when CUDA is configured.
      deps: cc_library dependencies (the framework-free core).
      copts: extra compile flags.
      linkopts: extra link flags.
    """
    if CUDA_CONFIGURED:
        srcs = srcs + gpu_srcs
        deps = deps + gpu_deps
        copts = copts + ["-DGOOGLE_CUDA=1"]
    native.cc_binary(
        name = name,
        srcs = srcs,
        linkshared = 1,
        copts = TF_COPTS + copts,
        linkopts = linkopts + ["-Wl,-z,defs"],
        deps = deps + [
            "@local_config_tf//:tf_header_lib",
            "@local_config_tf//:libtensorflow_framework",
        ],
    )
