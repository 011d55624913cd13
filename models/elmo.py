"""ELMo (Peters et al. 2018) in Keras 3, loading the released bilm-tf weight format (the one AllenNLP and TF Hub's
ELMo use). The biLM runs on `tf_ops.FusedLSTM`: one op call per layer runs both directions over the whole
sequence, with the projection and the cell/projection clips inside the op.

Python API
----------
    from models import elmo

    char_ids = elmo.batch_to_ids(sentences, max_characters_per_token=50)
        # sentences: list of tokenised sentences (list of str each). Returns np.int32 [batch, max_tokens + 2, 50]:
        # <S> and </S> added, UTF-8 bytes (first 48 of each token), +1 offset, all-zero rows for padding.

    model = elmo.load_elmo(options_file, weight_file, *, stateful=False, max_batch_size=128,
                           implementation="fused", trainable=False, name="elmo")
        # -> ElmoModel (a functional keras.Model). model(char_ids) returns a dict:
        #    "layer_0" .. "layer_{n_layers}": float32 [batch, max_tokens, 2 * projection_dim] (layer_0 is the
        #    char-CNN token embedding, twice; <S>/</S> removed; zeros past each sentence), "mask": bool [batch,
        #    max_tokens]. Wrap it in tf.function for speed (one trace serves every shape: elmo.embed_function).
        # stateful=True: the LSTM (h, c) of each batch row, layer and direction at the end of a call becomes the
        #    initial state of the same row in the next call (bilm-tf and AllenNLP do this; their published outputs
        #    depend on it). Rows past the batch keep their state; a batch may have at most max_batch_size rows.
        #    model.reset_states() zeroes the state. stateful=False: every call starts from zero state.
        # implementation="keras": the same network with the biLM on stock Keras layers (keras.layers.RNN of
        #    ProjectionLSTMCell, one RNN per layer and direction), for comparison and benchmarks.
        # implementation="fused_int8": the fused biLM with INT8 recurrent and projection kernels (one scale per
        #    row, tf_ops.quantize_rows; float32 arithmetic): the float weights are quantized when loaded.
        # implementation="fused_bf16": the fused biLM with bfloat16 recurrent and projection kernels (float32
        #    arithmetic on the rounded weights: half the bytes a step streams).
        # model.save("x.keras") and keras.models.load_model read back an ElmoModel (or a model holding one).
        # Layers: model.char_encoder (ElmoCharacterEncoder: char ids [B, T, 50] -> [B, T, P]) and model.bilm
        #    (ElmoBiLM: (token embeddings [B, T, P], mask=[B, T]) -> list of n_layers [B, T, 2P]), callable alone.

    model = elmo.build_elmo(options, **same keywords)      # options: dict as in options.json; random weights
    elmo.set_bilm_tf_weights(model, weights)               # weights: {hdf5 dataset path: np.ndarray}
    weights = elmo.read_bilm_tf_weights(weight_file, options)   # validated against the options
    options = elmo.read_options(options_file)                   # validated

    mix = elmo.ScalarMix(mixture_size=3, do_layer_norm=False, initial_scalar_parameters=None, trainable=True)
    vectors = mix([out["layer_0"], out["layer_1"], out["layer_2"]], mask=out["mask"])   # [B, T, 2P]
        # gamma * sum_k softmax(s)_k * layer_k, optionally each layer normalised over its unmasked elements first
        # (AllenNLP's ScalarMix).
    # Dtype policy: the ELMo network (char encoder and biLM) computes in float32 and returns float32 whatever
    # keras.mixed_precision's global policy; ScalarMix computes in float32 and returns the policy's compute dtype.

    embed = elmo.embed_function(model)        # tf.function over [None, None, C] int32 char ids
    vectors = elmo.embed_sentences(model, sentences, batch_size=32)   # list of np [n_layers+1, tokens, 2P]

Bad arguments raise ValueError/TypeError naming the argument; a missing file raises FileNotFoundError and a
malformed one ElmoFileError (a ValueError), both naming the file and what is wrong.

Command line
------------
    python -m models.elmo embed --options options.json --weights lm_weights.hdf5 < sentences.txt > vectors.hdf5

One tokenised sentence per line (split on whitespace). Writes one dataset per sentence, key str(line index),
[n_layers + 1, tokens, 2 * projection_dim] float32 (AllenNLP's `elmo --all` layout; --top / --average as there), and
"sentence_to_index" (JSON, sentence -> key; --forget-sentences drops it). Sentences are batched by length
(--batch-size, default 32) and every sentence starts from zero LSTM state, so a sentence's vectors do not depend on
the batching or on the other sentences. --stateful instead keeps the input order and carries each batch row's
state into the next batch, as AllenNLP's `elmo` command does (same --batch-size gives the same carry). Progress
goes to stderr. --input / --output name files instead of stdin / stdout. --int8 runs the biLM with INT8 recurrent
and projection weights (implementation="fused_int8"), --bf16 with bfloat16 ones ("fused_bf16"). Exit status: 0 on success, 2 for a bad
input (missing or malformed file: the message names the file and what is wrong), 1 for anything else.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import h5py
import keras
import numpy as np
import tensorflow as tf

import tf_ops

# ---- character ids (bilm-tf UnicodeCharsVocabulary / Batcher, AllenNLP ELMoCharacterMapper) ---------------------
# Raw ids: UTF-8 bytes 0-255 and five specials; every id is stored +1 so that 0 can mean "no token".
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
BOS_TOKEN, EOS_TOKEN = "<S>", "</S>"
MAX_CHARACTERS_PER_TOKEN = 50


class ElmoFileError(ValueError):
    """An options or weight file that exists but cannot be used; the message names the file and the problem."""


def _char_row(chars, max_chars):
    row = np.full(max_chars, PAD_CHAR, np.int32)
    row[0] = BOW_CHAR
    row[1:1 + len(chars)] = chars
    row[1 + len(chars)] = EOW_CHAR
    return row + 1


def _token_char_ids(token, max_chars, cache):
    row = cache.get(token)
    if row is None:
        if token == BOS_TOKEN:
            row = _char_row([BOS_CHAR], max_chars)
        elif token == EOS_TOKEN:
            row = _char_row([EOS_CHAR], max_chars)
        else:
            # 'ignore' drops what UTF-8 cannot encode (lone surrogates), as both reference implementations do.
            row = _char_row(list(token.encode("utf-8", "ignore")[:max_chars - 2]), max_chars)
        cache[token] = row
    return row


def batch_to_ids(sentences, max_characters_per_token=MAX_CHARACTERS_PER_TOKEN):
    """Tokenised sentences -> np.int32 [batch, max_tokens + 2, max_characters_per_token] char ids, <S>/</S> added.

    Same ids as bilm-tf's Batcher.batch_sentences: row 0 is <S>, then the tokens, then </S>; shorter sentences
    are padded with all-zero rows. A token that is literally "<S>" or "</S>" becomes the boundary token.
    """
    if isinstance(max_characters_per_token, bool) or not isinstance(max_characters_per_token, (int, np.integer)) \
            or max_characters_per_token < 3:
        raise ValueError(f"batch_to_ids: max_characters_per_token must be an integer >= 3 (room for the begin- "
                         f"and end-of-word marks), got {max_characters_per_token!r}")
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__len__"):
        raise TypeError(f"batch_to_ids: sentences must be a list of tokenised sentences (lists of str), got "
                        f"{type(sentences).__name__}")
    for k, sentence in enumerate(sentences):
        if isinstance(sentence, (str, bytes)) or not isinstance(sentence, (list, tuple)):
            hint = "; split it into tokens first, e.g. line.split()" if isinstance(sentence, str) else ""
            raise TypeError(f"batch_to_ids: sentences[{k}] must be a list of token strings, got "
                            f"{type(sentence).__name__}{hint}")
        for j, token in enumerate(sentence):
            if not isinstance(token, str):
                raise TypeError(f"batch_to_ids: sentences[{k}][{j}] must be a str, got {type(token).__name__}")
    max_chars = int(max_characters_per_token)
    max_tokens = max((len(s) for s in sentences), default=0)
    ids_bxtxc = np.zeros((len(sentences), max_tokens + 2, max_chars), np.int32)
    cache = {}
    for k, sentence in enumerate(sentences):
        for j, token in enumerate([BOS_TOKEN, *sentence, EOS_TOKEN]):
            ids_bxtxc[k, j] = _token_char_ids(token, max_chars, cache)
    return ids_bxtxc


def tokens_to_char_ids(tokens_bxt, sequence_len_b, max_characters_per_token=MAX_CHARACTERS_PER_TOKEN):
    """batch_to_ids in TensorFlow ops (for a SavedModel on raw tokens): a padded token matrix [B, T] (tf.string,
    UTF-8) and the sentence lengths [B] -> int32 char ids [B, T + 2, max_characters_per_token].

    Same ids as batch_to_ids for the first sequence_len[b] tokens of each row (entries past a row's length are
    ignored); rows are padded to T + 2 positions (batch_to_ids pads to the longest sentence + 2: extra padding
    rows are all zeros either way, so the model's outputs at real tokens are the same). Raises
    InvalidArgumentError naming the argument when the shapes disagree or a length is outside [0, T].
    """
    max_chars = int(max_characters_per_token)
    tokens_bxt = tf.convert_to_tensor(tokens_bxt, tf.string)
    sequence_len_b = tf.convert_to_tensor(sequence_len_b)
    if sequence_len_b.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"tokens_to_char_ids: sequence_len must be int32 or int64, got {sequence_len_b.dtype.name}")
    sequence_len_b = tf.cast(sequence_len_b, tf.int32)
    for tensor, rank, what in ((tokens_bxt, 2, "tokens must be a [batch, max_tokens] string matrix"),
                               (sequence_len_b, 1, "sequence_len must be a [batch] vector")):
        if tensor.shape.rank is not None and tensor.shape.rank != rank:
            raise tf.errors.InvalidArgumentError(None, None, f"{what}, got shape {tensor.shape}")
    checks = [
        tf.debugging.assert_rank(tokens_bxt, 2, message="tokens must be a [batch, max_tokens] string matrix"),
        tf.debugging.assert_rank(sequence_len_b, 1, message="sequence_len must be a [batch] vector"),
    ]
    with tf.control_dependencies(checks):
        dims = tf.shape(tokens_bxt)
        batch, max_tokens = dims[0], dims[1]
    checks = [
        tf.debugging.assert_equal(tf.shape(sequence_len_b)[0], batch,
                                  message="sequence_len must have one entry per row of tokens"),
        tf.debugging.assert_non_negative(sequence_len_b, message="sequence_len must be >= 0"),
        tf.debugging.assert_less_equal(sequence_len_b, max_tokens,
                                       message="sequence_len must be <= the number of token columns"),
    ]
    with tf.control_dependencies(checks):
        sequence_len_b = tf.identity(sequence_len_b)
    # Each token's first max_chars - 2 UTF-8 bytes, zero-padded (decode_raw pads); n_bytes says how many are real.
    room = max_chars - 2
    bytes_bxtxr = tf.cast(tf.io.decode_raw(tokens_bxt, tf.uint8, fixed_length=room), tf.int32)
    n_bytes_bxt = tf.minimum(tf.strings.length(tokens_bxt, unit="BYTE"), room)
    position_c = tf.range(max_chars)
    shifted_bxtxc = tf.pad(bytes_bxtxr, [[0, 0], [0, 0], [1, 1]])  # position j holds byte j - 1
    n_bxtx1 = n_bytes_bxt[:, :, None]
    rows_bxtxc = tf.where(position_c == 0, BOW_CHAR,
                          tf.where(position_c <= n_bxtx1, shifted_bxtxc,
                                   tf.where(position_c == n_bxtx1 + 1, EOW_CHAR, PAD_CHAR))) + 1
    bos_row_c = tf.constant(_char_row([BOS_CHAR], max_chars))
    eos_row_c = tf.constant(_char_row([EOS_CHAR], max_chars))
    # A token that is literally <S> or </S> becomes the boundary token (as batch_to_ids does).
    rows_bxtxc = tf.where(tf.equal(tokens_bxt, BOS_TOKEN)[:, :, None], bos_row_c, rows_bxtxc)
    rows_bxtxc = tf.where(tf.equal(tokens_bxt, EOS_TOKEN)[:, :, None], eos_row_c, rows_bxtxc)
    ids_bxsxc = tf.concat([tf.tile(bos_row_c[None, None], [batch, 1, 1]), rows_bxtxc,
                           tf.zeros([batch, 1, max_chars], tf.int32)], axis=1)
    position_s = tf.range(max_tokens + 2)[None, :]
    len_bx1 = sequence_len_b[:, None]
    ids_bxsxc = tf.where((position_s == len_bx1 + 1)[:, :, None], eos_row_c, ids_bxsxc)
    return tf.where((position_s <= len_bx1 + 1)[:, :, None], ids_bxsxc, tf.zeros_like(ids_bxsxc))


# ---- options and weight files -------------------------------------------------------------------------------------
def _get(options, path, source, kind=None, default=KeyError):
    """options["a"]["b"] for path "a.b", with an error naming the file and the key."""
    value = options
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            if default is not KeyError:
                return default
            raise ElmoFileError(f"options file {source}: missing {path!r}")
        value = value[key]
    if kind == "positive_int" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ElmoFileError(f"options file {source}: {path!r} must be a positive integer, got {value!r}")
    if kind == "clip" and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                  or not value > 0):
        # TF's LSTMCell clips to [-0, 0] for a clip of 0, which zeroes every state: no released model does that.
        raise ElmoFileError(f"options file {source}: {path!r} must be a positive number or null, got {value!r}")
    return value


def validate_options(options, source="<options>"):
    """Checks an options dict (as in options.json) and returns a normalised copy (defaults filled in)."""
    if not isinstance(options, dict):
        raise ElmoFileError(f"options file {source}: expected a JSON object, got {type(options).__name__}")
    filters = _get(options, "char_cnn.filters", source)
    if not isinstance(filters, list) or not filters or not all(
            isinstance(f, (list, tuple)) and len(f) == 2 and all(isinstance(v, int) and v > 0 for v in f)
            for f in filters):
        raise ElmoFileError(f"options file {source}: 'char_cnn.filters' must be a non-empty list of "
                            f"[width, number of filters] pairs of positive integers, got {filters!r}")
    max_chars = _get(options, "char_cnn.max_characters_per_token", source, "positive_int")
    if max_chars < 3:
        raise ElmoFileError(f"options file {source}: 'char_cnn.max_characters_per_token' must be >= 3 (the begin- "
                            f"and end-of-word marks and at least one byte), got {max_chars}")
    if max(width for width, _ in filters) > max_chars:
        raise ElmoFileError(f"options file {source}: a filter is wider than max_characters_per_token={max_chars}")
    activation = _get(options, "char_cnn.activation", source)
    if activation not in ("relu", "tanh"):
        raise ElmoFileError(f"options file {source}: 'char_cnn.activation' must be 'relu' or 'tanh', "
                            f"got {activation!r}")
    n_highway = _get(options, "char_cnn.n_highway", source, default=0) or 0
    if isinstance(n_highway, bool) or not isinstance(n_highway, int) or n_highway < 0:
        raise ElmoFileError(f"options file {source}: 'char_cnn.n_highway' must be an integer >= 0, "
                            f"got {n_highway!r}")
    skip = _get(options, "lstm.use_skip_connections", source, default=False)
    if not isinstance(skip, bool):
        raise ElmoFileError(f"options file {source}: 'lstm.use_skip_connections' must be true or false, "
                            f"got {skip!r}")
    n_layers = _get(options, "lstm.n_layers", source, "positive_int", default=1)
    normalised = {
        "lstm": {
            "dim": _get(options, "lstm.dim", source, "positive_int"),
            "projection_dim": _get(options, "lstm.projection_dim", source, "positive_int"),
            "n_layers": n_layers,
            "cell_clip": _get(options, "lstm.cell_clip", source, "clip", default=None),
            "proj_clip": _get(options, "lstm.proj_clip", source, "clip", default=None),
            "use_skip_connections": skip,
        },
        "char_cnn": {
            "embedding": {"dim": _get(options, "char_cnn.embedding.dim", source, "positive_int")},
            "filters": [[int(w), int(n)] for w, n in filters],
            "n_highway": n_highway,
            "n_characters": _get(options, "char_cnn.n_characters", source, "positive_int", default=262),
            "max_characters_per_token": max_chars,
            "activation": activation,
        },
    }
    lstm = normalised["lstm"]
    if lstm["projection_dim"] > lstm["dim"]:
        # Even one layer without skip connections does not work: layer_0 (the token embedding, twice) would be
        # 2 * projection_dim wide and the LSTM layers 2 * dim, so the layers cannot be stacked (embed_sentences,
        # the embed command, bilm-tf's own output) or mixed (ScalarMix).
        raise ElmoFileError(f"options file {source}: lstm.projection_dim={lstm['projection_dim']} > "
                            f"lstm.dim={lstm['dim']} gives LSTM outputs of width {lstm['dim']}, which cannot "
                            "feed the next layer or its skip connection, nor match the token layer's width "
                            f"{lstm['projection_dim']} (projection_dim must be <= dim)")
    if normalised["char_cnn"]["n_characters"] < 262:
        # The file holds 261 rows for training (bilm-tf README); inference needs 262 (id 0 = no token).
        raise ElmoFileError(f"options file {source}: 'char_cnn.n_characters' is "
                            f"{normalised['char_cnn']['n_characters']}; inference needs 262 (set it to 262; the "
                            "weight file's 261 rows get a zero row for padding)")
    return normalised


def _path(value, name):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return os.fspath(value)


def read_options(options_file):
    """Reads and validates an ELMo options.json. FileNotFoundError / ElmoFileError name the file."""
    options_file = _path(options_file, "options_file")
    if not os.path.exists(options_file):
        raise FileNotFoundError(f"options file {options_file!r} does not exist")
    try:
        with open(options_file, "rb") as f:
            options = json.loads(f.read().decode("utf-8-sig"))  # a BOM (Windows editors) is not an error
    except UnicodeDecodeError as e:
        raise ElmoFileError(f"options file {options_file!r} is not valid JSON: not UTF-8 text (byte {e.start}); "
                            "is it the weight file?") from None
    except json.JSONDecodeError as e:
        raise ElmoFileError(f"options file {options_file!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise ElmoFileError(f"options file {options_file!r} cannot be read: {e.strerror or e}") from None
    return validate_options(options, repr(options_file))


def _lstm_width(lstm_options):
    """Width R of each direction's output and h state: the projection when it is smaller than the cell."""
    return lstm_options["projection_dim"] if lstm_options["projection_dim"] < lstm_options["dim"] \
        else lstm_options["dim"]


def _lstm_uses_projection(lstm_options):
    return lstm_options["projection_dim"] < lstm_options["dim"]


def _char_cnn_uses_projection(options):
    # bilm-tf projects only when the filter count differs from the LSTM input width.
    return sum(n for _, n in options["char_cnn"]["filters"]) != options["lstm"]["projection_dim"]


def bilm_tf_weight_shapes(options):
    """{hdf5 dataset path: shape} of a bilm-tf lm_weights.hdf5 for these (validated) options."""
    cnn, lstm = options["char_cnn"], options["lstm"]
    dim, n_filters = cnn["embedding"]["dim"], sum(n for _, n in cnn["filters"])
    shapes = {"char_embed": (cnn["n_characters"] - 1, dim)}
    for i, (width, num) in enumerate(cnn["filters"]):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, dim, num)
        shapes[f"CNN/b_cnn_{i}"] = (num,)
    for k in range(cnn["n_highway"]):
        for part in ("carry", "transform"):
            shapes[f"CNN_high_{k}/W_{part}"] = (n_filters, n_filters)
            shapes[f"CNN_high_{k}/b_{part}"] = (n_filters,)
    if _char_cnn_uses_projection(options):
        shapes["CNN_proj/W_proj"] = (n_filters, lstm["projection_dim"])
        shapes["CNN_proj/b_proj"] = (lstm["projection_dim"],)
    width, units = _lstm_width(lstm), lstm["dim"]
    for d in range(2):
        for layer in range(lstm["n_layers"]):
            root = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/"
            input_dim = lstm["projection_dim"] if layer == 0 else width
            shapes[root + "W_0"] = (input_dim + width, 4 * units)
            shapes[root + "B"] = (4 * units,)
            if _lstm_uses_projection(lstm):
                shapes[root + "W_P_0"] = (units, width)
    return shapes


def read_bilm_tf_weights(weight_file, options):
    """Reads every dataset the options need from a bilm-tf lm_weights.hdf5, checking names and shapes.

    char_embed may hold n_characters - 1 rows (the released files: 261) or n_characters rows.
    Returns {dataset path: float32 np.ndarray}.
    """
    weight_file = _path(weight_file, "weight_file")
    if not os.path.exists(weight_file):
        raise FileNotFoundError(f"weight file {weight_file!r} does not exist")
    try:
        f = h5py.File(weight_file, "r")
    except OSError as e:
        raise ElmoFileError(f"weight file {weight_file!r} is not a readable HDF5 file ({e})") from None
    weights = {}
    with f:
        for path, shape in bilm_tf_weight_shapes(options).items():
            dataset = f.get(path)
            if not isinstance(dataset, h5py.Dataset):
                raise ElmoFileError(f"weight file {weight_file!r} has no dataset {path!r} (needed for these "
                                    f"options; expected shape {shape})")
            ok = dataset.shape == shape or (path == "char_embed" and dataset.shape == (shape[0] + 1, shape[1]))
            if not ok:
                raise ElmoFileError(f"weight file {weight_file!r}: dataset {path!r} has shape {dataset.shape}, "
                                    f"the options imply {shape}")
            try:
                weights[path] = np.asarray(dataset[...], dtype=np.float32)
            except (OSError, TypeError, ValueError) as e:
                raise ElmoFileError(f"weight file {weight_file!r}: dataset {path!r} cannot be read as float32 "
                                    f"({e})") from None
            if not np.all(np.isfinite(weights[path])):
                raise ElmoFileError(f"weight file {weight_file!r}: dataset {path!r} holds NaN or Inf")
    return weights


def bilm_tf_lstm_to_keras(w_0, b, input_dim, forget_bias=1.0):
    """bilm-tf's LSTMCell weights -> (kernel [in, 4H], recurrent_kernel [R, 4H], bias [4H]) in Keras' layout.

    W_0 [in + R, 4H] acts on concat([x, h]); its gate columns are i, j (candidate), f, o, Keras' are i, f, c, o.
    TF's LSTMCell adds forget_bias (1.0) to f at run time; it is not in B, so it goes into the Keras bias here.
    """
    def keras_gate_order(m):
        i, j, f, o = np.split(m, 4, axis=-1)
        return np.concatenate([i, f, j, o], axis=-1)

    units = b.shape[0] // 4
    kernel = keras_gate_order(w_0[:input_dim])
    recurrent_kernel = keras_gate_order(w_0[input_dim:])
    bias = keras_gate_order(b).astype(np.float32)
    bias[units:2 * units] += np.float32(forget_bias)
    return kernel, recurrent_kernel, bias


# ---- layers -------------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="elmo")
class ElmoCharacterEncoder(keras.layers.Layer):
    """bilm-tf's character CNN on stock Keras layers: char ids [B, T, C] int -> token embeddings [B, T, P].

    Per token: embed its C char ids, one VALID convolution per filter width over the char axis, max over the
    positions (padding chars included), then the activation; concatenate; n_highway highway layers
    (x = g * relu(x W_t + b_t) + (1 - g) * x with g = sigmoid(x W_c + b_c): bilm-tf's "carry" gate weighs the
    transform branch; always ReLU); then the projection to P (only when the filter count differs from P).
    """

    def __init__(self, filters, projection_dim, char_embedding_dim=16, n_characters=262, n_highway=2,
                 activation="relu", max_characters_per_token=MAX_CHARACTERS_PER_TOKEN, **kwargs):
        # ELMo's pretrained network runs in float32 whatever Keras' global dtype policy (a mixed policy would round
        # its activations to 16 bits and miss the released outputs); Keras layers downstream cast what they take.
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if activation not in ("relu", "tanh"):
            raise ValueError(f"ElmoCharacterEncoder: activation must be 'relu' or 'tanh', got {activation!r}")
        self.filters = [[int(w), int(n)] for w, n in filters]
        self.projection_dim = int(projection_dim)
        self.char_embedding_dim = int(char_embedding_dim)
        self.n_characters = int(n_characters)
        self.n_highway = int(n_highway)
        self.activation = activation
        self.max_characters_per_token = int(max_characters_per_token)
        self.n_filters = sum(n for _, n in self.filters)
        self.char_embedding = keras.layers.Embedding(self.n_characters, self.char_embedding_dim,
                                                     name="char_embed", dtype="float32")
        # Conv2D over [B, T, C, E] with a (1, width) kernel: the kernel is bilm-tf's W_cnn [1, width, E, n] as is.
        self.convolutions = [keras.layers.Conv2D(num, (1, width), padding="valid", name=f"cnn_{i}", dtype="float32")
                             for i, (width, num) in enumerate(self.filters)]
        self.highway_carry = [keras.layers.Dense(self.n_filters, activation="sigmoid", name=f"highway_{k}_carry",
                                                 dtype="float32")
                              for k in range(self.n_highway)]
        self.highway_transform = [keras.layers.Dense(self.n_filters, activation="relu",
                                                     name=f"highway_{k}_transform", dtype="float32")
                                  for k in range(self.n_highway)]
        self.projection = (keras.layers.Dense(self.projection_dim, name="projection", dtype="float32")
                           if self.n_filters != self.projection_dim else None)

    def build(self, char_ids_shape):
        batch, tokens = char_ids_shape[0], char_ids_shape[1]
        self.char_embedding.build(char_ids_shape)
        for conv in self.convolutions:
            conv.build((batch, tokens, self.max_characters_per_token, self.char_embedding_dim))
        for dense in self.highway_carry + self.highway_transform:
            dense.build((None, self.n_filters))
        if self.projection is not None:
            self.projection.build((None, self.n_filters))
        self.built = True

    def call(self, char_ids):
        # TF's (oneDNN) Conv2D returns an empty input as it is, which the conv layers' bias add then rejects (in a
        # graph, only grappler's conv + bias fusion hides it): no tokens give empty embeddings, the network unrun.
        # They are the (empty) ids reshaped, not tf.zeros: grappler rewrites a constant zeros times a broadcast
        # mask (ElmoModel's outputs) and divides by zero on an empty one (SIGFPE).
        dims = tf.shape(char_ids)

        def empty():
            return tf.reshape(tf.cast(char_ids, tf.float32), [dims[0], dims[1], self.projection_dim])

        tokens = char_ids.shape[:2].num_elements()
        if tokens is None:
            return tf.cond(dims[0] * dims[1] > 0, lambda: self._encode(char_ids), empty)
        return self._encode(char_ids) if tokens else empty()

    def _encode(self, char_ids):
        chars_bxtxcxe = self.char_embedding(char_ids)
        activation = tf.nn.relu if self.activation == "relu" else tf.nn.tanh
        # Max over positions, then the activation (bilm-tf's order; equal for these monotone activations anyway).
        pooled = [activation(tf.reduce_max(conv(chars_bxtxcxe), axis=2)) for conv in self.convolutions]
        features_bxtxf = tf.concat(pooled, axis=-1) if len(pooled) > 1 else pooled[0]
        dims = tf.shape(features_bxtxf)
        x_nxf = tf.reshape(features_bxtxf, [-1, self.n_filters])
        for carry, transform in zip(self.highway_carry, self.highway_transform):
            gate = carry(x_nxf)
            x_nxf = gate * transform(x_nxf) + (1.0 - gate) * x_nxf
        if self.projection is not None:
            x_nxf = self.projection(x_nxf)
        return tf.reshape(x_nxf, [dims[0], dims[1], self.projection_dim])

    def compute_output_shape(self, char_ids_shape):
        return (char_ids_shape[0], char_ids_shape[1], self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, projection_dim=self.projection_dim,
                      char_embedding_dim=self.char_embedding_dim, n_characters=self.n_characters,
                      n_highway=self.n_highway, activation=self.activation,
                      max_characters_per_token=self.max_characters_per_token)
        return config


@keras.saving.register_keras_serializable(package="elmo")
class ProjectionLSTMCell(keras.layers.Layer):
    """TF1 LSTMCell(num_proj, cell_clip, proj_clip) as a cell for the stock keras.layers.RNN (stock Keras has no
    projection LSTM). Keras weight layout and gate order (i, f, c, o), like tf_ops.FusedLSTM:
    kernel [in, 4H], recurrent_kernel [R, 4H], bias [4H], projection_kernel [H, P]; states [h (R), c (H)].
    Computes x @ kernel inside every step, as keras.layers.LSTMCell does.
    """

    def __init__(self, units, num_proj=None, cell_clip=None, proj_clip=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.num_proj = int(num_proj) if num_proj else None
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip
        width = self.num_proj or self.units
        self.state_size = [width, self.units]
        self.output_size = width

    def build(self, inputs_shape):
        width, units = self.num_proj or self.units, self.units
        self.kernel = self.add_weight(name="kernel", shape=(inputs_shape[-1], 4 * units),
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(width, 4 * units),
                                                initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=(4 * units,), initializer="zeros")
        if self.num_proj:
            self.projection_kernel = self.add_weight(name="projection_kernel", shape=(units, self.num_proj),
                                                     initializer="glorot_uniform")
        self.built = True

    def call(self, inputs, states, training=None):
        h_bxr, c_bxh = states
        ops = keras.ops
        z_bx4h = ops.matmul(inputs, self.kernel) + ops.matmul(h_bxr, self.recurrent_kernel) + self.bias
        i, f, g, o = ops.split(z_bx4h, 4, axis=-1)
        c_bxh = ops.sigmoid(f) * c_bxh + ops.sigmoid(i) * ops.tanh(g)
        if self.cell_clip:
            c_bxh = ops.clip(c_bxh, -self.cell_clip, self.cell_clip)
        h_bxr = ops.sigmoid(o) * ops.tanh(c_bxh)
        if self.num_proj:
            h_bxr = ops.matmul(h_bxr, self.projection_kernel)
            if self.proj_clip:
                h_bxr = ops.clip(h_bxr, -self.proj_clip, self.proj_clip)
        return h_bxr, [h_bxr, c_bxh]

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, num_proj=self.num_proj, cell_clip=self.cell_clip, proj_clip=self.proj_clip)
        return config


class _PerDirectionInputFusedLSTM(tf_ops.FusedLSTM):
    """A bidirectional tf_ops.FusedLSTM whose input is [forward input | backward input] on the last axis: each
    direction's kernel reads its own half. ELMo's layers above the first need this (each direction stacks on its
    own outputs); one op call still runs both directions. Built for in_dim = half the input width.

    Overrides FusedLSTM._x_proj (a private hook of tf_ops): a public option there would be cleaner.
    """

    def __init__(self, units, **kwargs):
        kwargs["bidirectional"] = True
        super().__init__(units, **kwargs)

    def build(self, sequences_shape):
        if sequences_shape[-1] is None or sequences_shape[-1] % 2:
            raise ValueError(f"{self.name}: the input's last dimension must be even ([forward | backward] inputs), "
                             f"got {sequences_shape[-1]}")
        super().build(tuple(sequences_shape[:-1]) + (sequences_shape[-1] // 2,))

    def _x_proj(self, sequences, training):
        dims = tf.shape(sequences)
        half = sequences.shape[-1] // 2
        flat_nx2i = tf.reshape(sequences, [-1, 2 * half])
        projected = []
        for d, weights in enumerate(self._dir_weights):
            x_proj_nx4h = tf.matmul(flat_nx2i[:, d * half:(d + 1) * half], weights["kernel"])
            if self.use_bias:
                x_proj_nx4h = x_proj_nx4h + weights["bias"]
            projected.append(x_proj_nx4h)
        return tf.reshape(tf.concat(projected, axis=1), [dims[0], dims[1], 8 * self.units])

    def get_config(self):
        config = super().get_config()
        config.pop("bidirectional", None)
        return config


_IMPLEMENTATIONS = ("fused", "fused_int8", "fused_bf16", "keras")


@keras.saving.register_keras_serializable(package="elmo")
class ElmoBiLM(keras.layers.Layer):
    """ELMo's stacked biLSTM: token embeddings [B, T, P] (+ mask [B, T]) -> n_layers outputs [B, T, 2R].

    Each direction has its own stack (layer l of a direction reads layer l-1 of the same direction); the backward
    direction runs over each sequence reversed within its length. Cells are TF's LSTMCell(num_proj, cell_clip,
    proj_clip). With use_skip_connections, layers above the first add their input to their output (not to the
    recurrent state). Outputs are zero past each sequence's length.

    implementation="fused": one tf_ops.FusedLSTM call per layer (both directions, projection and clips in the op).
    implementation="fused_int8": the same with int8_weights=True (INT8 recurrent and projection kernels).
    implementation="fused_bf16": the same with bfloat16 recurrent and projection kernels (float32 math).
    implementation="keras": stock keras.layers.RNN(ProjectionLSTMCell) per layer and direction.
    stateful=True: per-row (h, c) state variables [n_layers, 2, max_batch_size, .] carried from call to call
    (reset_states() zeroes them); a call with B rows reads and writes rows [0, B).
    """

    def __init__(self, units, projection_dim, n_layers=2, cell_clip=None, proj_clip=None, use_skip_connections=False,
                 stateful=False, max_batch_size=128, implementation="fused", **kwargs):
        kwargs["dtype"] = "float32"  # float32 whatever the global dtype policy, as ElmoCharacterEncoder
        super().__init__(**kwargs)
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(f"ElmoBiLM: implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
        if stateful and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, (int, np.integer))
                         or max_batch_size <= 0):
            raise ValueError(f"ElmoBiLM: max_batch_size must be a positive integer with stateful=True, "
                             f"got {max_batch_size!r}")
        self.units = int(units)
        self.projection_dim = int(projection_dim)
        self.num_proj = self.projection_dim if self.projection_dim < self.units else None
        self.width = self.num_proj or self.units
        self.n_layers = int(n_layers)
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip if self.num_proj else None
        self.use_skip_connections = bool(use_skip_connections)
        self.stateful = bool(stateful)
        self.max_batch_size = int(max_batch_size) if stateful else None
        self.implementation = implementation
        self.supports_masking = True
        cell_args = dict(num_proj=self.num_proj, cell_clip=cell_clip, proj_clip=self.proj_clip)
        if implementation != "keras":
            # fused_int8: the recurrent and projection kernels held as int8 rows with one scale per row.
            # fused_bf16: held as bfloat16 (rounded to nearest even when loaded).
            common = dict(return_sequences=True, return_state=True, int8_weights=implementation == "fused_int8",
                          dtype="float32",
                          recurrent_weight_dtype="bfloat16" if implementation == "fused_bf16" else "float32",
                          **cell_args)
            self.fused_lstms = [
                tf_ops.FusedLSTM(self.units, bidirectional=True, name="lstm_0", **common) if layer == 0 else
                _PerDirectionInputFusedLSTM(self.units, name=f"lstm_{layer}", **common)
                for layer in range(self.n_layers)]
        else:
            def rnn(layer, backward):
                return keras.layers.RNN(ProjectionLSTMCell(self.units, dtype="float32", **cell_args),
                                        return_sequences=True, return_state=True, go_backwards=backward,
                                        zero_output_for_mask=True, dtype="float32",
                                        name=f"lstm_{layer}_{'backward' if backward else 'forward'}")
            self.stock_rnns = [[rnn(layer, False), rnn(layer, True)] for layer in range(self.n_layers)]

    def build(self, token_embeddings_shape):
        batch, time_steps, input_dim = token_embeddings_shape
        if input_dim != self.projection_dim:
            raise ValueError(f"ElmoBiLM: token_embeddings must have {self.projection_dim} features, "
                             f"got {input_dim}")
        for layer in range(self.n_layers):
            layer_input_dim = input_dim if layer == 0 else self.width
            if self.implementation != "keras":
                self.fused_lstms[layer].build((batch, time_steps, layer_input_dim * (1 if layer == 0 else 2)))
            else:
                for rnn in self.stock_rnns[layer]:
                    rnn.build((batch, time_steps, layer_input_dim))
        if self.stateful:
            self.state_h = self.add_weight(name="state_h", shape=(self.n_layers, 2, self.max_batch_size, self.width),
                                           initializer="zeros", trainable=False)
            self.state_c = self.add_weight(name="state_c", shape=(self.n_layers, 2, self.max_batch_size, self.units),
                                           initializer="zeros", trainable=False)
        self.built = True

    def reset_states(self):
        """Zeroes the carried LSTM state of every row (stateful=True); a no-op otherwise."""
        if self.stateful and self.built:
            self.state_h.assign(tf.zeros(self.state_h.shape))
            self.state_c.assign(tf.zeros(self.state_c.shape))

    def cell_weights(self, layer, direction):
        """{kernel, recurrent_kernel, bias[, projection_kernel]: variable} of one layer and direction (0 fwd).
        With fused_int8 the kernels are pairs {recurrent_kernel_q8, recurrent_scale[, projection_kernel_q8,
        projection_scale]} instead."""
        if self.implementation != "keras":
            return dict(self.fused_lstms[layer]._dir_weights[direction])
        cell = self.stock_rnns[layer][direction].cell
        return {name: getattr(cell, name) for name in ("kernel", "recurrent_kernel", "bias", "projection_kernel")
                if hasattr(cell, name)}

    def _run_layer(self, layer, inputs_fw, inputs_bw, mask, initial_state):
        """Returns ([B, T, 2R] output, [h_fw, c_fw, h_bw, c_bw])."""
        if self.implementation != "keras":
            inputs = inputs_fw if layer == 0 else tf.concat([inputs_fw, inputs_bw], axis=-1)
            output_bxtx2r, *states = self.fused_lstms[layer](inputs, initial_state=initial_state, mask=mask)
            return output_bxtx2r, states
        forward, backward = self.stock_rnns[layer]
        fw_state = initial_state[:2] if initial_state else None
        bw_state = initial_state[2:] if initial_state else None
        out_fw, h_fw, c_fw = forward(inputs_fw, initial_state=fw_state, mask=mask)
        out_bw, h_bw, c_bw = backward(inputs_bw, initial_state=bw_state, mask=mask)
        # A go_backwards RNN returns its outputs in processing order; put them back at their positions.
        return tf.concat([out_fw, tf.reverse(out_bw, axis=[1])], axis=-1), [h_fw, c_fw, h_bw, c_bw]

    def call(self, token_embeddings, mask=None):
        token_embeddings = tf.cast(token_embeddings, tf.float32)
        dims = tf.shape(token_embeddings)
        batch, time_steps = dims[0], dims[1]
        if mask is None:
            mask = tf.ones([batch, time_steps], tf.bool)
        mask = tf.cast(mask, tf.bool)
        if self.stateful:
            if token_embeddings.shape[0] is not None and token_embeddings.shape[0] > self.max_batch_size:
                raise ValueError(f"ElmoBiLM: a batch of {token_embeddings.shape[0]} rows exceeds max_batch_size="
                                 f"{self.max_batch_size} (stateful); pass a larger max_batch_size")
            check = tf.debugging.assert_less_equal(
                batch, self.max_batch_size,
                message=f"ElmoBiLM: the batch exceeds max_batch_size={self.max_batch_size} (stateful)")
            with tf.control_dependencies([check]):
                h_lxdxbxr_all = tf.convert_to_tensor(self.state_h)
                c_lxdxbxh_all = tf.convert_to_tensor(self.state_c)
            h_lxdxbxr, c_lxdxbxh = h_lxdxbxr_all[:, :, :batch], c_lxdxbxh_all[:, :, :batch]
        layer_input_fw = layer_input_bw = token_embeddings
        outputs, final_h, final_c = [], [], []
        for layer in range(self.n_layers):
            initial_state = None
            if self.stateful:
                initial_state = [h_lxdxbxr[layer, 0], c_lxdxbxh[layer, 0], h_lxdxbxr[layer, 1], c_lxdxbxh[layer, 1]]
            output_bxtx2r, (h_fw, c_fw, h_bw, c_bw) = self._run_layer(layer, layer_input_fw, layer_input_bw, mask,
                                                                     initial_state)
            if self.use_skip_connections and layer > 0:
                output_bxtx2r = output_bxtx2r + tf.concat([layer_input_fw, layer_input_bw], axis=-1)
            # Stock RNNs leave garbage past the lengths only before the residual; zero it for both paths alike.
            output_bxtx2r = output_bxtx2r * tf.cast(mask, tf.float32)[:, :, None]
            outputs.append(output_bxtx2r)
            final_h.append(tf.stack([h_fw, h_bw]))
            final_c.append(tf.stack([c_fw, c_bw]))
            layer_input_fw, layer_input_bw = output_bxtx2r[..., :self.width], output_bxtx2r[..., self.width:]
        if self.stateful:
            # Rows [batch, max_batch_size) keep their state; padding steps never change a row's state.
            self.state_h.assign(tf.concat([tf.stack(final_h), h_lxdxbxr_all[:, :, batch:]], axis=2))
            self.state_c.assign(tf.concat([tf.stack(final_c), c_lxdxbxh_all[:, :, batch:]], axis=2))
        return outputs

    def compute_output_shape(self, token_embeddings_shape):
        return [(token_embeddings_shape[0], token_embeddings_shape[1], 2 * self.width)] * self.n_layers

    def compute_mask(self, token_embeddings, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, projection_dim=self.projection_dim, n_layers=self.n_layers,
                      cell_clip=self.cell_clip, proj_clip=self.proj_clip,
                      use_skip_connections=self.use_skip_connections, stateful=self.stateful,
                      max_batch_size=self.max_batch_size or 128, implementation=self.implementation)
        return config


@keras.saving.register_keras_serializable(package="elmo")
class ScalarMix(keras.layers.Layer):
    """AllenNLP's ScalarMix: gamma * sum_k softmax(s)_k * tensor_k over a list of same-shaped tensors.

    do_layer_norm=True first normalises each tensor with the mean and variance of all its unmasked elements (one
    mean and variance over the whole batch, as AllenNLP does): (t - mean) / sqrt(var + epsilon).
    Weights: scalar_parameters [mixture_size] (initial_scalar_parameters, default zeros), gamma (1.0).
    """

    def __init__(self, mixture_size, do_layer_norm=False, initial_scalar_parameters=None, epsilon=1e-13, **kwargs):
        kwargs.setdefault("autocast", False)  # float32 inputs stay un-rounded under a mixed policy (see build)
        super().__init__(**kwargs)
        if isinstance(mixture_size, bool) or not isinstance(mixture_size, (int, np.integer)) or mixture_size <= 0:
            raise ValueError(f"ScalarMix: mixture_size must be a positive integer, got {mixture_size!r}")
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * int(mixture_size)
        initial_scalar_parameters = [float(v) for v in initial_scalar_parameters]
        if len(initial_scalar_parameters) != mixture_size:
            raise ValueError(f"ScalarMix: initial_scalar_parameters has {len(initial_scalar_parameters)} values, "
                             f"mixture_size is {mixture_size}")
        self.mixture_size = int(mixture_size)
        self.do_layer_norm = bool(do_layer_norm)
        self.initial_scalar_parameters = initial_scalar_parameters
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def build(self, tensors_shape):
        # float32 math under any policy (epsilon=1e-13 and the layer-norm sums would vanish in float16); the
        # output follows the compute dtype.
        self.scalar_parameters = self.add_weight(
            name="scalar_parameters", shape=(self.mixture_size,),
            initializer=keras.initializers.Constant(self.initial_scalar_parameters), autocast=False)
        self.gamma = self.add_weight(name="gamma", shape=(), initializer="ones", autocast=False)
        self.built = True

    def call(self, tensors, mask=None):
        if not isinstance(tensors, (list, tuple)) or len(tensors) != self.mixture_size:
            count = len(tensors) if isinstance(tensors, (list, tuple)) else "not a list"
            raise ValueError(f"ScalarMix: tensors must be a list of {self.mixture_size} tensors, got {count}")
        if isinstance(mask, (list, tuple)):  # Keras passes one mask per input tensor
            mask = next((m for m in mask if m is not None), None)
        weights = tf.unstack(tf.nn.softmax(tf.convert_to_tensor(self.scalar_parameters)), num=self.mixture_size)
        tensors = [tf.cast(t, tf.float32) for t in tensors]
        if self.do_layer_norm:
            if mask is None:
                mask_bxtx1 = tf.ones_like(tensors[0][..., :1])
            else:
                mask_bxtx1 = tf.cast(mask, tf.float32)[..., None]
            count = tf.reduce_sum(mask_bxtx1) * tf.cast(tf.shape(tensors[0])[-1], tf.float32)

            def layer_norm(t):
                t_masked = t * mask_bxtx1
                mean = tf.reduce_sum(t_masked) / count
                variance = tf.reduce_sum(tf.square((t_masked - mean) * mask_bxtx1)) / count
                return (t - mean) / tf.sqrt(variance + self.epsilon)

            tensors = [layer_norm(t) for t in tensors]
        mixed = tf.add_n([w * t for w, t in zip(weights, tensors)])
        return tf.cast(tf.convert_to_tensor(self.gamma) * mixed, self.compute_dtype)

    def compute_output_shape(self, tensors_shape):
        return tuple(tensors_shape[0])

    def compute_mask(self, tensors, mask=None):
        if isinstance(mask, (list, tuple)):
            return next((m for m in mask if m is not None), None)
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(mixture_size=self.mixture_size, do_layer_norm=self.do_layer_norm,
                      initial_scalar_parameters=self.initial_scalar_parameters, epsilon=self.epsilon)
        return config


# ---- the model ----------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="elmo")
class ElmoModel(keras.Model):
    """Functional Keras model: char ids [B, T + 2, C] -> {"layer_0".."layer_N": [B, T, 2P], "mask": [B, T]}.

    Attributes: char_encoder, bilm, options, stateful. reset_states() zeroes the carried LSTM state.
    Build with build_elmo / load_elmo.
    """

    def __init__(self, options, stateful=False, max_batch_size=128, implementation="fused", name="elmo"):
        options = validate_options(options)
        cnn, lstm = options["char_cnn"], options["lstm"]
        char_ids = keras.Input((None, cnn["max_characters_per_token"]), dtype="int32", name="char_ids")
        char_encoder = ElmoCharacterEncoder(
            cnn["filters"], lstm["projection_dim"], char_embedding_dim=cnn["embedding"]["dim"],
            n_characters=cnn["n_characters"], n_highway=cnn["n_highway"], activation=cnn["activation"],
            max_characters_per_token=cnn["max_characters_per_token"], name="char_encoder")
        bilm = ElmoBiLM(lstm["dim"], lstm["projection_dim"], n_layers=lstm["n_layers"], cell_clip=lstm["cell_clip"],
                        proj_clip=lstm["proj_clip"], use_skip_connections=lstm["use_skip_connections"],
                        stateful=stateful, max_batch_size=max_batch_size, implementation=implementation,
                        name="bilm")
        # A token is present when any of its char ids is > 0 (padding rows are all zeros); rows are right-padded.
        mask_bxt = keras.ops.any(char_ids > 0, axis=-1)
        token_embeddings = char_encoder(char_ids)
        lstm_outputs = bilm(token_embeddings, mask=mask_bxt)
        layers = [keras.ops.concatenate([token_embeddings, token_embeddings], axis=-1)] + list(lstm_outputs)
        # Drop <S> and </S>: position t of the result is token t + 1; it is a real token iff position t + 2 is
        # still inside the sentence (the </S> of a sentence of n tokens sits at n + 1).
        mask_wo_bos_eos = mask_bxt[:, 2:]
        keep = keras.ops.cast(mask_wo_bos_eos, "float32")[:, :, None]
        outputs = {f"layer_{k}": layer[:, 1:-1] * keep for k, layer in enumerate(layers)}
        outputs["mask"] = mask_wo_bos_eos
        super().__init__(inputs=char_ids, outputs=outputs, name=name)
        self.char_encoder = char_encoder
        self.bilm = bilm
        self.options = options
        self.stateful = bool(stateful)
        self.implementation = implementation

    def reset_states(self):
        """Zeroes the LSTM state carried between calls (stateful=True)."""
        self.bilm.reset_states()

    def get_config(self):
        # The constructor's arguments (not the functional graph, which the constructor builds): without this a
        # .keras file saved from an ElmoModel, or from a model holding one, could not be loaded again.
        return {"options": self.options, "stateful": self.stateful,
                "max_batch_size": self.bilm.max_batch_size or 128, "implementation": self.implementation,
                "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        trainable = config.pop("trainable", True)
        model = cls(**config)
        model.trainable = trainable
        return model


def build_elmo(options, *, stateful=False, max_batch_size=128, implementation="fused", trainable=False,
               name="elmo"):
    """An ElmoModel for an options dict (as in options.json), with freshly initialised (random) weights."""
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"build_elmo: implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation in ("fused_int8", "fused_bf16") and trainable:
        raise ValueError(f"build_elmo: implementation={implementation!r} holds narrow recurrent kernels, which do "
                         "not train; fine-tune with implementation='fused' and convert afterwards")
    model = ElmoModel(options, stateful=stateful, max_batch_size=max_batch_size, implementation=implementation,
                      name=name)
    model.trainable = bool(trainable)
    return model


def set_bilm_tf_weights(model, weights):
    """Assigns bilm-tf weights ({hdf5 dataset path: array}, as read_bilm_tf_weights returns) to an ElmoModel.

    Maps the layout (see the fixture README): char_embed gets a zero row 0 prepended (id 0 = no token) when it
    has n_characters - 1 rows; W_cnn_i is the Conv2D kernel as is; the highway/projection matrices are x @ W like
    Dense; each LSTMCell's W_0/B are split into kernel and recurrent kernel, reordered from TF's i, j, f, o gates
    to Keras' i, f, c, o, and get the +1.0 forget bias that TF's LSTMCell adds at run time.
    """
    options = model.options
    expected = bilm_tf_weight_shapes(options)
    for path, shape in expected.items():
        if path not in weights:
            raise ValueError(f"set_bilm_tf_weights: weights has no {path!r}")
        got = tuple(np.shape(weights[path]))
        if got != shape and not (path == "char_embed" and got == (shape[0] + 1, shape[1])):
            raise ValueError(f"set_bilm_tf_weights: weights[{path!r}] has shape {got}, expected {shape}")

    def assign(variable, value):
        variable.assign(np.asarray(value, np.float32))

    encoder = model.char_encoder
    char_embed = np.asarray(weights["char_embed"], np.float32)
    if char_embed.shape[0] == encoder.n_characters - 1:
        char_embed = np.concatenate([np.zeros((1, char_embed.shape[1]), np.float32), char_embed])
    assign(encoder.char_embedding.embeddings, char_embed)
    for i, conv in enumerate(encoder.convolutions):
        assign(conv.kernel, weights[f"CNN/W_cnn_{i}"])
        assign(conv.bias, weights[f"CNN/b_cnn_{i}"])
    for k in range(encoder.n_highway):
        assign(encoder.highway_carry[k].kernel, weights[f"CNN_high_{k}/W_carry"])
        assign(encoder.highway_carry[k].bias, weights[f"CNN_high_{k}/b_carry"])
        assign(encoder.highway_transform[k].kernel, weights[f"CNN_high_{k}/W_transform"])
        assign(encoder.highway_transform[k].bias, weights[f"CNN_high_{k}/b_transform"])
    if encoder.projection is not None:
        assign(encoder.projection.kernel, weights["CNN_proj/W_proj"])
        assign(encoder.projection.bias, weights["CNN_proj/b_proj"])
    bilm = model.bilm
    for direction in range(2):
        for layer in range(bilm.n_layers):
            root = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/"
            input_dim = bilm.projection_dim if layer == 0 else bilm.width
            kernel, recurrent_kernel, bias = bilm_tf_lstm_to_keras(
                np.asarray(weights[root + "W_0"], np.float32), np.asarray(weights[root + "B"], np.float32),
                input_dim)
            variables = bilm.cell_weights(layer, direction)
            assign(variables["kernel"], kernel)
            assign(variables["bias"], bias)
            kernels = {"recurrent": recurrent_kernel}
            if bilm.num_proj:
                kernels["projection"] = weights[root + "W_P_0"]
            for role, value in kernels.items():
                if role + "_kernel_q8" in variables:  # fused_int8: quantized per row as tf_ops.quantize_rows does
                    q, scale = tf_ops.quantize_rows(value)
                    variables[role + "_kernel_q8"].assign(q)
                    variables[role + "_scale"].assign(scale)
                else:
                    assign(variables[role + "_kernel"], value)
    model.reset_states()


def get_bilm_tf_weights(model):
    """The inverse of set_bilm_tf_weights: an ElmoModel's weights as {hdf5 dataset path: float32 array} in the
    bilm-tf layout (char_embed without the row of id 0, "no token", which loading sets to zeros; TF gate order
    i, j, f, o; the +1.0 forget bias taken back out of B). write_bilm_tf(model, directory) saves them with the
    options."""
    def value(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)

    def tf_gate_order(m):
        i, f, j, o = np.split(m, 4, axis=-1)
        return np.concatenate([i, j, f, o], axis=-1)

    encoder, bilm = model.char_encoder, model.bilm
    weights = {"char_embed": value(encoder.char_embedding.embeddings)[1:]}
    for i, conv in enumerate(encoder.convolutions):
        weights[f"CNN/W_cnn_{i}"] = value(conv.kernel)
        weights[f"CNN/b_cnn_{i}"] = value(conv.bias)
    for k in range(encoder.n_highway):
        for part, dense in (("carry", encoder.highway_carry[k]), ("transform", encoder.highway_transform[k])):
            weights[f"CNN_high_{k}/W_{part}"] = value(dense.kernel)
            weights[f"CNN_high_{k}/b_{part}"] = value(dense.bias)
    if encoder.projection is not None:
        weights["CNN_proj/W_proj"] = value(encoder.projection.kernel)
        weights["CNN_proj/b_proj"] = value(encoder.projection.bias)
    for direction in range(2):
        for layer in range(bilm.n_layers):
            root = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/"
            variables = bilm.cell_weights(layer, direction)
            for role in ("recurrent", "projection"):
                if role + "_kernel_q8" in variables:  # fused_int8: the dequantized kernels
                    variables = dict(variables)
                    variables[role + "_kernel"] = tf_ops.dequantize_rows(
                        keras.ops.convert_to_numpy(variables[role + "_kernel_q8"]),
                        keras.ops.convert_to_numpy(variables[role + "_scale"]))
            bias = value(variables["bias"]).copy()
            bias[bilm.units:2 * bilm.units] -= np.float32(1.0)
            weights[root + "W_0"] = tf_gate_order(np.concatenate([value(variables["kernel"]),
                                                                 value(variables["recurrent_kernel"])]))
            weights[root + "B"] = tf_gate_order(bias)
            if bilm.num_proj:
                weights[root + "W_P_0"] = value(variables["projection_kernel"])
    return weights


def write_bilm_tf(model, directory):
    """Writes directory/options.json and directory/lm_weights.hdf5 in the released bilm-tf format (what
    load_elmo reads); returns their paths."""
    os.makedirs(directory, exist_ok=True)
    options_file = os.path.join(directory, "options.json")
    weight_file = os.path.join(directory, "lm_weights.hdf5")
    with open(options_file, "w") as f:
        json.dump(model.options, f, indent=1)
    with h5py.File(weight_file, "w") as f:
        for path, array in get_bilm_tf_weights(model).items():
            f.create_dataset(path, data=array)
    return options_file, weight_file


def load_elmo(options_file, weight_file, *, stateful=False, max_batch_size=128, implementation="fused",
              trainable=False, name="elmo"):
    """Builds an ElmoModel from a bilm-tf options.json and lm_weights.hdf5 (see the module docstring)."""
    options = read_options(options_file)
    weights = read_bilm_tf_weights(weight_file, options)
    model = build_elmo(options, stateful=stateful, max_batch_size=max_batch_size, implementation=implementation,
                       trainable=trainable, name=name)
    set_bilm_tf_weights(model, weights)
    return model


def embed_function(model):
    """model wrapped in one tf.function traced for any batch and length ([None, None, C] int32 char ids)."""
    max_chars = model.options["char_cnn"]["max_characters_per_token"]
    return tf.function(lambda char_ids: model(char_ids),
                       input_signature=[tf.TensorSpec([None, None, max_chars], tf.int32)])


def embed_sentences(model, sentences, batch_size=32, embed=None):
    """Embeds tokenised sentences in order, batch_size at a time -> list of float32 [n_layers + 1, tokens, 2P].

    With a stateful model the state carries from batch to batch (row k of each batch continues row k).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"embed_sentences: batch_size must be a positive integer, got {batch_size!r}")
    embed = embed or embed_function(model)
    max_chars = model.options["char_cnn"]["max_characters_per_token"]
    results = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        results.extend(_embed_batch(model, embed, batch, max_chars))
    return results


def _embed_batch(model, embed, batch, max_chars):
    outputs = embed(tf.constant(batch_to_ids(batch, max_chars)))
    n_layers = model.options["lstm"]["n_layers"] + 1
    layers_bxlxtxd = np.stack([outputs[f"layer_{k}"].numpy() for k in range(n_layers)], axis=1)
    return [layers_bxlxtxd[k, :, :len(sentence)] for k, sentence in enumerate(batch)]


# ---- command line -------------------------------------------------------------------------------------------------
class _UsageError(Exception):
    """A problem with the user's input (exit status 2)."""


class _Progress:
    """Progress on stderr: one updating line on a terminal, else a line every few seconds."""

    def __init__(self, total, stream, quiet):
        self.total, self.stream, self.quiet = total, stream, quiet
        self.start = self.last = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, done, final=False):
        now = time.monotonic()
        if self.quiet or (not final and now - self.last < (0.5 if self.tty else 5.0)):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        line = (f"elmo embed: {done}/{self.total} sentences ({100.0 * done / max(self.total, 1):.0f}%), "
                f"{rate:.1f} sentences/s")
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


def _read_sentences(stream, source):
    try:
        data = stream.read()
    except IsADirectoryError:
        raise _UsageError(f"input {source} is a directory, not a file of sentences") from None
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a leading BOM is not part of the first token
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _UsageError(f"input {source} is not UTF-8 text (byte {e.start + bom}: {e.reason})") from None
    # One sentence per line, lines ended by '\n', '\r\n' or a lone '\r' (Python's universal newlines, as
    # AllenNLP's text-mode file reads them: a file with classic Mac line endings is not one long sentence);
    # str.splitlines would also split at U+0085, U+2028, form feeds, ... inside a line, and every later
    # sentence's key would be off by one.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    lines = [line.strip() for line in text.split("\n")] if text else []
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
        raise _UsageError(f"input {source} has {len(blank)} empty line(s) (line {shown}); every line must hold "
                          "one tokenised sentence (as for AllenNLP's elmo command): remove them")
    return lines


def _embed_command(args, stdin, stdout, stderr):
    if args.batch_size <= 0:
        raise _UsageError(f"--batch-size must be positive, got {args.batch_size}")
    to_stdout = args.output in (None, "-")
    if not to_stdout:
        for name, given in (("--options", args.options), ("--weights", args.weights), ("--input", args.input)):
            if given not in (None, "-") and os.path.exists(given) and os.path.exists(args.output) and \
                    os.path.samefile(given, args.output):
                raise _UsageError(f"--output {args.output!r} is the {name} file: it would be overwritten")
    if to_stdout and hasattr(stdout, "isatty") and stdout.isatty():
        raise _UsageError("refusing to write HDF5 to a terminal: redirect stdout (> vectors.hdf5) or pass --output")
    # Read and check everything before the (slow) model build, so mistakes fail fast.
    options = read_options(args.options)
    weights = read_bilm_tf_weights(args.weights, options)
    if args.input in (None, "-"):
        if hasattr(stdin, "isatty") and stdin.isatty():
            stderr.write("elmo embed: reading sentences from the terminal (one per line, end with Ctrl-D); "
                         "redirect stdin or pass --input to read a file\n")
        lines = _read_sentences(getattr(stdin, "buffer", stdin), "<stdin>")
    else:
        if not os.path.exists(args.input):
            raise FileNotFoundError(f"input file {args.input!r} does not exist")
        if os.path.isdir(args.input):
            raise _UsageError(f"input {args.input!r} is a directory, not a file of sentences")
        with open(args.input, "rb") as f:
            lines = _read_sentences(f, repr(args.input))
    sentences = [line.split() for line in lines]
    model = build_elmo(options, stateful=args.stateful, max_batch_size=args.batch_size,
                       implementation="fused_int8" if args.int8 else ("fused_bf16" if args.bf16 else "fused"))
    set_bilm_tf_weights(model, weights)
    embed = embed_function(model)
    max_chars = options["char_cnn"]["max_characters_per_token"]
    if args.stateful:
        order = list(range(len(sentences)))  # AllenNLP's order: the carried state depends on it
    else:
        order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), i))  # little padding
    progress = _Progress(len(sentences), stderr, args.quiet)
    if to_stdout:
        # HDF5 needs a seekable file: write a temporary one, then copy it to stdout.
        handle, path = tempfile.mkstemp(suffix=".hdf5", prefix="elmo_embed_")
        os.close(handle)
    elif os.path.exists(args.output) and not os.path.isfile(args.output):
        path = args.output  # a device or pipe (e.g. /dev/null): written in place
    else:
        # Written next to the output and renamed when complete: an interrupted run never leaves a file that
        # looks finished (and an existing output stays as it was).
        out_dir = os.path.dirname(os.path.abspath(args.output))
        try:
            handle, path = tempfile.mkstemp(suffix=".hdf5.part", prefix=".elmo_embed_", dir=out_dir)
        except OSError as e:  # else the message names the temporary file, not the user's --output
            raise _UsageError(f"--output {args.output!r} cannot be written: its directory {out_dir!r}: "
                              f"{e.strerror or e}") from None
        os.close(handle)
    try:
        with h5py.File(path, "w") as out:
            done = 0
            for start in range(0, len(order), args.batch_size):
                indices = order[start:start + args.batch_size]
                vectors = _embed_batch(model, embed, [sentences[i] for i in indices], max_chars)
                for i, layers_lxtxd in zip(indices, vectors):
                    if args.top:
                        layers_lxtxd = layers_lxtxd[-1]
                    elif args.average:
                        layers_lxtxd = np.mean(layers_lxtxd, axis=0)
                    out.create_dataset(str(i), data=layers_lxtxd.astype(np.float32))
                done += len(indices)
                progress.update(done)
            if not args.forget_sentences:
                sentence_to_index = {line: str(i) for i, line in enumerate(lines)}
                out.create_dataset("sentence_to_index", data=[json.dumps(sentence_to_index)],
                                   dtype=h5py.string_dtype())
        progress.update(len(order), final=True)
        if to_stdout:
            sink = getattr(stdout, "buffer", stdout)
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sink.write(chunk)
            sink.flush()
        elif path != args.output:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(path, 0o666 & ~umask)  # mkstemp's 0600 -> what a plain open() would have made
            os.replace(path, args.output)
    finally:
        if path != args.output and os.path.exists(path):
            os.remove(path)
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="python -m models.elmo", description="ELMo on the fused LSTM op.")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser(
        "embed", help="embed tokenised sentences (one per line) into an HDF5 file",
        description="Reads one whitespace-tokenised sentence per line (stdin or --input) and writes an HDF5 file "
                    "(stdout or --output) with one dataset per sentence, key = line index, "
                    "[n_layers + 1, tokens, 2 * projection_dim] float32, plus 'sentence_to_index'.")
    embed.add_argument("--options", required=True, help="ELMo options.json")
    embed.add_argument("--weights", required=True, help="ELMo lm_weights.hdf5 (bilm-tf layout)")
    embed.add_argument("--input", help="sentences file (default: stdin)")
    embed.add_argument("--output", help="HDF5 file to write (default: stdout)")
    embed.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    layers = embed.add_mutually_exclusive_group()
    layers.add_argument("--all", action="store_true", help="all layers (default)")
    layers.add_argument("--top", action="store_true", help="only the top layer: [tokens, 2P]")
    layers.add_argument("--average", action="store_true", help="the average of the layers: [tokens, 2P]")
    embed.add_argument("--stateful", action="store_true",
                       help="keep the input order and carry each batch row's LSTM state into the next batch, as "
                            "AllenNLP's elmo command does (default: every sentence starts from zero state)")
    embed.add_argument("--forget-sentences", action="store_true", help="do not write 'sentence_to_index'")
    embed.add_argument("--quiet", action="store_true", help="no progress on stderr")
    narrow = embed.add_mutually_exclusive_group()
    narrow.add_argument("--int8", action="store_true",
                        help="INT8 recurrent and projection weights (quantized per row when loaded; float32 math)")
    narrow.add_argument("--bf16", action="store_true",
                        help="bfloat16 recurrent and projection weights (rounded when loaded; float32 math)")
    return parser


def main(argv=None, stdin=None, stdout=None, stderr=None):
    """Command-line entry point; returns the exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        return _embed_command(args, stdin, stdout, stderr)
    except (_UsageError, ElmoFileError, FileNotFoundError) as e:
        stderr.write(f"elmo embed: error: {e}\n")
        return 2
    except OSError as e:  # e.g. an unwritable --output
        stderr.write(f"elmo embed: error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
