"""models.elmo: char ids, the fixture models of bilm-tf / AllenNLP, random models against a float64 NumPy ELMo,
ScalarMix, the CLI.

The NumPy reference below reads the bilm-tf hdf5 layout directly (TF gate order i, j, f, o; the +1 forget bias at
run time; the backward direction over each sentence reversed within its length), so it shares no code with the
model's weight mapping.
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import ROOT, SHARED
from models import elmo

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")

FIXTURES = os.path.join(SHARED, "data", "elmo")
FIXTURE_MODELS = {"model-a-bilm-tf": "lm_embeddings_sentences.json", "model-b-allennlp": "sentences.json"}
needs_fixtures = pytest.mark.skipif(not os.path.isdir(FIXTURES), reason=f"ELMo fixtures not found at {FIXTURES}")


# ---- character ids ------------------------------------------------------------------------------------------------
def _padded(prefix, length=50, fill=261):
    return list(prefix) + [fill] * (length - len(prefix))


def test_char_ids_match_bilm_tf_batcher_unit_test():
    # bilm-tf tests/test_data.py::TestBatcher (first ids of each row; 261 after them; a zero row for padding).
    bos, eos = _padded([259, 257, 260]), _padded([259, 258, 260])
    expected = np.array([
        [bos, _padded([259, 85, 105, 102, 260]), _padded([259, 103, 106, 115, 116, 117, 260]),
         _padded([259, 116, 102, 111, 117, 102, 111, 100, 102, 260]), eos],
        [bos, _padded([259, 84, 102, 100, 112, 111, 101, 260]), _padded([259, 47, 260]), eos, [0] * 50],
    ], np.int32)
    got = elmo.batch_to_ids([["The", "first", "sentence"], ["Second", "."]])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_char_ids_short_tokens_unicode_and_truncation():
    # bilm-tf TestUnicodeCharsVocabulary (max_word_length=5, ids before the +1 the Batcher adds).
    expected = np.array([[258, 256, 259, 260, 260], [258, 116, 104, 259, 260], [258, 116, 104, 104, 259],
                         [258, 196, 128, 116, 259], [258, 257, 259, 260, 260]], np.int32) + 1
    got = elmo.batch_to_ids([["th", "thhhhh", chr(256) + "t"]], max_characters_per_token=5)
    np.testing.assert_array_equal(got[0], expected)
    # AllenNLP's indexer test, and a literal "<S>" token is the sentence-boundary token.
    np.testing.assert_array_equal(elmo.batch_to_ids([[chr(256) + "t"]])[0, 1], _padded([259, 197, 129, 117, 260]))
    np.testing.assert_array_equal(elmo.batch_to_ids([["</S>"]])[0, 1], _padded([259, 258, 260]))


@needs_fixtures
def test_char_ids_of_the_bilm_tf_vocabulary():
    with open(os.path.join(FIXTURES, "model-a-bilm-tf", "char_ids_vocab_test.txt"), encoding="utf-8") as f:
        words = [w for w in f.read().split("\n") if w and w not in ("<S>", "</S>")]
    ids = elmo.batch_to_ids([words])[0, 1:-1]
    for word, row in zip(words, ids):
        raw = list(word.encode("utf-8"))[:48]
        np.testing.assert_array_equal(row, _padded([259] + [b + 1 for b in raw] + [260]), err_msg=word)


def test_batch_to_ids_rejects_untokenised_sentences():
    with pytest.raises(TypeError, match=r"sentences\[1\].*split"):
        elmo.batch_to_ids([["ok"], "not tokenised"])
    with pytest.raises(TypeError, match="sentences must be"):
        elmo.batch_to_ids("a b c")
    with pytest.raises(TypeError, match=r"sentences\[0\]\[1\]"):
        elmo.batch_to_ids([["a", 3]])
    with pytest.raises(ValueError, match="max_characters_per_token"):
        elmo.batch_to_ids([["a"]], max_characters_per_token=2)


# ---- the fixture models ---------------------------------------------------------------------------------------------
def _fixture(name):
    folder = os.path.join(FIXTURES, name)
    return os.path.join(folder, "options.json"), os.path.join(folder, "lm_weights.hdf5"), folder


@needs_fixtures
@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_fixture_token_embeddings(name):
    options_file, weight_file, folder = _fixture(name)
    model = elmo.load_elmo(options_file, weight_file)
    with open(os.path.join(folder, "vocab_test.txt"), encoding="utf-8") as f:
        vocab = f.read().strip().split("\n")
    with h5py.File(os.path.join(folder, "elmo_token_embeddings.hdf5"), "r") as f:
        expected = f["embedding"][...]
    assert len(vocab) == expected.shape[0]
    # One token per sentence: layer 0 at its position is [embedding, embedding].
    layer_0 = model(elmo.batch_to_ids([[word] for word in vocab]))["layer_0"].numpy()[:, 0]
    width = expected.shape[1]
    np.testing.assert_allclose(layer_0[:, :width], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer_0[:, width:], layer_0[:, :width])


@needs_fixtures
@pytest.mark.parametrize("implementation", ["fused", "keras"])
@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_fixture_stateful_top_layer(name, implementation):
    options_file, weight_file, folder = _fixture(name)
    with open(os.path.join(folder, FIXTURE_MODELS[name]), encoding="utf-8") as f:
        streams = json.load(f)
    expected = []
    for k in range(3):
        with h5py.File(os.path.join(folder, f"lm_embeddings_{k}.hdf5"), "r") as f:
            expected.append([f[str(i)][...] for i in range(10)])
    # bilm-tf's test: one model (max_batch_size=4), 10 batches in order, row k of every batch continues stream k.
    model = elmo.load_elmo(options_file, weight_file, stateful=True, max_batch_size=4,
                           implementation=implementation)
    embed = elmo.embed_function(model)

    def check_batch(i):
        batch = [streams[k][i].strip().split() for k in range(3)]
        out = embed(elmo.batch_to_ids(batch))
        for k, sentence in enumerate(batch):
            want = np.concatenate([expected[k][i][0], expected[k][i][1]], axis=-1)
            assert int(np.sum(out["mask"][k])) == len(sentence)
            np.testing.assert_allclose(out["layer_2"][k, :len(sentence)], want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"batch {i}, row {k}")

    for i in range(10):
        check_batch(i)
    model.reset_states()  # back to zero state: batch 0 again gives batch 0's expected values
    check_batch(0)


# ---- random models against a float64 NumPy ELMo -------------------------------------------------------------------
CONFIGS = {
    # use_skip_connections=false, 2 layers, ReLU CNN, 2 highways, CNN projection, LSTM projection, both clips.
    "plain": dict(dim=12, projection_dim=5, n_layers=2, cell_clip=1.0, proj_clip=1.2, skip=False,
                  filters=[[1, 3], [2, 4], [3, 6]], n_highway=2, activation="relu", char_dim=4, max_chars=12),
    # The released models' structure: skip connections; plus 3 layers, tanh CNN, one highway.
    "skip": dict(dim=10, projection_dim=4, n_layers=3, cell_clip=0.8, proj_clip=1.0, skip=True,
                 filters=[[1, 2], [3, 5], [4, 3]], n_highway=1, activation="tanh", char_dim=3, max_chars=10),
    # No projections anywhere (filters sum to projection_dim = dim), no highway, no cell clip; proj_clip is
    # ignored without a projection, as in TF's LSTMCell.
    "no_projection": dict(dim=6, projection_dim=6, n_layers=2, cell_clip=None, proj_clip=1.0, skip=True,
                          filters=[[1, 2], [2, 4]], n_highway=0, activation="relu", char_dim=3, max_chars=8),
}


def write_random_model(directory, rng, cfg):
    """options.json and lm_weights.hdf5 in the bilm-tf layout, from random numbers."""
    options = {"lstm": {"dim": cfg["dim"], "projection_dim": cfg["projection_dim"], "n_layers": cfg["n_layers"],
                        "cell_clip": cfg["cell_clip"], "proj_clip": cfg["proj_clip"],
                        "use_skip_connections": cfg["skip"]},
               "char_cnn": {"embedding": {"dim": cfg["char_dim"]}, "filters": cfg["filters"],
                            "n_highway": cfg["n_highway"], "n_characters": 262,
                            "max_characters_per_token": cfg["max_chars"], "activation": cfg["activation"]}}
    n_filters = sum(n for _, n in cfg["filters"])
    units, width = cfg["dim"], min(cfg["dim"], cfg["projection_dim"])
    normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    weights = {"char_embed": rng.uniform(-1, 1, (261, cfg["char_dim"])).astype(np.float32)}
    for i, (w, n) in enumerate(cfg["filters"]):
        weights[f"CNN/W_cnn_{i}"] = normal(1, w, cfg["char_dim"], n, scale=0.5)
        weights[f"CNN/b_cnn_{i}"] = normal(n, scale=0.2)
    for k in range(cfg["n_highway"]):
        weights[f"CNN_high_{k}/W_carry"] = normal(n_filters, n_filters, scale=n_filters ** -0.5)
        weights[f"CNN_high_{k}/b_carry"] = normal(n_filters, scale=0.5) - 1.0
        weights[f"CNN_high_{k}/W_transform"] = normal(n_filters, n_filters, scale=n_filters ** -0.5)
        weights[f"CNN_high_{k}/b_transform"] = normal(n_filters, scale=0.2)
    if n_filters != cfg["projection_dim"]:
        weights["CNN_proj/W_proj"] = normal(n_filters, cfg["projection_dim"], scale=1.5 * n_filters ** -0.5)
        weights["CNN_proj/b_proj"] = normal(cfg["projection_dim"], scale=0.2)
    for d in range(2):
        for layer in range(cfg["n_layers"]):
            root = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/"
            # Large enough that the cell and projection clips bite (checked by the tests).
            input_dim = cfg["projection_dim"] if layer == 0 else width
            weights[root + "W_0"] = normal(input_dim + width, 4 * units, scale=0.5)
            weights[root + "B"] = normal(4 * units, scale=0.5)
            if width < units:
                weights[root + "W_P_0"] = normal(units, width, scale=0.9)
    os.makedirs(directory, exist_ok=True)
    options_file, weight_file = os.path.join(directory, "options.json"), os.path.join(directory, "lm_weights.hdf5")
    with open(options_file, "w") as f:
        json.dump(options, f)
    with h5py.File(weight_file, "w") as f:
        for path, value in weights.items():
            f.create_dataset(path, data=value)
    return options_file, weight_file


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class NumpyElmo:
    """float64 ELMo from an options.json and a bilm-tf lm_weights.hdf5, with per-row state carried across calls."""

    def __init__(self, options_file, weight_file, max_batch=8):
        with open(options_file) as f:
            self.options = json.load(f)
        with h5py.File(weight_file, "r") as f:
            self.w = {}
            f.visititems(lambda path, obj: self.w.__setitem__(path, obj[...].astype(np.float64))
                         if isinstance(obj, h5py.Dataset) else None)
        lstm = self.options["lstm"]
        self.units = lstm["dim"]
        self.width = min(lstm["dim"], lstm["projection_dim"])
        self.n_layers = lstm["n_layers"]
        self.max_batch = max_batch
        self.reset()
        self.clipped = {"cell": 0, "proj": 0}

    def reset(self):
        self.c = np.zeros((self.n_layers, 2, self.max_batch, self.units))
        self.h = np.zeros((self.n_layers, 2, self.max_batch, self.width))

    def token_embeddings(self, ids_bxtxc):
        cnn = self.options["char_cnn"]
        table = np.concatenate([np.zeros((1, cnn["embedding"]["dim"])), self.w["char_embed"]])  # id 0 -> zeros
        chars = table[ids_bxtxc]  # [B, T, C, E]
        act = np.tanh if cnn["activation"] == "tanh" else (lambda v: np.maximum(v, 0.0))
        pooled = []
        for i, (width, _) in enumerate(cnn["filters"]):
            kernel = self.w[f"CNN/W_cnn_{i}"][0]  # [width, E, n]
            positions = chars.shape[2] - width + 1
            conv = sum(chars[:, :, k:k + positions, :] @ kernel[k] for k in range(width)) + self.w[f"CNN/b_cnn_{i}"]
            pooled.append(act(conv.max(axis=2)))
        x = np.concatenate(pooled, axis=-1)
        for k in range(cnn.get("n_highway") or 0):
            carry = _sigmoid(x @ self.w[f"CNN_high_{k}/W_carry"] + self.w[f"CNN_high_{k}/b_carry"])
            transform = np.maximum(x @ self.w[f"CNN_high_{k}/W_transform"] + self.w[f"CNN_high_{k}/b_transform"], 0)
            x = carry * transform + (1.0 - carry) * x
        if "CNN_proj/W_proj" in self.w:
            x = x @ self.w["CNN_proj/W_proj"] + self.w["CNN_proj/b_proj"]
        return x

    def _cell(self, root, x, c, h):
        lstm = self.options["lstm"]
        z = np.concatenate([x, h]) @ self.w[root + "W_0"] + self.w[root + "B"]
        i, j, f, o = np.split(z, 4)
        c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
        if lstm.get("cell_clip"):
            self.clipped["cell"] += int(np.sum(np.abs(c) > lstm["cell_clip"]))
            c = np.clip(c, -lstm["cell_clip"], lstm["cell_clip"])
        h = _sigmoid(o) * np.tanh(c)
        if root + "W_P_0" in self.w:
            h = h @ self.w[root + "W_P_0"]
            if lstm.get("proj_clip"):
                self.clipped["proj"] += int(np.sum(np.abs(h) > lstm["proj_clip"]))
                h = np.clip(h, -lstm["proj_clip"], lstm["proj_clip"])
        return c, h

    def __call__(self, ids_bxtxc, stateful=True):
        """Per row: [n_layers + 1, tokens, 2R] with <S>/</S> removed."""
        if not stateful:
            self.reset()
        tokens = self.token_embeddings(ids_bxtxc)
        lengths = (ids_bxtxc > 0).any(axis=2).sum(axis=1)
        results = []
        for row, length in enumerate(lengths):
            per_direction = []
            for d in range(2):
                order = range(length) if d == 0 else range(length - 1, -1, -1)
                layer_input, outputs = tokens[row, :length], []
                for layer in range(self.n_layers):
                    root = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/"
                    c, h = self.c[layer, d, row], self.h[layer, d, row]
                    out = np.zeros((length, self.width))
                    for t in order:
                        c, h = self._cell(root, layer_input[t], c, h)
                        out[t] = h
                    self.c[layer, d, row], self.h[layer, d, row] = c, h
                    if self.options["lstm"]["use_skip_connections"] and layer > 0:
                        out = out + layer_input  # added to the output only, not to the state
                    outputs.append(out)
                    layer_input = out
                per_direction.append(outputs)
            layers = [np.concatenate([tokens[row, :length]] * 2, axis=-1)]
            layers += [np.concatenate([per_direction[0][k], per_direction[1][k]], axis=-1)
                       for k in range(self.n_layers)]
            results.append(np.stack([layer[1:length - 1] for layer in layers]))
        return results


ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;'-") + ["é", "•", "中", "😀"]


def random_sentences(rng, count, max_tokens=9):
    sentences = []
    for _ in range(count):
        n_tokens = int(rng.integers(0, max_tokens + 1))
        sentence = ["".join(rng.choice(ALPHABET, int(rng.integers(1, 14)))) for _ in range(n_tokens)]
        sentences.append(sentence)
    sentences[int(rng.integers(count))] = ["x" * 30, "<S>", "ab"]  # truncated token, literal boundary token
    return sentences


def assert_matches_reference(outputs, reference_rows, sentences, tol):
    n_layers = len(reference_rows[0])
    for k, (sentence, want) in enumerate(zip(sentences, reference_rows)):
        assert int(np.sum(outputs["mask"][k])) == len(sentence)
        for layer in range(n_layers):
            got = np.asarray(outputs[f"layer_{layer}"][k])
            np.testing.assert_allclose(got[:len(sentence)], want[layer], rtol=tol, atol=tol,
                                       err_msg=f"row {k}, layer {layer}")
            assert not np.any(got[len(sentence):]), "non-zero output past the sentence"


def dequantized_copy(weight_file, path):
    """A copy of a bilm-tf weight file whose LSTM recurrent rows (the rows of W_0 past the input) and projection
    rows are quantized and dequantized per row: what the fused_int8 model computes with, exactly. (The bilm-tf
    gate order permutes columns only, so a row's scale is the same in either layout.)"""
    with h5py.File(weight_file, "r") as src, h5py.File(path, "w") as dst:
        def copy(name, item):
            if not isinstance(item, h5py.Dataset):
                return
            value = np.asarray(item)
            if name.endswith("LSTMCell/W_0"):
                units4 = value.shape[1]
                width = src[name.replace("W_0", "W_P_0")].shape[1] if name.replace("W_0", "W_P_0") in src \
                    else units4 // 4
                value = value.copy()
                value[-width:] = tf_ops.dequantize_rows(*tf_ops.quantize_rows(value[-width:]))
            elif name.endswith("LSTMCell/W_P_0"):
                value = tf_ops.dequantize_rows(*tf_ops.quantize_rows(value))
            dst.create_dataset(name, data=value)
        src.visititems(copy)
    return path


@pytest.mark.parametrize("implementation", ["fused", "keras", "fused_int8"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_random_model_matches_numpy(tmp_path, rng, config, implementation):
    cfg = CONFIGS[config]
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    # fused_int8 is checked against the float64 network on the dequantized weights (the kernels, not the scheme).
    reference_weights = weight_file if implementation != "fused_int8" else \
        dequantized_copy(weight_file, str(tmp_path / "dequantized.hdf5"))
    reference = NumpyElmo(options_file, reference_weights, max_batch=4)
    stateless = elmo.load_elmo(options_file, weight_file, implementation=implementation)
    stateful = elmo.load_elmo(options_file, weight_file, stateful=True, max_batch_size=4,
                              implementation=implementation)
    embed = elmo.embed_function(stateful)
    # The stock-Keras path (the comparison network, not the code under test) sums in other orders: with these
    # deliberately large weights its float32 error reached 6.6e-5 relative on one element (CI run, 2026-11-21).
    tol = 1e-4 if implementation == "keras" else 1e-5
    # Stateless: any call starts from zero.
    sentences = random_sentences(rng, 4)
    ids = elmo.batch_to_ids(sentences, cfg["max_chars"])
    assert_matches_reference(stateless(ids), reference(ids, stateful=False), sentences, tol)
    # Stateful: 3 rows, then 2 (row 2 keeps its state), then 4 (row 2 continues, row 3 starts from zero).
    reference.reset()
    for count in (3, 2, 4):
        sentences = random_sentences(rng, count)
        ids = elmo.batch_to_ids(sentences, cfg["max_chars"])
        assert_matches_reference(embed(ids), reference(ids), sentences, tol)
    if cfg["cell_clip"]:
        assert reference.clipped["cell"] > 0, "the cell clip never bit: the test would not see it"
    if cfg["proj_clip"] and cfg["projection_dim"] < cfg["dim"]:
        assert reference.clipped["proj"] > 0, "the projection clip never bit: the test would not see it"
    # A batch over max_batch_size is an error that names it.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="max_batch_size"):
        embed(elmo.batch_to_ids([["a"]] * 5, cfg["max_chars"]))


def test_fused_gradients_match_stock_keras(tmp_path, rng):
    """Fine-tuning: the fused model's gradients equal the stock-Keras network's."""
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["skip"])
    models = [elmo.load_elmo(options_file, weight_file, implementation=impl, trainable=True)
              for impl in ("fused", "keras")]
    ids = elmo.batch_to_ids(random_sentences(rng, 3, max_tokens=6), CONFIGS["skip"]["max_chars"])
    probe = None
    grads = []
    for model in models:
        variables = [model.bilm.cell_weights(layer, d)[name] for layer in range(model.bilm.n_layers)
                     for d in range(2) for name in ("kernel", "recurrent_kernel", "bias", "projection_kernel")]
        variables.append(model.char_encoder.projection.kernel)
        with tf.GradientTape() as tape:
            out = model(ids)
            if probe is None:
                probe = rng.standard_normal(out["layer_3"].shape).astype(np.float32)
            loss = tf.reduce_sum(out["layer_3"] * probe) + tf.reduce_sum(out["layer_1"])
        grads.append(tape.gradient(loss, [v.value for v in variables]))
    for fused, stock in zip(*grads):
        np.testing.assert_allclose(fused, stock, rtol=1e-4, atol=1e-5)


# ---- ScalarMix ----------------------------------------------------------------------------------------------------
def numpy_scalar_mix(tensors, mask, scalars, gamma, layer_norm, epsilon=1e-13):
    weights = np.exp(scalars - np.max(scalars))
    weights /= weights.sum()
    tensors = [np.asarray(t, np.float64) for t in tensors]
    if layer_norm:
        m = np.asarray(mask, np.float64)[..., None]
        count = m.sum() * tensors[0].shape[-1]
        normed = []
        for t in tensors:
            mean = (t * m).sum() / count
            variance = (((t * m - mean) * m) ** 2).sum() / count
            normed.append((t - mean) / np.sqrt(variance + epsilon))
        tensors = normed
    return gamma * sum(w * t for w, t in zip(weights, tensors))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_scalar_mix_matches_numpy(rng, layer_norm):
    batch, steps, width = 3, 7, 5
    tensors = [(rng.standard_normal((batch, steps, width)) * s + s).astype(np.float32) for s in (0.5, 2.0, 4.0)]
    lengths = np.array([7, 3, 0])
    mask = np.arange(steps)[None, :] < lengths[:, None]
    scalars = rng.standard_normal(3)
    mix = elmo.ScalarMix(3, do_layer_norm=layer_norm, initial_scalar_parameters=scalars)
    got = mix(tensors, mask=mask).numpy()
    np.testing.assert_allclose(got, numpy_scalar_mix(tensors, mask, scalars, 1.0, layer_norm), rtol=1e-5,
                               atol=1e-6)
    mix.gamma.assign(0.3)
    got = mix(tensors, mask=mask).numpy()
    np.testing.assert_allclose(got, numpy_scalar_mix(tensors, mask, scalars, 0.3, layer_norm), rtol=1e-5,
                               atol=1e-6)
    assert len(mix.trainable_weights) == 2
    with pytest.raises(ValueError, match="tensors must be a list of 3"):
        mix(tensors[:2])


def test_int8_elmo_does_not_train(tmp_path, rng):
    options_file, _ = write_random_model(str(tmp_path), rng, CONFIGS["skip"])
    with pytest.raises(ValueError, match="fused_int8.*do not train"):
        elmo.build_elmo(elmo.read_options(options_file), implementation="fused_int8", trainable=True)


def test_frozen_elmo_with_scalar_mix_in_a_keras_model(tmp_path, rng):
    import keras
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    model = elmo.load_elmo(options_file, weight_file)  # frozen by default
    char_ids = keras.Input((None, CONFIGS["plain"]["max_chars"]), dtype="int32")
    out = model(char_ids)
    mixed = elmo.ScalarMix(3, do_layer_norm=True)([out["layer_0"], out["layer_1"], out["layer_2"]],
                                                  mask=out["mask"])
    tagger = keras.Model(char_ids, keras.layers.Dense(2)(mixed))
    assert len(tagger.trainable_weights) == 4  # ScalarMix (2) + Dense (2): ELMo stays frozen
    ids = elmo.batch_to_ids(random_sentences(rng, 3), CONFIGS["plain"]["max_chars"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tagger(ids)))
    grads = tape.gradient(loss, tagger.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("implementation", ["fused", "keras"])
def test_elmo_ignores_a_mixed_precision_policy(tmp_path, rng, implementation):
    """ELMo computes in float32 under a mixed global policy: the same outputs, bit for bit, as under float32. A
    ScalarMix follows the policy at its output (float32 math, one rounding) and a tagger on top trains."""
    import keras
    cfg = CONFIGS["skip"]
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    ids = elmo.batch_to_ids(random_sentences(rng, 3), cfg["max_chars"])
    want = elmo.load_elmo(options_file, weight_file, implementation=implementation)(ids)
    scalars = rng.standard_normal(3)
    want_mix = elmo.ScalarMix(3, do_layer_norm=True, initial_scalar_parameters=scalars)(
        [want["layer_0"], want["layer_1"], want["layer_2"]], mask=want["mask"])
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = elmo.load_elmo(options_file, weight_file, implementation=implementation)
        got = model(ids)
        for key in want:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key])
        mix = elmo.ScalarMix(3, do_layer_norm=True, initial_scalar_parameters=scalars)
        got_mix = mix([got["layer_0"], got["layer_1"], got["layer_2"]], mask=got["mask"])
        assert got_mix.dtype == tf.float16
        np.testing.assert_array_equal(got_mix, tf.cast(want_mix, tf.float16))
        char_ids = keras.Input((None, cfg["max_chars"]), dtype="int32")
        out = model(char_ids)
        mixed = elmo.ScalarMix(3)([out["layer_0"], out["layer_1"], out["layer_2"]], mask=out["mask"])
        tagger = keras.Model(char_ids, keras.layers.Dense(2)(mixed))
        tagger.compile(keras.optimizers.SGD(0.05), "mse")
        targets = rng.standard_normal((3, ids.shape[1] - 2, 2)).astype(np.float32)
        losses = tagger.fit(ids, targets, epochs=3, verbose=0).history["loss"]
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---- command line -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("int8", [False, True])
def test_cli_embeds_a_file(tmp_path, rng, int8):
    cfg = CONFIGS["skip"]
    options_file, weight_file = write_random_model(str(tmp_path / "model"), rng, cfg)
    # Blank lines are an error (tested below): empty sentences get a word, a different one each (two equal lines
    # share one sentence_to_index key, as the duplicate made below does on purpose).
    sentences = [s or [f"lonely{i}"] for i, s in enumerate(random_sentences(rng, 7))]
    sentences[3] = sentences[1]  # a duplicate sentence keeps its own key
    lines = [" ".join(s) for s in sentences]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    with open(tmp_path / "in.txt", "w", encoding="utf-8") as fin:
        fin.write("\n".join(lines) + "\n")
    with open(tmp_path / "in.txt", "rb") as fin, open(tmp_path / "out.hdf5", "wb") as fout:
        proc = subprocess.run([sys.executable, "-m", "models.elmo", "embed", "--options", options_file,
                               "--weights", weight_file, "--batch-size", "3"] + (["--int8"] if int8 else []),
                              stdin=fin, stdout=fout,
                              stderr=subprocess.PIPE, cwd=ROOT, env=env, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "7/7 sentences" in stderr
    # --int8: the float64 network on the dequantized weights.
    reference = NumpyElmo(options_file, dequantized_copy(weight_file, str(tmp_path / "deq.hdf5")) if int8
                          else weight_file)
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert sorted(f.keys()) == sorted([str(i) for i in range(7)] + ["sentence_to_index"])
        index = json.loads(f["sentence_to_index"][0])
        assert index[lines[0]] == "0" and index[lines[6]] == "6"
        for i, sentence in enumerate(sentences):
            ids = elmo.batch_to_ids([sentence], cfg["max_chars"])
            want = reference(ids, stateful=False)[0]  # stateless: each sentence alone
            assert f[str(i)].shape == (cfg["n_layers"] + 1, len(sentence), 2 * cfg["projection_dim"])
            np.testing.assert_allclose(f[str(i)][...], want, rtol=1e-5, atol=1e-5, err_msg=f"sentence {i}")


def _run_cli(capsys, argv, stdin_text="a b\n"):
    import io
    stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode("utf-8")), encoding="utf-8")
    status = elmo.main(["embed"] + argv + ["--output", os.devnull], stdin=stdin)
    return status, capsys.readouterr().err


def test_cli_lines_outputs_and_odd_files(tmp_path, rng, capsys):
    """One sentence per '\\n' line (not split at U+2028, U+0085 or form feeds inside a line), a BOM is not part
    of the first token, the output is written whole or not at all, and the input files are never overwritten."""
    import io
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    out = tmp_path / "out.hdf5"
    text = "\ufeffa b\u2028c\nd\x0ce\u0085f\r\ng\n"
    stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8")
    status = elmo.main(["embed", "--options", options_file, "--weights", weight_file, "--output", str(out)],
                       stdin=stdin)
    assert status == 0, capsys.readouterr().err
    with h5py.File(out, "r") as f:
        index = json.loads(f["sentence_to_index"][0])
        assert index == {"a b\u2028c": "0", "d\x0ce\u0085f": "1", "g": "2"}
        assert f["0"].shape[1] == 3  # a, b, c: U+2028 is whitespace between tokens, not a line break
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    before = open(weight_file, "rb").read()
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", weight_file])  # sanity: /dev/null ok
    assert status == 0, err
    stdin = io.TextIOWrapper(io.BytesIO(b"a b\n"), encoding="utf-8")
    status = elmo.main(["embed", "--options", options_file, "--weights", weight_file, "--output", weight_file],
                       stdin=stdin)
    assert status == 2 and "--weights file" in capsys.readouterr().err
    assert open(weight_file, "rb").read() == before
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", weight_file, "--input", str(tmp_path)])
    assert status == 2 and "is a directory" in err
    with open(options_file) as f:
        options = json.load(f)
    options["char_cnn"]["max_characters_per_token"] = 2
    options["char_cnn"]["filters"] = [[1, 4]]
    tiny = tmp_path / "tiny.json"
    tiny.write_bytes(b"\xef\xbb\xbf" + json.dumps(options).encode())  # with a BOM: read, then refused for 2
    status, err = _run_cli(capsys, ["--options", str(tiny), "--weights", weight_file])
    assert status == 2 and "max_characters_per_token' must be >= 3" in err, err


def test_cli_errors_name_the_file_and_the_problem(tmp_path, rng, capsys):
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    missing = str(tmp_path / "nope.json")
    status, err = _run_cli(capsys, ["--options", missing, "--weights", weight_file])
    assert status == 2 and missing in err and "does not exist" in err
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", str(tmp_path / "nope.hdf5")])
    assert status == 2 and "nope.hdf5" in err and "does not exist" in err
    # Malformed: not HDF5, not JSON, a missing dataset, a wrong shape, a missing option.
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"this is not an HDF5 file\n" * 10)
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", str(garbage)])
    assert status == 2 and "garbage.hdf5" in err and "not a readable HDF5 file" in err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"lstm": {"dim": 12,}')
    status, err = _run_cli(capsys, ["--options", str(bad_json), "--weights", weight_file])
    assert status == 2 and "bad.json" in err and "not valid JSON" in err
    partial = tmp_path / "partial.hdf5"
    with h5py.File(weight_file, "r") as src, h5py.File(partial, "w") as dst:
        for key in src:
            src.copy(key, dst)
        del dst["RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0"]
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", str(partial)])
    assert status == 2 and "partial.hdf5" in err and "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0" in err
    with h5py.File(partial, "a") as f:
        f["RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0"] = np.zeros((3, 3), np.float32)
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", str(partial)])
    assert status == 2 and "W_P_0" in err and "(3, 3)" in err
    with open(options_file) as f:
        options = json.load(f)
    del options["lstm"]["projection_dim"]
    no_key = tmp_path / "no_key.json"
    no_key.write_text(json.dumps(options))
    status, err = _run_cli(capsys, ["--options", str(no_key), "--weights", weight_file])
    assert status == 2 and "no_key.json" in err and "lstm.projection_dim" in err
    # Input with a blank line.
    status, err = _run_cli(capsys, ["--options", options_file, "--weights", weight_file], "a b\n\nc\n")
    assert status == 2 and "empty line" in err and "line 2" in err
    # And the Python API raises the same, typed.
    with pytest.raises(FileNotFoundError, match="nope.json"):
        elmo.load_elmo(missing, weight_file)
    with pytest.raises(elmo.ElmoFileError, match="garbage.hdf5"):
        elmo.load_elmo(options_file, str(garbage))


@pytest.mark.parametrize("implementation", ["fused", "keras"])
@pytest.mark.parametrize("stateful", [False, True])
def test_empty_batch_gives_empty_outputs(tmp_path, rng, implementation, stateful):
    """0 sentences (TF's Conv2D returns an empty batch's input as it is, which the conv bias add rejects): empty
    outputs of the right shapes, eagerly and in a tf.function; a batch after it gives what it gives alone."""
    cfg = CONFIGS["plain"]
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    model = elmo.load_elmo(options_file, weight_file, stateful=stateful, max_batch_size=4,
                           implementation=implementation)
    embed = elmo.embed_function(model)
    sentences = random_sentences(rng, 3)
    ids = elmo.batch_to_ids(sentences, cfg["max_chars"])
    want = {key: np.asarray(value) for key, value in model(ids).items()}
    model.reset_states()
    empty = np.zeros((0, 7, cfg["max_chars"]), np.int32)
    for run in (model, embed, tf.function(model)):
        out = run(tf.constant(empty))
        assert sorted(out) == ["layer_0", "layer_1", "layer_2", "mask"]
        for k in range(3):
            assert out[f"layer_{k}"].shape == (0, 5, 2 * cfg["projection_dim"])
            assert out[f"layer_{k}"].dtype == tf.float32
        assert out["mask"].shape == (0, 5) and out["mask"].dtype == tf.bool
    assert model.char_encoder(empty).shape == (0, 7, cfg["projection_dim"])
    for key, value in model(ids).items():  # the empty batches left the (stateful) state alone
        np.testing.assert_array_equal(value, want[key])


def test_cli_classic_mac_line_endings_are_lines(tmp_path, rng, capsys):
    """A lone '\\r' ends a line (universal newlines, as AllenNLP's text-mode read): a file with classic Mac line
    endings is three sentences, not one sentence of all their tokens."""
    cfg = CONFIGS["plain"]
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    path, out = tmp_path / "in.txt", tmp_path / "out.hdf5"
    path.write_bytes(b"a b c\rhello world\r\nx\r")
    status = elmo.main(["embed", "--options", options_file, "--weights", weight_file, "--input", str(path),
                        "--output", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    sentences = [["a", "b", "c"], ["hello", "world"], ["x"]]
    reference = NumpyElmo(options_file, weight_file, max_batch=1)
    with h5py.File(out, "r") as f:
        assert json.loads(f["sentence_to_index"][0]) == {"a b c": "0", "hello world": "1", "x": "2"}
        assert sorted(k for k in f if k != "sentence_to_index") == ["0", "1", "2"]
        for i, sentence in enumerate(sentences):
            want = reference(elmo.batch_to_ids([sentence], cfg["max_chars"]), stateful=False)[0]
            np.testing.assert_allclose(f[str(i)][...], want, rtol=1e-5, atol=1e-5)
    path.write_bytes(b"a\r\rb\n")  # an empty line between CRs is an empty line
    status = elmo.main(["embed", "--options", options_file, "--weights", weight_file, "--input", str(path),
                        "--output", str(out), "--quiet"])
    assert status == 2 and "line 2" in capsys.readouterr().err


def test_projection_wider_than_the_cell_is_refused(tmp_path, rng):
    # One layer, no skip connections: the LSTM layers would be 2 * dim wide and layer_0 2 * projection_dim, so
    # embed_sentences and the embed command crashed stacking them (numpy's "all input arrays must have the same
    # shape"). Refused when the options are read, naming both values.
    cfg = dict(CONFIGS["plain"], dim=6, projection_dim=9, n_layers=1)
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    with pytest.raises(elmo.ElmoFileError, match=r"projection_dim=9 > lstm.dim=6"):
        elmo.read_options(options_file)
    with pytest.raises(elmo.ElmoFileError, match="options.json"):
        elmo.load_elmo(options_file, weight_file)


def test_embed_sentences_rejects_a_bad_batch_size(tmp_path, rng):
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    model = elmo.load_elmo(options_file, weight_file)
    for bad in (-1, 0, 2.5, True):  # -1 used to return [] silently
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            elmo.embed_sentences(model, [["a"], ["b"]], batch_size=bad)


def test_cli_output_in_a_missing_directory_names_the_output(tmp_path, rng, capsys):
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    target = str(tmp_path / "no_such_dir" / "out.hdf5")
    path = tmp_path / "in.txt"
    path.write_text("a b\n")
    status = elmo.main(["embed", "--options", options_file, "--weights", weight_file, "--input", str(path),
                        "--output", target, "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and repr(target) in err and ".part" not in err, err


def test_elmo_model_and_a_tagger_on_it_load_from_keras_files(tmp_path, rng):
    """model.save wrote a .keras file that keras.models.load_model could not read back ("Could not locate class
    'ElmoModel'"), alone or inside a tagger: ElmoModel is registered and its config is its constructor's."""
    import keras
    cfg = CONFIGS["plain"]
    options_file, weight_file = write_random_model(str(tmp_path), rng, cfg)
    model = elmo.load_elmo(options_file, weight_file, stateful=True, max_batch_size=3)
    ids = elmo.batch_to_ids([["a", "b"], ["c"]], cfg["max_chars"])
    model(ids)  # a carried state, saved with the weights
    model.save(tmp_path / "elmo.keras")
    loaded = keras.models.load_model(tmp_path / "elmo.keras")
    assert isinstance(loaded, elmo.ElmoModel) and loaded.stateful and not loaded.trainable
    np.testing.assert_array_equal(loaded(ids)["layer_2"], model(ids)["layer_2"])
    stateless = elmo.load_elmo(options_file, weight_file)
    char_ids = keras.Input((None, cfg["max_chars"]), dtype="int32")
    out = stateless(char_ids)
    mixed = elmo.ScalarMix(3)([out["layer_0"], out["layer_1"], out["layer_2"]], mask=out["mask"])
    tagger = keras.Model(char_ids, keras.layers.Dense(2)(mixed))
    tagger.save(tmp_path / "tagger.keras")
    tagger_loaded = keras.models.load_model(tmp_path / "tagger.keras")
    assert len(tagger_loaded.trainable_weights) == 4
    np.testing.assert_array_equal(tagger_loaded(ids), tagger(ids))


def test_quantize_model_on_elmo_points_to_the_int8_implementation(tmp_path, rng):
    # quantize_model cannot reach the biLM's layers (ElmoBiLM builds them itself); its message must name the route
    # that works for ELMo, not the generic one.
    import tf_ops
    options_file, weight_file = write_random_model(str(tmp_path), rng, CONFIGS["plain"])
    model = elmo.load_elmo(options_file, weight_file)
    with pytest.raises(ValueError, match='implementation="fused_int8"'):
        tf_ops.quantize_model(model)
