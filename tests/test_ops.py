"""The fused ops against the float64 NumPy reference, every cell, direction, layout and clip; bad inputs."""
import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import rel_err
from numpy_reference import rnn_forward

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

IMPLEMENTATIONS = ["op", "reference"]


def make_inputs(rng, cell, direction, batch, max_time, units, proj=0, time_major=False, full=False):
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if cell == "lstm" else 3
    width = proj or units
    shape = (max_time, batch, dirs * gates * units) if time_major else (batch, max_time, dirs * gates * units)
    lengths = np.full(batch, max_time) if full else rng.integers(0, max_time + 1, batch)
    if batch and not full:
        lengths[rng.integers(batch)] = max_time
    return dict(
        x=rng.standard_normal(shape).astype(np.float32),
        rk=(rng.standard_normal((dirs, width, gates * units)) / np.sqrt(width)).astype(np.float32),
        pk=(rng.standard_normal((dirs, units, proj)) / np.sqrt(units)).astype(np.float32) if proj else None,
        rb=(0.5 * rng.standard_normal((dirs, gates * units))).astype(np.float32),
        lengths=lengths.astype(np.int32),
        h0=(0.5 * rng.standard_normal((dirs, batch, width))).astype(np.float32),
        c0=(0.5 * rng.standard_normal((dirs, batch, units))).astype(np.float32),
    )


def check_padding_is_zero(out, lengths, time_major):
    out = np.asarray(out)
    if time_major:
        out = out.transpose(1, 0, 2)
    for b, n in enumerate(lengths):
        assert np.all(out[b, n:] == 0.0), f"row {b}: outputs past length {n} must be exactly zero"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("proj,cell_clip,proj_clip", [(0, 0.0, 0.0), (0, 0.4, 0.0), (9, 0.0, 0.0), (9, 0.5, 0.3)])
def test_lstm_matches_float64(rng, implementation, direction, time_major, proj, cell_clip, proj_clip):
    batch, max_time, units = int(rng.integers(1, 7)), int(rng.integers(1, 12)), int(rng.integers(1, 40))
    a = make_inputs(rng, "lstm", direction, batch, max_time, units, proj, time_major)
    out, h, c = tf_ops.lstm_sequence(a["x"], a["rk"], a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                                     direction=direction, time_major=time_major, cell_clip=cell_clip,
                                     proj_clip=proj_clip, implementation=implementation)
    want = rnn_forward("lstm", a["x"], a["rk"], a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                       cell_clip=cell_clip, proj_clip=proj_clip, direction=direction, time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    assert rel_err(c, want[2]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
def test_gru_matches_float64(rng, implementation, direction, time_major):
    batch, max_time, units = int(rng.integers(1, 7)), int(rng.integers(1, 12)), int(rng.integers(1, 40))
    a = make_inputs(rng, "gru", direction, batch, max_time, units, 0, time_major)
    out, h = tf_ops.gru_sequence(a["x"], a["rk"], a["rb"], a["lengths"], a["h0"], direction=direction,
                                 time_major=time_major, implementation=implementation)
    want = rnn_forward("gru", a["x"], a["rk"], a["lengths"], a["h0"], recurrent_bias=a["rb"], direction=direction,
                       time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


@pytest.mark.parametrize("cell,units,proj,batch", [("lstm", 300, 0, 3), ("lstm", 520, 0, 1), ("lstm", 200, 72, 5),
                                                   ("gru", 260, 0, 6)])
def test_large_sizes_split_across_threads(rng, cell, units, proj, batch):
    """Sizes large enough that one step is split across the intra-op threads."""
    a = make_inputs(rng, cell, "bidirectional", batch, 6, units, proj)
    if cell == "lstm":
        got = tf_ops.lstm_sequence(a["x"], a["rk"], a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                                   direction="bidirectional", implementation="op")
        want = rnn_forward("lstm", a["x"], a["rk"], a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                           direction="bidirectional")
    else:
        got = tf_ops.gru_sequence(a["x"], a["rk"], a["rb"], a["lengths"], a["h0"], direction="bidirectional",
                                  implementation="op")
        want = rnn_forward("gru", a["x"], a["rk"], a["lengths"], a["h0"], recurrent_bias=a["rb"],
                           direction="bidirectional")
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_outputs_are_bitwise_deterministic(rng):
    a = make_inputs(rng, "lstm", "bidirectional", 4, 20, 520)
    run = lambda: tf_ops.lstm_sequence(a["x"], a["rk"], a["lengths"], a["h0"], a["c0"],  # noqa: E731
                                       direction="bidirectional", implementation="op")[0].numpy()
    first = run()
    for _ in range(3):
        np.testing.assert_array_equal(run(), first)


def test_defaults_full_length_zero_state(rng):
    a = make_inputs(rng, "lstm", "forward", 3, 5, 8, full=True)
    out, h, c = tf_ops.lstm_sequence(a["x"], a["rk"])
    zeros_h = np.zeros_like(a["h0"])
    want = rnn_forward("lstm", a["x"], a["rk"], a["lengths"], zeros_h, np.zeros_like(a["c0"]))
    assert rel_err(out, want[0]) < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch,max_time", [(0, 5), (3, 0), (0, 0)])
def test_empty_batch_and_zero_timesteps(rng, cell, batch, max_time):
    a = make_inputs(rng, cell, "bidirectional", batch, max_time, 6, full=True)
    if cell == "lstm":
        out, h, c = tf_ops.lstm_sequence(a["x"], a["rk"], a["lengths"], a["h0"], a["c0"], direction="bidirectional",
                                         implementation="op")
        np.testing.assert_array_equal(c, a["c0"])
    else:
        out, h = tf_ops.gru_sequence(a["x"], a["rk"], a["rb"], a["lengths"], a["h0"], direction="bidirectional",
                                     implementation="op")
    assert out.shape == (batch, max_time, 12)
    np.testing.assert_array_equal(h, a["h0"])


def test_all_zero_lengths_return_initial_state(rng):
    a = make_inputs(rng, "lstm", "bidirectional", 4, 7, 5)
    lengths = np.zeros(4, np.int32)
    out, h, c = tf_ops.lstm_sequence(a["x"], a["rk"], lengths, a["h0"], a["c0"], direction="bidirectional",
                                     implementation="op")
    assert np.all(out.numpy() == 0)
    np.testing.assert_array_equal(h, a["h0"])
    np.testing.assert_array_equal(c, a["c0"])


def test_inside_tf_function_with_unknown_shapes(rng):
    a = make_inputs(rng, "gru", "forward", 3, 6, 10)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 30]), tf.TensorSpec([None], tf.int32)])
    def run(x, lengths):
        return tf_ops.gru_sequence(x, a["rk"], a["rb"], lengths, tf.zeros([1, tf.shape(x)[0], 10]))[0]

    got = run(a["x"], a["lengths"])
    want = rnn_forward("gru", a["x"], a["rk"], a["lengths"], np.zeros((1, 3, 10)), recurrent_bias=a["rb"])[0]
    assert rel_err(got, want) < 1e-5


# ---- bad input: an InvalidArgumentError that names the argument, never a crash ---------------------------------
def _lstm_args(rng):
    a = make_inputs(rng, "lstm", "forward", 3, 4, 5)
    return dict(x_proj=a["x"], recurrent_kernel=a["rk"], sequence_lengths=a["lengths"], initial_h=a["h0"],
                initial_c=a["c0"])


BAD_LSTM = {
    "x_proj": ("x_proj", lambda a: a["x_proj"][..., :-1]),
    "x_proj_rank": ("x_proj", lambda a: a["x_proj"][0]),
    "x_proj_dtype": ("x_proj", lambda a: a["x_proj"].astype(np.float64)),
    "recurrent_kernel": ("recurrent_kernel", lambda a: a["recurrent_kernel"][:, :-1]),
    "recurrent_kernel_gates": ("recurrent_kernel", lambda a: a["recurrent_kernel"][..., :-1]),
    "lengths_negative": ("sequence_lengths", lambda a: np.array([1, -1, 2], np.int32)),
    "lengths_too_long": ("sequence_lengths", lambda a: np.array([1, 5, 2], np.int32)),
    "lengths_shape": ("sequence_lengths", lambda a: np.array([1, 2], np.int32)),
    "lengths_dtype": ("sequence_lengths", lambda a: np.array([1.0, 2.0, 3.0], np.float32)),
    "initial_h": ("initial_h", lambda a: a["initial_h"][:, :2]),
    "initial_c": ("initial_c", lambda a: a["initial_c"][..., :3]),
}


@pytest.mark.parametrize("case", sorted(BAD_LSTM))
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_bad_lstm_input_names_the_argument(rng, case, mode):
    name, corrupt = BAD_LSTM[case]
    args = _lstm_args(rng)
    key = {"x_proj_rank": "x_proj", "x_proj_dtype": "x_proj", "recurrent_kernel_gates": "recurrent_kernel"}.get(
        case, case if case in args else "sequence_lengths")
    args[key] = corrupt(args)
    if mode == "eager":
        call = lambda: tf_ops.lstm_sequence(implementation="op", **args)  # noqa: E731
    else:
        call = tf.function(lambda: tf_ops.lstm_sequence(implementation="op", **args))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as info:
        call()
    assert name in str(info.value), str(info.value)


def test_bad_projection_and_gru_bias(rng):
    a = make_inputs(rng, "lstm", "forward", 2, 3, 4, proj=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="projection_kernel"):
        tf_ops.lstm_sequence(a["x"], a["rk"], a["lengths"], projection_kernel=a["pk"][:, :2], implementation="op")
    g = make_inputs(rng, "gru", "forward", 2, 3, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_bias"):
        tf_ops.gru_sequence(g["x"], g["rk"], g["rb"][:, :5], g["lengths"], implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="proj_clip"):
        tf_ops.lstm_sequence(g["x"][..., :8], a["rk"][:, :, :16][:, :3].repeat(2, 1)[:, :4], proj_clip=1.0,
                             implementation="op")


def test_raw_op_rejects_bad_attrs_and_negative_clip(rng):
    lib = tf.load_op_library(tf_ops.op_library_path())
    a = make_inputs(rng, "lstm", "forward", 2, 3, 4)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)):
        lib.fused_lstm_sequence(a["x"], a["rk"], np.zeros((1, 4, 0), np.float32), a["lengths"], a["h0"], a["c0"],
                                direction="sideways")
    with pytest.raises(tf.errors.InvalidArgumentError, match="cell_clip"):
        lib.fused_lstm_sequence(a["x"], a["rk"], np.zeros((1, 4, 0), np.float32), a["lengths"], a["h0"], a["c0"],
                                cell_clip=-1.0)
