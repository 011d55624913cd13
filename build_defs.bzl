"""One macro for an op library, in the manner of tensorflow/addons' custom_op_library."""

TF_COPTS = [
    "-std=c++17",
    "-fPIC",
    "-fvisibility=hidden",  # the .so exports only what TF's registration needs
    "-Wno-sign-compare",
    "-Wno-unused-but-set-variable",
]

def fused_rnn_op_library(name, srcs = [], cuda_objects = [], deps = [], copts = [], linkopts = []):
    """A TensorFlow op library `name` (a .so loadable by tf.load_op_library).

    Args:
      name: the shared library's file name, ending in .so.
      srcs: C++ sources of the ops and kernels.
      cuda_objects: targets of CUDA object code compiled by nvcc (see cc/cuda/BUILD), linked in when given.
      deps: cc_library dependencies (the framework-free core).
      copts: extra compile flags.
      linkopts: extra link flags.
    """
    native.cc_binary(
        name = name,
        srcs = srcs + cuda_objects,
        linkshared = 1,
        copts = TF_COPTS + copts,
        linkopts = linkopts + ["-Wl,-z,defs"] if not cuda_objects else linkopts,
        deps = deps + [
            "@local_config_tf//:tf_header_lib",
            "@local_config_tf//:libtensorflow_framework",
        ],
    )
