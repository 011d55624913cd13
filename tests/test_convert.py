"""tf_ops.fuse_model / fuse_layer: a trained stock Keras model converted to the fused layers gives the stock
model's outputs (the stock model is the oracle, run in the same process on the same ragged batch)."""
import re
import warnings

import keras
import numpy as np
import pytest

import tf_ops
from conftest import rel_err

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

VOCAB, EMB, T, B = 40, 12, 9, 5


def randomize(model, rng):
    """Fresh random weights everywhere (biases too, so a bias copied to the wrong place cannot hide)."""
    for layer in model._flatten_layers(include_self=False):
        if layer.weights and not isinstance(layer, (keras.Model, keras.layers.Bidirectional)):
            layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in layer.get_weights()])


def ragged_ids(rng):
    """Right-padded token ids (0 = padding, masked by the embedding); one full row, one empty row."""
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[1] = T, 0
    ids = rng.integers(1, VOCAB, (B, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids.astype(np.int32)


def as_list(x):
    return [np.asarray(t) for t in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def assert_same_outputs(stock, fused, inputs, tol=1e-5):
    want, got = as_list(stock(inputs, training=False)), as_list(fused(inputs, training=False))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) < tol, rel_err(g, w)


def stock_recurrent(model):
    """Every stock LSTM/GRU layer object inside the model, Bidirectional wrappers by their own name."""
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if isinstance(layer, keras.layers.Bidirectional) or type(layer) in (keras.layers.LSTM, keras.layers.GRU,
                                                                            keras.layers.RNN):
            names.append(layer.name)
        else:
            names += stock_recurrent(layer)
    return names


def fused_names(model):
    return sorted(layer.name for layer in model._flatten_layers(include_self=False)
                  if isinstance(layer, (tf_ops.FusedLSTM, tf_ops.FusedGRU)))


def tagger():
    """Embedding(mask_zero) -> Bidirectional(LSTM) -> GRU(go_backwards) -> Bidirectional(GRU, sum) -> LSTM."""
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMB, mask_zero=True)(ids)
    x = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True), name="bilstm")(x)
    x = keras.layers.GRU(7, return_sequences=True, go_backwards=True, name="gru_back")(x)
    x = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True), merge_mode="sum", name="bigru")(x)
    x = keras.layers.LSTM(5, name="last")(x)
    return keras.Model(ids, keras.layers.Dense(3)(x))


def test_functional_model_converts_every_layer_and_keeps_its_outputs():
    rng = np.random.default_rng(11)
    stock = tagger()
    randomize(stock, rng)
    fused = tf_ops.fuse_model(stock)
    assert stock_recurrent(fused) == []
    assert fused_names(fused) == ["bigru", "bilstm", "gru_back", "last"]
    assert fused.get_layer("bilstm").bidirectional and fused.get_layer("bigru").merge_mode == "sum"
    assert_same_outputs(stock, fused, ragged_ids(rng))
    # The converted model is a model of its own: the stock one's weights changing does not move it.
    before = fused(ragged_ids(np.random.default_rng(1)))
    randomize(stock, rng)
    np.testing.assert_array_equal(fused(ragged_ids(np.random.default_rng(1))), before)


def test_seq2seq_encoder_states_and_nested_sequential():
    """Bidirectional(LSTM(return_state=True)) feeding a decoder LSTM's initial state (the usual seq2seq encoder),
    and a nested Sequential with a GRU inside."""
    rng = np.random.default_rng(12)
    src = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMB, mask_zero=True)(src)
    enc, fh, fc, bh, bc = keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True,
                                                                       return_state=True))(x)
    h = keras.layers.Concatenate()([fh, bh])
    c = keras.layers.Concatenate()([fc, bc])
    dec = keras.layers.LSTM(12, return_sequences=True)(enc, initial_state=[h, c])
    inner = keras.Sequential([keras.layers.GRU(5, return_sequences=True), keras.layers.Dense(4)], name="inner")
    stock = keras.Model(src, inner(dec))
    randomize(stock, rng)
    fused = tf_ops.fuse_model(stock)
    assert stock_recurrent(fused) == []
    assert len(fused_names(fused)) == 3
    assert_same_outputs(stock, fused, ragged_ids(rng))


def test_sequential_saved_weights_file_workflow(tmp_path):
    """A stock model's .weights.h5 does not load into a fused model directly; loading it into the stock
    architecture and converting gives the same outputs."""
    rng = np.random.default_rng(13)

    def build():
        return keras.Sequential([keras.Input((None, EMB)), keras.layers.LSTM(9, return_sequences=True),
                                 keras.layers.GRU(4)])

    trained = build()
    randomize(trained, rng)
    path = str(tmp_path / "stock.weights.h5")
    trained.save_weights(path)
    # The file does not load into the fused model directly (the fused layers hold their variables themselves, not
    # in a cell): an error, never a silent partial load.
    with pytest.raises(ValueError, match="could not be loaded"):
        tf_ops.fuse_model(build()).load_weights(path)
    restored = build()
    restored.load_weights(path)
    fused = tf_ops.fuse_model(restored)
    x = rng.standard_normal((B, T, EMB)).astype(np.float32)
    assert_same_outputs(trained, fused, x)
    # And the converted model saves and loads as a .keras file of its own.
    fused.save(tmp_path / "fused.keras")
    again = keras.models.load_model(tmp_path / "fused.keras")
    assert_same_outputs(trained, again, x)


def test_rnn_around_stock_cells_converts_too():
    """keras.layers.RNN(LSTMCell / GRUCell), alone and inside Bidirectional, as older code builds its layers;
    an RNN over other cells (StackedRNNCells of SimpleRNNCells) is left as it is, without an error."""
    rng = np.random.default_rng(18)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMB, mask_zero=True)(ids)
    x = keras.layers.Bidirectional(keras.layers.RNN(keras.layers.GRUCell(6), return_sequences=True), name="bi")(x)
    x = keras.layers.RNN(keras.layers.LSTMCell(7, unit_forget_bias=False), return_sequences=True,
                         go_backwards=True, name="rnn_lstm")(x)
    x = keras.layers.RNN(keras.layers.StackedRNNCells([keras.layers.SimpleRNNCell(3),
                                                        keras.layers.SimpleRNNCell(3)]), name="stacked")(x)
    stock = keras.Model(ids, x)
    randomize(stock, rng)
    fused = tf_ops.fuse_model(stock)
    assert fused_names(fused) == ["bi", "rnn_lstm"]
    assert type(fused.get_layer("stacked")) is keras.layers.RNN
    assert_same_outputs(stock, fused, ragged_ids(rng))


def test_fuse_layer_and_quantize_chain():
    rng = np.random.default_rng(14)
    stock = keras.layers.Bidirectional(keras.layers.GRU(10, return_sequences=True), merge_mode="ave")
    x = rng.standard_normal((B, T, EMB)).astype(np.float32)
    stock(x)
    stock.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    fused = tf_ops.fuse_layer(stock)
    assert isinstance(fused, tf_ops.FusedGRU) and fused.bidirectional
    assert rel_err(np.asarray(fused(x)), np.asarray(stock(x))) < 1e-5
    # int8 on top of a converted stock model: within the scheme's error of the stock float outputs.
    model = keras.Sequential([keras.Input((None, EMB)), keras.layers.LSTM(32, return_sequences=True)])
    randomize(model, rng)
    q = tf_ops.quantize_model(tf_ops.fuse_model(model))
    assert q.layers[0].int8_weights
    assert 0 < rel_err(np.asarray(q(x)), np.asarray(model(x))) < 0.02


def test_frozen_layers_stay_frozen():
    rng = np.random.default_rng(17)
    for stock in (keras.layers.Bidirectional(keras.layers.LSTM(4, trainable=False)),
                  keras.layers.Bidirectional(keras.layers.GRU(4), trainable=False), keras.layers.GRU(4, trainable=False)):
        stock(rng.standard_normal((2, 3, EMB)).astype(np.float32))
        assert not stock.trainable_weights
        assert not tf_ops.fuse_layer(stock).trainable_weights, stock.name


def test_training_after_conversion_follows_the_stock_model():
    """One SGD step on the converted model moves its weights as the same step moves the stock model's. The steps
    themselves are compared (the weights after minus before): a step is a small fraction of a weight (2.5e-4 of it
    for some kernels at a learning rate of 0.1), so weights within 1e-5 would let a gradient a few percent off
    through. The large learning rate keeps the float32 rounding of the updated weights small against the step."""
    rng = np.random.default_rng(15)
    stock = tagger()
    randomize(stock, rng)
    fused = tf_ops.fuse_model(stock)
    before = stock.get_weights()
    ids, y = ragged_ids(rng), rng.standard_normal((B, 3)).astype(np.float32)
    for m in (stock, fused):
        m.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
        m.train_on_batch(ids, y)
    for w0, s, f in zip(before, stock.get_weights(), fused.get_weights()):
        assert np.abs(s - w0).max() > 0  # every weight moved, so the comparison below means something
        assert rel_err(f - w0, s - w0) < 1e-5
        assert rel_err(f, s) < 1e-5


@pytest.mark.parametrize("layer, why", [
    (keras.layers.LSTM(4, recurrent_dropout=0.2, name="rd"), "recurrent_dropout"),
    (keras.layers.GRU(4, reset_after=False, name="ra"), "reset_after"),
    (keras.layers.LSTM(4, activation="relu", name="act"), "activation"),
    (keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi",
                                backward_layer=keras.layers.LSTM(4, go_backwards=True, use_bias=False)), "use_bias"),
])
def test_unsupported_layers_are_named_or_kept(layer, why):
    rng = np.random.default_rng(16)
    stock = keras.Sequential([keras.Input((None, EMB)), layer, keras.layers.Dense(2)])
    randomize(stock, rng)
    with pytest.raises(ValueError, match=f"{layer.name} cannot be fused.*{why}"):
        tf_ops.fuse_model(stock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = tf_ops.fuse_model(stock, keep_unsupported=True)
    assert any(layer.name in str(w.message) for w in caught)
    assert stock_recurrent(kept) == [layer.name]
    x = rng.standard_normal((B, T, EMB)).astype(np.float32)
    assert_same_outputs(stock, kept, x)


def test_explicit_backward_layer_with_another_seed_converts():
    # The seed feeds only dropout draws, so two directions that differ in it are still one fused layer.
    rng = np.random.default_rng(21)
    bi = keras.layers.Bidirectional(keras.layers.LSTM(4, seed=1, return_sequences=True),
                                    backward_layer=keras.layers.LSTM(4, seed=2, go_backwards=True,
                                                                     return_sequences=True))
    stock = keras.Sequential([keras.Input((None, EMB)), bi, keras.layers.Dense(2)])
    randomize(stock, rng)
    fused = tf_ops.fuse_model(stock)
    assert stock_recurrent(fused) == []
    assert_same_outputs(stock, fused, rng.standard_normal((B, T, EMB)).astype(np.float32))


def test_stock_layer_inside_a_custom_layer_is_reported():
    @keras.saving.register_keras_serializable(package="test_convert")
    class Wrapper(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn = keras.layers.LSTM(4)

        def call(self, x):
            return self.rnn(x)

    stock = keras.Sequential([keras.Input((None, EMB)), Wrapper(name="wrapper")])
    with pytest.raises(ValueError, match="custom layer or a subclassed model"):
        tf_ops.fuse_model(stock)


def test_stateful_stock_model_converts_mid_stream():
    """A stock stateful model part-way through a stream: the converted model (fuse_model, fuse_layer, then
    quantize_model) starts from the stock layer's current states and follows it over the next chunks."""
    rng = np.random.default_rng(18)
    inputs = keras.Input(batch_shape=(B, None, EMB))
    x = keras.layers.Bidirectional(keras.layers.LSTM(6, stateful=True, return_sequences=True))(inputs)
    stock = keras.Model(inputs, keras.layers.GRU(4, stateful=True)(x))
    randomize(stock, rng)
    chunks = [rng.standard_normal((B, t, EMB)).astype(np.float32) for t in (5, 3, 4)]
    stock(chunks[0])  # the states are now non-zero
    fused = tf_ops.fuse_model(stock)
    assert fused_names(fused) == sorted(stock_recurrent(stock))
    q = tf_ops.quantize_model(fused)  # states copied before any further call
    for chunk in chunks[1:]:
        want = np.asarray(stock(chunk))
        assert rel_err(np.asarray(fused(chunk)), want) < 1e-5
        assert 0 < rel_err(np.asarray(q(chunk)), want) < 0.02
    layer = tf_ops.fuse_layer(stock.layers[1])  # one layer, with its current states
    assert layer.stateful and layer.bidirectional
    for s, f in zip(stock.layers[1].states, layer.states):
        np.testing.assert_array_equal(f, s)
    assert np.abs(np.asarray(layer.states[0])).max() > 0
    assert rel_err(np.asarray(layer(chunks[0])), np.asarray(stock.layers[1](chunks[0]))) < 1e-5


@pytest.mark.parametrize("case", ["stacked_lstm_cells", "stacked_gru_cells", "bidirectional_stacked",
                                  "time_distributed_lstm", "time_distributed_bidirectional"])
def test_wrappers_left_stock_are_reported_with_their_reason(case):
    """An RNN over StackedRNNCells of LSTM/GRU cells and a TimeDistributed wrapper around a stock recurrent layer
    are not converted: fuse_model names the layer and the real reason (an error, or with keep_unsupported=True a
    warning), not the custom-layer message nor silence; the kept model's outputs are the stock model's."""
    rng = np.random.default_rng(22)
    if "stacked" in case:
        cell = keras.layers.GRUCell if case == "stacked_gru_cells" else keras.layers.LSTMCell
        layer = keras.layers.RNN(keras.layers.StackedRNNCells([cell(5), cell(4)]), return_sequences=True,
                                 name="stacked")
        if case == "bidirectional_stacked":
            layer = keras.layers.Bidirectional(layer, name="bi_stacked")
        inputs, why = keras.Input((None, EMB)), r"RNN over StackedRNNCells is not converted"
        x = rng.standard_normal((B, T, EMB)).astype(np.float32)
    else:
        inner = keras.layers.LSTM(4, name="inner")
        if case == "time_distributed_bidirectional":
            inner = keras.layers.Bidirectional(inner, name="inner")
        layer = keras.layers.TimeDistributed(inner, name="td")
        inputs, why = keras.Input((3, None, EMB)), r"TimeDistributed wrapper .*inner.* is not converted"
        x = rng.standard_normal((B, 3, T, EMB)).astype(np.float32)
    stock = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    randomize(stock, rng)
    with pytest.raises(ValueError, match=f"{layer.name} cannot be fused: {why}") as raised:
        tf_ops.fuse_model(stock)
    assert "custom layer" not in str(raised.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = tf_ops.fuse_model(stock, keep_unsupported=True)
    messages = [str(w.message) for w in caught]
    assert any(layer.name in m and re.search(why, m) for m in messages), messages
    assert not any("custom layer" in m for m in messages), messages
    assert type(kept.get_layer(layer.name)) is type(layer) and fused_names(kept) == []
    assert_same_outputs(stock, kept, x)
    with pytest.raises(ValueError, match=why):
        tf_ops.fuse_layer(layer)
