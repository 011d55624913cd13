"""Repository rule `local_config_tf`: the TensorFlow of the project's Python, as Bazel targets.

The paths come from the environment that tools/configure.py writes into .tf_configure.bazelrc
(`--repo_env`), read off the installed TensorFlow (tf.sysconfig); nothing is hard-coded.
"""

_ENV = ["TF_HEADER_DIR", "TF_SHARED_LIBRARY_DIR", "TF_SHARED_LIBRARY_NAME", "TF_CXX11_ABI_FLAG"]

def _fail_missing(name):
    fail("%s is not set: run `.venv/bin/python tools/configure.py` (tools/setup.sh does) before bazel." % name)

def _tf_configure_impl(ctx):
    for name in _ENV:
        if not ctx.os.environ.get(name):
            _fail_missing(name)
    header_dir = ctx.os.environ["TF_HEADER_DIR"]
    lib_dir = ctx.os.environ["TF_SHARED_LIBRARY_DIR"]
    lib_name = ctx.os.environ["TF_SHARED_LIBRARY_NAME"]
    abi = ctx.os.environ["TF_CXX11_ABI_FLAG"]
    ctx.symlink(header_dir, "include")
    ctx.symlink(lib_dir + "/" + lib_name, lib_name)
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**/*"], exclude = ["include/external/**/*.py"]),
    includes = ["include"],
    defines = ["_GLIBCXX_USE_CXX11_ABI={abi}", "EIGEN_MAX_ALIGN_BYTES=64"],
)

cc_import(
    name = "libtensorflow_framework",
    shared_library = "{lib}",
)
""".format(abi = abi, lib = lib_name))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = _ENV,
    local = True,
)
