"""Narrow recurrent weights (INT8 per-row, float16, bfloat16): the INT8 scheme, and conversion of trained float
layers and models.

    q, scale = tf_ops.quantize_rows(w)           # w [..., rows, cols] float -> int8 q, float32 scale [..., rows]
    int8_model = tf_ops.quantize_model(model)    # every FusedLSTM/FusedGRU holds int8 recurrent weights
    bf16_model = tf_ops.quantize_model(model, "bfloat16")   # or "float16": the kernels rounded to nearest even

Scheme: scale = 127 / max|row|, q = round(row * scale) (ties to even, as numpy and TF round), so the largest
|value| of every row maps to +-127; a zero row gets scale 0 and q = 0, and so does a row whose max|row| is below
127 / FLT_MAX (~3.7e-37), whose scale would overflow float32. Dequantized: row = q / scale. Only the
recurrent and projection kernels are quantized; input kernels, biases, inputs, outputs and arithmetic stay float32.
"""
import keras
import numpy as np
import tensorflow as tf


def quantize_rows(w):
    """Per-row INT8 quantization of w [..., rows, cols]. Returns (q int8 like w, scale float32 [..., rows])."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim < 2:
        raise ValueError(f"quantize_rows needs a matrix (or a stack of them), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_rows: the weights contain NaN or Inf")
    row_max = np.max(np.abs(w), axis=-1)
    # A row below 127 / FLT_MAX would get an infinite scale (which the kernels refuse): it is quantized as a zero
    # row, an absolute error under 3.7e-37 a weight.
    nonzero = row_max >= np.float32(127.0) / np.finfo(np.float32).max
    scale = np.where(nonzero, np.float32(127.0) / np.where(nonzero, row_max, 1), 0).astype(np.float32)
    q = np.rint(w * scale[..., None])
    return np.clip(q, -127, 127).astype(np.int8), scale


def dequantize_rows(q, scale):
    """q / scale per row (0 for a zero scale), float32."""
    q = np.asarray(q, np.float32)
    scale = np.asarray(scale, np.float32)
    inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    return q * inv[..., None]


_NARROW = ("int8", "float16", "bfloat16")


def _check_narrow(weights):
    if weights not in _NARROW:
        raise ValueError(f"weights must be one of {_NARROW}, got {weights!r}")


def _narrow_kind(layer):
    """The narrow type a fused layer's recurrent weights have ("int8", "float16", "bfloat16"), None for float32."""
    if layer.int8_weights:
        return "int8"
    return None if layer.recurrent_weight_dtype == "float32" else layer.recurrent_weight_dtype


def _already_narrow(caller, layer, kind, weights):
    return ValueError(f"{caller}: layer {layer.name!r} already holds narrow recurrent weights ({kind}); convert "
                      f"the float model to {weights!r} instead (narrow weights are not converted again)")


def _narrow(value, weights, where):
    """One float32 recurrent/projection kernel in the twin's form: [q, scale] (int8) or [value] (16-bit: assigning
    it to the 16-bit variable rounds to nearest even). Refuses what the narrow type would turn into NaN/Inf."""
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{where} contains NaN or Inf")
    if weights == "int8":
        return list(quantize_rows(value))
    dtype = tf.as_dtype(weights)
    with np.errstate(over="ignore"):  # the same rounding as the variable's assignment
        overflows = np.isinf(value.astype(dtype.as_numpy_dtype)).any()
    if overflows:  # float16 beyond +-65504 (bfloat16 only near float32's own limit): Inf, every output NaN
        alternatives = "'bfloat16' or 'int8'" if weights == "float16" else "'int8'"
        raise ValueError(f"{where} has values beyond {weights}'s range (max |w| = {np.max(np.abs(value)):.6g} > "
                         f"{dtype.max:.6g}); use {alternatives}")
    return [value]


def quantized_weights(layer, weights="int8"):
    """The weights of `layer` (a built float FusedLSTM/FusedGRU) in the order of its twin with narrow recurrent
    weights (int8_weights=True, or recurrent_weight_dtype=weights for "float16"/"bfloat16"). NaN/Inf recurrent or
    projection weights, and float16 ones beyond its range, are a ValueError naming the weight."""
    return _quantized_weights(layer, weights, "quantized_weights")


def _quantized_weights(layer, weights, caller):
    from tf_ops import layers  # noqa: avoid an import cycle at module load

    _check_narrow(weights)
    if not isinstance(layer, layers._FusedRNN):
        raise ValueError(f"quantized_weights takes a FusedLSTM or FusedGRU, got {type(layer).__name__}")
    if not layer.built:  # no weights yet (nothing to convert): say so, not AttributeError '_weight_names'
        raise ValueError(f"{caller}: layer {layer.name!r} is not built; build it (layer.build(input_shape)) or "
                         "call it once first")
    kind = _narrow_kind(layer)
    if kind == weights:
        return layer.get_weights()
    if kind is not None:
        raise _already_narrow(caller, layer, kind, weights)
    # Keras orders a layer's weights trainable first, then non-trainable (the int8 kernels and their scales).
    trainable, frozen = [], []
    for names in layer._weight_names:
        for role, name in names.items():
            value = keras.ops.convert_to_numpy(getattr(layer, name))
            if role in ("recurrent_kernel", "projection_kernel"):
                frozen.extend(_narrow(value, weights, f"{caller}: layer {layer.name!r} {name}"))
            else:
                trainable.append(value)
    return trainable + frozen


def quantize_model(model, weights="int8"):
    """A copy of `model` whose FusedLSTM/FusedGRU layers hold narrow recurrent (and projection) weights: "int8"
    (per-row scales), "float16" or "bfloat16", non-trainable (gradients still flow through them to everything float); the input kernels
    and biases stay float32. Fused
    layers inside nested functional or Sequential models are converted too; one that cannot be (inside a custom
    layer or a subclassed model, or wrapped in keras.layers.Bidirectional) is an error, never left float.
    Other layers are copied as they are: stock keras.layers.LSTM/GRU beside fused layers stay float, and a model
    with no fused layer at all is an error (run tf_ops.fuse_model first). A layer already narrow is copied when
    `weights` is its type, an error for another (narrow weights are not converted again). NaN/Inf recurrent
    weights, and float16 ones beyond its range, are an error naming the layer and the weight."""
    from tf_ops import convert
    from tf_ops import layers

    _check_narrow(weights)
    if not any(isinstance(layer, layers._FusedRNN) for layer in model._flatten_layers(include_self=False)):
        # Nothing to convert: a float copy would pass for a quantized model (typically fuse_model was not run).
        stock = convert.stock_recurrent_layers(model)
        found = f" (its stock recurrent layers {stock} are not converted)" if stock else ""
        raise ValueError(f"quantize_model: the model has no FusedLSTM/FusedGRU layers to convert{found}; run "
                         "tf_ops.fuse_model(model) first to fuse its keras.layers.LSTM/GRU layers")

    def clone(layer):
        if isinstance(layer, layers._FusedRNN):
            kind = _narrow_kind(layer)
            if kind is not None and kind != weights:  # else the constructor's TypeError, with the whole config
                raise _already_narrow("quantize_model", layer, kind, weights)
            config = layer.get_config()
            if weights == "int8":
                config["int8_weights"] = True
            else:
                config["recurrent_weight_dtype"] = weights
            return type(layer).from_config(config)
        if isinstance(layer, keras.layers.Bidirectional) and isinstance(layer.forward_layer, layers._FusedRNN):
            raise ValueError("quantize_model: use FusedLSTM/FusedGRU(bidirectional=True) instead of wrapping them "
                             "in keras.layers.Bidirectional")
        return layer.__class__.from_config(layer.get_config())

    def is_narrow(layer):
        return layer.int8_weights if weights == "int8" else layer.recurrent_weight_dtype == weights

    def layer_weights(src, dst):
        if isinstance(src, layers._FusedRNN) and is_narrow(dst):
            return _quantized_weights(src, weights, "quantize_model")
        # Not a fused layer, or a float twin rebuilt from a subclassed model's config: its own weights fit it, and
        # the check below names it (the narrow list made set_weights fail on the weight count instead).
        return src.get_weights()

    copy = convert.clone_with(model, clone, layer_weights)
    missed = [layer.name for layer in copy._flatten_layers(include_self=False)
              if isinstance(layer, layers._FusedRNN) and not is_narrow(layer)]
    if missed:
        # models.elmo builds its biLM itself: its own switch is the way there (duck-typed: tf_ops does not import
        # models).
        elmo = any(hasattr(m, "bilm") and hasattr(m, "implementation")
                   for m in [model] + list(model._flatten_layers(include_self=False)))
        hint = ("; for an ELMo model load it with models.elmo.load_elmo(..., implementation=\"fused_int8\") (or "
                "\"fused_bf16\")" if elmo else "")
        raise ValueError(f"quantize_model: could not convert the fused layers {missed} (inside a custom layer or a "
                         "subclassed model, whose config rebuilds them as they were); convert them with "
                         "tf_ops.quantized_weights and a layer built with int8_weights=True or "
                         f"recurrent_weight_dtype=...{hint}")
    return copy
