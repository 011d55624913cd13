"""An OpenNMT/Luong-style RNN translation model in Keras 3, on the fused LSTM ops, and its beam-search decoders.

    model = NMTModel(NMTConfig(src_vocab_size=8000, tgt_vocab_size=8000))
    loss, tokens = model.token_loss(src_ids_bs, tgt_in_bt, tgt_out_bt, seed_2)        # teacher forcing
    translator = Translator(model, beam_size=5, decoder="fused")               # or decoder="stock"
    ids_bkl, scores_bk = translator(src_ids_bs, max_length, length_penalty)   # max_length: scalar or [B]

Model (Luong et al. 2015, as OpenNMT-py's defaults): embeddings; a stack of bidirectional LSTMs (tf_ops.FusedLSTM,
both directions in one op call, H/2 units each way so outputs are H wide); a stack of LSTMs whose first layer
takes [target embedding; previous attentional vector] (input feeding); global attention with the "general"
(h_t W h_s) or "dot" (h_t . h_s) score and attentional vector tanh(W_c [context; h_t]); an output projection,
optionally tied to the target embeddings (needs emb_dim == hidden). The encoder's final states, forward and
backward concatenated, start the decoder layer by layer. Dropout on embeddings, between stacked layers and on the
attentional vector. Masked cross-entropy with label smoothing.

The decoder's LSTM weights live in keras.layers.LSTMCell objects (kernel [in, 4H], recurrent_kernel [H, 4H],
bias [4H], gate order i, f, c, o). Three ways run them, all the same function of the same weights:
- training: a tf.while_loop over target positions with the cell written out (differentiable, and the
  embedding half of the first layer's input product is done for all positions at once);
- decoder="fused" (the fast path): the fused bidirectional encoder (one op call per layer for the whole source),
  decoder steps as plain TF cell math on the cells' weights;
- decoder="fused_op": the same, but each decoder layer step is one tf_ops.lstm_sequence call with max_time=1.
  Measured slower than the plain step here (bench/nmt_bench.py): inside the beam-search loop a max_time=1 op call
  costs more than the few small ops of one cell step;
- decoder="stock": each step calls the keras.layers.LSTMCell objects themselves, and the encoder is
  keras.layers.Bidirectional(keras.layers.LSTM) with the same weights: the stock-Keras reference path
  (the one a stock TF Serving can run, as it has no custom op).
"""
import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf

import tf_ops
from models.beam_search import beam_search

_MASKED_SCORE = -1e9  # not -inf: an empty source then attends uniformly over zeros instead of giving NaN
ATTENTION_TYPES = ("general", "dot")
DECODERS = ("fused", "fused_op", "stock")


@dataclasses.dataclass
class NMTConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    emb_dim: int = 256
    hidden: int = 256           # decoder units = encoder output width (hidden // 2 per direction)
    enc_layers: int = 2
    dec_layers: int = 2
    attention: str = "general"  # "general" or "dot"
    input_feed: bool = True
    tie_output: bool = True     # output projection = target embeddings^T (needs emb_dim == hidden)
    dropout: float = 0.3
    label_smoothing: float = 0.1
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ValueError(f"NMTConfig: {message}")
        need(self.src_vocab_size > 0 and self.tgt_vocab_size > 0, "vocabulary sizes must be positive")
        need(self.emb_dim > 0 and self.hidden > 0, "emb_dim and hidden must be positive")
        need(self.hidden % 2 == 0, f"hidden must be even (hidden // 2 units per encoder direction), got "
                                   f"{self.hidden}")
        need(self.enc_layers >= 1 and self.dec_layers >= 1, "enc_layers and dec_layers must be >= 1")
        need(self.enc_layers == self.dec_layers, f"the encoder's final states start the decoder layer by layer: "
                                                 f"enc_layers ({self.enc_layers}) must equal dec_layers "
                                                 f"({self.dec_layers})")
        need(self.attention in ATTENTION_TYPES, f"attention must be one of {ATTENTION_TYPES}, got "
                                                f"{self.attention!r}")
        need(not self.tie_output or self.emb_dim == self.hidden,
             f"tie_output needs emb_dim == hidden, got {self.emb_dim} and {self.hidden} (the command line: "
             f"--emb-dim equal to --hidden, or --no-tie)")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def stateless_dropout(x, rate, seed_2):
    """Inverted dropout whose mask is a pure function of seed_2 ([2] int): a resumed run draws the same masks."""
    if rate <= 0.0:
        return x
    keep = tf.random.stateless_uniform(tf.shape(x), seed=seed_2) >= rate
    return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


def _lstm_cell_math(x_proj_ng, h_nh, c_nh, recurrent_kernel_hg):
    """One keras.layers.LSTMCell step given x @ kernel + bias (gate order i, f, c, o)."""
    z_ng = x_proj_ng + tf.matmul(h_nh, recurrent_kernel_hg)
    z_i, z_f, z_c, z_o = tf.split(z_ng, 4, axis=1)
    c_nh = tf.sigmoid(z_f) * c_nh + tf.sigmoid(z_i) * tf.tanh(z_c)
    h_nh = tf.sigmoid(z_o) * tf.tanh(c_nh)
    return h_nh, c_nh


class NMTModel(keras.Model):
    """The weights and the teacher-forced forward pass; decoding is Translator's."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        cfg = config
        self.src_embedding = keras.layers.Embedding(cfg.src_vocab_size, cfg.emb_dim, name="src_embedding")
        self.tgt_embedding = keras.layers.Embedding(cfg.tgt_vocab_size, cfg.emb_dim, name="tgt_embedding")
        self.encoder_layers = [
            tf_ops.FusedLSTM(cfg.hidden // 2, bidirectional=True, return_sequences=True, return_state=True,
                             zero_output_for_mask=True, name=f"encoder_{i}") for i in range(cfg.enc_layers)]
        self.decoder_cells = [keras.layers.LSTMCell(cfg.hidden, name=f"decoder_{i}") for i in range(cfg.dec_layers)]
        if cfg.attention == "general":
            self.attention_kernel = keras.layers.Dense(cfg.hidden, use_bias=False, name="attention_general")
        self.attention_out = keras.layers.Dense(cfg.hidden, use_bias=False, name="attention_out")
        if not cfg.tie_output:
            self.output_projection = keras.layers.Dense(cfg.tgt_vocab_size, use_bias=False,
                                                        name="output_projection")
        self.output_bias = self.add_weight(name="output_bias", shape=(cfg.tgt_vocab_size,), initializer="zeros")
        self._build_all()

    def _build_all(self):
        cfg = self.config
        self.src_embedding.build((None, None))
        self.tgt_embedding.build((None, None))
        width = cfg.emb_dim
        for layer in self.encoder_layers:
            layer.build((None, None, width))
            width = cfg.hidden
        dec_in = cfg.emb_dim + (cfg.hidden if cfg.input_feed else 0)
        for cell in self.decoder_cells:
            cell.build((None, dec_in))
            dec_in = cfg.hidden
        if cfg.attention == "general":
            self.attention_kernel.build((None, cfg.hidden))
        self.attention_out.build((None, 2 * cfg.hidden))
        if not cfg.tie_output:
            self.output_projection.build((None, cfg.hidden))
        self.built = True

    # ---- pieces shared by training and decoding ----
    def output_kernel(self):
        """[hidden, tgt_vocab]: the tied target embeddings transposed, or the projection's kernel."""
        if self.config.tie_output:
            return tf.transpose(tf.convert_to_tensor(self.tgt_embedding.embeddings))
        return tf.convert_to_tensor(self.output_projection.kernel)

    def logits(self, attn_nh):
        return tf.matmul(attn_nh, self.output_kernel()) + self.output_bias

    def source_lengths(self, src_ids_bs):
        return tf.reduce_sum(tf.cast(tf.not_equal(src_ids_bs, self.config.pad_id), tf.int32), axis=1)

    def encode(self, src_ids_bs, training=False, seed_2=None, stock_encoder=None):
        """Returns (memory dict: keys/values [B, S, H], mask [B, S]; decoder initial states [(h, c)] per layer).

        Source ids must be right-padded with pad_id. stock_encoder: a list of keras.layers.Bidirectional(LSTM)
        copies of the encoder layers (the stock path), else the fused layers run.
        """
        cfg = self.config
        lengths_b = self.source_lengths(src_ids_bs)
        mask_bs = tf.sequence_mask(lengths_b, tf.shape(src_ids_bs)[1])
        x_bse = self.src_embedding(src_ids_bs)
        if training:
            x_bse = stateless_dropout(x_bse, cfg.dropout, tf.random.experimental.stateless_fold_in(seed_2, 1))
        states = []
        layers = stock_encoder if stock_encoder is not None else self.encoder_layers
        for i, layer in enumerate(layers):
            if i > 0 and training:
                x_bse = stateless_dropout(x_bse, cfg.dropout,
                                          tf.random.experimental.stateless_fold_in(seed_2, 10 + i))
            x_bse, h_fw, c_fw, h_bw, c_bw = layer(x_bse, mask=mask_bs)
            states.append((tf.concat([h_fw, h_bw], axis=1), tf.concat([c_fw, c_bw], axis=1)))
        # Zero past each length (the stock layer may carry outputs over masked steps).
        values_bsh = tf.where(mask_bs[:, :, None], x_bse, tf.zeros_like(x_bse))
        if cfg.attention == "general":
            keys_bsh = tf.reshape(tf.matmul(tf.reshape(values_bsh, [-1, cfg.hidden]),
                                            self.attention_kernel.kernel), tf.shape(values_bsh))
        else:
            keys_bsh = values_bsh
        return {"keys": keys_bsh, "values": values_bsh, "mask": mask_bs}, states

    def attend(self, query_nh, keys_nsh, values_nsh, mask_ns):
        """Luong global attention: returns the attentional vector tanh(W_c [context; h_t]) [N, H]."""
        scores_ns = tf.squeeze(tf.matmul(keys_nsh, query_nh[:, :, None]), axis=2)
        scores_ns = tf.where(mask_ns, scores_ns, _MASKED_SCORE)
        align_ns = tf.nn.softmax(scores_ns, axis=1)
        context_nh = tf.squeeze(tf.matmul(align_ns[:, None, :], values_nsh), axis=1)
        return tf.tanh(tf.matmul(tf.concat([context_nh, query_nh], axis=1), self.attention_out.kernel))

    # ---- training ----
    def decode_teacher_forced(self, memory, states, tgt_in_bt, training=False, seed_2=None):
        """Attentional vectors [B, T, H] for every target position (after dropout when training)."""
        cfg = self.config
        batch, max_time = tf.shape(tgt_in_bt)[0], tf.shape(tgt_in_bt)[1]
        emb_bte = self.tgt_embedding(tgt_in_bt)
        if training:
            emb_bte = stateless_dropout(emb_bte, cfg.dropout, tf.random.experimental.stateless_fold_in(seed_2, 2))
        cells = self.decoder_cells
        kernel0 = tf.convert_to_tensor(cells[0].kernel)
        # The embedding half of layer 0's input product, every position at once (one GEMM outside the loop).
        x_proj0_tbg = tf.transpose(tf.reshape(
            tf.matmul(tf.reshape(emb_bte, [-1, cfg.emb_dim]), kernel0[:cfg.emb_dim]) + cells[0].bias,
            [batch, max_time, 4 * cfg.hidden]), [1, 0, 2])
        feed_kernel = kernel0[cfg.emb_dim:]
        rate = cfg.dropout if training else 0.0
        # Per-position dropout masks drawn up front: [T, B, H] per site (layers 1.., attentional vector).
        masks = []
        for site in range(cfg.dec_layers):
            if rate > 0:
                seed = tf.random.experimental.stateless_fold_in(seed_2, 100 + site)
                keep = tf.random.stateless_uniform([max_time, batch, cfg.hidden], seed=seed) >= rate
                masks.append(tf.cast(keep, tf.float32) / (1.0 - rate))
            else:
                masks.append(tf.ones([max_time, batch, cfg.hidden]))
        attn_ta = tf.TensorArray(tf.float32, size=max_time, element_shape=tf.TensorShape([None, cfg.hidden]))
        h0 = tuple(h for h, _ in states)
        c0 = tuple(c for _, c in states)
        feed0 = tf.zeros([batch, cfg.hidden])

        def body(t, hs, cs, feed_nh, attn_ta):
            hs, cs = list(hs), list(cs)
            x_proj = x_proj0_tbg[t]
            if cfg.input_feed:
                x_proj = x_proj + tf.matmul(feed_nh, feed_kernel)
            hs[0], cs[0] = _lstm_cell_math(x_proj, hs[0], cs[0], cells[0].recurrent_kernel)
            inp = hs[0]
            for i in range(1, cfg.dec_layers):
                inp = inp * masks[i - 1][t]
                x_proj = tf.matmul(inp, cells[i].kernel) + cells[i].bias
                hs[i], cs[i] = _lstm_cell_math(x_proj, hs[i], cs[i], cells[i].recurrent_kernel)
                inp = hs[i]
            attn_nh = self.attend(inp, memory["keys"], memory["values"], memory["mask"])
            attn_nh = attn_nh * masks[-1][t]
            return t + 1, tuple(hs), tuple(cs), attn_nh, attn_ta.write(t, attn_nh)

        _, _, _, _, attn_ta = tf.while_loop(lambda t, *_: t < max_time, body, (0, h0, c0, feed0, attn_ta))
        return tf.transpose(attn_ta.stack(), [1, 0, 2])

    def token_loss(self, src_ids_bs, tgt_in_bt, tgt_out_bt, seed_2=None, training=False):
        """(mean label-smoothed cross-entropy over non-pad target tokens, number of such tokens)."""
        cfg = self.config
        memory, states = self.encode(src_ids_bs, training=training, seed_2=seed_2)
        attn_bth = self.decode_teacher_forced(memory, states, tgt_in_bt, training=training, seed_2=seed_2)
        valid_bt = tf.not_equal(tgt_out_bt, cfg.pad_id)
        # Project only the real target positions (padding would be a fifth of the largest GEMM).
        attn_nh = tf.boolean_mask(attn_bth, valid_bt)
        labels_n = tf.boolean_mask(tgt_out_bt, valid_bt)
        logp_nv = tf.nn.log_softmax(self.logits(attn_nh))
        nll_n = -tf.gather(logp_nv, labels_n, batch_dims=1)
        eps = cfg.label_smoothing
        loss_n = (1.0 - eps) * nll_n - eps * tf.reduce_mean(logp_nv, axis=1) if eps > 0 else nll_n
        tokens = tf.shape(labels_n)[0]
        return tf.reduce_sum(loss_n) / tf.maximum(tf.cast(tokens, tf.float32), 1.0), tokens


def stock_encoder_copy(model):
    """keras.layers.Bidirectional(keras.layers.LSTM) layers holding copies of the fused encoder's weights."""
    layers = []
    width = model.config.emb_dim
    for fused in model.encoder_layers:
        stock = keras.layers.Bidirectional(
            keras.layers.LSTM(model.config.hidden // 2, return_sequences=True, return_state=True),
            name="stock_" + fused.name)
        stock.build((None, None, width))
        stock.set_weights(fused.get_weights())  # the fused layer keeps Bidirectional's weight order
        layers.append(stock)
        width = model.config.hidden
    return layers


def int8_encoder_copy(model):
    """int8_weights=True copies of the fused encoder layers (recurrent kernels quantized per row)."""
    layers = []
    width = model.config.emb_dim
    for fused in model.encoder_layers:
        config = fused.get_config()
        config.update(int8_weights=True, name="int8_" + fused.name)
        layer = type(fused).from_config(config)
        layer.build((None, None, width))
        layer.set_weights(tf_ops.quantized_weights(fused))
        layers.append(layer)
        width = model.config.hidden
    return layers


def decode_lengths(src_ids_bs, max_length, pad_id=0):
    """Each sentence's decode cap, [B] int32: min(max_length, 2 * its source length + 10), the source length
    counting its non-padding ids (right-padded batches). Per sentence, so that a translation never depends on the
    other sentences of its batch (a cap from the padded width would)."""
    src_ids_bs = tf.convert_to_tensor(src_ids_bs, tf.int32)
    lengths_b = tf.reduce_sum(tf.cast(tf.not_equal(src_ids_bs, pad_id), tf.int32), axis=1)
    return tf.minimum(tf.cast(max_length, tf.int32), 2 * lengths_b + 10)


class Translator:
    """Beam-search decoding of an NMTModel in one tf.function: (src_ids [B, S], max_length, length_penalty) ->
    (ids [B, beam, L] int32, scores [B, beam]). PAD and BOS are never generated (their logits are -inf).

    decoder="fused": fused encoder, decoder steps as plain cell math. "fused_op": fused encoder, each decoder
    layer step one tf_ops.lstm_sequence call (max_time=1). "stock": keras.layers.Bidirectional(LSTM) encoder and
    keras.layers.LSTMCell decoder steps, same weights (copied from the model when the Translator is made), stock
    TF ops only.

    int8=True (decoder "fused" or "fused_op"): every recurrent kernel as INT8 rows with one scale per row
    (tf_ops.quantize_rows, quantized when the Translator is made): the encoder runs int8_weights=True copies of
    its FusedLSTM layers; "fused_op" decoder steps run the int8 op (tf_ops.lstm_sequence_int8); "fused" decoder
    steps, plain TF cell math, multiply by the kernel dequantized from the same int8 rows (the same numbers).
    """

    def __init__(self, model, beam_size=5, decoder="fused", int8=False):
        if decoder not in DECODERS:
            raise ValueError(f"Translator: decoder must be one of {DECODERS}, got {decoder!r}")
        if int8 and decoder == "stock":
            raise ValueError("Translator: int8=True needs decoder='fused' or 'fused_op' (the stock path has no "
                             "int8 kernels)")
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"Translator: beam_size must be a positive int, got {beam_size!r}")
        self.model = model
        self.beam_size = beam_size
        self.decoder = decoder
        self._stock_encoder = stock_encoder_copy(model) if decoder == "stock" else None
        self.int8 = bool(int8)
        if self.int8:
            self._stock_encoder = int8_encoder_copy(model)  # encode() runs these instead of the float layers
            self._decoder_q8 = [tf_ops.quantize_rows(keras.ops.convert_to_numpy(cell.recurrent_kernel))
                                for cell in model.decoder_cells]
            self._decoder_dequantized = [tf.constant(tf_ops.dequantize_rows(q, scale))
                                         for q, scale in self._decoder_q8]
        # PAD and BOS are never outputs (training never targets them): -inf logits keep them out of every beam.
        banned_v = np.zeros([model.config.tgt_vocab_size], np.float32)
        banned_v[[model.config.pad_id, model.config.bos_id]] = -np.inf
        self._banned_logits_v = tf.constant(banned_v)
        self._fn = tf.function(self._translate, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="src_ids"), tf.TensorSpec([None], tf.int32, name="max_length"),
            tf.TensorSpec([], tf.float32, name="length_penalty")])

    def __call__(self, src_ids_bs, max_length, length_penalty=0.0):
        """max_length: one cap for every sentence, or [B], one per sentence (decode_lengths)."""
        src_ids_bs = tf.convert_to_tensor(src_ids_bs, tf.int32)
        max_length = tf.convert_to_tensor(max_length)
        if not max_length.dtype.is_integer:  # int64 (or NumPy ints) are fine; a float length is a mistake
            raise TypeError(f"max_length must be an integer (or [B] integers), got {max_length.dtype.name}")
        max_length_b = tf.broadcast_to(tf.cast(max_length, tf.int32), tf.shape(src_ids_bs)[:1])
        return self._fn(src_ids_bs, max_length_b, tf.constant(length_penalty, tf.float32))

    def _lstm_step(self, i, x_nd, h_nh, c_nh):
        cell = self.model.decoder_cells[i]
        if self.decoder == "stock":
            h_nh, (_, c_nh) = cell(x_nd, [h_nh, c_nh])
            return h_nh, c_nh
        x_proj_ng = tf.matmul(x_nd, cell.kernel) + cell.bias
        if self.decoder == "fused":
            kernel = self._decoder_dequantized[i] if self.int8 else cell.recurrent_kernel
            return _lstm_cell_math(x_proj_ng, h_nh, c_nh, kernel)
        if self.int8:
            q, scale = self._decoder_q8[i]
            _, h_1nh, c_1nh = tf_ops.lstm_sequence_int8(x_proj_ng[:, None, :], q[None], scale[None], None, h_nh[None],
                                                        c_nh[None], direction="forward")
            return h_1nh[0], c_1nh[0]
        _, h_1nh, c_1nh = tf_ops.lstm_sequence(x_proj_ng[:, None, :], tf.convert_to_tensor(cell.recurrent_kernel)[None],
                                               None, h_nh[None], c_nh[None], direction="forward")
        return h_1nh[0], c_1nh[0]

    def _translate(self, src_ids_bs, max_length, length_penalty):
        model, cfg = self.model, self.model.config
        memory, states = model.encode(src_ids_bs, stock_encoder=self._stock_encoder)
        batch = tf.shape(src_ids_bs)[0]
        state = {"h": tuple(h for h, _ in states), "c": tuple(c for _, c in states),
                 "feed": tf.zeros([batch, cfg.hidden]), **memory}

        def symbols_to_logits(ids_n, step, state):
            x_nd = model.tgt_embedding(ids_n)
            if cfg.input_feed:
                x_nd = tf.concat([x_nd, state["feed"]], axis=1)
            hs, cs = [], []
            for i in range(cfg.dec_layers):
                h_nh, c_nh = self._lstm_step(i, x_nd, state["h"][i], state["c"][i])
                hs.append(h_nh)
                cs.append(c_nh)
                x_nd = h_nh
            attn_nh = model.attend(x_nd, state["keys"], state["values"], state["mask"])
            new_state = dict(state, h=tuple(hs), c=tuple(cs), feed=attn_nh)
            return model.logits(attn_nh) + self._banned_logits_v, new_state

        initial_ids_b = tf.fill([batch], cfg.bos_id)
        return beam_search(symbols_to_logits, initial_ids_b, state, self.beam_size, max_length, cfg.eos_id,
                           length_penalty)
