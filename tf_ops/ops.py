"""Python wrappers of the fused sequence ops, with defaults, argument checks and a pure-TF fallback.

    out, h, c = tf_ops.lstm_sequence(x_proj, recurrent_kernel, sequence_lengths, direction="bidirectional")
    out, h = tf_ops.gru_sequence(x_proj, recurrent_kernel, recurrent_bias, sequence_lengths)

Shapes (D directions, G gates, H units, P projection, R = P or H) are documented on the ops (cc/tf/ops.cc):
x_proj [B, T, D*G*H] (or time-major), recurrent_kernel [D, R, G*H], states [D, B, R] / [D, B, H],
output [B, T, D*R], zero past each sequence's length.

`implementation`: "op" (the fused kernel; error if the library is not built), "reference" (stock TF ops
only), or "auto" (the op when its library loads, else the reference). `implementation_scope("reference")` makes
"auto" mean "reference" inside a block (the Keras layers use "auto"): tracing a model there gives a graph of stock
TensorFlow ops only, e.g. the portable SavedModel flavour for an unmodified TF Serving.
"""
import contextlib
import threading

import tensorflow as tf

from tf_ops import _loader
from tf_ops import reference

_DIRECTIONS = ("forward", "reverse", "bidirectional")


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _to_tensor(value, hint):
    # A hint would silently cast e.g. a float64 NumPy array; only plain Python values take it.
    if getattr(value, "dtype", None) is not None:
        return tf.convert_to_tensor(value)
    return tf.convert_to_tensor(value, dtype_hint=hint)


def _float32(value, name):
    t = _to_tensor(value, tf.float32)
    if t.dtype != tf.float32:
        raise _invalid(f"{name} must be float32, got {t.dtype.name}")
    return t


_WEIGHT_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def _weights(value, name, dtype=None):
    """A recurrent or projection kernel: float32, or 16-bit (float16/bfloat16: the 16-bit ops; no gradient for the
    kernel itself).
    With `dtype`, it must be that dtype (the projection kernel follows the recurrent kernel)."""
    t = _to_tensor(value, tf.float32)
    if dtype is not None and t.dtype != dtype:
        raise _invalid(f"{name} must have the recurrent kernel's dtype {dtype.name}, got {t.dtype.name}")
    if t.dtype not in _WEIGHT_DTYPES:
        raise _invalid(f"{name} must be float32, float16 or bfloat16, got {t.dtype.name}")
    return t


def _check_16bit_inference(recurrent_kernel, training):
    if recurrent_kernel.dtype != tf.float32 and training:
        raise _invalid(f"{recurrent_kernel.dtype.name} recurrent weights get no gradient (training=True keeps a "
                       "reserve for one); train with float32 weights and convert (tf_ops.FusedLSTM/FusedGRU "
                       "recurrent_weight_dtype=...); gradients for x_proj and the states flow without it")


def _lengths(value, name="sequence_lengths"):
    t = _to_tensor(value, tf.int32)
    if t.dtype == tf.int64:
        # Saturate, not wrap: 2^32 + 2 must be rejected as out of range by the op, not run as 2.
        t = tf.cast(tf.clip_by_value(t, tf.int32.min, tf.int32.max), tf.int32)
    if t.dtype != tf.int32:
        raise _invalid(f"{name} must be int32 or int64, got {t.dtype.name}")
    return t


# The ops this package's library registers: a graph that holds any of them needs the library loaded.
OP_NAMES = ("FusedLSTMSequence", "FusedGRUSequence", "FusedLSTMSequenceGrad", "FusedGRUSequenceGrad",
            "FusedLSTMSequenceInt8", "FusedGRUSequenceInt8", "FusedLSTMSequence16", "FusedGRUSequence16",
            "FusedRnnCpuIsa")
_IMPLEMENTATIONS = ("auto", "op", "reference")
_scope = threading.local()  # per thread: tracing happens in the caller's thread


@contextlib.contextmanager
def implementation_scope(implementation):
    """Inside the block, implementation="auto" (the layers' choice) means `implementation`; scopes nest."""
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation_scope: implementation must be one of {_IMPLEMENTATIONS}, got "
                         f"{implementation!r}")
    previous = getattr(_scope, "implementation", "auto")
    _scope.implementation = implementation
    try:
        yield
    finally:
        _scope.implementation = previous


def _use_op(implementation):
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation must be 'auto', 'op' or 'reference', got {implementation!r}")
    if implementation == "auto":
        implementation = getattr(_scope, "implementation", "auto")
    if implementation == "reference":
        return False
    if implementation == "op":
        _loader.load()
        return True
    return _loader.available()


def _common(x_proj, recurrent_kernel, sequence_lengths, direction, time_major, gates):
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    x_proj = _float32(x_proj, "x_proj")
    recurrent_kernel = _weights(recurrent_kernel, "recurrent_kernel")
    if x_proj.shape.rank is not None and x_proj.shape.rank != 3:
        raise _invalid(f"x_proj must be rank 3, got shape {x_proj.shape}")
    if recurrent_kernel.shape.rank is not None and recurrent_kernel.shape.rank != 3:
        raise _invalid(f"recurrent_kernel must be rank 3 [directions, width, {gates} * units], "
                       f"got shape {recurrent_kernel.shape}")
    dims = tf.shape(x_proj)
    batch = dims[1] if time_major else dims[0]
    max_time = dims[0] if time_major else dims[1]
    if sequence_lengths is None:
        sequence_lengths = tf.fill([batch], max_time)
    return x_proj, recurrent_kernel, _lengths(sequence_lengths), batch


def _num_dirs(direction):
    return 2 if direction == "bidirectional" else 1


def _units(recurrent_kernel, gates):
    gate_width = recurrent_kernel.shape[2]
    if gate_width is None:
        raise _invalid("recurrent_kernel's last dimension must be known")
    if gate_width % gates:
        raise _invalid(f"recurrent_kernel's last dimension must be {gates} * num_units, got {gate_width}")
    return gate_width // gates


# ---- the op's argument checks, for the reference path (cc/tf/rnn_args.cc, the shape functions of cc/tf/ops.cc) --
# The op checks its arguments in C++; the reference would broadcast or run past bad ones, so the wrappers check them
# before it: statically known shapes at trace time, the rest (unknown dims, lengths, scale values) with
# tf.debugging assertions that the computation depends on. The "op" path does not run these.
_FLT_MIN = 1.1754943508222875e-38


def _dims_str(dims):
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def _dim(t, i):
    """Dim i of t: a Python int where static, else a scalar int32 tensor."""
    d = t.shape[i]
    return d if d is not None else tf.shape(t)[i]


def _expect_shape(t, name, want, asserts):
    """t must have shape `want` (ints, or scalar int32 tensors for dims known at run time only)."""
    message = f"{name} must have shape {_dims_str(want)}, got "
    shape = t.shape
    if shape.rank is not None:
        given = shape.as_list()
        if shape.rank != len(want) or any(isinstance(w, int) and g is not None and g != w
                                          for g, w in zip(given, want)):
            raise _invalid(message + _dims_str(given))
        if all(isinstance(w, int) and g is not None for g, w in zip(given, want)):
            return
        rank_ok = []
    else:
        rank_ok = [tf.debugging.assert_rank(t, len(want), message=message + "another rank")]
    with tf.control_dependencies([a for a in rank_ok if a is not None]):
        asserts.append(tf.debugging.assert_equal(
            tf.shape(t, out_type=tf.int32), tf.stack([tf.cast(w, tf.int32) for w in want]),
            message=message + "the shape below"))
    asserts.extend(rank_ok)


def _check_clips(cell_clip, proj_clip, num_proj):
    for name, clip in (("cell_clip", cell_clip), ("proj_clip", proj_clip)):
        if not clip >= 0.0 or 0.0 < clip < _FLT_MIN:
            raise _invalid(f"{name} must be 0 (no clip) or a normal float >= FLT_MIN (1.18e-38), got {clip}")
    if num_proj == 0 and proj_clip != 0.0:
        raise _invalid("proj_clip needs num_proj > 0 (a projection_kernel)")


def _check_reference_args(x_proj, recurrent_kernel, projection_kernel, recurrent_bias, lengths, initial_h,
                          initial_c, direction, time_major, gates, num_proj):
    """The op's shape and lengths checks (ValidateRnnInputs, CheckLengths). Returns x_proj, which carries the
    run-time assertions as control dependencies (use it in place of the argument)."""
    asserts = []
    D, G = _num_dirs(direction), gates
    rk_shape = recurrent_kernel.shape.as_list()
    if rk_shape[0] not in (None, D) or rk_shape[2] in (None, 0) or rk_shape[2] % G:
        raise _invalid(f"recurrent_kernel must have shape [{D}, recurrent width, {G} * num_units] with "
                       f"num_units > 0, got {recurrent_kernel.shape}")
    H = rk_shape[2] // G
    R = num_proj or H
    _expect_shape(recurrent_kernel, "recurrent_kernel", [D, R, G * H], asserts)
    last = x_proj.shape[2]
    if last is not None and last != D * G * H:
        raise _invalid(f"x_proj's last dimension must be num_directions * {G} * num_units = {D * G * H}, "
                       f"got {last}")
    if last is None:
        asserts.append(tf.debugging.assert_equal(
            tf.shape(x_proj)[2], D * G * H,
            message=f"x_proj's last dimension must be num_directions * {G} * num_units = {D * G * H}"))
    batch, max_time = (_dim(x_proj, 1), _dim(x_proj, 0)) if time_major else (_dim(x_proj, 0), _dim(x_proj, 1))
    if projection_kernel is not None:
        _expect_shape(projection_kernel, "projection_kernel", [D, H, num_proj], asserts)
    if initial_c is not None:
        _expect_shape(initial_c, "initial_c", [D, batch, H], asserts)
    if recurrent_bias is not None:
        _expect_shape(recurrent_bias, "recurrent_bias", [D, G * H], asserts)
    _expect_shape(lengths, "sequence_lengths", [batch], asserts)
    _expect_shape(initial_h, "initial_h", [D, batch, R], asserts)
    if tf.executing_eagerly():  # the op's message, with the first bad row
        values, limit = lengths.numpy().reshape(-1), int(max_time)
        bad = ((values < 0) | (values > limit)).nonzero()[0]
        if bad.size:
            raise _invalid(f"sequence_lengths[{bad[0]}] = {values[bad[0]]} is outside [0, {limit}] "
                           "(max_time of x_proj)")
    else:
        message = "sequence_lengths must be in [0, max_time of x_proj]"
        in_range = tf.reduce_all((lengths >= 0) & (lengths <= tf.cast(max_time, tf.int32)))
        asserts.append(tf.debugging.Assert(in_range, [message + "; sequence_lengths:", lengths, "max_time:",
                                                      max_time], summarize=16))
    asserts = [a for a in asserts if a is not None]  # eager: they have run (and raised) already
    if asserts:
        with tf.control_dependencies(asserts):
            x_proj = tf.identity(x_proj)
    return x_proj


def _check_int8_args(kernel_q8, scale, name, scale_name, want_scale):
    """The int8 kernel is rank 3 and its scale has shape `want_scale` with values the quantizer makes
    (ValidateInt8Scales): 0, or a finite normal float > 0. Returns scale carrying the value assertion."""
    if kernel_q8.shape.rank != 3:
        raise _invalid(f"{name} must be rank 3, got shape {kernel_q8.shape}")
    asserts = []
    _expect_shape(scale, scale_name, want_scale, asserts)
    # On the bits: TF's CPU threads flush subnormals to zero, so a float comparison would pass 1e-39 as 0.
    bits = tf.bitcast(scale, tf.int32)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF)
    good = (tf.bitwise.bitwise_and(bits, 0x7FFFFFFF) == 0) | ((bits > 0) & (exponent > 0) & (exponent < 0xFF))
    what = "is not a scale the quantizer makes (0, or a finite normal float > 0)"
    if tf.executing_eagerly():  # the op's message, with the first bad entry
        bad = (~good.numpy()).reshape(-1).nonzero()[0]
        if bad.size:
            raise _invalid(f"{scale_name}[{bad[0]}] = {scale.numpy().reshape(-1)[bad[0]]} {what}")
    else:
        asserts.append(tf.debugging.Assert(tf.reduce_all(good), [f"{scale_name} holds a value that {what}:", scale],
                                           summarize=16))
    asserts = [a for a in asserts if a is not None]
    if asserts:
        with tf.control_dependencies(asserts):
            scale = tf.identity(scale)
    return scale


@tf.autograph.experimental.do_not_convert
def lstm_sequence(x_proj, recurrent_kernel, sequence_lengths=None, initial_h=None, initial_c=None,
                  projection_kernel=None, direction="forward", time_major=False, cell_clip=0.0, proj_clip=0.0,
                  implementation="auto", training=False, name=None):
    """Runs an LSTM (Keras gate order i, f, c, o) over whole sequences. Returns (output, final_h, final_c).

    projection_kernel [D, H, P] makes it TF's LSTMCell(num_proj=P): h = clip(o * tanh(c) @ P, proj_clip).
    cell_clip / proj_clip of 0 (or None) disable the clips.
    training=True makes the op keep what its fused gradient needs (as cuDNN's reserve space); without it a
    gradient still works, at the cost of one more forward pass.
    float16 or bfloat16 kernels (both of the same dtype) run the 16-bit weight op: half the weight bytes per step,
    float32 arithmetic on the exact 16-bit values; the 16-bit weights get no gradient (gradients flow to x_proj and
    the initial states).
    """
    with tf.name_scope(name or "lstm_sequence"):
        x_proj, recurrent_kernel, lengths, batch = _common(x_proj, recurrent_kernel, sequence_lengths, direction,
                                                           time_major, 4)
        _check_16bit_inference(recurrent_kernel, training)
        units = _units(recurrent_kernel, 4)
        dirs = _num_dirs(direction)
        num_proj = 0
        if projection_kernel is not None:
            projection_kernel = _weights(projection_kernel, "projection_kernel", recurrent_kernel.dtype)
            num_proj = projection_kernel.shape[-1]
            if num_proj is None:
                raise _invalid("projection_kernel's last dimension must be known")
        width = num_proj or units
        if num_proj == 0:
            projection_kernel = tf.zeros([dirs, units, 0], recurrent_kernel.dtype)
        initial_h = tf.zeros([dirs, batch, width]) if initial_h is None else _float32(initial_h, "initial_h")
        initial_c = tf.zeros([dirs, batch, units]) if initial_c is None else _float32(initial_c, "initial_c")
        cell_clip = float(cell_clip or 0.0)
        proj_clip = float(proj_clip or 0.0)
        if recurrent_kernel.dtype != tf.float32:
            if _use_op(implementation):
                return _loader.load().fused_lstm_sequence16(
                    x_proj, recurrent_kernel, projection_kernel, lengths, initial_h, initial_c, direction=direction,
                    time_major=time_major, num_proj=num_proj, cell_clip=cell_clip, proj_clip=proj_clip)
            recurrent_kernel = tf.cast(recurrent_kernel, tf.float32)  # exact: float32 holds every 16-bit value
            projection_kernel = tf.cast(projection_kernel, tf.float32)
        elif _use_op(implementation):
            out, h, c, _ = _loader.load().fused_lstm_sequence(
                x_proj, recurrent_kernel, projection_kernel, lengths, initial_h, initial_c, direction=direction,
                time_major=time_major, num_proj=num_proj, cell_clip=cell_clip, proj_clip=proj_clip,
                is_training=bool(training))
            return out, h, c
        _check_clips(cell_clip, proj_clip, num_proj)
        x_proj = _check_reference_args(x_proj, recurrent_kernel, projection_kernel, None, lengths, initial_h,
                                       initial_c, direction, time_major, 4, num_proj)
        return reference.lstm_sequence(x_proj, recurrent_kernel, projection_kernel if num_proj else None, lengths,
                                       initial_h, initial_c, direction, time_major, cell_clip, proj_clip)


@tf.autograph.experimental.do_not_convert
def gru_sequence(x_proj, recurrent_kernel, recurrent_bias=None, sequence_lengths=None, initial_h=None,
                 direction="forward", time_major=False, implementation="auto", training=False, name=None):
    """Runs a GRU (Keras reset_after=True, gate order z, r, n) over whole sequences. Returns (output, final_h).

    training, float16/bfloat16 recurrent_kernel: as for lstm_sequence (recurrent_bias stays float32).
    """
    with tf.name_scope(name or "gru_sequence"):
        x_proj, recurrent_kernel, lengths, batch = _common(x_proj, recurrent_kernel, sequence_lengths, direction,
                                                           time_major, 3)
        _check_16bit_inference(recurrent_kernel, training)
        units = _units(recurrent_kernel, 3)
        dirs = _num_dirs(direction)
        recurrent_bias = (tf.zeros([dirs, 3 * units]) if recurrent_bias is None
                          else _float32(recurrent_bias, "recurrent_bias"))
        initial_h = tf.zeros([dirs, batch, units]) if initial_h is None else _float32(initial_h, "initial_h")
        if recurrent_kernel.dtype != tf.float32:
            if _use_op(implementation):
                return _loader.load().fused_gru_sequence16(x_proj, recurrent_kernel, recurrent_bias, lengths,
                                                           initial_h, direction=direction, time_major=time_major)
            recurrent_kernel = tf.cast(recurrent_kernel, tf.float32)
        elif _use_op(implementation):
            out, h, _ = _loader.load().fused_gru_sequence(
                x_proj, recurrent_kernel, recurrent_bias, lengths, initial_h, direction=direction,
                time_major=time_major, is_training=bool(training))
            return out, h
        x_proj = _check_reference_args(x_proj, recurrent_kernel, None, recurrent_bias, lengths, initial_h, None,
                                       direction, time_major, 3, 0)
        return reference.gru_sequence(x_proj, recurrent_kernel, recurrent_bias, lengths, initial_h, direction,
                                      time_major)


# ---- INT8 recurrent weights (inference) ------------------------------------------------------------------------
def _int8(value, name):
    t = _to_tensor(value, tf.int8)
    if t.dtype != tf.int8:
        raise _invalid(f"{name} must be int8 (see tf_ops.quantize_rows), got {t.dtype.name}")
    return t


def _dequantize(q, scale):
    scale = tf.convert_to_tensor(scale)
    inv = tf.math.divide_no_nan(tf.ones_like(scale), scale)
    return tf.cast(q, tf.float32) * inv[..., None]


def _check_lstm_int8_reference(recurrent_kernel_q8, recurrent_scale, projection_kernel_q8, projection_scale,
                               direction):
    """The op's int8 checks for the reference path; returns the checked recurrent_scale and the dequantized
    projection kernel (or None)."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    if recurrent_kernel_q8.shape.rank != 3:
        raise _invalid(f"recurrent_kernel_q8 must be rank 3, got shape {recurrent_kernel_q8.shape}")
    dirs, units = _num_dirs(direction), _units(recurrent_kernel_q8, 4)
    num_proj = 0
    pk = None
    if projection_kernel_q8 is not None:
        projection_kernel_q8 = _int8(projection_kernel_q8, "projection_kernel_q8")
        projection_scale = _float32(projection_scale, "projection_scale")
        if projection_kernel_q8.shape.rank != 3:
            raise _invalid(f"projection_kernel_q8 must be rank 3, got shape {projection_kernel_q8.shape}")
        num_proj = projection_kernel_q8.shape[2]
        if num_proj is None:
            raise _invalid("projection_kernel_q8's last dimension must be known")
        projection_scale = _check_int8_args(projection_kernel_q8, projection_scale, "projection_kernel_q8",
                                            "projection_scale", [dirs, units if num_proj else 0])
        pk = _dequantize(projection_kernel_q8, projection_scale)
    recurrent_scale = _check_int8_args(recurrent_kernel_q8, recurrent_scale, "recurrent_kernel_q8",
                                       "recurrent_scale", [dirs, num_proj or units])
    return recurrent_scale, pk


@tf.autograph.experimental.do_not_convert
def lstm_sequence_int8(x_proj, recurrent_kernel_q8, recurrent_scale, sequence_lengths=None, initial_h=None,
                       initial_c=None, projection_kernel_q8=None, projection_scale=None, direction="forward",
                       time_major=False, cell_clip=0.0, proj_clip=0.0, implementation="auto", name=None):
    """lstm_sequence with INT8 recurrent (and projection) weights: kernels [D, R, 4H] / [D, H, P] int8, scales
    [D, R] / [D, H] from tf_ops.quantize_rows. Float32 arithmetic. The int8 weights get no gradient; x_proj and the
    initial states do. Returns (output, h, c)."""
    with tf.name_scope(name or "lstm_sequence_int8"):
        recurrent_kernel_q8 = _int8(recurrent_kernel_q8, "recurrent_kernel_q8")
        recurrent_scale = _float32(recurrent_scale, "recurrent_scale")
        if (projection_kernel_q8 is None) != (projection_scale is None):
            raise _invalid("projection_kernel_q8 and projection_scale come together")
        if not _use_op(implementation):
            recurrent_scale, pk = _check_lstm_int8_reference(recurrent_kernel_q8, recurrent_scale,
                                                             projection_kernel_q8, projection_scale, direction)
            return lstm_sequence(x_proj, _dequantize(recurrent_kernel_q8, recurrent_scale), sequence_lengths,
                                 initial_h, initial_c, projection_kernel=pk, direction=direction,
                                 time_major=time_major, cell_clip=cell_clip, proj_clip=proj_clip,
                                 implementation="reference")
        x_proj, _, lengths, batch = _common(x_proj, tf.zeros([0, 0, 0]), sequence_lengths, direction, time_major, 4)
        if recurrent_kernel_q8.shape.rank != 3:
            raise _invalid(f"recurrent_kernel_q8 must be rank 3, got shape {recurrent_kernel_q8.shape}")
        units = _units(recurrent_kernel_q8, 4)
        dirs = _num_dirs(direction)
        if projection_kernel_q8 is None:
            num_proj = 0
            projection_kernel_q8 = tf.zeros([dirs, units, 0], tf.int8)
            projection_scale = tf.zeros([dirs, 0])
        else:
            projection_kernel_q8 = _int8(projection_kernel_q8, "projection_kernel_q8")
            projection_scale = _float32(projection_scale, "projection_scale")
            num_proj = projection_kernel_q8.shape[-1]
        width = num_proj or units
        initial_h = tf.zeros([dirs, batch, width]) if initial_h is None else _float32(initial_h, "initial_h")
        initial_c = tf.zeros([dirs, batch, units]) if initial_c is None else _float32(initial_c, "initial_c")
        return _loader.load().fused_lstm_sequence_int8(
            x_proj, recurrent_kernel_q8, projection_kernel_q8, lengths, initial_h, initial_c, recurrent_scale,
            projection_scale, direction=direction, time_major=time_major, num_proj=num_proj,
            cell_clip=float(cell_clip or 0.0), proj_clip=float(proj_clip or 0.0))


@tf.autograph.experimental.do_not_convert
def gru_sequence_int8(x_proj, recurrent_kernel_q8, recurrent_scale, recurrent_bias=None, sequence_lengths=None,
                      initial_h=None, direction="forward", time_major=False, implementation="auto", name=None):
    """gru_sequence with INT8 recurrent weights [D, H, 3H] and scales [D, H]. Returns (output, h)."""
    with tf.name_scope(name or "gru_sequence_int8"):
        recurrent_kernel_q8 = _int8(recurrent_kernel_q8, "recurrent_kernel_q8")
        recurrent_scale = _float32(recurrent_scale, "recurrent_scale")
        if not _use_op(implementation):
            if direction not in _DIRECTIONS:
                raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
            if recurrent_kernel_q8.shape.rank != 3:
                raise _invalid(f"recurrent_kernel_q8 must be rank 3, got shape {recurrent_kernel_q8.shape}")
            units = _units(recurrent_kernel_q8, 3)
            recurrent_scale = _check_int8_args(recurrent_kernel_q8, recurrent_scale, "recurrent_kernel_q8",
                                               "recurrent_scale", [_num_dirs(direction), units])
            return gru_sequence(x_proj, _dequantize(recurrent_kernel_q8, recurrent_scale), recurrent_bias,
                                sequence_lengths, initial_h, direction=direction, time_major=time_major,
                                implementation="reference")
        x_proj, _, lengths, batch = _common(x_proj, tf.zeros([0, 0, 0]), sequence_lengths, direction, time_major, 3)
        if recurrent_kernel_q8.shape.rank != 3:
            raise _invalid(f"recurrent_kernel_q8 must be rank 3, got shape {recurrent_kernel_q8.shape}")
        units = _units(recurrent_kernel_q8, 3)
        dirs = _num_dirs(direction)
        recurrent_bias = (tf.zeros([dirs, 3 * units]) if recurrent_bias is None
                          else _float32(recurrent_bias, "recurrent_bias"))
        initial_h = tf.zeros([dirs, batch, units]) if initial_h is None else _float32(initial_h, "initial_h")
        return _loader.load().fused_gru_sequence_int8(x_proj, recurrent_kernel_q8, recurrent_bias, lengths, initial_h,
                                                      recurrent_scale, direction=direction, time_major=time_major)


# ---- gradients ------------------------------------------------------------------------------------------------
# The fused backward op: one call for every step and direction. It needs the forward's reserve; a forward that
# ran without one (inference mode, e.g. a GradientTape around a layer called without training=True) is re-run
# once with is_training=True, which costs one forward pass (a fraction of the backward).
def _grads_or_zeros(op, grads):
    return [tf.zeros_like(op.outputs[i]) if g is None else g for i, g in enumerate(grads)]


def _attr_str(op, name):
    value = op.get_attr(name)
    return value.decode() if isinstance(value, bytes) else value


@tf.RegisterGradient("FusedLSTMSequence")
def _lstm_grad(op, *grads):
    lib = _loader.load()
    d_output, d_final_h, d_final_c, _ = _grads_or_zeros(op, grads)
    attrs = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"),
                 num_proj=op.get_attr("num_proj"), cell_clip=op.get_attr("cell_clip"),
                 proj_clip=op.get_attr("proj_clip"))
    output, reserve = op.outputs[0], op.outputs[3]
    if not op.get_attr("is_training"):
        output, _, _, reserve = lib.fused_lstm_sequence(*op.inputs, is_training=True, **attrs)
    d_x, d_rk, d_pk, d_h0, d_c0 = lib.fused_lstm_sequence_grad(*op.inputs, output, reserve, d_output, d_final_h,
                                                              d_final_c, **attrs)
    return [d_x, d_rk, d_pk, None, d_h0, d_c0]


@tf.RegisterGradient("FusedGRUSequence")
def _gru_grad(op, *grads):
    lib = _loader.load()
    d_output, d_final_h, _ = _grads_or_zeros(op, grads)
    attrs = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"))
    output, reserve = op.outputs[0], op.outputs[2]
    if not op.get_attr("is_training"):
        output, _, reserve = lib.fused_gru_sequence(*op.inputs, is_training=True, **attrs)
    d_x, d_rk, d_rb, d_h0 = lib.fused_gru_sequence_grad(*op.inputs, output, reserve, d_output, d_final_h, **attrs)
    return [d_x, d_rk, d_rb, None, d_h0]


# Second order (a gradient of the backward op: nested tapes such as a gradient penalty, forward-mode autodiff): the
# reference recurrence, differentiated twice. The first-order gradients stay the fused backward's; only the
# gradient of that backward re-runs the recurrence in stock TF ops (one while_loop per direction). The backward's
# inputs `output` and `reserve` get no gradient: the recomputation already carries their dependence on the
# primal inputs.
def _double_backward(ggrads, primals, cotangents, forward):
    """VJP of the first-order map (primals, cotangents) -> d(forward(primals)) . cotangents, for ggrads."""
    with tf.GradientTape() as outer:
        outer.watch(primals + cotangents)
        with tf.GradientTape() as inner:
            inner.watch(primals)
            outputs = forward(*primals)
        firsts = inner.gradient(outputs, primals, output_gradients=cotangents,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
    ggrads = [tf.zeros_like(f) if g is None else g for f, g in zip(firsts, ggrads)]
    return outer.gradient(firsts, primals + cotangents, output_gradients=ggrads,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)


@tf.RegisterGradient("FusedLSTMSequenceGrad")
def _lstm_grad_grad(op, dd_x, dd_rk, dd_pk, dd_h0, dd_c0):
    x, rk, pk, lengths, h0, c0 = op.inputs[:6]
    cotangents = list(op.inputs[8:11])  # d_output, d_final_h, d_final_c
    use_proj = op.get_attr("num_proj") > 0
    kw = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"),
              cell_clip=op.get_attr("cell_clip"), proj_clip=op.get_attr("proj_clip"))
    if use_proj:
        g = _double_backward([dd_x, dd_rk, dd_pk, dd_h0, dd_c0], [x, rk, pk, h0, c0], cotangents,
                             lambda x, rk, pk, h0, c0: reference.lstm_sequence(x, rk, pk, lengths, h0, c0, **kw))
        g_x, g_rk, g_pk, g_h0, g_c0 = g[:5]
    else:
        g = _double_backward([dd_x, dd_rk, dd_h0, dd_c0], [x, rk, h0, c0], cotangents,
                             lambda x, rk, h0, c0: reference.lstm_sequence(x, rk, None, lengths, h0, c0, **kw))
        (g_x, g_rk, g_h0, g_c0), g_pk = g[:4], tf.zeros_like(pk)
    return [g_x, g_rk, g_pk, None, g_h0, g_c0, None, None] + list(g[-3:])


@tf.RegisterGradient("FusedGRUSequenceGrad")
def _gru_grad_grad(op, dd_x, dd_rk, dd_rb, dd_h0):
    x, rk, rb, lengths, h0 = op.inputs[:5]
    cotangents = list(op.inputs[7:9])  # d_output, d_final_h
    kw = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"))
    g = _double_backward([dd_x, dd_rk, dd_rb, dd_h0], [x, rk, rb, h0], cotangents,
                         lambda x, rk, rb, h0: reference.gru_sequence(x, rk, rb, lengths, h0, **kw))
    return [g[0], g[1], g[2], None, g[3], None, None] + list(g[-2:])


# int8 and 16-bit recurrent weights are fixed (non-trainable variables), but gradients still flow through the op
# to what is float: x_proj (so the input kernel and bias, and any layer below), the initial states and the GRU's
# recurrent bias. A frozen narrow layer inside a model that trains other layers is the common case (a head on a
# frozen int8 ELMo, an embedding under it). The gradient is the float32 backward run on the dequantized (int8: q /
# scale) or widened (16-bit) weights, after a float32 forward that makes its reserve: the function the narrow op
# computes, up to float32 rounding (the int8 CPU kernel may use VNNI fixed point: within ~1e-6 of it).
def _narrow_lstm_grads(op, grads, recurrent_kernel, projection_kernel):
    lib = _loader.load()
    d_output, d_final_h, d_final_c = _grads_or_zeros(op, grads)
    attrs = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"),
                 num_proj=op.get_attr("num_proj"), cell_clip=op.get_attr("cell_clip"),
                 proj_clip=op.get_attr("proj_clip"))
    x, lengths, h0, c0 = op.inputs[0], op.inputs[3], op.inputs[4], op.inputs[5]
    inputs = (x, recurrent_kernel, projection_kernel, lengths, h0, c0)
    output, _, _, reserve = lib.fused_lstm_sequence(*inputs, is_training=True, **attrs)
    d_x, _, _, d_h0, d_c0 = lib.fused_lstm_sequence_grad(*inputs, output, reserve, d_output, d_final_h, d_final_c,
                                                         **attrs)
    return d_x, d_h0, d_c0


def _narrow_gru_grads(op, grads, recurrent_kernel):
    lib = _loader.load()
    d_output, d_final_h = _grads_or_zeros(op, grads)
    attrs = dict(direction=_attr_str(op, "direction"), time_major=op.get_attr("time_major"))
    x, rb, lengths, h0 = op.inputs[0], op.inputs[2], op.inputs[3], op.inputs[4]
    inputs = (x, recurrent_kernel, rb, lengths, h0)
    output, _, reserve = lib.fused_gru_sequence(*inputs, is_training=True, **attrs)
    d_x, _, d_rb, d_h0 = lib.fused_gru_sequence_grad(*inputs, output, reserve, d_output, d_final_h, **attrs)
    return d_x, d_rb, d_h0


def _no_projection(recurrent_kernel):
    """The empty [D, H, 0] float projection kernel of an LSTM without one (recurrent_kernel [D, H, 4H])."""
    shape = tf.shape(recurrent_kernel)
    return tf.zeros(tf.stack([shape[0], shape[2] // 4, 0]))


@tf.RegisterGradient("FusedLSTMSequenceInt8")
def _lstm_int8_grad(op, *grads):
    q, pq, rs, ps = op.inputs[1], op.inputs[2], op.inputs[6], op.inputs[7]
    rk = _dequantize(q, rs)
    pk = _dequantize(pq, ps) if op.get_attr("num_proj") > 0 else _no_projection(q)
    d_x, d_h0, d_c0 = _narrow_lstm_grads(op, grads, rk, pk)
    return [d_x, None, None, None, d_h0, d_c0, None, None]


@tf.RegisterGradient("FusedGRUSequenceInt8")
def _gru_int8_grad(op, *grads):
    d_x, d_rb, d_h0 = _narrow_gru_grads(op, grads, _dequantize(op.inputs[1], op.inputs[5]))
    return [d_x, None, d_rb, None, d_h0, None]


@tf.RegisterGradient("FusedLSTMSequence16")
def _lstm_16bit_grad(op, *grads):
    rk, pk = tf.cast(op.inputs[1], tf.float32), tf.cast(op.inputs[2], tf.float32)
    if op.get_attr("num_proj") == 0:
        pk = _no_projection(rk)
    d_x, d_h0, d_c0 = _narrow_lstm_grads(op, grads, rk, pk)
    return [d_x, None, None, None, d_h0, d_c0]


@tf.RegisterGradient("FusedGRUSequence16")
def _gru_16bit_grad(op, *grads):
    d_x, d_rb, d_h0 = _narrow_gru_grads(op, grads, tf.cast(op.inputs[1], tf.float32))
    return [d_x, None, d_rb, None, d_h0]
