"""Loads the op library lazily: importing tf_ops costs nothing until an op is first used."""
import os
import threading

import tensorflow as tf

_LIB_NAME = "_fused_rnn_ops.so"
_lock = threading.Lock()
_module = None
_error = None


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("FUSED_RNN_OPS_LIBRARY")
    if env:
        yield env
    yield os.path.join(here, _LIB_NAME)  # copied here by tools/setup.sh
    yield os.path.join(os.path.dirname(here), "cc", _LIB_NAME)  # Bazel runfiles: tf_ops/ and cc/ are siblings
    yield os.path.join(os.path.dirname(here), "bazel-bin", "cc", _LIB_NAME)


def library_path():
    """The op library's path, or None when it is not built."""
    for path in _candidates():
        if os.path.isfile(path):
            return path
    return None


def load():
    """Returns the loaded op module; raises NotFoundError with the fix when the library is missing."""
    global _module, _error
    with _lock:
        if _module is not None:
            return _module
        path = library_path()
        if path is None:
            raise tf.errors.NotFoundError(
                None, None,
                f"{_LIB_NAME} is not built. Run tools/setup.sh (or `bazel build //cc:{_LIB_NAME}`), or set "
                "FUSED_RNN_OPS_LIBRARY to its path.")
        _module = tf.load_op_library(path)
        return _module


def available():
    """True when the op library loads."""
    try:
        load()
        return True
    except tf.errors.NotFoundError:
        return False


def cpu_isa():
    """The vector path the CPU kernel uses here ("avx512vnni", "avx512", "avx2" or "portable"), or None if not built."""
    if not available():
        return None
    return load().fused_rnn_cpu_isa().numpy().decode()
