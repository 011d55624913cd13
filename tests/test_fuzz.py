"""Fuzzing the raw ops with random shapes, attributes and values: every valid call matches the float64 reference,
and every call given a broken argument (a wrong dimension, a length outside [0, T], a negative clip or scale) raises
InvalidArgumentError naming one of the broken arguments; a valid call refused or a broken one accepted fails the
test. A crash would kill this process (and fail the test target).

FUSED_RNN_FUZZ_CASES sets the number of raw forward-op cases (default 1000, about 10 s), FUSED_RNN_INT8_FUZZ_CASES
and FUSED_RNN_GRAD_FUZZ_CASES those of the INT8 (300) and Grad (150) ops; FUSED_RNN_LAYER_FUZZ_CASES the
number of Keras-layer cases (default 100: random configurations through FusedLSTM/FusedGRU, the op path against the
same layer on the pure-TF reference, or an error from both; and against stock Keras with the same weights: the
stock LSTM/GRU, or keras.layers.RNN around a projection cell). Run longer by hand.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import rel_err
from numpy_reference import rnn_forward

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

CASES = int(os.environ.get("FUSED_RNN_FUZZ_CASES", "1000"))


def _dim(rng, valid, wrong_prob):
    """A dimension that is usually right and sometimes wrong (off by one, zero, or large)."""
    if rng.random() >= wrong_prob:
        return valid
    return int(rng.choice([max(valid - 1, 0), valid + 1, 0, valid * 3 + 2]))


def _one_case(rng, lib, stats):
    cell = rng.choice(["lstm", "gru"])
    direction = str(rng.choice(["forward", "reverse", "bidirectional"]))
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if cell == "lstm" else 3
    batch, max_time, units = int(rng.integers(0, 5)), int(rng.integers(0, 7)), int(rng.integers(1, 24))
    proj = int(rng.integers(1, 9)) if cell == "lstm" and rng.random() < 0.3 else 0
    width = proj or units
    time_major = bool(rng.random() < 0.3)
    p_bad = 0.08
    broken = set()  # the arguments this case made invalid: then the op must refuse it, naming one of them

    def dim(valid, arg):  # _dim (the same draws), remembering which argument it broke
        got = _dim(rng, valid, p_bad)
        if got != valid:
            broken.add(arg)
        return got

    x_shape = [max_time, batch] if time_major else [batch, max_time]
    x = rng.standard_normal(x_shape + [dim(dirs * gates * units, "x_proj")]).astype(np.float32)
    if rng.random() < 0.05 and x.size:
        x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    rk = (rng.standard_normal((dim(dirs, "recurrent_kernel"), dim(width, "recurrent_kernel"),
                               dim(gates * units, "recurrent_kernel"))) * 0.3).astype(np.float32)
    lengths = rng.integers(0, max_time + 1, dim(batch, "sequence_lengths")).astype(np.int32)
    if rng.random() < 0.08 and lengths.size:
        lengths[rng.integers(lengths.size)] = rng.choice([-1, max_time + 1, 2**31 - 1, -2**31])
        broken.add("sequence_lengths")
    h0 = rng.standard_normal((dirs, dim(batch, "initial_h"), dim(width, "initial_h"))).astype(np.float32)
    c0 = rng.standard_normal((dirs, batch, dim(units, "initial_c" if cell == "lstm" else None))).astype(np.float32)
    broken.discard(None)  # a GRU takes no initial_c
    cell_clip = float(rng.choice([0.0, 0.5, -1.0], p=[0.6, 0.35, 0.05])) if cell == "lstm" else 0.0
    if cell_clip < 0:
        broken.add("cell_clip")
    proj_clip = float(rng.choice([0.0, 0.4])) if proj else 0.0
    try:
        if cell == "lstm":
            pk = (rng.standard_normal((dirs, dim(units, "projection_kernel"), proj)) * 0.3).astype(np.float32)
            got = lib.fused_lstm_sequence(x, rk, pk, lengths, h0, c0, direction=direction, time_major=time_major,
                                          num_proj=proj, cell_clip=cell_clip, proj_clip=proj_clip)[:3]
        else:
            rb = rng.standard_normal((dirs, dim(gates * units, "recurrent_bias"))).astype(np.float32)
            got = lib.fused_gru_sequence(x, rk, rb, lengths, h0, direction=direction, time_major=time_major)[:2]
    except tf.errors.InvalidArgumentError as e:
        # Refused: only what is broken may be, and the error names a broken argument (not a valid one, not none).
        assert broken, f"a valid {cell} case was refused: {e.message}"
        assert any(name in e.message for name in broken), f"broke {sorted(broken)}, the error names: {e.message}"
        stats["rejected"] += 1
        return
    # Accepted: it must have been valid (a broken shape or length that runs reads or writes out of bounds, or
    # silently drops what it was given).
    assert not broken, f"{cell} {direction}: the op accepted broken {sorted(broken)}"
    if cell == "lstm":
        want = rnn_forward("lstm", x, rk, lengths, h0, c0, projection_kernel=pk if proj else None,
                           cell_clip=cell_clip, proj_clip=proj_clip, direction=direction, time_major=time_major)
    else:
        want = rnn_forward("gru", x, rk, lengths, h0, recurrent_bias=rb, direction=direction, time_major=time_major)
    stats["ran"] += 1
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        finite = np.isfinite(w)
        # NaN/Inf inputs: wherever the reference is finite the op must agree; elsewhere it must not be finite.
        assert np.array_equal(np.isfinite(g), finite), "non-finite pattern differs from the reference"
        if finite.any():
            assert rel_err(g[finite], w[finite]) < 1e-5


def test_fuzz_raw_ops(capsys):
    lib = tf.load_op_library(tf_ops.op_library_path())
    rng = np.random.default_rng(int(os.environ.get("FUSED_RNN_FUZZ_SEED", "20261121")))
    stats = {"ran": 0, "rejected": 0}
    for _ in range(CASES):
        _one_case(rng, lib, stats)
    with capsys.disabled():  # the count goes into the test log even when the test passes
        print(f"fuzz: {CASES} cases, {stats['ran']} computed and matched, {stats['rejected']} rejected with "
              "InvalidArgumentError")
    assert stats["ran"] > CASES // 4 and stats["rejected"] > CASES // 20, stats


LAYER_CASES = int(os.environ.get("FUSED_RNN_LAYER_FUZZ_CASES", "100"))


def _one_layer_case(rng, stats):
    """A random FusedLSTM/FusedGRU configuration and input, through the Keras layer: the op path against the same
    layer traced with the pure-TF reference (tf_ops.implementation_scope), or the same error from both."""
    import keras
    cell = str(rng.choice(["lstm", "gru"]))
    units = int(rng.integers(1, 20))
    kwargs = dict(return_sequences=bool(rng.random() < 0.6), return_state=bool(rng.random() < 0.4),
                  bidirectional=bool(rng.random() < 0.4))
    if not kwargs["bidirectional"]:
        kwargs["go_backwards"] = bool(rng.random() < 0.3)
    if cell == "lstm" and rng.random() < 0.3:
        kwargs.update(num_proj=int(rng.integers(1, 8)), proj_clip=float(rng.choice([0.0, 0.5])) or None)
    if cell == "lstm" and rng.random() < 0.3:
        kwargs["cell_clip"] = float(rng.choice([0.5, 2.0]))
    layer_cls = tf_ops.FusedLSTM if cell == "lstm" else tf_ops.FusedGRU
    batch, max_time, features = int(rng.integers(0, 4)), int(rng.integers(0, 6)), int(rng.integers(1, 7))
    layer = layer_cls(units, **kwargs)
    layer.build((None, None, features))
    for v in layer.weights:
        v.assign(rng.normal(0, 0.6, v.shape).astype(np.float32))
    x = rng.standard_normal((batch, max_time, features)).astype(np.float32)
    if rng.random() < 0.1 and x.size:
        x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf])
    mask = None
    if rng.random() < 0.5:
        lengths = rng.integers(0, max_time + 1, batch)
        mask = np.arange(max_time)[None, :] < lengths[:, None]
        if rng.random() < 0.15 and mask.size:
            mask = rng.random(mask.shape) < 0.5  # usually not right-padded: must be an error
    if rng.random() < 0.05:
        x = x[..., :max(features - 1, 0)]  # wrong input width for the built layer

    def run(implementation):
        with tf_ops.implementation_scope(implementation):
            out = tf.function(lambda x, m: layer(x, mask=m))(x, mask) if mask is not None else \
                tf.function(lambda x: layer(x))(x)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    errors = (tf.errors.InvalidArgumentError, ValueError)
    try:
        got = run("op")
    except errors as e:
        # The reference must refuse it too (the layer's own checks are shared; the op's are its own).
        with pytest.raises(errors):
            run("reference")
        stats["rejected"] += 1
        stats.setdefault("messages", set()).add(type(e).__name__)
        return
    want = run("reference")
    stats["ran"] += 1
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.array_equal(np.isfinite(g), np.isfinite(w)), "non-finite pattern differs from the reference"
        finite = np.isfinite(w)
        if finite.any():
            np.testing.assert_allclose(g[finite], w[finite], rtol=1e-5, atol=1e-6)
    # The pure-TF reference shares the layer's own code (masks to lengths, directions, state order), so every case
    # that runs is also checked against stock Keras with the same weights, an oracle independent of it:
    # keras.layers.LSTM/GRU, or Bidirectional of one for the fused bidirectional layer (same weight order). Stock
    # Keras has no projection or clip: those cases run keras.layers.RNN around models.elmo.ProjectionLSTMCell (TF1
    # LSTMCell's math in Keras ops), so Keras' own RNN loop still does the masks, directions and states.
    if not (batch and max_time) or not np.isfinite(x).all():
        return
    stock_kwargs = {k: v for k, v in kwargs.items() if k not in ("bidirectional", "num_proj", "cell_clip",
                                                                  "proj_clip")}
    if "num_proj" in kwargs or "cell_clip" in kwargs:
        from models.elmo import ProjectionLSTMCell
        stock_one = keras.layers.RNN(
            ProjectionLSTMCell(units, num_proj=kwargs.get("num_proj"), cell_clip=kwargs.get("cell_clip"),
                               proj_clip=kwargs.get("proj_clip")), **stock_kwargs)
        stats["stock_proj"] = stats.get("stock_proj", 0) + 1
    else:
        stock_one = (keras.layers.LSTM if cell == "lstm" else keras.layers.GRU)(units, **stock_kwargs)
    stock = keras.layers.Bidirectional(stock_one) if kwargs["bidirectional"] else stock_one
    stock.build((None, None, features))
    stock.set_weights(layer.get_weights())
    out = stock(x, mask=mask) if mask is not None else stock(x)
    want_stock = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    assert len(got) == len(want_stock)
    for g, w in zip(got, want_stock):
        assert g.shape == w.shape, (g.shape, w.shape)
        assert rel_err(g, w) < 1e-5, f"{cell} {kwargs}: {rel_err(g, w):.2e} from the stock Keras layer"
    stats["stock"] = stats.get("stock", 0) + 1


def test_fuzz_keras_layers(capsys):
    rng = np.random.default_rng(int(os.environ.get("FUSED_RNN_FUZZ_SEED", "20261121")) + 1)
    stats = {"ran": 0, "rejected": 0}
    for _ in range(LAYER_CASES):
        _one_layer_case(rng, stats)
    with capsys.disabled():
        print(f"layer fuzz: {LAYER_CASES} cases, {stats['ran']} matched the reference ({stats.get('stock', 0)} also "
              f"stock Keras, {stats.get('stock_proj', 0)} of them with a projection or clip), {stats['rejected']} "
              f"rejected ({sorted(stats.get('messages', []))})")
    assert stats["ran"] > LAYER_CASES // 2 and stats["rejected"] > 0 and stats.get("stock", 0) > LAYER_CASES // 3, stats
    assert stats.get("stock_proj", 0) > LAYER_CASES // 10, stats


# ---- INT8 raw ops -------------------------------------------------------------------------------------------------
INT8_CASES = int(os.environ.get("FUSED_RNN_INT8_FUZZ_CASES", "300"))


def _one_int8_case(rng, lib, stats):
    """FusedLSTMSequenceInt8 / FusedGRUSequenceInt8 with random shapes, some wrong, and planted bad scales
    (negative, NaN, Inf): the result matches the float64 reference on the dequantized weights, or the op raises.
    A planted bad scale or length, or a wrong shape, must raise naming a broken argument; a valid case must run."""
    cell = str(rng.choice(["lstm", "gru"]))
    direction = str(rng.choice(["forward", "reverse", "bidirectional"]))
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if cell == "lstm" else 3
    batch, max_time, units = int(rng.integers(0, 5)), int(rng.integers(0, 7)), int(rng.integers(1, 24))
    proj = int(rng.integers(1, 9)) if cell == "lstm" and rng.random() < 0.3 else 0
    width = proj or units
    time_major = bool(rng.random() < 0.3)
    p_bad = 0.06
    broken = set()  # the arguments this case made invalid

    def dim(valid, arg):  # _dim (the same draws), remembering which argument it broke (None: one the op ignores)
        got = _dim(rng, valid, p_bad)
        if got != valid and arg:
            broken.add(arg)
        return got

    x_shape = [max_time, batch] if time_major else [batch, max_time]
    x = rng.standard_normal(x_shape + [dim(dirs * gates * units, "x_proj")]).astype(np.float32)
    if rng.random() < 0.05 and x.size:
        x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    q_rk = rng.integers(-127, 128, (dim(dirs, "recurrent_kernel"), dim(width, "recurrent_kernel"),
                                    dim(gates * units, "recurrent_kernel"))).astype(np.int8)
    # Scales as the quantizer makes them (127 / max|row|, rows of max|w| ~ 0.5), some rows zero (scale 0).
    s_rk = rng.uniform(150.0, 400.0, (dirs, dim(width, "recurrent_scale"))).astype(np.float32)
    s_rk[rng.random(s_rk.shape) < 0.1] = 0.0
    lengths = rng.integers(0, max_time + 1, dim(batch, "sequence_lengths")).astype(np.int32)
    planted = None
    if rng.random() < 0.06 and lengths.size:
        lengths[rng.integers(lengths.size)] = rng.choice([-1, max_time + 1, 2**31 - 1])
        planted = "sequence_lengths"
    h0 = rng.standard_normal((dirs, dim(batch, "initial_h"), dim(width, "initial_h"))).astype(np.float32)
    lstm = cell == "lstm"
    c0 = rng.standard_normal((dirs, batch, dim(units, lstm and "initial_c"))).astype(np.float32)
    q_pk = rng.integers(-127, 128, (dirs, dim(units, lstm and "projection_kernel"), proj)).astype(np.int8)
    s_pk = rng.uniform(150.0, 400.0, (dirs, units if proj else 0)).astype(np.float32)
    if rng.random() < 0.08:
        bad_scales = s_pk if proj and rng.random() < 0.5 else s_rk
        if bad_scales.size:
            bad_scales.flat[rng.integers(bad_scales.size)] = rng.choice([-1.0, np.nan, np.inf])
            planted = "projection_scale" if bad_scales is s_pk else "recurrent_scale"
    cell_clip = float(rng.choice([0.0, 0.5])) if cell == "lstm" else 0.0
    proj_clip = float(rng.choice([0.0, 0.4])) if proj else 0.0

    def dequantized(q, s):
        inv = np.divide(1.0, s.astype(np.float64), out=np.zeros(s.shape), where=s != 0)
        return q.astype(np.float64) * inv[..., None]

    try:
        if cell == "lstm":
            got = lib.fused_lstm_sequence_int8(x, q_rk, q_pk, lengths, h0, c0, s_rk, s_pk, direction=direction,
                                               time_major=time_major, num_proj=proj, cell_clip=cell_clip,
                                               proj_clip=proj_clip)
        else:
            rb = rng.standard_normal((dirs, dim(gates * units, "recurrent_bias"))).astype(np.float32)
            got = lib.fused_gru_sequence_int8(x, q_rk, rb, lengths, h0, s_rk, direction=direction,
                                              time_major=time_major)
    except tf.errors.InvalidArgumentError as e:
        if planted:
            broken.add(planted)
        # Only a broken case may be refused, and the error names one of its broken arguments.
        assert broken, f"a valid int8 {cell} case was refused: {e.message}"
        assert any(name in e.message for name in broken), f"broke {sorted(broken)}, the error names: {e.message}"
        if planted and len(broken) == 1:
            assert planted in e.message, f"planted bad {planted}, error names something else: {e.message}"
        stats["rejected"] += 1
        return
    assert planted is None, f"bad {planted} was accepted"
    assert not broken, f"int8 {cell} {direction}: the op accepted broken {sorted(broken)}"
    if cell == "lstm":
        want = rnn_forward("lstm", x, dequantized(q_rk, s_rk), lengths, h0, c0,
                           projection_kernel=dequantized(q_pk, s_pk) if proj else None, cell_clip=cell_clip,
                           proj_clip=proj_clip, direction=direction, time_major=time_major)
    else:
        want = rnn_forward("gru", x, dequantized(q_rk, s_rk), lengths, h0, recurrent_bias=rb, direction=direction,
                           time_major=time_major)
    stats["ran"] += 1
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        finite = np.isfinite(w)
        assert np.array_equal(np.isfinite(g), finite), "non-finite pattern differs from the reference"
        if finite.any():
            assert rel_err(g[finite], w[finite]) < 1e-5


def test_fuzz_int8_ops(capsys):
    lib = tf.load_op_library(tf_ops.op_library_path())
    rng = np.random.default_rng(int(os.environ.get("FUSED_RNN_FUZZ_SEED", "20261121")) + 2)
    stats = {"ran": 0, "rejected": 0}
    for _ in range(INT8_CASES):
        _one_int8_case(rng, lib, stats)
    with capsys.disabled():
        print(f"int8 fuzz: {INT8_CASES} cases, {stats['ran']} computed and matched, {stats['rejected']} rejected "
              "with InvalidArgumentError")
    assert stats["ran"] > INT8_CASES // 4 and stats["rejected"] > INT8_CASES // 20, stats


# ---- backward (Grad) raw ops --------------------------------------------------------------------------------------
GRAD_CASES = int(os.environ.get("FUSED_RNN_GRAD_FUZZ_CASES", "150"))

# What a case may break in the grad op's extra inputs; each must be refused by name.
_GRAD_MUTATIONS = ["output", "reserve", "d_output", "d_final_h", "d_final_c", "sequence_lengths", "x_proj"]


def _reference_grads(cell, inputs, lengths, attrs, d_output, d_final_h, d_final_c):
    """Gradients of <output, d_output> + <final_h, d_final_h> (+ <final_c, d_final_c>) through the pure-TF
    reference in float64: independent of the fused kernels."""
    from tf_ops import reference
    vars64 = [tf.constant(np.asarray(v, np.float64)) for v in inputs]
    with tf.GradientTape() as tape:
        tape.watch(vars64)
        if cell == "lstm":
            x, rk, pk, h0, c0 = vars64
            out, h, c = reference.lstm_sequence(x, rk, pk if attrs["num_proj"] else None, lengths, h0, c0,
                                                attrs["direction"], attrs["time_major"], attrs["cell_clip"],
                                                attrs["proj_clip"])
            loss = (tf.reduce_sum(out * d_output.astype(np.float64)) + tf.reduce_sum(h * d_final_h.astype(np.float64))
                    + tf.reduce_sum(c * d_final_c.astype(np.float64)))
        else:
            x, rk, rb, h0 = vars64
            out, h = reference.gru_sequence(x, rk, rb, lengths, h0, attrs["direction"], attrs["time_major"])
            loss = tf.reduce_sum(out * d_output.astype(np.float64)) + tf.reduce_sum(h * d_final_h.astype(np.float64))
    grads = tape.gradient(loss, vars64, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [np.asarray(g) for g in grads]


def _one_grad_case(rng, lib, stats):
    """A valid forward (is_training) and then FusedLSTMSequenceGrad / FusedGRUSequenceGrad, sometimes with one of
    its inputs broken (wrong shape, a truncated reserve, a bad length) or NaN/Inf gradients: a broken input is
    refused naming it; otherwise every gradient matches float64 autodiff of the pure-TF reference."""
    cell = str(rng.choice(["lstm", "gru"]))
    direction = str(rng.choice(["forward", "reverse", "bidirectional"]))
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if cell == "lstm" else 3
    batch, max_time, units = int(rng.integers(0, 4)), int(rng.integers(0, 6)), int(rng.integers(1, 10))
    proj = int(rng.integers(1, 6)) if cell == "lstm" and rng.random() < 0.3 else 0
    width = proj or units
    time_major = bool(rng.random() < 0.3)
    attrs = dict(direction=direction, time_major=time_major)
    x_shape = [max_time, batch] if time_major else [batch, max_time]
    x = rng.standard_normal(x_shape + [dirs * gates * units]).astype(np.float32)
    rk = (rng.standard_normal((dirs, width, gates * units)) / np.sqrt(width)).astype(np.float32)
    lengths = rng.integers(0, max_time + 1, batch).astype(np.int32)
    h0 = (0.5 * rng.standard_normal((dirs, batch, width))).astype(np.float32)
    if cell == "lstm":
        lstm_attrs = dict(num_proj=proj, cell_clip=float(rng.choice([0.0, 0.6])),
                          proj_clip=float(rng.choice([0.0, 0.3])) if proj else 0.0)
        attrs.update(lstm_attrs)
        pk = (rng.standard_normal((dirs, units, proj)) / np.sqrt(units)).astype(np.float32)
        c0 = (0.8 * rng.standard_normal((dirs, batch, units))).astype(np.float32)
        inputs = [x, rk, pk, h0, c0]
        output, final_h, final_c, reserve = lib.fused_lstm_sequence(x, rk, pk, lengths, h0, c0, is_training=True,
                                                                    **attrs)
        extra = {"d_final_c": rng.standard_normal(np.shape(final_c)).astype(np.float32)}
    else:
        rb = (0.3 * rng.standard_normal((dirs, gates * units))).astype(np.float32)
        inputs = [x, rk, rb, h0]
        output, final_h, reserve = lib.fused_gru_sequence(x, rk, rb, lengths, h0, is_training=True, **attrs)
        extra = {}
    grad_in = {"x_proj": x, "sequence_lengths": lengths, "output": np.asarray(output),
               "reserve": np.asarray(reserve), "d_output": rng.standard_normal(np.shape(output)).astype(np.float32),
               "d_final_h": rng.standard_normal(np.shape(final_h)).astype(np.float32), **extra}
    mutation, nonfinite = None, False
    r = rng.random()
    if r < 0.3:
        mutation = str(rng.choice([m for m in _GRAD_MUTATIONS if m in grad_in]))
        v = grad_in[mutation]
        if mutation == "sequence_lengths":
            if not v.size:
                mutation = None
            else:
                v = v.copy()
                v[rng.integers(v.size)] = rng.choice([-1, max_time + 1])
        elif mutation == "reserve":
            v = v[:-1] if v.size else np.zeros(1, np.float32)
        else:  # one dimension off by one (x_proj: its width; its batch and time define the others' shapes)
            axis = v.ndim - 1 if mutation == "x_proj" else int(rng.integers(v.ndim))
            shape = list(v.shape)
            shape[axis] = shape[axis] + 1 if rng.random() < 0.5 or shape[axis] == 0 else shape[axis] - 1
            v = rng.standard_normal(shape).astype(np.float32)
        if mutation:
            grad_in[mutation] = v
    elif r < 0.4 and grad_in["d_output"].size:
        grad_in["d_output"].flat[rng.integers(grad_in["d_output"].size)] = rng.choice([np.nan, np.inf])
        nonfinite = True
    try:
        if cell == "lstm":
            got = lib.fused_lstm_sequence_grad(grad_in["x_proj"], rk, pk, grad_in["sequence_lengths"], h0, c0,
                                               grad_in["output"], grad_in["reserve"], grad_in["d_output"],
                                               grad_in["d_final_h"], grad_in["d_final_c"], **attrs)
        else:
            got = lib.fused_gru_sequence_grad(grad_in["x_proj"], rk, rb, grad_in["sequence_lengths"], h0,
                                              grad_in["output"], grad_in["reserve"], grad_in["d_output"],
                                              grad_in["d_final_h"], **attrs)
    except tf.errors.InvalidArgumentError as e:
        assert mutation is not None, f"a valid grad call was refused: {e}"
        assert mutation in str(e), f"broke {mutation}, but the error names something else: {e}"
        stats["rejected"] += 1
        return
    assert mutation is None, f"a broken {mutation} was accepted (shape {np.shape(grad_in[mutation])})"
    got = [np.asarray(g) for g in got]
    # Positions past each length get no gradient, whatever d_output holds there.
    d_x = got[0] if not time_major else np.swapaxes(got[0], 0, 1)
    pad = np.arange(max_time)[None, :] >= lengths[:, None]
    assert not np.any(d_x[pad]), "d_x_proj is not zero past a sequence's end"
    if nonfinite:  # no reference value to compare with; the call must just come back with the right shapes
        stats["nonfinite"] = stats.get("nonfinite", 0) + 1
        for g, v in zip(got, inputs):
            assert g.shape == v.shape
        return
    want = _reference_grads(cell, inputs, lengths, attrs, grad_in["d_output"], grad_in["d_final_h"],
                            grad_in.get("d_final_c"))
    stats["ran"] += 1
    for name, g, w in zip(["d_x_proj", "d_recurrent_kernel", "d_3rd", "d_initial_h", "d_initial_c"], got, want):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-3)
        err = float(np.max(np.abs(g - w), initial=0.0)) / scale
        assert err < 2e-5, f"{name}: relative error {err:.2e} ({cell} {attrs})"


def test_fuzz_grad_ops(capsys):
    lib = tf.load_op_library(tf_ops.op_library_path())
    rng = np.random.default_rng(int(os.environ.get("FUSED_RNN_FUZZ_SEED", "20261121")) + 3)
    stats = {"ran": 0, "rejected": 0}
    for _ in range(GRAD_CASES):
        _one_grad_case(rng, lib, stats)
    with capsys.disabled():
        print(f"grad fuzz: {GRAD_CASES} cases, {stats['ran']} matched float64 autodiff of the reference, "
              f"{stats['rejected']} broken inputs rejected by name, {stats.get('nonfinite', 0)} with NaN/Inf "
              "gradients returned")
    assert stats["ran"] > GRAD_CASES // 3 and stats["rejected"] > GRAD_CASES // 20, stats
