"""The fused backward ops: gradients against float64 numeric Jacobians, the stock Keras layers, and training.

Oracles: `tf.test.compute_gradient`'s numeric Jacobian of the pure-TF reference run in float64 (independent of
the fused kernels), and the stock Keras layers' autodiff with the same weights.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from tf_ops import reference
from conftest import rel_err

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

DIRECTIONS = ["forward", "reverse", "bidirectional"]


def _problem(rng, cell, direction, batch, max_time, units, proj):
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if cell == "lstm" else 3
    width = proj or units
    lengths = rng.integers(0, max_time + 1, batch).astype(np.int32)
    lengths[0] = max_time  # ragged, with a full row and (often) an empty one
    if batch > 2:
        lengths[-1] = 0
    p = {
        "x_proj": rng.standard_normal((batch, max_time, dirs * gates * units)),
        "recurrent_kernel": rng.standard_normal((dirs, width, gates * units)) / np.sqrt(width),
        "initial_h": 0.5 * rng.standard_normal((dirs, batch, width)),
    }
    if cell == "lstm":
        p["initial_c"] = 0.8 * rng.standard_normal((dirs, batch, units))
        if proj:
            p["projection_kernel"] = rng.standard_normal((dirs, units, proj)) / np.sqrt(units)
    else:
        p["recurrent_bias"] = 0.3 * rng.standard_normal((dirs, gates * units))
    return p, lengths


def _flat_outputs(cell, direction, lengths, clips, implementation, names):
    """f(*tensors) -> every output of the op concatenated, for compute_gradient."""
    cell_clip, proj_clip = clips

    def f(*tensors):
        a = dict(zip(names, tensors))
        if implementation == "reference":
            if cell == "lstm":
                outs = reference.lstm_sequence(a["x_proj"], a["recurrent_kernel"], a.get("projection_kernel"),
                                               lengths, a["initial_h"], a["initial_c"], direction, False,
                                               cell_clip, proj_clip)
            else:
                outs = reference.gru_sequence(a["x_proj"], a["recurrent_kernel"], a["recurrent_bias"], lengths,
                                              a["initial_h"], direction)
        elif cell == "lstm":
            outs = tf_ops.lstm_sequence(a["x_proj"], a["recurrent_kernel"], lengths, a["initial_h"], a["initial_c"],
                                        projection_kernel=a.get("projection_kernel"), direction=direction,
                                        cell_clip=cell_clip, proj_clip=proj_clip, implementation="op",
                                        training=implementation == "op-training")
        else:
            outs = tf_ops.gru_sequence(a["x_proj"], a["recurrent_kernel"], a["recurrent_bias"], lengths,
                                       a["initial_h"], direction=direction, implementation="op",
                                       training=implementation == "op-training")
        return tf.concat([tf.reshape(o, [-1]) for o in outs], axis=0)

    return tf.function(f)


CASES = [("lstm", 0, (0.0, 0.0)), ("lstm", 0, (0.6, 0.0)), ("lstm", 3, (0.0, 0.0)), ("lstm", 3, (0.5, 0.25)),
         ("gru", 0, (0.0, 0.0))]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("cell,proj,clips", CASES)
def test_gradient_matches_float64_numeric_jacobian(rng, cell, proj, clips, direction):
    p, lengths = _problem(rng, cell, direction, batch=3, max_time=4, units=5, proj=proj)
    names = list(p)
    # The fused op's Jacobian (its registered gradient, float32) ...
    fused = _flat_outputs(cell, direction, lengths, clips, "op-training" if proj else "op", names)
    theoretical, _ = tf.test.compute_gradient(fused, [tf.constant(p[n], tf.float32) for n in names])
    # ... against central differences of the reference in float64 (small delta: clips switch within 1e-5 only
    # for values that close to the clip).
    ref = _flat_outputs(cell, direction, lengths, clips, "reference", names)
    _, numeric = tf.test.compute_gradient(ref, [tf.constant(p[n], tf.float64) for n in names], delta=1e-5)
    for name, got, want in zip(names, theoretical, numeric):
        assert rel_err(got, want) < 2e-5, name
    if clips[0] > 0 or clips[1] > 0:
        # The clips must have been active somewhere, or this case tests nothing about them.
        unclipped = _flat_outputs(cell, direction, lengths, (0.0, 0.0), "reference", names)
        args = [tf.constant(p[n], tf.float64) for n in names]
        assert np.max(np.abs(ref(*args) - unclipped(*args))) > 1e-3


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_gradients_pass_through_empty_sequences(rng, cell):
    p, _ = _problem(rng, cell, "bidirectional", batch=2, max_time=3, units=4, proj=0)
    lengths = np.zeros(2, np.int32)
    tensors = {k: tf.constant(v, tf.float32) for k, v in p.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))
        if cell == "lstm":
            out, h, c = tf_ops.lstm_sequence(tensors["x_proj"], tensors["recurrent_kernel"], lengths,
                                             tensors["initial_h"], tensors["initial_c"], direction="bidirectional")
            loss = tf.reduce_sum(out) + tf.reduce_sum(3.0 * h) + tf.reduce_sum(-2.0 * c)
        else:
            out, h = tf_ops.gru_sequence(tensors["x_proj"], tensors["recurrent_kernel"], tensors["recurrent_bias"],
                                         lengths, tensors["initial_h"], direction="bidirectional")
            loss = tf.reduce_sum(out) + tf.reduce_sum(3.0 * h)
    grads = dict(zip(tensors, tape.gradient(loss, list(tensors.values()))))
    np.testing.assert_array_equal(grads["x_proj"], 0.0)
    np.testing.assert_array_equal(grads["recurrent_kernel"], 0.0)
    np.testing.assert_array_equal(grads["initial_h"], 3.0)
    if cell == "lstm":
        np.testing.assert_array_equal(grads["initial_c"], -2.0)


def test_backward_rejects_a_missing_reserve_by_name(rng):
    lib = tf_ops._loader.load()
    p, lengths = _problem(rng, "lstm", "forward", batch=2, max_time=3, units=4, proj=0)
    t = {k: tf.constant(v, tf.float32) for k, v in p.items()}
    out, h, c, reserve = lib.fused_lstm_sequence(t["x_proj"], t["recurrent_kernel"], tf.zeros([1, 4, 0]), lengths,
                                                 t["initial_h"], t["initial_c"])  # is_training=False: no reserve
    with pytest.raises(tf.errors.InvalidArgumentError, match="reserve"):
        lib.fused_lstm_sequence_grad(t["x_proj"], t["recurrent_kernel"], tf.zeros([1, 4, 0]), lengths,
                                     t["initial_h"], t["initial_c"], out, reserve, out, h, c)
    out, h, c, reserve = lib.fused_lstm_sequence(t["x_proj"], t["recurrent_kernel"], tf.zeros([1, 4, 0]), lengths,
                                                 t["initial_h"], t["initial_c"], is_training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="d_final_c"):
        lib.fused_lstm_sequence_grad(t["x_proj"], t["recurrent_kernel"], tf.zeros([1, 4, 0]), lengths,
                                     t["initial_h"], t["initial_c"], out, reserve, out, h, tf.zeros([1, 2, 5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="d_output"):
        lib.fused_lstm_sequence_grad(t["x_proj"], t["recurrent_kernel"], tf.zeros([1, 4, 0]), lengths,
                                     t["initial_h"], t["initial_c"], out, reserve, out[:, :2], h, c)


# ---- against the stock Keras layers -------------------------------------------------------------------------
STOCK = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
FUSED = {"lstm": tf_ops.FusedLSTM, "gru": tf_ops.FusedGRU}


def _randomize(layer, rng):
    layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in layer.get_weights()])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["forward", "go_backwards", "bidirectional"])
@pytest.mark.parametrize("training", [False, True])
def test_gradients_match_stock_layer(rng, cell, layout, training):
    batch, max_time, dim, units = 4, 7, 3, 6
    kwargs = dict(return_sequences=True, go_backwards=layout == "go_backwards")
    if layout == "bidirectional":
        stock = keras.layers.Bidirectional(STOCK[cell](units, **kwargs))
        fused = keras.layers.Bidirectional(FUSED[cell](units, **kwargs))
    else:
        stock, fused = STOCK[cell](units, **kwargs), FUSED[cell](units, **kwargs)
    x = tf.constant(rng.standard_normal((batch, max_time, dim)).astype(np.float32))
    lengths = rng.integers(1, max_time + 1, batch)
    lengths[0] = max_time
    mask = np.arange(max_time)[None, :] < lengths[:, None]
    stock.build(x.shape)
    fused.build(x.shape)
    _randomize(stock, rng)
    fused.set_weights(stock.get_weights())
    weights_out = tf.constant(rng.standard_normal((batch, max_time, units * (2 if layout == "bidirectional" else 1)))
                              .astype(np.float32))
    grads = []
    for layer in (stock, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, mask=mask, training=training)
            loss = tf.reduce_sum(tf.where(mask[:, :, None], out, 0.0) * weights_out)
        grads.append(tape.gradient(loss, [x] + layer.trainable_weights))
    assert len(grads[0]) == len(grads[1])
    for g_fused, g_stock in zip(grads[1], grads[0]):
        assert rel_err(g_fused, g_stock) < 1e-5


def _regression_data(rng, batch=16, max_time=12, dim=5):
    x = rng.standard_normal((batch, max_time, dim)).astype(np.float32)
    lengths = rng.integers(3, max_time + 1, batch)
    x[np.arange(max_time)[None, :] >= lengths[:, None]] = 0.0  # padding, masked by the Masking layer
    y = np.stack([np.sin(x[:, :, 0].sum(1)), np.cos(x[:, :, 1].sum(1))], 1).astype(np.float32)
    return x, y


def _model(rnn_layer, dim):
    inputs = keras.Input((None, dim))
    h = keras.layers.Masking(0.0)(inputs)
    h = rnn_layer(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("lstm", True), ("gru", True)])
def test_fit_follows_the_stock_loss_curve(rng, cell, bidirectional):
    """50 steps of model.fit with the fused layer track the stock layer's loss within 1e-4 relative."""
    x, y = _regression_data(rng)
    curves = []
    initial = None
    for layers in (STOCK, FUSED):
        rnn = layers[cell](8)
        model = _model(keras.layers.Bidirectional(rnn) if bidirectional else rnn, x.shape[2])
        if initial is None:
            initial = [rng.standard_normal(w.shape).astype(np.float32) * 0.3 for w in model.get_weights()]
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=50, shuffle=False, verbose=0)
        curves.append(np.array(history.history["loss"]))
    stock_curve, fused_curve = curves
    assert stock_curve[-1] < 0.5 * stock_curve[0]  # it learned something, so the curve means something
    assert np.max(np.abs(fused_curve - stock_curve) / np.abs(stock_curve)) < 1e-4


def test_distribute_strategy_trains(rng):
    """tf.distribute: the fused gradient under MirroredStrategy (one CPU replica here) matches the stock run."""
    x, y = _regression_data(rng)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    curves = []
    initial = None
    for layers in (STOCK, FUSED):
        with strategy.scope():
            model = _model(layers["lstm"](8), x.shape[2])
            if initial is None:
                initial = [rng.standard_normal(w.shape).astype(np.float32) * 0.3 for w in model.get_weights()]
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0)
        curves.append(np.array(history.history["loss"]))
    assert np.max(np.abs(curves[1] - curves[0]) / np.abs(curves[0])) < 1e-4


@pytest.mark.parametrize("cell, config", [
    ("lstm", dict(num_proj=3, cell_clip=0.6, proj_clip=0.5, bidirectional=True)),
    ("lstm", dict(go_backwards=True, return_sequences=True)), ("gru", dict(bidirectional=True, return_sequences=True))])
def test_second_order_gradients_match_the_reference(rng, cell, config):
    """Second order through the fused op (the backward's own gradient): a gradient penalty (nested tapes, ragged
    lengths) and a forward-mode JVP give what the pure-TF reference gives, differentiated twice by TF. That oracle
    shares the layer's own code (its input product x @ kernel + bias and that product's custom gradient), so where
    a stock Keras layer computes the same cell (no projection, no clips) it is the oracle too."""
    layer = (tf_ops.FusedLSTM if cell == "lstm" else tf_ops.FusedGRU)(4, **config)
    x = tf.constant(rng.standard_normal((3, 5, 6)).astype(np.float32))
    mask = tf.constant(np.arange(5)[None, :] < np.array([5, 2, 0])[:, None])
    layer.build(x.shape)
    for w in layer.trainable_weights:
        w.assign(rng.standard_normal(w.shape).astype(np.float32) * 0.5)
    tangent = tf.constant(rng.standard_normal(x.shape).astype(np.float32))

    def penalty_and_jvp(layer):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(tf.sin(layer(x, mask=mask, training=True)))
            p = tf.reduce_sum(inner.gradient(y, x) ** 2)
        grads = outer.gradient(p, [x] + layer.trainable_weights)
        with tf.autodiff.ForwardAccumulator(x, tangent) as acc:
            out = layer(x, mask=mask)
        return [np.asarray(g) for g in grads] + [np.asarray(acc.jvp(out))]

    got = penalty_and_jvp(layer)
    with tf_ops.implementation_scope("reference"):
        want = penalty_and_jvp(layer)
    for g, w in zip(got, want):  # measured: 1e-8 to 3e-7
        assert np.abs(w).max() > 0
        assert rel_err(g, w) < 1e-5
    if "num_proj" not in config:
        stock_cls = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
        kwargs = {k: v for k, v in config.items() if k != "bidirectional"}
        stock = stock_cls(4, **kwargs)
        if config.get("bidirectional"):
            stock = keras.layers.Bidirectional(stock)
        stock.build(x.shape)
        stock.set_weights(layer.get_weights())
        want = penalty_and_jvp(stock)
        assert len(want) == len(got)
        for g, w in zip(got, want):
            assert np.abs(w).max() > 0
            assert rel_err(g, w) < 1e-5


# ---- narrow (int8, 16-bit) recurrent weights: no gradient for them, but gradients through them ----------------
def _narrow(w, kind):
    """(the op's weight arguments, the float32 weights they stand for) for a float [D, K, N] kernel."""
    w = np.asarray(w, np.float32)
    if kind == "int8":
        q, scale = zip(*(tf_ops.quantize_rows(w_d) for w_d in w))
        q, scale = np.stack(q), np.stack(scale)
        return (tf.constant(q), tf.constant(scale)), tf_ops.dequantize_rows(q, scale).astype(np.float32)
    narrow = tf.constant(w, dtype=kind)
    return (narrow,), tf.cast(narrow, tf.float32).numpy()


@pytest.mark.parametrize("kind", ["int8", "bfloat16", "float16"])
@pytest.mark.parametrize("cell,proj,clips,direction", [
    ("lstm", 0, (0.0, 0.0), "forward"), ("lstm", 0, (0.0, 0.0), "bidirectional"), ("lstm", 3, (0.5, 0.25), "reverse"),
    ("gru", 0, (0.0, 0.0), "forward"), ("gru", 0, (0.0, 0.0), "bidirectional")])
def test_narrow_weight_ops_pass_gradients_to_their_float_inputs(rng, kind, cell, proj, clips, direction):
    """A frozen int8/16-bit layer sits in models that train other layers (a head on a frozen int8 ELMo, an
    embedding below it): gradients for x_proj, the initial states and the GRU's recurrent bias must flow. Oracle:
    TF autodiff through the pure-TF reference recurrence on the same dequantized weights (float32)."""
    p, lengths = _problem(rng, cell, direction, batch=5, max_time=6, units=4, proj=proj)
    rk_args, rk = _narrow(p["recurrent_kernel"], kind)
    pk_args, pk = _narrow(p["projection_kernel"], kind) if proj else ((), None)
    floats = {k: tf.constant(v, tf.float32) for k, v in p.items()
              if k in ("x_proj", "initial_h", "initial_c", "recurrent_bias")}
    cot = None

    def run(narrow_op):
        nonlocal cot
        with tf.GradientTape() as tape:
            tape.watch(list(floats.values()))
            a = floats
            if narrow_op and cell == "lstm":
                if kind == "int8":
                    kw = dict(projection_kernel_q8=pk_args[0], projection_scale=pk_args[1]) if proj else {}
                    outs = tf_ops.lstm_sequence_int8(a["x_proj"], *rk_args, lengths, a["initial_h"], a["initial_c"],
                                                     direction=direction, cell_clip=clips[0], proj_clip=clips[1],
                                                     implementation="op", **kw)
                else:
                    outs = tf_ops.lstm_sequence(a["x_proj"], rk_args[0], lengths, a["initial_h"], a["initial_c"],
                                                projection_kernel=pk_args[0] if proj else None, direction=direction,
                                                cell_clip=clips[0], proj_clip=clips[1], implementation="op")
            elif narrow_op:
                if kind == "int8":
                    outs = tf_ops.gru_sequence_int8(a["x_proj"], *rk_args, a["recurrent_bias"], lengths,
                                                    a["initial_h"], direction=direction, implementation="op")
                else:
                    outs = tf_ops.gru_sequence(a["x_proj"], rk_args[0], a["recurrent_bias"], lengths, a["initial_h"],
                                               direction=direction, implementation="op")
            elif cell == "lstm":
                outs = reference.lstm_sequence(a["x_proj"], tf.constant(rk), None if pk is None else tf.constant(pk),
                                               lengths, a["initial_h"], a["initial_c"], direction, False, *clips)
            else:
                outs = reference.gru_sequence(a["x_proj"], tf.constant(rk), a["recurrent_bias"], lengths,
                                              a["initial_h"], direction)
            if cot is None:
                cot = [tf.constant(rng.standard_normal(o.shape), tf.float32) for o in outs]
            loss = tf.add_n([tf.reduce_sum(o * c) for o, c in zip(outs, cot)])
        return tape.gradient(loss, list(floats.values()))

    want = run(narrow_op=False)
    got = run(narrow_op=True)
    for name, g, w in zip(floats, got, want):
        assert g is not None, name
        assert rel_err(g, w) < 1e-5, name


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
def test_a_frozen_narrow_layer_lets_the_layers_around_it_train(rng, kind):
    """Embedding -> frozen int8/16-bit FusedLSTM -> Dense trains (it raised 'has no gradient'); the trainable
    layers' gradients equal those of the same model with a stock keras.layers.LSTM holding the dequantized weights."""
    vocab, dim, units, batch, max_time = 11, 5, 6, 4, 7

    def build(rnn):
        inp = keras.Input((None,), dtype="int32")
        h = keras.layers.Embedding(vocab, dim, mask_zero=True, name="emb")(inp)
        h = rnn(h)
        return keras.Model(inp, keras.layers.Dense(2, name="head")(h))

    float_model = build(tf_ops.FusedLSTM(units, name="rnn"))
    for layer in float_model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in layer.get_weights()])
    model = tf_ops.quantize_model(float_model, kind)
    model.get_layer("rnn").trainable = False
    layer = model.get_layer("rnn")
    named = {v.path.split("/")[-1]: v.numpy() for v in layer.weights}
    if kind == "int8":
        rec = tf_ops.dequantize_rows(named["recurrent_kernel_q8"], named["recurrent_scale"])
    else:
        rec = named["recurrent_kernel"].astype(np.float32)
    stock_model = build(keras.layers.LSTM(units, name="rnn"))
    stock_model.get_layer("emb").set_weights(model.get_layer("emb").get_weights())
    stock_model.get_layer("head").set_weights(model.get_layer("head").get_weights())
    stock_model.get_layer("rnn").set_weights([named["kernel"], rec, named["bias"]])
    stock_model.get_layer("rnn").trainable = False
    ids = rng.integers(1, vocab, (batch, max_time)).astype(np.int32)
    ids[1, 4:] = 0  # ragged
    y = rng.standard_normal((batch, 2)).astype(np.float32)
    grads = []
    for m in (model, stock_model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((m(ids) - y) ** 2)
        names = [v.path for v in m.trainable_weights]
        assert not any("rnn" in n for n in names), names
        grads.append(tape.gradient(loss, m.trainable_weights))
    assert len(grads[0]) == len(grads[1]) == 3  # embedding, head kernel and bias
    for g, w in zip(grads[0], grads[1]):
        assert rel_err(tf.convert_to_tensor(g), tf.convert_to_tensor(w)) < 1e-5
    model.compile("sgd", "mse")
    before = model.get_layer("emb").get_weights()[0].copy()
    model.fit(ids, y, epochs=1, verbose=0)
    assert not np.allclose(model.get_layer("emb").get_weights()[0], before)
