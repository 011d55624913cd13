"""The fused ops against the float64 NumPy reference, every cell, direction, layout and clip; bad inputs."""
import os

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
    assert np.all(np.isfinite(first))  # assert_array_equal takes NaN == NaN
    for _ in range(3):
        np.testing.assert_array_equal(run(), first)


def test_defaults_full_length_zero_state(rng):
    a = make_inputs(rng, "lstm", "forward", 3, 5, 8, full=True)
    out, h, c = tf_ops.lstm_sequence(a["x"], a["rk"])
    zeros_h = np.zeros_like(a["h0"])
    want = rnn_forward("lstm", a["x"], a["rk"], a["lengths"], zeros_h, np.zeros_like(a["c0"]))
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    assert rel_err(c, want[2]) < 1e-5


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
        # The promise: InvalidArgumentError naming the argument (a ValueError here would be another contract).
        expected = tf.errors.InvalidArgumentError
    else:
        call = tf.function(lambda: tf_ops.lstm_sequence(implementation="op", **args))
        # When the graph is built, TensorFlow raises a shape function's error as a ValueError.
        expected = (tf.errors.InvalidArgumentError, ValueError)
    with pytest.raises(expected) as info:
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
    with pytest.raises(tf.errors.InvalidArgumentError, match="attr 'direction'"):
        lib.fused_lstm_sequence(a["x"], a["rk"], np.zeros((1, 4, 0), np.float32), a["lengths"], a["h0"], a["c0"],
                                direction="sideways")
    with pytest.raises(tf.errors.InvalidArgumentError, match="cell_clip"):
        lib.fused_lstm_sequence(a["x"], a["rk"], np.zeros((1, 4, 0), np.float32), a["lengths"], a["h0"], a["c0"],
                                cell_clip=-1.0)


# ---- found by fuzzing the raw ops (session 21) --------------------------------------------------------------------
_OVERFLOW_CALLS = {
    # Zero-element inputs may carry any dims; the expected shapes built from them overflow int64. TensorShape's
    # constructor aborts the process on that, so the kernels compare dims instead.
    "lstm_recurrent_kernel": "lib.fused_lstm_sequence(z(1, 1, 4), z(1, 0, 2**33), z(1, 0, 0), L, z(1, 1, 1), "
                             "z(1, 1, 1))",
    "gru_recurrent_kernel": "lib.fused_gru_sequence(z(1, 1, 3), z(1, 0, 3 * 2**31), z(1, 3), L, z(1, 1, 1))",
    "lstm_initial_c": "lib.fused_lstm_sequence(z(2**62, 0, 8), z(1, 2, 8), z(1, 2, 0), z(0, dt=tf.int32), "
                      "z(1, 0, 2), z(1, 0, 2))",
    "num_proj": "lib.fused_lstm_sequence(z(1, 1, 4), z(1, 0, 2**35), z(1, 0, 0), L, z(1, 1, 1), z(1, 1, 1), "
                "num_proj=2**31 - 1)",
    "gru16": "lib.fused_gru_sequence16(z(1, 1, 3), z(1, 0, 3 * 2**31, dt=tf.half), z(1, 3), L, z(1, 1, 1))",
}


@pytest.mark.parametrize("case", sorted(_OVERFLOW_CALLS))
def test_overflowing_dims_of_empty_inputs_are_an_error_not_an_abort(case):
    import subprocess
    import sys

    from conftest import ROOT
    script = ("import os, sys; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'; sys.path.insert(0, %r)\n"
              "import tensorflow as tf, tf_ops\n"
              "lib = tf_ops._loader.load(); L = tf.constant([1], tf.int32)\n"
              "z = lambda *s, dt=tf.float32: tf.zeros(s, dt)\n"
              "try:\n    %s\nexcept tf.errors.InvalidArgumentError as e:\n    print('INVALID:', e.message)\n"
              % (ROOT, _OVERFLOW_CALLS[case]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "INVALID:" in run.stdout and "must have shape" in run.stdout


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_reserve_is_zero_past_each_length(rng, cell):
    """The core writes the reserve only at valid steps; the op's output must not carry the allocator's old bytes
    there (they were a previous tensor's values, and a gradient run with other lengths read them)."""
    lib = tf_ops._loader.load()
    dirs, batch, steps, units = 2, 3, 5, 4
    gates = 4 if cell == "lstm" else 3
    lengths = tf.constant([5, 0, 2], tf.int32)
    x = tf.constant(rng.standard_normal((batch, steps, dirs * gates * units)).astype(np.float32))
    kernel = tf.constant(rng.standard_normal((dirs, units, gates * units)).astype(np.float32) * 0.3)
    h0 = tf.constant(rng.standard_normal((dirs, batch, units)).astype(np.float32))  # valid entries nonzero
    for _ in range(3):
        junk = tf.fill([dirs * batch * steps * 6 * units], 12345.0)  # freed just before the op allocates
        del junk
        if cell == "lstm":
            reserve = lib.fused_lstm_sequence(x, kernel, tf.zeros([dirs, units, 0]), lengths, h0, h0,
                                              direction="bidirectional", is_training=True)[3]
        else:
            reserve = lib.fused_gru_sequence(x, kernel, tf.zeros([dirs, gates * units]), lengths, h0,
                                             direction="bidirectional", is_training=True)[2]
        r = reserve.numpy().reshape(dirs, batch, steps, -1)
        for b, length in enumerate(lengths.numpy()):
            np.testing.assert_array_equal(r[:, b, length:], 0.0)
            assert np.all(r[:, b, :length] != 0.0)


# Every output buffer TensorFlow hands the kernels comes from malloc; with MALLOC_PERTURB_ set, glibc fills each one
# with junk (0x5A bytes, 1.5e16 as float32) instead of whatever the allocator had, often zeros. A kernel that skipped
# the positions past a sequence's end (the reserve once did) then shows the junk there, every time.
_POISONED_SCRIPT = r"""
import sys
sys.path[:0] = [%(root)r, %(tests)r]
import numpy as np, tensorflow as tf, tf_ops
from conftest import rel_err
from numpy_reference import rnn_forward
from test_ops import make_inputs
probe = tf.raw_ops.Empty(shape=[7, 64], dtype=tf.float32, init=False).numpy()
assert np.all(probe != 0), "MALLOC_PERTURB_ does not reach TensorFlow's buffers: this test would check nothing"
rng = np.random.default_rng(%(seed)d)
checked = 0
def padding_zero(out, lengths, time_major, what):
    out = np.asarray(out)
    out = out.transpose(1, 0, 2) if time_major else out
    for b, n in enumerate(lengths):
        assert np.all(out[b, n:] == 0.0), "%%s: row %%d: junk past length %%d: %%r" %% (what, b, n, out[b, n:].max())
for cell, direction, time_major, proj, weights in [
        ("lstm", "bidirectional", False, 0, "float32"), ("lstm", "reverse", True, 5, "float32"),
        ("gru", "bidirectional", True, 0, "float32"), ("gru", "forward", False, 0, "float32"),
        ("lstm", "bidirectional", False, 5, "int8"), ("gru", "reverse", False, 0, "int8"),
        ("lstm", "bidirectional", True, 0, "bfloat16"), ("gru", "bidirectional", False, 0, "float16")]:
    a = make_inputs(rng, cell, direction, 6, 9, 24, proj, time_major)
    a["lengths"][1] = 0
    a["lengths"][2] = min(a["lengths"][2], 4)
    kw = dict(direction=direction, time_major=time_major)
    x = tf.constant(a["x"])
    rk = a["rk"]
    with tf.GradientTape() as tape:
        tape.watch(x)
        if weights == "int8":
            q, s = tf_ops.quantize_rows(a["rk"])
            rk = tf_ops.dequantize_rows(q, s)
            if cell == "lstm":
                pq, ps = tf_ops.quantize_rows(a["pk"]) if proj else (None, None)
                a["pk"] = tf_ops.dequantize_rows(pq, ps) if proj else None
                got = tf_ops.lstm_sequence_int8(x, q, s, a["lengths"], a["h0"], a["c0"], pq, ps, cell_clip=0.5,
                                                proj_clip=0.3 if proj else 0.0, implementation="op", **kw)
            else:
                got = tf_ops.gru_sequence_int8(x, q, s, a["rb"], a["lengths"], a["h0"], implementation="op", **kw)
        else:
            if weights != "float32":
                rk = tf.cast(tf.cast(a["rk"], weights), tf.float64).numpy()
            w = tf.cast(a["rk"], weights)
            if cell == "lstm":
                pk = None if not proj else tf.cast(a["pk"], weights)
                got = tf_ops.lstm_sequence(x, w, a["lengths"], a["h0"], a["c0"], projection_kernel=pk, cell_clip=0.5,
                                           proj_clip=0.3 if proj else 0.0, implementation="op",
                                           training=weights == "float32", **kw)
            else:
                got = tf_ops.gru_sequence(x, w, a["rb"], a["lengths"], a["h0"], implementation="op",
                                          training=weights == "float32", **kw)
        loss = tf.add_n([tf.reduce_sum(g * g) for g in got])
    d_x = tape.gradient(loss, x)
    if cell == "lstm":
        want = rnn_forward("lstm", a["x"], rk, a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                           cell_clip=0.5, proj_clip=0.3 if proj else 0.0, **kw)
    else:
        want = rnn_forward("gru", a["x"], rk, a["lengths"], a["h0"], recurrent_bias=a["rb"], **kw)
    what = "%%s %%s %%s" %% (weights, cell, direction)
    padding_zero(got[0], a["lengths"], time_major, what + " output")
    padding_zero(d_x, a["lengths"], time_major, what + " d_x_proj")
    for g, w_ in zip(got, want):
        assert rel_err(g, w_) < 1e-5, what
    checked += 1
# The training forward's reserve (what the backward reads): zero past each length, written where valid.
lib = tf_ops._loader.load()
for cell, gates in (("lstm", 4), ("gru", 3)):
    dirs, batch, steps, units = 2, 4, 6, 16
    lengths = np.array([6, 0, 2, 5], np.int32)
    x = rng.standard_normal((batch, steps, dirs * gates * units)).astype(np.float32)
    kernel = (rng.standard_normal((dirs, units, gates * units)) * 0.3).astype(np.float32)
    h0 = rng.standard_normal((dirs, batch, units)).astype(np.float32)
    if cell == "lstm":
        reserve = lib.fused_lstm_sequence(x, kernel, np.zeros((dirs, units, 0), np.float32), lengths, h0, h0,
                                          direction="bidirectional", is_training=True)[3]
    else:
        reserve = lib.fused_gru_sequence(x, kernel, np.zeros((dirs, gates * units), np.float32), lengths, h0,
                                         direction="bidirectional", is_training=True)[2]
    r = np.asarray(reserve).reshape(dirs, batch, steps, -1)
    for b, n in enumerate(lengths):
        assert np.all(r[:, b, n:] == 0.0), "%%s reserve: row %%d: junk past length %%d" %% (cell, b, n)
        assert np.all(np.abs(r[:, b, :n]) < 1e3), "%%s reserve: row %%d: junk within length %%d" %% (cell, b, n)
    checked += 1
print("POISONED-OK", checked)
"""


def test_outputs_past_each_length_are_written_on_poisoned_memory(rng):
    """Outputs, the gradient for x_proj and the training reserve are exactly zero past each length even when every
    fresh buffer holds junk: float32, int8 and 16-bit ops, both cells, the training forward and the fused backward.
    In a child process with glibc's MALLOC_PERTURB_ (the allocator's leftovers are otherwise often zeros, and then
    this would check nothing; the child checks the junk is there before it starts)."""
    import subprocess
    import sys

    from conftest import ROOT
    script = _POISONED_SCRIPT % dict(root=ROOT, tests=os.path.join(ROOT, "tests"), seed=int(rng.integers(2**31)))
    env = dict(os.environ, MALLOC_PERTURB_="165", TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "POISONED-OK 10" in run.stdout, run.stdout[-2000:]


def test_int64_lengths_beyond_int32_are_rejected_not_wrapped(rng):
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    kernel = rng.standard_normal((1, 2, 8)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_lengths"):
        tf_ops.lstm_sequence(x, kernel, tf.constant([2**32 + 2], tf.int64))


def test_subnormal_clips_and_scales_are_rejected():
    lib = tf_ops._loader.load()
    x, kernel, lengths = tf.zeros([1, 2, 8]), tf.zeros([1, 2, 8]), tf.constant([2])
    h0 = tf.zeros([1, 1, 2])
    # The messages give the subnormal's value (printed as a float on TF's threads it read "0", contradicting itself).
    for clip, shown in ((1e-45, r"got 1\.4013e-45 \(subnormal\)"), (-1e-45, r"got -1\.4013e-45 \(subnormal\)")):
        # flushed to zero by TF's threads: "no clip" or past the >= 0 check
        with pytest.raises(tf.errors.InvalidArgumentError, match="cell_clip.*" + shown):
            lib.fused_lstm_sequence(x, kernel, tf.zeros([1, 2, 0]), lengths, h0, h0, cell_clip=clip)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"recurrent_scale\[1\] = 1e-39 \(subnormal\)"):
        tf_ops.lstm_sequence_int8(x, tf.zeros([1, 2, 8], tf.int8), tf.constant([[1.0, 1e-39]]), lengths)


@pytest.mark.parametrize("big", [1e2, 1e6, 1e20])
def test_int8_lstm_with_a_large_initial_state_stays_at_float32_error(rng, big):
    """The VNNI fixed point shares one exponent per step: one large initial_h entry used to cost every other
    element its precision at step 0 (|h0| = 1e6: 2.5e-4 relative). Such states now take the float path."""
    units, batch, steps = 16, 3, 6
    w = (rng.standard_normal((1, units, 4 * units)) * 0.3).astype(np.float32)
    q, scale = tf_ops.quantize_rows(w)
    deq = tf_ops.dequantize_rows(q, scale)
    x = rng.standard_normal((batch, steps, 4 * units)).astype(np.float32)
    h0 = (rng.standard_normal((1, batch, units)) * 0.5).astype(np.float32)
    h0[0, 1, 2] = big
    c0 = (rng.standard_normal((1, batch, units)) * 0.5).astype(np.float32)
    got = tf_ops.lstm_sequence_int8(x, q, scale, None, h0, c0)
    want = rnn_forward("lstm", x, deq, np.full(batch, steps), h0, c0)
    assert rel_err(got[0].numpy(), want[0]) < 1e-5


# ---- the reference path (implementation="reference", the portable fallback) has the op's semantics ----------------
@pytest.mark.parametrize("cell,direction", [("lstm", "bidirectional"), ("lstm_proj", "reverse"),
                                            ("gru", "bidirectional"), ("lstm_int8", "forward"),
                                            ("gru_int8", "reverse")])
def test_reference_zero_timesteps_with_unknown_batch(rng, cell, direction):
    """T = 0 in a tf.function whose batch size is unknown (a SavedModel signature): the reference used to fail
    stacking an empty TensorArray; it must give [B, 0, D*R] and the initial states, as the op."""
    gates = 3 if cell.startswith("gru") else 4
    a = make_inputs(rng, cell[:4].rstrip("_"), direction, 2, 0, 4, proj=3 if cell == "lstm_proj" else 0)
    dirs = 2 if direction == "bidirectional" else 1

    def call(x, h0, c0, implementation):
        kw = dict(direction=direction, implementation=implementation)
        if cell == "lstm_int8":
            q, s = tf_ops.quantize_rows(a["rk"])
            return tf_ops.lstm_sequence_int8(x, q, s, None, h0, c0, **kw)
        if cell == "gru_int8":
            q, s = tf_ops.quantize_rows(a["rk"])
            return tf_ops.gru_sequence_int8(x, q, s, a["rb"], None, h0, **kw)
        if gates == 3:
            return tf_ops.gru_sequence(x, a["rk"], a["rb"], None, h0, **kw)
        return tf_ops.lstm_sequence(x, a["rk"], None, h0, c0, projection_kernel=a["pk"], **kw)

    width = a["h0"].shape[-1]
    spec = [tf.TensorSpec([None, None, dirs * gates * 4]), tf.TensorSpec([dirs, None, width]),
            tf.TensorSpec([dirs, None, 4])]
    for implementation in IMPLEMENTATIONS:
        got = tf.function(lambda x, h0, c0: call(x, h0, c0, implementation), input_signature=spec)(
            a["x"], a["h0"], a["c0"])
        assert got[0].shape == (2, 0, dirs * width), implementation
        np.testing.assert_array_equal(got[1], a["h0"])
        if len(got) == 3:
            np.testing.assert_array_equal(got[2], a["c0"])


def _bad_calls(rng, IMPL="reference"):
    lstm = make_inputs(rng, "lstm", "forward", 2, 3, 4)
    gru = make_inputs(rng, "gru", "forward", 2, 3, 4)
    q, s = tf_ops.quantize_rows(lstm["rk"])
    lstm_call = lambda **kw: tf_ops.lstm_sequence(lstm["x"], lstm["rk"], **kw)  # noqa: E731
    int8_call = lambda q8=q, scale=s: tf_ops.lstm_sequence_int8(  # noqa: E731
        lstm["x"], q8, scale, implementation=IMPL)
    return {
        "gru_bias_1d": ("recurrent_bias",
                        lambda: tf_ops.gru_sequence(gru["x"], gru["rk"], gru["rb"][0], implementation=IMPL)),
        "gru_bias_width": ("recurrent_bias",
                           lambda: tf_ops.gru_sequence(gru["x"], gru["rk"], gru["rb"][:, :6], implementation=IMPL)),
        "lengths_negative": ("sequence_lengths",
                             lambda: lstm_call(sequence_lengths=[-1, 3], implementation=IMPL)),
        "lengths_too_long": ("sequence_lengths", lambda: lstm_call(sequence_lengths=[1, 5], implementation=IMPL)),
        "cell_clip_negative": ("cell_clip", lambda: lstm_call(cell_clip=-1.0, implementation=IMPL)),
        "cell_clip_subnormal": ("cell_clip", lambda: lstm_call(cell_clip=1e-45, implementation=IMPL)),
        "proj_clip_without_projection": ("proj_clip", lambda: lstm_call(proj_clip=0.5, implementation=IMPL)),
        "x_proj_width": ("x_proj", lambda: tf_ops.lstm_sequence(lstm["x"][..., :12], lstm["rk"],
                                                                implementation=IMPL)),
        "recurrent_kernel_rows": ("recurrent_kernel", lambda: tf_ops.lstm_sequence(lstm["x"], lstm["rk"][:, :3],
                                                                                   implementation=IMPL)),
        "initial_h": ("initial_h", lambda: lstm_call(initial_h=lstm["h0"][:, :1], implementation=IMPL)),
        "initial_c": ("initial_c", lambda: lstm_call(initial_c=lstm["c0"][..., :3], implementation=IMPL)),
        "int8_scale_negative": ("recurrent_scale", lambda: int8_call(scale=-s)),
        "int8_scale_nan": ("recurrent_scale", lambda: int8_call(scale=s * np.nan)),
        "int8_scale_inf": ("recurrent_scale", lambda: int8_call(scale=np.full_like(s, np.inf))),
        "int8_scale_subnormal": ("recurrent_scale", lambda: int8_call(scale=np.full_like(s, 1e-39))),
        "int8_scale_shape_d": ("recurrent_scale", lambda: int8_call(scale=s[:, 0])),
        "int8_scale_shape_r": ("recurrent_scale", lambda: int8_call(scale=s[0])),
        "int8_q8_rank2": ("recurrent_kernel_q8", lambda: int8_call(q8=q[0], scale=s)),
    }



@pytest.mark.parametrize("case", sorted(_bad_calls(np.random.default_rng(0))))
def test_reference_rejects_what_the_op_rejects(rng, case):
    """implementation="reference" used to run these silently (some with wrong numbers: a [3H] GRU bias broadcast);
    it must raise the op's InvalidArgumentError naming the argument. The op rejects each too."""
    seed = int(rng.integers(2**31))
    for implementation in IMPLEMENTATIONS:
        name, call = _bad_calls(np.random.default_rng(seed), implementation)[case]
        with pytest.raises(tf.errors.InvalidArgumentError) as info:  # eager: the promised error, on both paths
            call()
        assert name in str(info.value), (implementation, str(info.value))

def test_reference_checks_run_time_values_in_a_tf_function(rng):
    """Lengths and int8 scales known only at run time: tf.debugging assertions the reference computation waits on."""
    a = make_inputs(rng, "lstm", "forward", 2, 3, 4)
    q, s = tf_ops.quantize_rows(a["rk"])

    @tf.function(input_signature=[tf.TensorSpec([None, None, 16]), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([1, None])])
    def run(x, lengths, scale):
        return tf_ops.lstm_sequence_int8(x, q, scale, lengths, implementation="reference")[0]

    ok = run(a["x"], a["lengths"], s)
    want = tf_ops.lstm_sequence_int8(a["x"], q, s, a["lengths"], implementation="op")[0]
    assert rel_err(ok, want) < 1e-5
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_lengths"):
        run(a["x"], np.array([0, 4], np.int32), s)
    for bad in (-s, np.full_like(s, 1e-39), np.full_like(s, np.nan)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_scale"):
            run(a["x"], a["lengths"], bad)
    zero_rows = run(a["x"], a["lengths"], np.zeros_like(s))  # 0 and -0: zero rows (recurrent kernel 0), accepted
    want = rnn_forward("lstm", a["x"], np.zeros(q.shape), a["lengths"], np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))[0]
    assert rel_err(zero_rows, want) < 1e-5
    np.testing.assert_array_equal(run(a["x"], a["lengths"], -np.zeros_like(s)), zero_rows)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_lengths"):
        run(a["x"], np.array([1, 2, 3], np.int32), s)
