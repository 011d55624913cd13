"""tf_ops.FusedLSTM / FusedGRU against the stock Keras layers with the same weights."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import rel_err

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

STOCK = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
FUSED = {"lstm": tf_ops.FusedLSTM, "gru": tf_ops.FusedGRU}


def randomize(layer, rng):
    """Fresh random weights (biases too, so a bias bug cannot hide behind zeros)."""
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in layer.get_weights()])


def right_padded_mask(rng, batch, max_time):
    lengths = rng.integers(0, max_time + 1, batch)
    lengths[0] = max_time
    return np.arange(max_time)[None, :] < lengths[:, None]


def as_list(x):
    return [np.asarray(t) for t in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def assert_same(got, want, tol=1e-5):
    got, want = as_list(got), as_list(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert rel_err(g, w) < tol


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("masked, zero_output_for_mask", [(False, False), (True, False), (True, True)])
def test_matches_stock_layer(rng, cell, return_sequences, return_state, go_backwards, masked, zero_output_for_mask):
    batch, max_time, features, units = int(rng.integers(2, 6)), int(rng.integers(1, 9)), 7, int(rng.integers(1, 20))
    kwargs = dict(return_sequences=return_sequences, return_state=return_state, go_backwards=go_backwards,
                  zero_output_for_mask=zero_output_for_mask)
    stock, fused = STOCK[cell](units, **kwargs), FUSED[cell](units, **kwargs)
    x = rng.standard_normal((batch, max_time, features)).astype(np.float32)
    stock.build(x.shape)
    fused.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    mask = right_padded_mask(rng, batch, max_time) if masked else None
    if masked:
        mask[1, -1] = False  # a row shorter than the batch: zero_output_for_mask zeroes its last output
    got, want = fused(x, mask=mask), stock(x, mask=mask)
    assert type(got) is type(want)  # a tuple with return_state, as the stock layer returns
    assert_same(got, want)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_initial_state(rng, cell):
    units = 6
    stock = STOCK[cell](units, return_sequences=True, return_state=True)
    fused = FUSED[cell](units, return_sequences=True, return_state=True)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    stock.build(x.shape)
    fused.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    states = [rng.standard_normal((3, units)).astype(np.float32) for _ in range(2 if cell == "lstm" else 1)]
    mask = right_padded_mask(rng, 3, 5)
    assert_same(fused(x, initial_state=states, mask=mask), stock(x, initial_state=states, mask=mask))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_inside_keras_bidirectional_and_fused_bidirectional(rng, cell, return_sequences, merge_mode,
                                                            zero_output_for_mask):
    # Keras' Bidirectional sets its layers' zero_output_for_mask to return_sequences, whatever was asked: the fused
    # bidirectional layer must give the same outputs for either setting.
    units, x = 5, rng.standard_normal((4, 6, 3)).astype(np.float32)
    mask = right_padded_mask(rng, 4, 6)
    mask[1, -1] = False  # a row shorter than the batch
    kwargs = dict(return_sequences=return_sequences, return_state=True, zero_output_for_mask=zero_output_for_mask)
    stock = keras.layers.Bidirectional(STOCK[cell](units, **kwargs), merge_mode=merge_mode)
    wrapped = keras.layers.Bidirectional(FUSED[cell](units, **kwargs), merge_mode=merge_mode)
    fused = FUSED[cell](units, bidirectional=True, merge_mode=merge_mode, **kwargs)
    for layer in (stock, wrapped, fused):
        layer.build(x.shape)
    randomize(stock, rng)
    wrapped.set_weights(stock.get_weights())
    fused.set_weights(stock.get_weights())  # the same weights, in the same order
    want = stock(x, mask=mask)
    assert_same(wrapped(x, mask=mask), want)
    assert_same(fused(x, mask=mask), want)


def test_projection_lstm_matches_numpy(rng):
    from numpy_reference import rnn_forward
    units, proj = 12, 5
    layer = tf_ops.FusedLSTM(units, num_proj=proj, cell_clip=0.8, proj_clip=0.6, return_sequences=True,
                             bidirectional=True)
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    layer.build(x.shape)
    randomize(layer, rng)
    w = layer.get_weights()  # fw: kernel, recurrent, bias, projection; then bw
    assert [a.shape for a in w[:4]] == [(4, 48), (5, 48), (48,), (12, 5)]
    mask = right_padded_mask(rng, 3, 7)
    lengths = mask.sum(1)
    x_proj = np.concatenate([x @ w[0] + w[2], x @ w[4] + w[6]], axis=-1)
    want = rnn_forward("lstm", x_proj, np.stack([w[1], w[5]]), lengths, np.zeros((2, 3, proj)),
                       np.zeros((2, 3, units)), projection_kernel=np.stack([w[3], w[7]]), cell_clip=0.8,
                       proj_clip=0.6, direction="bidirectional")[0]
    assert rel_err(layer(x, mask=mask), want) < 1e-5


def test_embedding_mask_zero_in_a_model(rng):
    ids = rng.integers(1, 20, (4, 9))
    ids[1, 5:] = 0
    ids[2, 2:] = 0

    def build(rnn):
        inp = keras.Input((None,), dtype="int32")
        x = keras.layers.Embedding(20, 8, mask_zero=True)(inp)
        x = rnn(x)
        return keras.Model(inp, keras.layers.Dense(3)(x))

    stock = build(keras.layers.LSTM(6))
    fused = build(tf_ops.FusedLSTM(6))
    # Random weights everywhere: the initializers' zero biases (and the forget gate's ones) would hide a bias bug.
    stock.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    fused.set_weights(stock.get_weights())
    assert_same(fused(ids), stock(ids))


def test_rejects_arguments_it_cannot_honour():
    with pytest.raises(ValueError, match="activation"):
        tf_ops.FusedLSTM(4, activation="relu")
    with pytest.raises(ValueError, match="recurrent_activation"):
        tf_ops.FusedGRU(4, recurrent_activation="hard_sigmoid")
    with pytest.raises(ValueError, match="recurrent_dropout"):
        tf_ops.FusedLSTM(4, recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="reset_after"):
        tf_ops.FusedGRU(4, reset_after=False)
    with pytest.raises(ValueError, match="proj_clip"):
        tf_ops.FusedLSTM(4, proj_clip=1.0)
    # units and num_proj: positive integers only (int(4.5) would build a smaller layer without a word).
    for bad in (0, -3, 4.5, 4.0, "4", True, None):
        with pytest.raises(ValueError, match="units must be a positive integer"):
            tf_ops.FusedGRU(bad)
    for bad in (0, 2.5, "2"):
        with pytest.raises(ValueError, match="num_proj must be a positive integer"):
            tf_ops.FusedLSTM(4, num_proj=bad)
    assert tf_ops.FusedLSTM(np.int64(4), num_proj=np.int32(2)).num_proj == 2


def test_left_padded_mask_is_an_error(rng):
    layer = tf_ops.FusedLSTM(3)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[False, True, True, True], [True, True, True, True]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="right-padded"):
        layer(x, mask=mask)


def test_config_roundtrip_and_keras_file(rng, tmp_path):
    inp = keras.Input((None, 5))
    out = tf_ops.FusedLSTM(7, num_proj=4, cell_clip=2.0, bidirectional=True, return_sequences=True)(inp)
    out = tf_ops.FusedGRU(3, go_backwards=True)(out)
    model = keras.Model(inp, out)
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype(np.float32) * 0.3)
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    want = model(x)
    assert np.all(np.isfinite(want))  # assert_array_equal below would take NaN == NaN
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x), want)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.get_config() for layer in clone.layers] == [layer.get_config() for layer in model.layers]


def test_tf_function_and_saved_model(rng, tmp_path):
    layer = tf_ops.FusedGRU(6, return_sequences=True, bidirectional=True)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    layer.build(x.shape)
    randomize(layer, rng)
    want = layer(x)
    assert np.all(np.isfinite(want))  # assert_array_equal below would take NaN == NaN

    module = tf.Module()
    module.layer = layer
    module.run = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, None, 4])])
    np.testing.assert_allclose(module.run(x), want, rtol=0, atol=0)
    path = os.path.join(tmp_path, "sm")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    np.testing.assert_array_equal(loaded.run(x), want)


def test_dropout_only_in_training(rng):
    layer = tf_ops.FusedLSTM(4, dropout=0.5, seed=3)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    inference = layer(x, training=False)
    np.testing.assert_array_equal(layer(x, training=False), inference)
    assert not np.allclose(layer(x, training=True), inference)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_dropout_draws_a_mask_per_direction(rng, cell, monkeypatch):
    """keras.layers.Bidirectional's two cells draw their own input-dropout masks, and so does the fused layer: with
    the uniform draws replaced by known ones, each direction's half of the output is a one-direction twin's output
    on x masked by that direction's draw (zeros where dropped, x / (1 - rate) elsewhere)."""
    rate, T = 0.5, 4
    layer = FUSED[cell](16, dropout=rate, seed=5, bidirectional=True, return_sequences=True)
    x = rng.standard_normal((3, T, 64)).astype(np.float32)
    layer.build(x.shape)
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.3 for w in layer.get_weights()])
    half = len(layer.get_weights()) // 2
    draws = [rng.random((3, 1, 64)).astype(np.float32) for _ in range(2)]
    calls = iter(draws)
    monkeypatch.setattr(keras.random, "uniform", lambda shape, seed=None: tf.constant(next(calls)))
    got = np.asarray(layer(x, training=True))
    masked = [x * (d >= rate) / (1 - rate) for d in draws]
    for d, go_backwards in ((0, False), (1, True)):
        twin = FUSED[cell](16, return_sequences=True, go_backwards=go_backwards)
        twin.build(x.shape)
        twin.set_weights(layer.get_weights()[d * half:(d + 1) * half])
        want = np.asarray(twin(masked[d]))
        want = want[:, ::-1] if go_backwards else want  # a go_backwards layer returns processing order
        assert rel_err(got[..., d * 16:(d + 1) * 16], want) < 1e-5
    # The two masks differ, so one shared mask would have failed the check above for one direction.
    assert ((draws[0] >= rate) != (draws[1] >= rate)).any()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_match_stock_layer(rng, cell):
    """The fused gradient against the stock layer's autodiff (more cases in test_grad.py)."""
    stock, fused = STOCK[cell](5, return_sequences=True), FUSED[cell](5, return_sequences=True)
    x = tf.constant(rng.standard_normal((3, 4, 2)).astype(np.float32))
    stock.build(x.shape)
    fused.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    mask = right_padded_mask(rng, 3, 4)
    grads = []
    for layer in (stock, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, mask=mask) ** 2)
        grads.append(tape.gradient(loss, [x] + layer.trainable_weights))
    for g_fused, g_stock in zip(grads[1], grads[0]):
        assert rel_err(g_fused, g_stock) < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_wide_input_products_per_direction(rng, cell):
    """A bidirectional layer whose input is wider than B*T rows computes x @ kernel per direction (the directions'
    kernels side by side would be the larger copy); with the row count unknown at tracing it picks at run time.
    Outputs and gradients against Keras' Bidirectional of the stock layer, both ways."""
    units, width = 4, 300
    x = tf.constant(rng.standard_normal((2, 3, width)).astype(np.float32) * 0.2)
    stock = keras.layers.Bidirectional(STOCK[cell](units, return_sequences=True))
    fused = FUSED[cell](units, return_sequences=True, bidirectional=True)
    stock.build(x.shape)
    fused.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())

    def run(layer, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * tf.cos(out))
        return [out] + tape.gradient(loss, [x] + layer.trainable_weights)

    want = run(stock, x)
    static = tf.function(lambda x: run(fused, x))
    dynamic = tf.function(lambda x: run(fused, x), input_signature=[tf.TensorSpec([None, None, width])])
    for fn in (static, dynamic):
        got = fn(x)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5
    # The two ways are really taken (forward only): a product per direction when the rows are known, a run-time
    # choice when they are not; a narrow input keeps one product.
    def op_types(layer, spec):
        return [op.type for op in tf.function(layer).get_concrete_function(spec).graph.get_operations()]

    static_ops = op_types(fused, tf.TensorSpec(x.shape))
    assert static_ops.count("MatMul") == 2 and not {"If", "StatelessIf"} & set(static_ops)
    assert {"If", "StatelessIf"} & set(op_types(fused, tf.TensorSpec([None, None, width])))
    narrow = FUSED[cell](units, return_sequences=True, bidirectional=True)
    narrow_ops = op_types(narrow, tf.TensorSpec([2, 3, 5]))
    assert narrow_ops.count("MatMul") == 1


@pytest.fixture
def global_policy():
    """Sets Keras' global dtype policy for one test and restores float32 afterwards, failing or not."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_mixed_precision_policy(rng, global_policy, policy, cell):
    """Under a mixed policy the weights stay float32 and un-rounded, the op computes in float32 and only the
    outputs (and states) come out in the compute dtype: each equals the float32 layer's value rounded once. A model
    with the layer trains under the policy (Keras wraps the optimizer in loss scaling)."""
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    mask = right_padded_mask(rng, 3, 6)
    kwargs = dict(return_sequences=True, return_state=True, bidirectional=True)
    float_layer = FUSED[cell](5, **kwargs)
    float_layer.build(x.shape)
    randomize(float_layer, rng)
    want = float_layer(x, mask=mask)

    global_policy(policy)
    layer = FUSED[cell](5, **kwargs)
    layer.build(x.shape)
    layer.set_weights(float_layer.get_weights())
    assert all(w.dtype == "float32" for w in layer.weights)
    got = layer(x, mask=mask)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == policy.split("_")[1]
        np.testing.assert_array_equal(g.numpy(), tf.cast(w, g.dtype).numpy())

    model = keras.Sequential([keras.Input((6, 4)), FUSED[cell](5, bidirectional=True), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    y = rng.standard_normal((3, 2)).astype(np.float32)
    before = [w.numpy() for w in model.layers[0].weights]
    losses = model.fit(x, y, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.layers[0].weights))


def test_unsupported_dtype_policy_is_an_error():
    for dtype in ("float64", "float16", "bfloat16"):
        with pytest.raises(ValueError, match="dtype policy"):
            tf_ops.FusedLSTM(4, dtype=dtype)


def test_jit_compile_falls_back_to_the_graph_executor(rng):
    """No XLA kernel exists for the fused ops. Keras 3 compiles fit/predict with XLA whenever a GPU is present
    (jit_compile="auto"), and with jit_compile=True anywhere; the layers declare supports_jit=False so that Keras
    runs them without XLA instead of failing with XLA's unsupported-op error."""
    model = keras.Sequential([keras.Input((5, 3)), FUSED["lstm"](4, return_sequences=True), FUSED["gru"](2)])
    assert not any(layer.supports_jit for layer in model.layers)
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile is False
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    want = model(x)
    assert np.all(np.isfinite(want))  # assert_allclose takes NaN == NaN
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras_bidirectional_wrapper_with_states_in_a_functional_model(rng, cell):
    """Bidirectional(FusedLSTM(return_state=True)), the usual seq2seq encoder: built symbolically it failed in
    Bidirectional.compute_output_shape (a list where Keras' RNN returns a tuple)."""
    def build(layer_cls):
        inputs = keras.Input((None, 3))
        outputs = keras.layers.Bidirectional(layer_cls(4, return_state=True))(inputs)
        return keras.Model(inputs, outputs)

    stock, fused = build(STOCK[cell]), build(FUSED[cell])
    fused.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    stock.set_weights(fused.get_weights())
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    assert_same(fused(x), stock(x))


def test_merge_mode_none_masks_both_outputs(rng):
    """bidirectional=True with merge_mode=None returns [forward, backward]: both carry the mask (the backward one
    had none, so a layer after it ran over the padding)."""
    def build(fused):
        inputs = keras.Input((None,), dtype="int32")
        x = keras.layers.Embedding(20, 5, mask_zero=True)(inputs)
        if fused:
            fw, bw = tf_ops.FusedLSTM(4, return_sequences=True, bidirectional=True, merge_mode=None)(x)
        else:
            fw, bw = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode=None)(x)
        return keras.Model(inputs, [keras.layers.LSTM(3)(fw), keras.layers.LSTM(3)(bw)])

    stock, fused = build(False), build(True)
    fused.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    stock.set_weights(fused.get_weights())
    ids = np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    assert_same(fused(ids), stock(ids))


def test_accepts_what_the_stock_constructor_accepts_for_the_same_cell():
    for activation in ("tanh", keras.activations.tanh, keras.ops.tanh, tf.nn.tanh, tf.math.tanh):
        tf_ops.FusedLSTM(2, activation=activation)
    for activation in ("sigmoid", keras.activations.sigmoid, keras.ops.sigmoid, tf.nn.sigmoid):
        tf_ops.FusedGRU(2, recurrent_activation=activation)
    tf_ops.FusedLSTM(2, implementation=1)  # keras.layers.LSTM's; the fused op has one implementation
    with pytest.raises(ValueError, match="activation"):
        tf_ops.FusedLSTM(2, activation=tf.nn.relu)


def stateful_pair(cell, variant, units, **kwargs):
    """A stock stateful layer and its fused twin: one direction (forward or go_backwards), both directions in
    keras.layers.Bidirectional, or the stock Bidirectional against the fused layer's own bidirectional=True."""
    def make(cls, **extra):
        return cls(units, stateful=True, **kwargs, **extra)

    if variant == "forward":
        return make(STOCK[cell]), make(FUSED[cell])
    if variant == "go_backwards":
        return make(STOCK[cell], go_backwards=True), make(FUSED[cell], go_backwards=True)
    stock = keras.layers.Bidirectional(make(STOCK[cell]))
    if variant == "keras_bidirectional":
        return stock, keras.layers.Bidirectional(make(FUSED[cell]))
    return stock, make(FUSED[cell], bidirectional=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variant", ["forward", "go_backwards", "keras_bidirectional", "fused_bidirectional"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_stateful_carries_states_across_calls_as_the_stock_layer(rng, cell, variant, return_sequences):
    """stateful=True: each call starts from the previous call's final states (per batch row, after its last valid
    step), reset_states() zeroes them; checked against the stock stateful layer over consecutive ragged batches."""
    batch, features, units = 3, 4, 5
    stock, fused = stateful_pair(cell, variant, units, return_sequences=return_sequences)
    for layer in (stock, fused):
        layer.build((batch, None, features))
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())  # states are not weights: the stock weight list is unchanged
    assert len(fused.weights) == len(stock.weights)
    assert len(fused.states) == len(stock.states) == (2 if cell == "lstm" else 1) * (1 if variant in (
        "forward", "go_backwards") else 2)
    for call in range(4):
        if call == 2:
            stock.reset_states()
            fused.reset_states()
            assert all(np.all(np.asarray(s) == 0) for s in fused.states)
        max_time = int(rng.integers(1, 7))
        x = rng.standard_normal((batch, max_time, features)).astype(np.float32)
        mask = right_padded_mask(rng, batch, max_time)
        assert_same(fused(x, mask=mask), stock(x, mask=mask))
        assert_same(list(fused.states), list(stock.states))
        assert np.abs(np.asarray(fused.states[0])).max() > 0  # something was carried


@pytest.mark.parametrize("implementation", ["op", "reference"])
def test_stateful_states_are_the_next_calls_initial_states(rng, implementation):
    """The stateful layer's second call equals a stateless twin given the first call's final states, on the op and
    on the portable reference alike."""
    stateful = tf_ops.FusedLSTM(6, num_proj=3, cell_clip=0.5, stateful=True, bidirectional=True,
                                return_sequences=True)
    stateless = tf_ops.FusedLSTM(6, num_proj=3, cell_clip=0.5, bidirectional=True, return_sequences=True,
                                 return_state=True)
    for layer in (stateful, stateless):
        layer.build((2, None, 4))
    randomize(stateful, rng)
    stateless.set_weights(stateful.get_weights())
    x1, x2 = (rng.standard_normal((2, 5, 4)).astype(np.float32) for _ in range(2))
    with tf_ops.implementation_scope(implementation):
        first, *states = stateless(x1)
        assert all(np.all(np.isfinite(t)) for t in [first] + states)  # NaN == NaN would pass below
        np.testing.assert_array_equal(stateful(x1), first)
        for got, want in zip(stateful.states, states):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(stateful(x2), stateless(x2, initial_state=states)[0])


def test_stateful_needs_a_static_batch_of_the_same_size(rng):
    with pytest.raises(ValueError, match="static batch size"):
        keras.Sequential([keras.Input((None, 3)), tf_ops.FusedGRU(4, stateful=True)])
    layer = tf_ops.FusedGRU(4, stateful=True)
    layer(rng.standard_normal((3, 2, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="batch size 3 got a batch of 2"):
        layer(rng.standard_normal((2, 2, 3)).astype(np.float32))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_model_predict_keras_file_and_export(rng, cell, tmp_path):
    """A streaming model: predict() over consecutive chunks equals the stock stateful model's; the .keras file and
    a SavedModel (model.export) keep stateful and carry states between serving calls."""
    def build(cls):
        inputs = keras.Input(batch_shape=(2, None, 3))
        return keras.Model(inputs, keras.layers.Dense(2)(cls(5, stateful=True, return_sequences=True)(inputs)))

    stock, fused = build(STOCK[cell]), build(FUSED[cell])
    fused.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    stock.set_weights(fused.get_weights())
    chunks = [rng.standard_normal((2, t, 3)).astype(np.float32) for t in (4, 1, 3)]
    want = [stock.predict(c, batch_size=2, verbose=0) for c in chunks]
    for c, w in zip(chunks, want):
        assert_same(fused.predict(c, batch_size=2, verbose=0), w)

    fused.layers[1].reset_states()
    path = os.path.join(tmp_path, "m.keras")
    fused.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[1].stateful
    for c, w in zip(chunks, want):
        assert_same(loaded(c), w)

    fused.layers[1].reset_states()
    fused.export(os.path.join(tmp_path, "sm"), verbose=False)
    served = tf.saved_model.load(os.path.join(tmp_path, "sm"))
    for c, w in zip(chunks, want):
        assert_same(served.serve(c), w)

    fused.layers[1].reset_states()  # tf.saved_model.save, as export/ writes its SavedModels
    module = tf.Module()
    module.model = fused
    module.run = tf.function(lambda t: fused(t), input_signature=[tf.TensorSpec([2, None, 3])])
    tf.saved_model.save(module, os.path.join(tmp_path, "module"))
    served = tf.saved_model.load(os.path.join(tmp_path, "module"))
    for c, w in zip(chunks, want):
        assert_same(served.run(c), w)


def test_stateful_training_follows_the_stock_model(rng):
    """fit() on consecutive batches of a stateful model (truncated backpropagation: each batch starts from the last
    one's states, gradients stop there): the same losses, weights and carried states as the stock model."""
    def build(cls):
        inputs = keras.Input(batch_shape=(4, None, 3))
        return keras.Model(inputs, keras.layers.Dense(1)(cls(6, stateful=True)(inputs)))

    stock, fused = build(STOCK["lstm"]), build(FUSED["lstm"])
    stock.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in stock.get_weights()])
    fused.set_weights(stock.get_weights())
    x = rng.standard_normal((16, 5, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    losses = []
    for model in (stock, fused):
        model.compile(keras.optimizers.SGD(0.1), "mse")
        losses.append(model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert_same(fused.get_weights(), stock.get_weights())
    assert_same(list(fused.layers[1].states), list(stock.layers[1].states))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stock_attributes_config_keys_and_input_rank(cell):
    """What code inspecting a recurrent layer reads: the stock layer's attributes and config keys, the same values;
    a wrong input rank fails when the model is built, as with the stock layer."""
    stock, fused = STOCK[cell](3), FUSED[cell](3)
    for layer in (stock, fused):
        layer.build((2, 4, 5))
    assert fused.state_size == stock.state_size
    assert fused.activation is keras.activations.tanh and fused.recurrent_activation is keras.activations.sigmoid
    assert fused.recurrent_dropout == stock.recurrent_dropout == 0.0
    for key in ("activation", "recurrent_activation", "recurrent_dropout", "stateful"):
        assert fused.get_config()[key] == stock.get_config()[key], key
    assert [s.shape for s in fused.get_initial_state(6)] == [tuple(s.shape) for s in stock.get_initial_state(6)]
    assert all(np.all(np.asarray(s) == 0) for s in fused.get_initial_state(6))
    for shape in ((20,), (5, 4, 3)):
        with pytest.raises(ValueError, match="ndim=3"):
            keras.Sequential([keras.Input(shape), FUSED[cell](4)])


def test_stateful_partial_last_batch_is_a_clear_error(rng):
    """predict() over a sample count that is not a multiple of a stateful model's batch: the last batch is smaller
    than the states. The stock layer broadcasts its states over it and returns a row of garbage; the fused layer
    says what is wrong."""
    inputs = keras.Input(batch_shape=(2, None, 3))
    model = keras.Model(inputs, FUSED["lstm"](4, stateful=True)(inputs))
    np.testing.assert_array_equal(model.predict(np.zeros((4, 3, 3), np.float32), batch_size=2, verbose=0).shape,
                                  (4, 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of the batch size"):
        model.predict(np.zeros((5, 3, 3), np.float32), batch_size=2, verbose=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("return_sequences, go_backwards, zero_output_for_mask",
                         [(False, False, False), (True, False, False), (True, True, False), (False, False, True)])
def test_mask_with_a_trailing_unit_axis_as_the_stock_layer(rng, cell, return_sequences, go_backwards,
                                                           zero_output_for_mask):
    """A [B, T, 1] mask (stock keras.layers.LSTM/GRU take it as the [B, T] one): the stock layer's outputs, eagerly
    and in a tf.function with unknown batch and time."""
    kwargs = dict(return_sequences=return_sequences, go_backwards=go_backwards,
                  zero_output_for_mask=zero_output_for_mask)
    stock, fused = STOCK[cell](5, **kwargs), FUSED[cell](5, **kwargs)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    for layer in (stock, fused):
        layer.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    mask = right_padded_mask(rng, 4, 6)
    mask[1, -1] = False
    want = stock(x, mask=mask[:, :, None])
    assert_same(want, stock(x, mask=mask))  # the stock layer reads both alike
    assert_same(fused(x, mask=mask[:, :, None]), want)
    traced = tf.function(lambda t, m: fused(t, mask=m),
                         input_signature=[tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None, 1], tf.bool)])
    assert_same(traced(x, mask[:, :, None]), want)


def test_mask_of_another_shape_is_an_error_naming_it(rng):
    """A mask whose shape is not the inputs' [batch, time] (or [batch, time, 1]): an error naming mask and the
    expected shape, when the shapes are known (eager, a static trace) and when they are checked as the graph runs,
    rather than an error from inside the reductions."""
    layer = tf_ops.FusedLSTM(4, return_sequences=True)
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    layer(x)
    named = r"mask must have the shape \[batch, time\] of the inputs"
    for bad in ((3, 6), (3,), (3, 5, 2), (2, 5), (3, 5, 1, 1), (5, 3)):
        mask = np.ones(bad, bool)
        with pytest.raises(ValueError, match=named + r", \[3, 5\]"):
            layer(x, mask=mask)
        with pytest.raises(ValueError, match=named + r", \[3, 5\]"):
            tf.function(lambda t, m: layer(t, mask=m))(x, mask)
        traced = tf.function(lambda t, m: layer(t, mask=m), input_signature=[
            tf.TensorSpec([None, None, 2]), tf.TensorSpec([None] * len(bad), tf.bool)])
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=named):
            traced(x, mask)
    # Unknown rank, checked when it runs: [B, T] and [B, T, 1] pass, another shape is the same error.
    traced = tf.function(lambda t, m: layer(t, mask=m), input_signature=[
        tf.TensorSpec([None, None, 2]), tf.TensorSpec(None, tf.bool)])
    want = layer(x, mask=np.ones((3, 5), bool))
    for good in ((3, 5), (3, 5, 1)):
        np.testing.assert_array_equal(traced(x, np.ones(good, bool)), want)
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
        traced(x, np.ones((3, 6), bool))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stateful_initial_state_of_another_batch_is_a_clear_error(rng, cell, bidirectional):
    """initial_state for a stateful layer of another batch size than its states: an error naming initial_state
    and both sizes (eager; when the graph runs with an unknown batch), not the state variables' assign error. With
    the states' batch size, initial_state is used and carried as the stock stateful layer does."""
    n = (2 if cell == "lstm" else 1) * (2 if bidirectional else 1)
    if bidirectional:
        stock = keras.layers.Bidirectional(STOCK[cell](4, stateful=True, return_sequences=True))
        fused = FUSED[cell](4, stateful=True, return_sequences=True, bidirectional=True)
    else:
        stock, fused = (cls(4, stateful=True, return_sequences=True) for cls in (STOCK[cell], FUSED[cell]))
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    for layer in (stock, fused):
        layer.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    states = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(n)]
    assert_same(fused(x, initial_state=states), stock(x, initial_state=states))
    assert_same(list(fused.states), list(stock.states))
    for batch in (2, 4):
        other = [s[:1].repeat(batch, axis=0) for s in states]
        for inputs in (x, rng.standard_normal((batch, 5, 2)).astype(np.float32)):
            with pytest.raises(ValueError, match=f"initial_state has batch size {batch}.* states have batch size 3"):
                fused(inputs, initial_state=other)
        traced = tf.function(lambda t, *s: fused(t, initial_state=list(s)),
                             input_signature=[tf.TensorSpec([None, None, 2])] + [tf.TensorSpec([None, 4])] * n)
        with pytest.raises(tf.errors.InvalidArgumentError, match="initial_state has another batch size.* 3"):
            traced(x[:1].repeat(batch, axis=0), *other)
    assert_same(list(fused.states), list(stock.states))  # the failed calls left the states alone


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("stateful", [False, True])
def test_building_a_built_layer_again_keeps_its_weights_as_the_stock_layer(rng, cell, stateful):
    """layer.build() on a built layer: the stock layer keeps its weights (its cell is built once) and a stateful one
    zeroes its states. The fused layer added its weights a second time, which Keras' state lock refused with an
    error about adding state to a built layer."""
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    stock, fused = STOCK[cell](5, stateful=stateful), FUSED[cell](5, stateful=stateful)
    for layer in (stock, fused):
        layer.build(x.shape)
    randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    assert_same(fused(x), stock(x))  # stateful: the states are no longer zero
    for layer in (stock, fused):
        layer.build(x.shape)
    assert len(fused.weights) == len(stock.weights)
    assert_same(fused.get_weights(), stock.get_weights())
    if stateful:
        assert_same(list(fused.states), list(stock.states))
        assert all(not np.any(np.asarray(s)) for s in fused.states)
    assert_same(fused(x), stock(x))


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_get_initial_state_in_the_compute_dtype_as_the_stock_layer(global_policy, policy, cell):
    """get_initial_state gives the stock layer's dtype: the compute dtype (float16 under mixed_float16), where the
    fused layer gave float32 whatever the policy, so code combining it with the layer's outputs failed on dtypes."""
    global_policy(policy)
    stock, fused = STOCK[cell](3), FUSED[cell](3)
    for layer in (stock, fused):
        layer.build((2, 4, 5))
    want, got = stock.get_initial_state(6), fused.get_initial_state(6)
    dtypes = [[keras.backend.standardize_dtype(s.dtype) for s in states] for states in (got, want)]
    assert dtypes[0] == dtypes[1] == [keras.DTypePolicy(policy).compute_dtype] * len(want)
    assert [tuple(s.shape) for s in got] == [tuple(s.shape) for s in want]
