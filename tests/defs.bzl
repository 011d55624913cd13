"""pytest_test: a py_test that runs one pytest file against the built op library."""

def pytest_test(name, size = "medium", data = [], **kwargs):
    native.py_test(
        name = name,
        size = size,
        srcs = ["pytest_main.py", name + ".py"],
        main = "pytest_main.py",
        args = ["$(location %s.py)" % name],
        data = data + ["//cc:_fused_rnn_ops.so"],
        deps = [":testlib", "//export", "//models", "//tf_ops"],
        python_version = "PY3",
        **kwargs
    )
