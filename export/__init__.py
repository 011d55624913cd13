"""Exported SavedModels (python -m export.saved_model), loaded for in-process serving.

    import export
    nmt = export.load("exports/toy_nmt")                  # the newest version, or a version directory
    out = nmt(text=["the big dog sees a cat"])            # serving_default: {"translations", "scores"}
    out = nmt.signature("translate_ids")(src_ids=[[5, 17, 9]])

load() reads which ops the graph needs before loading it: the fused ops load this package's op library
(tf_ops), tensorflow-text's SentencePiece ops import tensorflow_text, and any other op that this TensorFlow does
not know raises NotFoundError naming it. A portable export never touches the op library.
"""
import json
import os

import numpy as np
import tensorflow as tf

from export.graph import METADATA_FILE
from export.graph import graph_op_types

__all__ = ["load", "ServedModel", "resolve_version", "required_ops"]


def resolve_version(path):
    """A SavedModel directory: `path` itself when it holds saved_model.pb, else its highest numbered version."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no SavedModel at {path!r}")
    versions = sorted((int(v) for v in os.listdir(path)
                       if v.isascii() and v.isdigit() and os.path.exists(os.path.join(path, v, "saved_model.pb"))))
    if not versions:
        raise FileNotFoundError(f"{path!r} holds neither saved_model.pb nor a numbered version directory")
    return os.path.join(path, str(versions[-1]))


def _registered(op):
    from tensorflow.python.framework import op_def_registry
    return op_def_registry.get(op) is not None


def required_ops(path):
    """The op types the SavedModel's graph needs that this process does not have registered yet."""
    return sorted(op for op in graph_op_types(resolve_version(path)) if not _registered(op))


def _ensure_ops(version_dir):
    import tf_ops
    missing = required_ops(version_dir)
    if set(missing) & set(tf_ops.OP_NAMES):
        try:
            tf_ops._loader.load()
        except tf.errors.NotFoundError as e:
            raise tf.errors.NotFoundError(
                None, None, f"the SavedModel {version_dir!r} uses the fused ops "
                f"{sorted(set(missing) & set(tf_ops.OP_NAMES))}, and {e.message} (or export it with --portable)"
            ) from None
        missing = [op for op in missing if not _registered(op)]
    if any(op.startswith("Sentencepiece") for op in missing):
        try:
            import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)
        except ImportError:
            raise tf.errors.NotFoundError(
                None, None, f"the SavedModel {version_dir!r} uses tensorflow-text's ops "
                f"{[op for op in missing if op.startswith('Sentencepiece')]}: pip install tensorflow-text "
                f"(the version matching TensorFlow {tf.__version__})") from None
        missing = [op for op in missing if not _registered(op)]
    if missing:
        raise tf.errors.NotFoundError(
            None, None, f"the SavedModel {version_dir!r} uses ops this TensorFlow does not have: {missing}. "
            "Load the library that defines them (tf.load_op_library) first.")


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _to_tensor(value, spec, key, signature):
    """A Python/NumPy request value as the signature input's dtype, or InvalidArgumentError naming the input:
    strings must all be str/bytes, integers must be integers that fit the dtype (never wrapped), and the array
    must be rectangular."""
    if spec.dtype == tf.string:
        array = np.asarray(value, dtype=object)
        bad = [v for v in array.flat if not isinstance(v, (str, bytes))]
        if bad:
            raise _invalid(f"{key}: signature {signature!r} takes strings, got {type(bad[0]).__name__} "
                           f"({bad[0]!r})")
        return tf.constant(array, tf.string)
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise _invalid(f"{key}: signature {signature!r} takes a rectangular {spec.dtype.name} array: {e}") from None
    if spec.dtype.is_integer:
        if array.size and not (np.issubdtype(array.dtype, np.integer) or array.dtype == object and
                               all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array.flat)):
            raise _invalid(f"{key}: signature {signature!r} takes {spec.dtype.name} integers, got {array.dtype}")
        if array.size:
            low, high = int(min(array.flat)), int(max(array.flat))
            if low < spec.dtype.min or high > spec.dtype.max:
                raise _invalid(f"{key}: values must fit {spec.dtype.name} ([{spec.dtype.min}, {spec.dtype.max}]), "
                               f"got {low if low < spec.dtype.min else high}")
        array = array.astype(spec.dtype.as_numpy_dtype) if array.size else np.zeros(array.shape,
                                                                                   spec.dtype.as_numpy_dtype)
    try:
        return tf.constant(array, spec.dtype)
    except (TypeError, ValueError) as e:
        raise _invalid(f"{key}: signature {signature!r} takes {spec.dtype.name}: {e}") from None


class ServedModel:
    """A loaded export: call it like its serving_default signature, with Python lists, NumPy arrays or tensors.

    Attributes: path (the version directory), metadata (what the export wrote about itself), signature_names.
    """

    def __init__(self, version_dir):
        self.path = version_dir
        self._loaded = tf.saved_model.load(version_dir)
        self.signature_names = sorted(self._loaded.signatures.keys())
        meta_path = os.path.join(version_dir, "assets.extra", METADATA_FILE)
        self.metadata = {}
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                self.metadata = json.load(f)

    def signature(self, name):
        """The named signature as a callable taking keyword inputs (converted to the signature's dtypes)."""
        if name not in self._loaded.signatures:
            raise KeyError(f"{self.path!r} has no signature {name!r}; it has {self.signature_names}")
        fn = self._loaded.signatures[name]
        specs = fn.structured_input_signature[1]

        def call(**inputs):
            unknown = sorted(set(inputs) - set(specs))
            missing = sorted(set(specs) - set(inputs))
            if unknown or missing:
                raise TypeError(f"signature {name!r} takes {sorted(specs)}; got unknown {unknown}, missing {missing}")
            converted = {}
            for key, value in inputs.items():
                spec = specs[key]
                tensor = value if isinstance(value, tf.Tensor) else _to_tensor(value, spec, key, name)
                # A loaded signature does not check these itself (a [B, T] text would silently run).
                if tensor.dtype != spec.dtype or not spec.shape.is_compatible_with(tensor.shape):
                    raise tf.errors.InvalidArgumentError(
                        None, None, f"{key}: signature {name!r} takes {spec.dtype.name} of shape "
                        f"{spec.shape.as_list()}, got {tensor.dtype.name} of shape {tensor.shape.as_list()}")
                converted[key] = tensor
            return fn(**converted)

        return call

    def __call__(self, **inputs):
        return self.signature("serving_default")(**inputs)


def load(path):
    """Loads an export (DIR/NAME for its newest version, or a version directory) after making sure its ops are
    registered; returns a ServedModel."""
    version_dir = resolve_version(path)
    _ensure_ops(version_dir)
    return ServedModel(version_dir)
