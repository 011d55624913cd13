"""16-bit (float16 / bfloat16) recurrent weights: the ops against float64 on the same 16-bit values, the pure-TF
fallback, the Keras conversion against the stock Keras layers, save/load/export, and the errors."""
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

DTYPES = [tf.float16, tf.bfloat16]


def _exact(w16):
    """The float64 values a 16-bit tensor holds (TF's own conversion, independent of the kernels' loaders)."""
    return tf.cast(w16, tf.float64).numpy()


def _round16(w, dtype):
    return tf.cast(tf.constant(w, tf.float32), dtype)


# ---- the ops: against float64 with the same 16-bit values (checks the kernel, not the rounding) ----------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("proj,cell_clip,proj_clip", [(0, 0.0, 0.0), (9, 0.5, 0.3)])
def test_lstm16_matches_float64_on_the_16bit_values(rng, dtype, direction, time_major, proj, cell_clip, proj_clip):
    batch, max_time, units = int(rng.integers(1, 7)), int(rng.integers(1, 12)), int(rng.integers(1, 40))
    a = make_inputs(rng, "lstm", direction, batch, max_time, units, proj, time_major)
    rk16 = _round16(a["rk"], dtype)
    pk16 = _round16(a["pk"], dtype) if proj else None
    out, h, c = tf_ops.lstm_sequence(a["x"], rk16, a["lengths"], a["h0"], a["c0"], projection_kernel=pk16,
                                     direction=direction, time_major=time_major, cell_clip=cell_clip,
                                     proj_clip=proj_clip, implementation="op")
    assert out.dtype == tf.float32
    want = rnn_forward("lstm", a["x"], _exact(rk16), a["lengths"], a["h0"], a["c0"],
                       projection_kernel=_exact(pk16) if proj else None, cell_clip=cell_clip, proj_clip=proj_clip,
                       direction=direction, time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    assert rel_err(c, want[2]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("time_major", [False, True])
def test_gru16_matches_float64_on_the_16bit_values(rng, dtype, direction, time_major):
    a = make_inputs(rng, "gru", direction, 5, 9, 33, time_major=time_major)
    rk16 = _round16(a["rk"], dtype)
    out, h = tf_ops.gru_sequence(a["x"], rk16, a["rb"], a["lengths"], a["h0"], direction=direction,
                                 time_major=time_major, implementation="op")
    want = rnn_forward("gru", a["x"], _exact(rk16), a["lengths"], a["h0"], recurrent_bias=a["rb"],
                       direction=direction, time_major=time_major)
    assert rel_err(out, want[0]) < 1e-5
    assert rel_err(h, want[1]) < 1e-5
    check_padding_is_zero(out, a["lengths"], time_major)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_large_16bit_split_across_threads_matches_reference_path(rng, dtype):
    """H=300: a step is split across threads; ragged lengths. The op and the pure-TF fallback (the portable path)
    both against float64 on the 16-bit values."""
    a = make_inputs(rng, "lstm", "forward", 3, 6, 300)
    rk16 = _round16(a["rk"], dtype)
    want = rnn_forward("lstm", a["x"], _exact(rk16), a["lengths"], a["h0"], a["c0"])
    for implementation in ("op", "reference"):
        got = tf_ops.lstm_sequence(a["x"], rk16, a["lengths"], a["h0"], a["c0"], implementation=implementation)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5, implementation
        check_padding_is_zero(got[0], a["lengths"], False)


def test_16bit_weights_scheme_error(rng):
    """What rounding the kernels to 16 bits costs against float32 weights, LSTM H=256 over 100 steps (reported;
    bounded loosely: bfloat16 keeps 8 significant bits, float16 11)."""
    a = make_inputs(rng, "lstm", "forward", 2, 100, 256, full=True)
    want = tf_ops.lstm_sequence(a["x"], a["rk"].astype(np.float32), a["lengths"], a["h0"], a["c0"])[0]
    for dtype, bound in ((tf.float16, 2e-3), (tf.bfloat16, 2e-2)):
        got = tf_ops.lstm_sequence(a["x"], _round16(a["rk"], dtype), a["lengths"], a["h0"], a["c0"])[0]
        err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        print(f"{dtype.name}: relative L2 error {err:.2e} against float32 weights")
        assert 0.0 < err < bound


# ---- errors ---------------------------------------------------------------------------------------------------
def test_16bit_ops_reject_bad_inputs_by_name(rng):
    a = make_inputs(rng, "lstm", "forward", 2, 3, 4, proj=3)
    rk16, pk16 = _round16(a["rk"], tf.bfloat16), _round16(a["pk"], tf.bfloat16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="projection_kernel must have the recurrent"):
        tf_ops.lstm_sequence(a["x"], rk16, a["lengths"], a["h0"], a["c0"], projection_kernel=a["pk"],
                             implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_kernel must be float32, float16 or bf"):
        tf_ops.lstm_sequence(a["x"], tf.cast(a["rk"], tf.float64), a["lengths"], a["h0"], a["c0"],
                             implementation="op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="no gradient"):
        tf_ops.lstm_sequence(a["x"], rk16, a["lengths"], a["h0"], a["c0"], projection_kernel=pk16, training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_lengths"):
        tf_ops.lstm_sequence(a["x"], rk16, np.array([9, 1], np.int32), a["h0"], a["c0"], projection_kernel=pk16,
                             implementation="op")
    # The raw op (no wrapper checks): the kernel names the argument too.
    lib = tf_ops._loader.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_kernel"):
        lib.fused_lstm_sequence16(a["x"], rk16[:, :2], pk16, a["lengths"], a["h0"], a["c0"], num_proj=3)
    # Mixed 16-bit dtypes: TF's type check on the shared Tweight attribute refuses them (input #2 is the projection).
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError), match="input #2"):
        lib.fused_lstm_sequence16(a["x"], rk16, _round16(a["pk"], tf.float16), a["lengths"], a["h0"], a["c0"],
                                  num_proj=3)


def test_gradient_through_16bit_op_reaches_x_but_not_the_16bit_kernel(rng):
    # The 16-bit kernel is a fixed (non-trainable) weight: no gradient for it; x's is the gradient of the same GRU
    # on the widened weights. Oracle: TF autodiff through the pure-TF reference (not the fused float backward, which
    # the 16-bit gradient itself runs, so a bug there would be on both sides).
    a = make_inputs(rng, "gru", "forward", 2, 4, 5)
    x = tf.constant(a["x"])
    rk16 = _round16(a["rk"], tf.float16)
    cot = tf.constant(rng.standard_normal(a["x"].shape[:2] + (5,)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch([x, rk16])
        out, _ = tf_ops.gru_sequence(x, rk16, a["rb"], a["lengths"], a["h0"], implementation="op")
        loss = tf.reduce_sum(out * cot)
    d_x, d_rk = tape.gradient(loss, [x, rk16])
    assert d_rk is None
    with tf.GradientTape() as tape:
        tape.watch(x)
        want, _ = tf_ops.gru_sequence(x, tf.cast(rk16, tf.float32), a["rb"], a["lengths"], a["h0"],
                                      implementation="reference")
        loss = tf.reduce_sum(want * cot)
    assert rel_err(d_x, tape.gradient(loss, x)) < 1e-5


def test_shape_inference_of_16bit_ops():
    lib = tf_ops._loader.load()

    @tf.function(input_signature=[tf.TensorSpec([None, 7, 2 * 4 * 10]), tf.TensorSpec([2, 6, 40], tf.bfloat16),
                                  tf.TensorSpec([2, 10, 6], tf.bfloat16), tf.TensorSpec([None], tf.int32)])
    def lstm(x, rk, pk, lengths):
        batch = tf.shape(x)[0]
        out, h, c = lib.fused_lstm_sequence16(x, rk, pk, lengths, tf.zeros([2, batch, 6]), tf.zeros([2, batch, 10]),
                                              direction="bidirectional", num_proj=6)
        assert out.shape.as_list() == [None, 7, 12] and h.shape.as_list() == [2, None, 6]
        assert c.shape.as_list() == [2, None, 10]
        return out

    lstm.get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec([4, None, 3 * 8]), tf.TensorSpec([1, 8, 24], tf.float16)])
    def gru(x, rk):
        out, h = lib.fused_gru_sequence16(x, rk, tf.zeros([1, 24]), tf.fill([4], tf.shape(x)[1]), tf.zeros([1, 4, 8]))
        assert out.shape.as_list() == [4, None, 8] and h.shape.as_list() == [1, 4, 8]
        return out

    gru.get_concrete_function()
    with pytest.raises(ValueError, match="recurrent_kernel"):
        tf.function(lambda x, rk: lib.fused_gru_sequence16(x, rk, tf.zeros([1, 24]), tf.fill([4], 3),
                                                           tf.zeros([1, 4, 8]))).get_concrete_function(
            tf.TensorSpec([4, 3, 24]), tf.TensorSpec([1, 7, 24], tf.float16))


# ---- Keras: conversion against the stock layers, save/load, SavedModel ---------------------------------------
@pytest.mark.parametrize("weights", ["float16", "bfloat16"])
def test_converted_layers_match_stock_keras_on_the_16bit_values(rng, weights):
    """quantize_model(model, "bfloat16") against stock Keras LSTM/GRU layers given the same weights rounded to 16
    bits (so this checks the layers, not the rounding)."""
    inputs = keras.Input((None, 6))
    h = keras.layers.Masking(0.0)(inputs)
    h = tf_ops.FusedLSTM(16, return_sequences=True)(h)
    h = tf_ops.FusedGRU(12, return_sequences=True)(h)
    model = keras.Model(inputs, h)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in model.get_weights()])
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    x[1, 5:] = 0.0
    converted = tf_ops.quantize_model(model, weights)
    fused = [layer for layer in converted.layers if isinstance(layer, (tf_ops.FusedLSTM, tf_ops.FusedGRU))]
    assert all(layer.recurrent_weight_dtype == weights for layer in fused)
    narrow = [v for layer in fused for v in layer.weights if v.dtype == weights]
    assert len(narrow) == 2 and all(not v.trainable for v in narrow)

    stock_in = keras.Input((None, 6))
    s = keras.layers.Masking(0.0)(stock_in)
    s = keras.layers.LSTM(16, return_sequences=True)(s)
    s = keras.layers.GRU(12, return_sequences=True)(s)
    stock = keras.Model(stock_in, s)
    stock_weights = []
    for layer in model.layers:
        if isinstance(layer, (tf_ops.FusedLSTM, tf_ops.FusedGRU)):
            kernel, rec, bias = layer.get_weights()
            rec = tf.cast(tf.cast(rec, weights), tf.float32).numpy()
            stock_weights += [kernel, rec, bias]
    stock.set_weights(stock_weights)
    got = converted(x).numpy()
    want = stock(x).numpy()
    assert rel_err(got, want) < 1e-5


def test_16bit_model_saves_loads_and_exports(rng, tmp_path):
    inputs = keras.Input((None, 6))
    h = tf_ops.FusedLSTM(16, num_proj=8, cell_clip=3.0, proj_clip=3.0, bidirectional=True,
                         return_sequences=True)(inputs)
    model = keras.Model(inputs, tf_ops.FusedGRU(12)(h))
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    converted = tf_ops.quantize_model(model, "bfloat16")
    want = converted(x).numpy()
    assert np.all(np.isfinite(want))  # assert_array_equal and assert_allclose below take NaN == NaN
    path = os.path.join(tmp_path, "bf16.keras")
    converted.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(x).numpy(), want)
    export_dir = os.path.join(tmp_path, "saved")
    converted.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), want, rtol=1e-6, atol=1e-6)
    assert tf.bfloat16 in {v.dtype for v in loaded.variables}


def test_layer_options_are_checked():
    with pytest.raises(ValueError, match="recurrent_weight_dtype"):
        tf_ops.FusedLSTM(4, recurrent_weight_dtype="int4")
    with pytest.raises(ValueError, match="exclude"):
        tf_ops.FusedGRU(4, int8_weights=True, recurrent_weight_dtype="float16")
    with pytest.raises(ValueError, match="weights must be one of"):
        tf_ops.quantize_model(keras.Sequential([keras.Input((3, 2)), tf_ops.FusedGRU(2)]), "fp8")


def _lstm_model(rng, units=4, **kwargs):
    inputs = keras.Input((None, 3))
    layer = tf_ops.FusedLSTM(units, name="rnn", **kwargs)
    model = keras.Model(inputs, layer(inputs))
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in model.get_weights()])
    return model, layer


@pytest.mark.parametrize("weights", ["float16", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_model_refuses_non_finite_weights(rng, weights, bad):
    """NaN/Inf recurrent weights are refused by name, as the int8 path refuses them (they were once rounded and
    stored, and the converted model's outputs were all NaN)."""
    model, layer = _lstm_model(rng, num_proj=2)
    values = layer.get_weights()
    values[-1][0, 1] = bad  # projection_kernel, the last weight
    layer.set_weights(values)
    with pytest.raises(ValueError, match="quantize_model: layer 'rnn' projection_kernel .*NaN or Inf"):
        tf_ops.quantize_model(model, weights)
    with pytest.raises(ValueError, match="quantized_weights: layer 'rnn' projection_kernel .*NaN or Inf"):
        tf_ops.quantized_weights(layer, weights)


def test_float16_refuses_weights_beyond_its_range(rng):
    """float16 rounds |w| >= 65520 to Inf (once silently: every output NaN); bfloat16 holds them. The largest
    finite float16, 65504, is kept exactly."""
    model, layer = _lstm_model(rng)
    kernel, rec, bias = layer.get_weights()
    rec[1, 2] = 1e6
    layer.set_weights([kernel, rec, bias])
    message = (r"quantize_model: layer 'rnn' recurrent_kernel has values beyond float16's range "
               r"\(max \|w\| = 1e\+06 > 65504\); use 'bfloat16' or 'int8'")
    with pytest.raises(ValueError, match=message):
        tf_ops.quantize_model(model, "float16")
    rec[1, 2] = -65520.0  # just past the rounding boundary
    layer.set_weights([kernel, rec, bias])
    with pytest.raises(ValueError, match="beyond float16's range"):
        tf_ops.quantized_weights(layer, "float16")

    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    for weights, value in (("float16", 65504.0), ("bfloat16", 1e6)):
        rec[1, 2] = value
        layer.set_weights([kernel, rec, bias])
        converted = tf_ops.quantize_model(model, weights)
        stored = converted.get_layer("rnn").get_weights()[-1]
        assert float(stored[1, 2]) == float(tf.cast(tf.cast(value, weights), tf.float32))
        # Independent reference: a stock LSTM given the same weights rounded to 16 bits.
        stock = keras.layers.LSTM(4)
        stock.build((None, None, 3))
        stock.set_weights([kernel, _exact(_round16(rec, weights)).astype(np.float32), bias])
        assert rel_err(converted(x), stock(x).numpy()) < 1e-5


@pytest.mark.parametrize("dtype,name", [(np.dtype("float16"), "float16"), (np.float16, "float16"),
                                        (tf.float16, "float16"), (tf.bfloat16, "bfloat16"),
                                        (tf.bfloat16.as_numpy_dtype, "bfloat16"), ("bfloat16", "bfloat16")],
                         ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_recurrent_weight_dtype_accepts_dtype_objects_and_saves(rng, tmp_path, dtype, name):
    """NumPy/TF dtype objects name the 16-bit type too, normalized to the string: np.dtype("float16") was once
    accepted and then failed model.save ("Cannot serialize object float16"), np.float16 refused."""
    inputs = keras.Input((None, 3))
    layer = tf_ops.FusedGRU(4, recurrent_weight_dtype=dtype)
    model = keras.Model(inputs, layer(inputs))
    assert layer.recurrent_weight_dtype == name
    assert [v.dtype for v in layer.weights if not v.trainable] == [name]
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    want = model(x).numpy()
    assert np.all(np.isfinite(want))  # assert_array_equal below takes NaN == NaN
    path = os.path.join(tmp_path, "dtype.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.layers[1].recurrent_weight_dtype == name
    np.testing.assert_array_equal(reloaded(x).numpy(), want)
    assert type(layer.get_config()["recurrent_weight_dtype"]) is str  # the config Keras writes: JSON


# ---- ELMo on the real fixtures (../shared) with bfloat16 biLM weights -----------------------------------------
@pytest.mark.parametrize("fixture,sentences_file", [("model-a-bilm-tf", "lm_embeddings_sentences.json"),
                                                    ("model-b-allennlp", "sentences.json")])
def test_elmo_fixtures_with_bfloat16_weights(fixture, sentences_file):
    """load_elmo(implementation="fused_bf16"): every biLM layer within 1e-5 of the float32 model run on the same
    weights rounded to bfloat16 (the kernels on real weights), and the rounding's cost against float32 reported."""
    import json

    from conftest import SHARED
    from models import elmo

    folder = os.path.join(SHARED, "data", "elmo", fixture)
    if not os.path.isdir(folder):
        pytest.skip("../shared/data/elmo is not here")
    with open(os.path.join(folder, sentences_file)) as f:
        sentences = [s.split() if isinstance(s, str) else s for s in json.load(f)]
    options, weights = os.path.join(folder, "options.json"), os.path.join(folder, "lm_weights.hdf5")
    ids = elmo.batch_to_ids(sentences)
    model = elmo.load_elmo(options, weights)
    want = model(ids)
    for layer in [layer for layer in model._flatten_layers() if isinstance(layer, tf_ops.FusedLSTM)]:
        for names in layer._weight_names:
            for role, name in names.items():
                if role in ("recurrent_kernel", "projection_kernel"):
                    variable = getattr(layer, name)
                    variable.assign(tf.cast(tf.cast(variable, tf.bfloat16), tf.float32))
    rounded = model(ids)
    bf16_model = elmo.load_elmo(options, weights, implementation="fused_bf16")
    lstms = [layer for layer in bf16_model._flatten_layers() if isinstance(layer, tf_ops.FusedLSTM)]
    assert lstms and all(layer.recurrent_weight_dtype == "bfloat16" for layer in lstms)
    got = bf16_model(ids)
    for key in ("layer_1", "layer_2"):
        ref, out = np.asarray(rounded[key]), np.asarray(got[key])
        kernel_err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        assert kernel_err < 1e-5, f"{key}: bf16 model vs float model on rounded weights: {kernel_err:.2e}"
        err = np.linalg.norm(out - np.asarray(want[key])) / np.linalg.norm(np.asarray(want[key]))
        print(f"{fixture} {key}: bfloat16 relative L2 error {err:.2e} (kernel {kernel_err:.1e})")
        assert 0 < err < 0.02


@pytest.mark.parametrize("cell,units", [("lstm", 3), ("gru", 2), ("gru", 5)])
def test_weights_files_load_into_their_own_form_only(rng, tmp_path, cell, units):
    """A .weights.h5 file round-trips within one weight form (float32, int8, float16, bfloat16); loaded into another
    form it is an error that says so. Keras matches entries by position and the forms order their weights
    differently: FusedGRU(units=2)'s float file fits a 16-bit layer's shapes and used to load silently, the bias
    into the recurrent kernel."""
    layer_cls = tf_ops.FusedLSTM if cell == "lstm" else tf_ops.FusedGRU
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    inp = keras.Input((None, 3))
    float_model = keras.Model(inp, layer_cls(units, name="rnn")(inp))
    float_model.get_layer("rnn").set_weights(
        [rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in float_model.get_layer("rnn").get_weights()])
    models = {"float32": float_model}
    for form in ("int8", "float16", "bfloat16"):
        models[form] = tf_ops.quantize_model(float_model, form)
    for form, model in models.items():
        path = str(tmp_path / f"{form}.weights.h5")
        model.save_weights(path)
        for other, target in models.items():
            fresh = keras.Model.from_config(target.get_config())
            if other == form:
                fresh.load_weights(path)
                want = model(x)
                assert np.all(np.isfinite(want))  # NaN == NaN would pass
                np.testing.assert_array_equal(fresh(x), want)
            else:  # the layer's own error, naming the problem (not whatever Keras says about a shape)
                with pytest.raises(ValueError, match="another weight form"):
                    fresh.load_weights(path)
