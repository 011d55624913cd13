"""Stock Keras recurrent layers -> fused layers, with their trained weights.

    fused_model = tf_ops.fuse_model(stock_model)   # every LSTM / GRU / RNN(LSTMCell|GRUCell), Bidirectional too
    fused_layer = tf_ops.fuse_layer(stock_layer)   # one built layer

A model trained (or saved as `.weights.h5`) with the stock layers runs on the fused op without retraining: build
the stock model, load its weights, convert. The fused layers take the stock weights in the stock order, so the
copy is exact; `bidirectional` stock wrappers become one fused layer that runs both directions in one op call.
"""
import warnings

import keras

_SKIP_KEYS = ("name",)


def _stock_type(layer):
    """The fused class for an exact keras.layers.LSTM / GRU, or keras.layers.RNN around an exact LSTMCell /
    GRUCell (a subclass may change the math: not converted)."""
    from tf_ops import layers

    if type(layer) is keras.layers.RNN:
        return {keras.layers.LSTMCell: layers.FusedLSTM, keras.layers.GRUCell: layers.FusedGRU}.get(type(layer.cell))
    return {keras.layers.LSTM: layers.FusedLSTM, keras.layers.GRU: layers.FusedGRU}.get(type(layer))


_RNN_KEYS = ("name", "dtype", "return_sequences", "return_state", "go_backwards", "stateful", "unroll",
             "zero_output_for_mask")


def _layer_config(layer):
    """The config of a stock LSTM/GRU, or of an RNN(LSTMCell/GRUCell) flattened into the same keys (the cell's
    settings, the RNN's sequence options)."""
    if type(layer) is not keras.layers.RNN:
        return layer.get_config()
    rnn_config = layer.get_config()
    config = {k: v for k, v in layer.cell.get_config().items() if k not in ("name", "dtype", "trainable")}
    config.update({k: rnn_config[k] for k in _RNN_KEYS if k in rnn_config})
    config["trainable"] = layer.trainable and layer.cell.trainable
    return config


def _left_stock_reason(layer):
    """Why fuse_model leaves a layer around stock LSTM/GRU math stock, for the wrappers it does not convert; None
    for any other layer."""
    if isinstance(layer, keras.layers.Bidirectional):
        return _left_stock_reason(layer.forward_layer)
    if type(layer) is keras.layers.RNN and isinstance(layer.cell, keras.layers.StackedRNNCells):
        cells = [type(c).__name__ for c in layer.cell.cells]
        if any(type(c) in (keras.layers.LSTMCell, keras.layers.GRUCell) for c in layer.cell.cells):
            return (f"RNN over StackedRNNCells is not converted: a fused layer runs one cell ({cells} here); "
                    "one LSTM/GRU layer per cell (return_sequences=True below the top) converts")
    if isinstance(layer, keras.layers.TimeDistributed) and is_stock_recurrent(layer.layer):
        return (f"TimeDistributed wrapper around {type(layer.layer).__name__} {layer.layer.name!r} is not "
                "converted by fuse_model; TimeDistributed(tf_ops.fuse_layer(inner layer)) is its fused twin")
    return None


def is_stock_recurrent(layer):
    """True for a stock keras.layers.LSTM / GRU / RNN(LSTMCell|GRUCell), or a keras.layers.Bidirectional around
    one."""
    if isinstance(layer, keras.layers.Bidirectional):
        return _stock_type(layer.forward_layer) is not None
    return _stock_type(layer) is not None


def stock_recurrent_layers(model):
    """Names of the stock recurrent layers (is_stock_recurrent) anywhere inside `model`, a Bidirectional counted
    once (not its two inner layers)."""
    names = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if is_stock_recurrent(layer):
            names.append(layer.name)
        else:
            names += stock_recurrent_layers(layer)
    return names


def _fused_config(layer):
    """The fused class and its config for a stock layer; ValueError saying why one cannot be made."""
    reason = _left_stock_reason(layer)
    if reason:
        raise ValueError(reason)
    if not isinstance(layer, keras.layers.Bidirectional):
        cls = _stock_type(layer)
        if cls is None:
            raise ValueError(f"{type(layer).__name__} is not a stock LSTM or GRU")
        return cls, _layer_config(layer)
    fw, bw = layer.forward_layer, layer.backward_layer
    cls = _stock_type(fw)
    if cls is None or _stock_type(bw) is not cls:
        raise ValueError("Bidirectional needs the same stock LSTM or GRU in both directions")
    if fw.go_backwards or not bw.go_backwards:
        raise ValueError("Bidirectional with a forward layer that goes backwards has no fused equivalent")
    fw_config, bw_config = _layer_config(fw), _layer_config(bw)
    # Initializers do not matter: the trained weights are copied. Nor does the seed: it only feeds dropout draws,
    # which the fused layer makes per direction from the forward layer's seed.
    differ = sorted(k for k in fw_config if k not in _SKIP_KEYS + ("go_backwards", "unit_forget_bias", "seed")
                    and not k.endswith("_initializer") and fw_config[k] != bw_config.get(k))
    if differ:
        raise ValueError(f"Bidirectional's two directions differ in {differ}; the fused layer runs one "
                         "configuration in both directions")
    config = dict(fw_config)
    config.update(name=layer.name, bidirectional=True, merge_mode=layer.merge_mode, go_backwards=False,
                  dtype=layer.dtype_policy.name, trainable=layer.trainable and fw.trainable)
    return cls, config


def fuse_layer(layer):
    """A fused twin of a stock layer (keras.layers.LSTM, GRU, or Bidirectional around one), with its weights if
    it is built. Raises ValueError when the stock configuration has no fused equivalent (recurrent_dropout,
    activations other than tanh/sigmoid, GRU reset_after=False, ...), saying which. A stateful layer's current
    states come along."""
    cls, config = _fused_config(layer)
    try:
        fused = _construct(cls, config)
    except ValueError as e:
        raise ValueError(f"{layer.name} cannot be fused: {e}") from None
    if layer.built:
        fused.build(_input_shape(layer))
        fused.set_weights(layer.get_weights())
        _copy_states(layer, fused)
    return fused


def _construct(cls, config):
    """cls.from_config(config), with the constructor's ValueError (unsupported settings) passed on as one; Keras
    wraps it in a TypeError whose message ends with the original."""
    try:
        return cls.from_config(config)
    except TypeError as e:
        raise ValueError(str(e).split("Exception encountered: ")[-1]) from None


def _input_shape(layer):
    sub = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    kernel = sub.cell.kernel
    batch = sub.states[0].shape[0] if sub.stateful and sub.states else None  # stateful: the states' batch
    return (batch, None, kernel.shape[0])


def _copy_states(src, dst):
    """A stateful recurrent layer's current states into its twin (the same order: per direction h, c)."""
    src_states, dst_states = getattr(src, "states", None), getattr(dst, "states", None)
    if getattr(src, "stateful", False) and src_states and dst_states:
        for s, d in zip(src_states, dst_states):
            d.assign(s)


def _copy_weights(src, dst, layer_weights):
    """Copies src's weights into its clone dst, layer by layer through nested models (cloned recursively)."""
    if isinstance(src, keras.Model) and isinstance(dst, keras.Model) and len(src.layers) == len(dst.layers):
        for s, d in zip(src.layers, dst.layers):
            _copy_weights(s, d, layer_weights)
    else:
        dst.set_weights(layer_weights(src, dst))
        _copy_states(src, dst)


def clone_with(model, clone_layer, layer_weights):
    """keras.models.clone_model(model, clone_layer, recursive) and the weights copied over: layer_weights(src,
    dst) gives the values for dst."""
    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for src, dst in zip(model.layers, copy.layers):
        _copy_weights(src, dst, layer_weights)
    return copy


def fuse_model(model, keep_unsupported=False):
    """A copy of `model` (functional or Sequential, nested ones included) whose stock keras.layers.LSTM / GRU
    layers, keras.layers.RNN(LSTMCell / GRUCell) layers and keras.layers.Bidirectional wrappers of any of them
    are tf_ops.FusedLSTM / FusedGRU layers with the
    same weights, names and outputs. A stock layer whose configuration has no fused equivalent is an error naming
    it and why, or, with keep_unsupported=True, stays stock (with a warning). Stock layers inside custom layers
    or subclassed models cannot be reached by Keras' cloning: an error, or a warning with keep_unsupported. So is
    an RNN over StackedRNNCells of LSTM/GRU cells, or a TimeDistributed wrapper around a stock layer: not converted,
    reported with the reason."""
    kept = []

    def clone(layer):
        if is_stock_recurrent(layer) or _left_stock_reason(layer):
            cls, config = _fused_config_or_none(layer, kept, keep_unsupported)
            if cls is not None:
                return cls.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    copy = clone_with(model, clone, lambda src, dst: src.get_weights())
    unreached = [name for name in stock_recurrent_layers(copy) if name not in kept]
    if unreached:
        message = (f"fuse_model: the stock layers {unreached} sit inside a custom layer or a subclassed model, "
                   "which Keras clones from its config as it was; convert them with tf_ops.fuse_layer")
        if not keep_unsupported:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return copy


def _fused_config_or_none(layer, kept, keep_unsupported):
    try:
        cls, config = _fused_config(layer)
        _construct(cls, config)  # the constructor's checks (activations, recurrent_dropout, ...)
        return cls, config
    except ValueError as e:
        message = f"fuse_model: {layer.name} cannot be fused: {e}"
        if not keep_unsupported:
            raise ValueError(message) from None
        warnings.warn(message + "; it stays a stock layer", stacklevel=3)
        kept.extend([layer.name] + stock_recurrent_layers(layer))  # a wrapper's inner layer is reported here
        return None, None
