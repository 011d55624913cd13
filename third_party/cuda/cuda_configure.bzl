"""Repository rule `local_config_cuda`: the CUDA toolkit of the nvcc that tools/configure.py found.

Without nvcc (FUSED_RNN_NVCC unset) the repository only says CUDA_CONFIGURED = False and the op library is built
for the CPU alone.
"""

def _cuda_configure_impl(ctx):
    nvcc = ctx.os.environ.get("FUSED_RNN_NVCC", "")
    if not nvcc:
        ctx.file("defs.bzl", "CUDA_CONFIGURED = False\nNVCC = \"\"\n")
        ctx.file("BUILD", "")
        return
    root = ctx.os.environ.get("FUSED_RNN_CUDA_ROOT", "")
    if not root:
        root = str(ctx.path(nvcc).realpath.dirname.dirname)
    lib = None
    for candidate in ["lib64/libcudart_static.a", "targets/x86_64-linux/lib/libcudart_static.a", "lib/libcudart_static.a"]:
        if ctx.path(root + "/" + candidate).exists:
            lib = ctx.path(root + "/" + candidate)
            break
    if lib == None:
        fail("found nvcc at %s but no libcudart_static.a under %s" % (nvcc, root))
    include = ctx.path(root + "/include")
    if ctx.path(root + "/targets/x86_64-linux/include").exists:
        include = ctx.path(root + "/targets/x86_64-linux/include")
    ctx.symlink(include, "include")
    ctx.symlink(lib, "libcudart_static.a")
    ctx.file("defs.bzl", "CUDA_CONFIGURED = True\nNVCC = \"%s\"\n" % nvcc)
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp"]),
    includes = ["include"],
)

cc_library(
    name = "cudart_static",
    srcs = ["libcudart_static.a"],
    linkopts = ["-ldl", "-lrt", "-lpthread"],
)
""")

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["FUSED_RNN_NVCC", "FUSED_RNN_CUDA_ROOT"],
    local = True,
)
