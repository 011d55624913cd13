"""Fuzzing the raw ops with random shapes, attributes and values: every call either matches the float64 reference
or raises a TensorFlow error. A crash would kill this process (and fail the test target).

FUSED_RNN_FUZZ_CASES sets the number of raw-op cases (default 1000, about 10 s); FUSED_RNN_LAYER_FUZZ_CASES the
number of Keras-layer cases (default 100: random configurations through FusedLSTM/FusedGRU, the op path against the
same layer on the pure-TF reference, or an error from both). Run longer by hand.
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
    x_shape = [max_time, batch] if time_major else [batch, max_time]
    x = rng.standard_normal(x_shape + [_dim(rng, dirs * gates * units, p_bad)]).astype(np.float32)
    if rng.random() < 0.05 and x.size:
        x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    rk = (rng.standard_normal((_dim(rng, dirs, p_bad), _dim(rng, width, p_bad), _dim(rng, gates * units, p_bad)))
          * 0.3).astype(np.float32)
    lengths = rng.integers(0, max_time + 1, _dim(rng, batch, p_bad)).astype(np.int32)
    if rng.random() < 0.08 and lengths.size:
        lengths[rng.integers(lengths.size)] = rng.choice([-1, max_time + 1, 2**31 - 1, -2**31])
    h0 = rng.standard_normal((dirs, _dim(rng, batch, p_bad), _dim(rng, width, p_bad))).astype(np.float32)
    c0 = rng.standard_normal((dirs, batch, _dim(rng, units, p_bad))).astype(np.float32)
    cell_clip = float(rng.choice([0.0, 0.5, -1.0], p=[0.6, 0.35, 0.05])) if cell == "lstm" else 0.0
    proj_clip = float(rng.choice([0.0, 0.4])) if proj else 0.0
    try:
        if cell == "lstm":
            pk = (rng.standard_normal((dirs, _dim(rng, units, p_bad), proj)) * 0.3).astype(np.float32)
            got = lib.fused_lstm_sequence(x, rk, pk, lengths, h0, c0, direction=direction, time_major=time_major,
                                          num_proj=proj, cell_clip=cell_clip, proj_clip=proj_clip)[:3]
            want = rnn_forward("lstm", x, rk, lengths, h0, c0, projection_kernel=pk if proj else None,
                               cell_clip=cell_clip, proj_clip=proj_clip, direction=direction,
                               time_major=time_major)
        else:
            rb = rng.standard_normal((dirs, _dim(rng, gates * units, p_bad))).astype(np.float32)
            got = lib.fused_gru_sequence(x, rk, rb, lengths, h0, direction=direction, time_major=time_major)[:2]
            want = rnn_forward("gru", x, rk, lengths, h0, recurrent_bias=rb, direction=direction,
                               time_major=time_major)
    except tf.errors.InvalidArgumentError:
        stats["rejected"] += 1
        return
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


def test_fuzz_keras_layers(capsys):
    rng = np.random.default_rng(int(os.environ.get("FUSED_RNN_FUZZ_SEED", "20261121")) + 1)
    stats = {"ran": 0, "rejected": 0}
    for _ in range(LAYER_CASES):
        _one_layer_case(rng, stats)
    with capsys.disabled():
        print(f"layer fuzz: {LAYER_CASES} cases, {stats['ran']} matched the reference, {stats['rejected']} rejected "
              f"({sorted(stats.get('messages', []))})")
    assert stats["ran"] > LAYER_CASES // 2 and stats["rejected"] > 0, stats
