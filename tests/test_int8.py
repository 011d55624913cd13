"""INT8 recurrent weights: the quantizer, the int8 kernels, the scheme's error, and the Keras path."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import rel_err
from numpy_reference import rnn_forward
from test_ops import check_padding_is_zero, make_inputs

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")


# ---- the quantizer against hand-computed rows ----------------------------------------------------------------
def test_quantize_rows_by_hand():
    w = np.array([
        [4.0, -2.0, 1.0, 0.0],       # scale 31.75: 127, -63.5 -> -64 (tie to even), 31.75 -> 32, 0
        [-8.0, 4.0, 2.0, 0.5],       # negative extreme: scale 15.875: -127, 63.5 -> 64, 31.75 -> 32, 7.9375 -> 8
        [0.0, 0.0, 0.0, 0.0],        # zero row: scale 0, q 0
        [127.0, 2.5, 3.5, -2.5],     # scale 1: ties to even: 2, 4, -2
    ], np.float32)
    q, scale = tf_ops.quantize_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(scale, [31.75, 15.875, 0.0, 1.0])
    np.testing.assert_array_equal(q, [[127, -64, 32, 0], [-127, 64, 32, 8], [0, 0, 0, 0], [127, 2, 4, -2]])
    np.testing.assert_array_equal(tf_ops.dequantize_rows(q, scale)[2], 0.0)


def test_quantize_rows_tiny_rows_become_zero_rows_the_kernel_accepts(rng):
    # 127 / max|row| overflows float32 below ~3.7e-37: such a row must come out as a zero row (scale 0, q 0), not
    # an infinite scale that the int8 ops refuse; a row just above the threshold keeps a finite scale.
    w = (rng.standard_normal((1, 4, 16)) * 0.3).astype(np.float32)  # an LSTM recurrent kernel [D, H, 4H], H = 4
    w[0, 1] = np.float32(1e-37) * np.sign(w[0, 1])       # normal float32 values, below the threshold
    w[0, 2] = np.float32(1e-44) * np.sign(w[0, 2])       # subnormal
    w[0, 3] = np.float32(4e-37) * np.sign(w[0, 3])       # just above: 127 / 4e-37 ~ 3.2e38 < FLT_MAX
    with np.errstate(all="raise"):
        q, scale = tf_ops.quantize_rows(w)
    np.testing.assert_array_equal(scale[0, 1:3], 0.0)
    np.testing.assert_array_equal(q[0, 1:3], 0)
    assert np.isfinite(scale).all() and scale[0, 3] > 0 and np.max(np.abs(q[0, 3].astype(int))) == 127
    x = rng.standard_normal((2, 3, 4 * 4)).astype(np.float32)
    out = tf_ops.lstm_sequence_int8(x, q, scale)[0]
    assert np.isfinite(np.asarray(out)).all()


def test_quantize_rows_stacks_and_rejects_bad_weights(rng):
    w = rng.standard_normal((2, 5, 12)).astype(np.float32)
    q, scale = tf_ops.quantize_rows(w)
    assert q.shape == (2, 5, 12) and scale.shape == (2, 5)
    np.testing.assert_array_equal(np.max(np.abs(q.astype(int)), axis=-1), 127)  # every row's extreme is +-127
    assert np.max(np.abs(tf_ops.dequantize_rows(q, scale) - w)) <= np.max(0.5 / scale) * 1.0001
    with pytest.raises(ValueError, match="NaN"):
        tf_ops.quantize_rows(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="matrix"):
        tf_ops.quantize_rows(np.ones(3))


# ---- the kernels: against float64 with the same dequantized weights (checks the kernel, not the scheme) -------
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("proj,cell_clip,proj_clip", [(0, 0.0, 0.0), (9, 0.5, 0.3)])
def test_lstm_int8_kernel_matches_float64_dequantized(rng, direction, time_major, proj, cell_clip, proj_clip):
    batch, max_time, units = int(rng.integers(1, 7)), int(rng.integers(1, 12)), int(rng.integers(1, 40))
    a = make_inputs(rng, "lstm", direction, batch, max_time, units, proj, time_major)
    rk_q, rk_s = tf_ops.quantize_rows(a["rk"])
    pk_q, pk_s = tf_ops.quantize_rows(a["pk"]) if proj else (None, None)
    out, h, c = tf_ops.lstm_sequence_int8(a["x"], rk_q, rk_s, a["lengths"], a["h0"], a["c0"], pk_q, pk_s,
                                          direction=direction, time_major=time_major, cell_clip=cell_clip,
                                          proj_clip=proj_clip, implementation="op")
    want = rnn_forward("lstm", a["x"], tf_ops.dequantize_rows(rk_q, rk_s), a["lengths"], a["h0"], a["c0"],
                       projection_kernel=tf_ops.dequantize_rows(pk_q, pk_s) if proj else None,
                       cell_clip=cell_clip, proj_clip=proj_clip, direction=direction, time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    assert rel_err(c, want[2]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
def test_gru_int8_kernel_matches_float64_dequantized(rng, direction, time_major):
    a = make_inputs(rng, "gru", direction, 5, 9, 33, time_major=time_major)
    rk_q, rk_s = tf_ops.quantize_rows(a["rk"])
    out, h = tf_ops.gru_sequence_int8(a["x"], rk_q, rk_s, a["rb"], a["lengths"], a["h0"], direction=direction,
                                      time_major=time_major, implementation="op")
    want = rnn_forward("gru", a["x"], tf_ops.dequantize_rows(rk_q, rk_s), a["lengths"], a["h0"],
                       recurrent_bias=a["rb"], direction=direction, time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


def test_large_int8_split_across_threads_matches_reference_path(rng):
    """H=300 (a step split across threads), ragged lengths: the op and the pure-TF fallback both against float64
    on the dequantized weights."""
    a = make_inputs(rng, "lstm", "forward", 3, 6, 300)
    rk_q, rk_s = tf_ops.quantize_rows(a["rk"])
    want = rnn_forward("lstm", a["x"], tf_ops.dequantize_rows(rk_q, rk_s), a["lengths"], a["h0"], a["c0"])
    for implementation in ("op", "reference"):
        got = tf_ops.lstm_sequence_int8(a["x"], rk_q, rk_s, a["lengths"], a["h0"], a["c0"],
                                        implementation=implementation)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5, implementation
        check_padding_is_zero(got[0], a["lengths"], False)


def test_int8_op_rejects_bad_inputs_by_name(rng):
    a = make_inputs(rng, "lstm", "forward", 2, 3, 4)
    rk_q, rk_s = tf_ops.quantize_rows(a["rk"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_kernel_q8 must be int8"):
        tf_ops.lstm_sequence_int8(a["x"], a["rk"], rk_s, a["lengths"], a["h0"], a["c0"], implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_scale"):
        tf_ops.lstm_sequence_int8(a["x"], rk_q, -rk_s, a["lengths"], a["h0"], a["c0"], implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_scale"):
        tf_ops.lstm_sequence_int8(a["x"], rk_q, rk_s[:, :2], a["lengths"], a["h0"], a["c0"], implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_lengths"):
        tf_ops.lstm_sequence_int8(a["x"], rk_q, rk_s, np.array([9, 1], np.int32), a["h0"], a["c0"],
                                  implementation="op")


# ---- the scheme's error against the float32 model -------------------------------------------------------------
@pytest.mark.parametrize("cell,units,num_proj", [("lstm", 256, None), ("lstm", 512, 128), ("gru", 256, None)])
def test_scheme_error_under_one_percent_over_100_steps(rng, cell, units, num_proj):
    """Relative L2 error of the outputs of an int8 layer against its float32 original, random Glorot weights."""
    layer_cls = tf_ops.FusedLSTM if cell == "lstm" else tf_ops.FusedGRU
    kwargs = dict(num_proj=num_proj) if num_proj else {}
    float_layer = layer_cls(units, return_sequences=True, recurrent_initializer="glorot_uniform", bias_initializer=
                            "glorot_uniform", **kwargs)
    x = tf.constant(rng.standard_normal((4, 100, 64)).astype(np.float32))
    float_out = float_layer(x).numpy()
    int8_layer = layer_cls(units, return_sequences=True, int8_weights=True, **kwargs)
    int8_layer.build(x.shape)
    int8_layer.set_weights(tf_ops.quantized_weights(float_layer))
    int8_out = int8_layer(x).numpy()
    err = np.linalg.norm(int8_out - float_out) / np.linalg.norm(float_out)
    print(f"{cell} H={units} P={num_proj}: relative L2 error {err:.2e}")
    assert err < 0.01


# ---- Keras: conversion, save/load, SavedModel ---------------------------------------------------------------
def _float_model(rng):
    inputs = keras.Input((None, 6))
    h = keras.layers.Masking(0.0)(inputs)
    h = tf_ops.FusedLSTM(16, num_proj=8, cell_clip=3.0, proj_clip=3.0, bidirectional=True, return_sequences=True)(h)
    h = tf_ops.FusedGRU(12)(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in model.get_weights()])
    return model


def test_quantize_model_saves_loads_and_exports_int8_weights(rng, tmp_path):
    model = _float_model(rng)
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    x[1, 5:] = 0.0  # a shorter sequence (masked)
    int8_model = tf_ops.quantize_model(model)
    fused = [layer for layer in int8_model.layers if isinstance(layer, (tf_ops.FusedLSTM, tf_ops.FusedGRU))]
    assert len(fused) == 2 and all(layer.int8_weights for layer in fused)
    int8_vars = [v for layer in fused for v in layer.weights if v.dtype == "int8"]
    assert len(int8_vars) == 2 + 2 + 1  # LSTM: recurrent + projection per direction; GRU: recurrent
    assert all(not v.trainable for v in int8_vars)
    want = int8_model(x).numpy()
    # Close to the float model (the scheme), ...
    float_out = model(x).numpy()
    assert np.linalg.norm(want - float_out) / np.linalg.norm(float_out) < 0.02
    # ... and identical, up to float32 rounding, to the float network whose recurrent and projection kernels are
    # replaced by quantize_rows -> dequantize_rows of themselves (the scheme, checked by hand above): a wrong stored
    # scale or a kernel put in the wrong place moves this far past 1e-5, where the 2% bound above lets it through.
    dequantized = keras.models.clone_model(model)
    dequantized.set_weights(model.get_weights())
    replaced = 0
    for layer in dequantized.layers:
        for names in getattr(layer, "_weight_names", []):
            for role, name in names.items():
                if role in ("recurrent_kernel", "projection_kernel"):
                    variable = getattr(layer, name)
                    variable.assign(tf_ops.dequantize_rows(*tf_ops.quantize_rows(variable.numpy())))
                    replaced += 1
    assert replaced == 5
    assert rel_err(want, dequantized(x).numpy()) < 1e-5
    path = os.path.join(tmp_path, "int8.keras")
    int8_model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded(x).numpy(), want)
    export_dir = os.path.join(tmp_path, "saved")
    int8_model.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), want, rtol=1e-6, atol=1e-6)
    saved_dtypes = {v.dtype for v in loaded.variables}
    assert tf.int8 in saved_dtypes


def test_quantize_model_rejects_keras_bidirectional_wrapper():
    inputs = keras.Input((None, 4))
    outputs = keras.layers.Bidirectional(tf_ops.FusedLSTM(5))(inputs)
    with pytest.raises(ValueError, match="bidirectional=True"):
        tf_ops.quantize_model(keras.Model(inputs, outputs))


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_quantize_model_converts_nested_models(rng, weights):
    """A fused layer inside a nested Sequential/functional model is converted like a top-level one, and its output
    equals the same layer converted alone (quantize_model once left nested layers float, silently)."""
    inner = keras.Sequential([keras.Input((None, 4)), tf_ops.FusedLSTM(5, return_sequences=True)], name="inner")
    inputs = keras.Input((None, 4))
    outputs = keras.layers.Dense(2)(tf_ops.FusedGRU(3)(inner(inputs)))
    model = keras.Model(inputs, outputs)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in model.get_weights()])
    converted = tf_ops.quantize_model(model, weights)
    fused = [layer for layer in converted._flatten_layers() if isinstance(layer, (tf_ops.FusedLSTM, tf_ops.FusedGRU))]
    assert len(fused) == 2
    assert all(layer.int8_weights if weights == "int8" else layer.recurrent_weight_dtype == weights
               for layer in fused)
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    inner_alone = tf_ops.quantize_model(keras.Sequential([keras.Input((None, 4)), model.get_layer("inner").layers[0]]),
                                        weights)
    want = inner_alone(x)
    assert np.all(np.isfinite(want))  # assert_array_equal takes NaN == NaN
    np.testing.assert_array_equal(converted.get_layer("inner")(x), want)


def test_quantize_model_refuses_fused_layers_it_cannot_reach():
    class Wrapper(keras.layers.Layer):  # a custom layer that owns a fused layer: its config rebuilds it as float
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.lstm = tf_ops.FusedLSTM(3)

        def call(self, x):
            return self.lstm(x)

    inputs = keras.Input((None, 2))
    model = keras.Model(inputs, Wrapper(name="wrapper")(inputs))
    with pytest.raises(ValueError, match="could not convert"):
        tf_ops.quantize_model(model)


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_quantize_model_refuses_fused_layers_in_a_subclassed_model(weights):
    """A subclassed model's clone is rebuilt from its config with a float fused layer: the documented error naming
    it, not set_weights' complaint about the weight count (the quantized list was once copied into the float twin)."""
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn = tf_ops.FusedLSTM(3, name="inner_rnn")

        def call(self, x):
            return self.rnn(x)

    inputs = keras.Input((None, 2))
    model = keras.Model(inputs, Sub(name="sub")(inputs))
    with pytest.raises(ValueError, match=r"could not convert the fused layers \['inner_rnn'\].*subclassed model"):
        tf_ops.quantize_model(model, weights)


def test_quantize_model_without_fused_layers_is_an_error(rng):
    """A stock model (tf_ops.fuse_model not run) has nothing to convert: an error, not a float copy passed off as
    a quantized one. Stock layers beside fused ones stay float, the fused ones are converted."""
    inputs = keras.Input((None, 4))
    stock = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LSTM(5, name="lstm")(inputs)))
    with pytest.raises(ValueError, match=r"no FusedLSTM/FusedGRU layers.*\['lstm'\].*tf_ops.fuse_model"):
        tf_ops.quantize_model(stock)
    with pytest.raises(ValueError, match="no FusedLSTM/FusedGRU layers"):
        tf_ops.quantize_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), "bfloat16")

    inputs = keras.Input((None, 4))
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm")(inputs)
    mixed = keras.Model(inputs, tf_ops.FusedGRU(6, name="gru")(h))
    mixed.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in mixed.get_weights()])
    converted = tf_ops.quantize_model(mixed)
    assert converted.get_layer("gru").int8_weights and type(converted.get_layer("lstm")) is keras.layers.LSTM
    # Independent reference: stock LSTM + stock GRU, the GRU given the dequantized int8 weights.
    kernel, bias, q, scale = converted.get_layer("gru").get_weights()
    ref_in = keras.Input((None, 4))
    ref_h = keras.layers.LSTM(5, return_sequences=True)(ref_in)
    ref = keras.Model(ref_in, keras.layers.GRU(6)(ref_h))
    ref.set_weights(mixed.get_layer("lstm").get_weights() + [kernel, tf_ops.dequantize_rows(q, scale), bias])
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    assert rel_err(converted(x), ref(x).numpy()) < 1e-5


def test_quantize_model_names_the_layer_holding_nan_weights(rng):
    inputs = keras.Input((None, 3))
    layer = tf_ops.FusedLSTM(4, num_proj=2, bidirectional=True, name="rnn")
    model = keras.Model(inputs, layer(inputs))
    values = layer.get_weights()
    names = [v.name for v in layer.weights]
    values[names.index("backward_projection_kernel")][1, 0] = np.inf
    layer.set_weights(values)
    with pytest.raises(ValueError, match="quantize_model: layer 'rnn' backward_projection_kernel .*NaN or Inf"):
        tf_ops.quantize_model(model)
    values[names.index("backward_projection_kernel")][1, 0] = 0.0
    values[names.index("forward_recurrent_kernel")][0, 1] = np.nan
    layer.set_weights(values)
    with pytest.raises(ValueError, match="quantized_weights: layer 'rnn' forward_recurrent_kernel .*NaN or Inf"):
        tf_ops.quantized_weights(layer)


def test_quantized_weights_needs_a_built_layer():
    with pytest.raises(ValueError, match="layer 'unbuilt' is not built"):
        tf_ops.quantized_weights(tf_ops.FusedLSTM(4, name="unbuilt"))


@pytest.mark.parametrize("first,second", [("int8", "bfloat16"), ("bfloat16", "int8"), ("float16", "bfloat16")])
def test_quantize_model_refuses_to_requantize_to_another_narrow_type(first, second):
    """Narrow weights are not rounded again: converting int8 to bfloat16 (say) is the clear error, not the
    constructor's TypeError with the whole layer config."""
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, tf_ops.FusedGRU(4, name="rnn")(inputs))
    narrow = tf_ops.quantize_model(model, first)
    with pytest.raises(ValueError, match=f"layer 'rnn' already holds narrow recurrent weights \\({first}\\)"):
        tf_ops.quantize_model(narrow, second)


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_quantize_model_again_to_the_same_type_keeps_the_weights(rng, weights):
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, tf_ops.FusedLSTM(4, num_proj=3, bidirectional=True)(inputs))
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    once = tf_ops.quantize_model(model, weights)
    twice = tf_ops.quantize_model(once, weights)
    for a, b in zip(once.get_weights(), twice.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    want = once(x)
    assert np.all(np.isfinite(want))  # assert_array_equal takes NaN == NaN
    np.testing.assert_array_equal(twice(x), want)


# ---- the scheme on the real ELMo fixtures (../shared) ----------------------------------------------------------
@pytest.mark.parametrize("fixture,sentences_file", [("model-a-bilm-tf", "lm_embeddings_sentences.json"),
                                                    ("model-b-allennlp", "sentences.json")])
def test_scheme_error_on_elmo_fixtures(fixture, sentences_file):
    """Both upstream ELMo fixtures with int8 recurrent and projection weights (load_elmo(implementation=
    "fused_int8")): every biLM layer within 1e-5 of the float32 model run on the dequantized weights (the int8
    kernels on real weights), and within 1% (relative L2) of the float32 model (the scheme)."""
    import json

    from conftest import SHARED
    from models import elmo

    folder = os.path.join(SHARED, "data", "elmo", fixture)
    if not os.path.isdir(folder):
        pytest.skip("../shared/data/elmo is not here")
    with open(os.path.join(folder, sentences_file)) as f:
        sentences = [s.split() if isinstance(s, str) else s for s in json.load(f)]
    model = elmo.load_elmo(os.path.join(folder, "options.json"), os.path.join(folder, "lm_weights.hdf5"))
    ids = elmo.batch_to_ids(sentences)
    want = model(ids)
    lstms = [layer for layer in model._flatten_layers() if isinstance(layer, tf_ops.FusedLSTM)]
    assert len(lstms) == 2
    for layer in lstms:
        for names in layer._weight_names:
            for role, name in names.items():
                if role in ("recurrent_kernel", "projection_kernel"):
                    variable = getattr(layer, name)
                    variable.assign(tf_ops.dequantize_rows(*tf_ops.quantize_rows(variable.numpy())))
    dequantized = model(ids)
    int8_model = elmo.load_elmo(os.path.join(folder, "options.json"), os.path.join(folder, "lm_weights.hdf5"),
                                implementation="fused_int8")
    assert all(layer.int8_weights for layer in int8_model._flatten_layers() if isinstance(layer, tf_ops.FusedLSTM))
    got = int8_model(ids)
    for key in ("layer_1", "layer_2"):
        deq, out = np.asarray(dequantized[key]), np.asarray(got[key])
        kernel_err = float(np.max(np.abs(out - deq)) / np.max(np.abs(deq)))
        assert kernel_err < 1e-5, f"{key}: int8 model vs float model on dequantized weights: {kernel_err:.2e}"
        err = np.linalg.norm(out - np.asarray(want[key])) / np.linalg.norm(np.asarray(want[key]))
        print(f"{fixture} {key}: int8 relative L2 error {err:.2e} (kernel {kernel_err:.1e})")
        assert 0 < err < 0.01
