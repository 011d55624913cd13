"""SavedModel export (export/): both flavours of both models, loaded in fresh processes, against the Keras models.

- NMT: a small model (random weights made decisive, so no near-tie can flip a beam) with SentencePiece models
  trained here; the exports' n-best lists equal the Keras Translator's (ids exactly, scores within 1e-5
  relative), on raw
  text (SentencePiece in the graph) and on ids. ELMo: a small random model written in the bilm-tf format, the
  exports' layers within 1e-5 of the Keras model's, on raw tokens (char ids in the graph) and on char ids.
- The fused flavour loads in a fresh process with the op library; the portable one loads and runs with the op
  library never loaded, and its graph holds no op outside stock TensorFlow and tensorflow-text.
- saved_model_cli lists the signatures; the warm-up file parses as PredictionLogs and each request runs through
  the loaded model; malformed requests (wrong dtype, rank, empty batch, bad lengths or ids) raise errors.
- Versions: a new number per export, never overwriting; models.config lists the models; a graph needing an op
  nobody registered fails to load with an error naming it.
- In-graph char ids (models.elmo.tokens_to_char_ids) equal batch_to_ids; the bilm-tf writer round-trips.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from models import elmo, nmt
from models.nmt_model import NMTConfig, NMTModel, Translator

ELMO_OPTIONS = {"lstm": {"dim": 48, "projection_dim": 24, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                         "use_skip_connections": True},
                "char_cnn": {"embedding": {"dim": 8}, "filters": [[1, 8], [2, 8], [3, 16]], "n_highway": 1,
                             "n_characters": 262, "max_characters_per_token": 50, "activation": "relu"}}
NMT_SENTENCES = ["the big dog sees a small cat", "two red horses follow the old man near a tree",
                 "a bird", "every young child paints this blue boat and the woman likes four books"]
ELMO_SENTENCES = [["The", "cat", "sat", "."], ["über", "naïve", "x" * 70, "<S>", "</S>"], ["a"]]


def _random_unicode_token(rng):
    alphabet = "abcXYZ019.,-éüßжλ中文🙂"
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(1, 60))))


# ---- in-graph char ids and the bilm-tf writer ----------------------------------------------------------------
def test_tokens_to_char_ids_equals_batch_to_ids(rng):
    sentences = [[_random_unicode_token(rng) for _ in range(int(rng.integers(0, 7)))] for _ in range(9)]
    sentences[0] = ["<S>", "x", "</S>", ""]  # literal boundary tokens; an empty token
    width = max(len(s) for s in sentences) + 2  # extra columns, filled with junk past each length
    tokens = [s + ["junk"] * (width - len(s)) for s in sentences]
    lengths = [len(s) for s in sentences]
    got = elmo.tokens_to_char_ids(tf.constant(tokens), tf.constant(lengths)).numpy()
    want = elmo.batch_to_ids(sentences)
    assert got.shape == (len(sentences), width + 2, 50)
    np.testing.assert_array_equal(got[:, :want.shape[1]], want)
    assert not got[:, want.shape[1]:].any()  # the extra columns are padding rows


@pytest.mark.parametrize("tokens, lengths, message", [
    ([["a", "b"]], [3], "sequence_len must be <= the number of token columns"),
    ([["a", "b"]], [-1], "sequence_len must be >= 0"),
    ([["a", "b"]], [1, 1], "one entry per row"),
    (["a", "b"], [1, 1], "tokens must be a"),
])
def test_tokens_to_char_ids_rejects_bad_input(tokens, lengths, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        elmo.tokens_to_char_ids(tf.constant(tokens), tf.constant(lengths))


def test_bilm_tf_writer_round_trips(tmp_path, rng):
    import keras
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    model = elmo.build_elmo(ELMO_OPTIONS)
    for v in model.weights:  # non-zero biases everywhere, so a dropped or misplaced tensor shows
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    # Char id 0 means "no token": the released format has no row for it (loading prepends zeros).
    model.char_encoder.char_embedding.embeddings[0].assign(np.zeros(8, np.float32))
    options_file, weight_file = elmo.write_bilm_tf(model, str(tmp_path))
    loaded = elmo.load_elmo(options_file, weight_file)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        if a.path.startswith("bilm/") and a.path.endswith("bias"):
            # The format keeps B without TF's +1.0 forget bias: (f - 1) + 1 rounds in float32.
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1.2e-7, rtol=0, err_msg=a.path)
        else:
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=a.path)
    written = elmo.read_bilm_tf_weights(weight_file, elmo.read_options(options_file))
    assert set(written) == set(elmo.bilm_tf_weight_shapes(model.options))


# ---- the exports -----------------------------------------------------------------------------------------------
def _make_nmt_dir(directory):
    """A models.nmt model directory: SentencePiece models trained on generated text, decisive random weights."""
    import keras
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import toy_task
    os.makedirs(directory)
    data = os.path.join(directory, "data")
    toy_task.write_task(data, train=1500, valid=10, test=10, seed=3)
    for side, name in (("src", nmt.SPM_SRC), ("tgt", nmt.SPM_TGT)):
        nmt.train_sentencepiece([os.path.join(data, f"train.{side}")], os.path.join(directory, name), 80, "bpe")
    sp_src, sp_tgt = nmt.load_sentencepiece(directory)
    config = NMTConfig(src_vocab_size=sp_src.get_piece_size(), tgt_vocab_size=sp_tgt.get_piece_size(), emb_dim=16,
                       hidden=16, enc_layers=2, dec_layers=2, dropout=0.0)
    keras.utils.set_random_seed(11)
    model = NMTModel(config)
    rng = np.random.default_rng(11)
    for v in model.weights:  # large weights: peaked distributions, far from ties
        v.assign(rng.normal(0, 0.8, v.shape).astype(np.float32))
    with open(os.path.join(directory, nmt.CONFIG_FILE), "w") as f:
        json.dump({"model": json.loads(config.to_json()), "train": {}}, f)

    class NoOptimizer:
        variables = []
    nmt.save_checkpoint(os.path.join(directory, "ckpt-last.npz"), model, NoOptimizer(), {"step": 0})
    return model, sp_src


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from export import saved_model
    root = tmp_path_factory.mktemp("export")
    model_dir = str(root / "nmt_run")
    nmt_model, sp_src = _make_nmt_dir(model_dir)
    import keras
    keras.utils.set_random_seed(5)
    elmo_model = elmo.build_elmo(ELMO_OPTIONS)
    rng = np.random.default_rng(5)
    for v in elmo_model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    options_file, weight_file = elmo.write_bilm_tf(elmo_model, str(root / "elmo_files"))
    serving = root / "serving"
    paths = {}
    for flavour in ("fused", "portable"):
        extra = ["--portable"] if flavour == "portable" else []
        paths["nmt", flavour] = saved_model.main(["nmt", "--model-dir", model_dir, "--out", str(serving / "nmt"),
                                                  "--beam-size", "4", "--max-length", "40"] + extra)
        paths["elmo", flavour] = saved_model.main(["elmo", "--options", options_file, "--weights", weight_file,
                                                   "--out", str(serving / "elmo")] + extra)
    return {"paths": paths, "serving": serving, "nmt_model": nmt_model, "sp_src": sp_src,
            "elmo_model": elmo.load_elmo(options_file, weight_file)}


# The fresh process: loads one flavour of both models, runs them, the warm-up requests and malformed requests.
CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[1])
    import export, tf_ops
    from tensorflow_serving.apis import prediction_log_pb2
    nmt_path, elmo_path, out_file = sys.argv[2:5]
    report = {"missing_before": {"nmt": export.required_ops(nmt_path), "elmo": export.required_ops(elmo_path)}}
    nmt, emb = export.load(nmt_path), export.load(elmo_path)
    arrays = {}
    texts = json.loads(sys.argv[5])
    out = nmt(text=texts)
    arrays["text_translations"] = np.array([[t.decode() for t in row] for row in out["translations"].numpy()])
    arrays["text_scores"] = out["scores"].numpy()
    ids = np.array(json.loads(sys.argv[6]), np.int32)
    out = nmt.signature("translate_ids")(src_ids=ids)
    arrays["ids_ids"], arrays["ids_scores"] = out["ids"].numpy(), out["scores"].numpy()
    sentences = json.loads(sys.argv[7])
    width = max(len(s) for s in sentences)
    out = emb(tokens=[s + ["pad"] * (width - len(s)) for s in sentences], sequence_len=[len(s) for s in sentences])
    for k, v in out.items():
        arrays["tokens_" + k] = v.numpy()
    out = emb.signature("embed_char_ids")(char_ids=np.array(json.loads(sys.argv[8]), np.int32))
    for k, v in out.items():
        arrays["chars_" + k] = v.numpy()
    # Warm-up requests, as TF Serving replays them.
    warmup = []
    for name, model in (("nmt", nmt), ("elmo", emb)):
        path = os.path.join(model.path, "assets.extra", "tf_serving_warmup_requests")
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            result = model.signature(request.model_spec.signature_name)(**inputs)
            warmup.append([name, request.model_spec.name, request.model_spec.signature_name,
                           {k: list(v.shape) for k, v in result.items()}])
    report["warmup"] = warmup
    # Malformed requests: each must raise, and the process must live on.
    bad = {
        "nmt wrong dtype": lambda: nmt(text=[1, 2]),
        "nmt wrong rank": lambda: nmt(text=[["a", "b"]]),
        "nmt empty batch": lambda: nmt(text=np.zeros([0], object)),
        "nmt id out of range": lambda: nmt.signature("translate_ids")(src_ids=[[5, 100000]]),
        "nmt negative id": lambda: nmt.signature("translate_ids")(src_ids=[[-1]]),
        "nmt id past int32": lambda: nmt.signature("translate_ids")(src_ids=[[5, 17, 2**32 + 9]]),
        "nmt float ids": lambda: nmt.signature("translate_ids")(src_ids=[[5, 17.7]]),
        "nmt ragged ids": lambda: nmt.signature("translate_ids")(src_ids=[[5, 17], [5]]),
        "nmt None text": lambda: nmt(text=["a bird", None]),
        "elmo length past int32": lambda: emb(tokens=[["a"]], sequence_len=[2**32 + 1]),
        "elmo wrong dtype": lambda: emb(tokens=[[1, 2]], sequence_len=[2]),
        "elmo wrong rank": lambda: emb(tokens=["a", "b"], sequence_len=[1, 1]),
        "elmo empty batch": lambda: emb(tokens=np.zeros([0, 3], object), sequence_len=np.zeros([0], np.int32)),
        "elmo length too long": lambda: emb(tokens=[["a", "b"]], sequence_len=[3]),
        "elmo length mismatch": lambda: emb(tokens=[["a", "b"]], sequence_len=[1, 2]),
        "elmo char id out of range": lambda: emb.signature("embed_char_ids")(char_ids=np.full([1, 3, 50], 999)),
    }
    errors = {}
    for what, call in bad.items():
        try:
            call()
            errors[what] = None
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            errors[what] = type(e).__name__ + ": " + str(e)[:3000]
    report["errors"] = errors
    # A sentence translates the same alone and next to a much longer one (the decode cap is per sentence).
    alone = nmt(text=texts[:1])
    crowd = nmt(text=texts[:1] + [" ".join(texts) * 3])
    report["alone_vs_crowd"] = [alone["translations"].numpy()[0].tolist() == crowd["translations"].numpy()[0].tolist(),
                                float(np.abs(alone["scores"].numpy()[0] - crowd["scores"].numpy()[0]).max())]
    report["still_works"] = nmt(text=texts[:1])["scores"].numpy().tolist()
    report["library_loaded"] = tf_ops._loader._module is not None
    np.savez(out_file, **arrays)
    print("REPORT " + json.dumps(report))
""")


def _run_child(tmp_path, flavour, exports, src_ids, char_ids):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out_file = str(tmp_path / f"{flavour}.npz")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("FUSED_RNN_OPS_LIBRARY", None)
    proc = subprocess.run(
        [sys.executable, str(script), ROOT, exports["paths"]["nmt", flavour], exports["paths"]["elmo", flavour],
         out_file, json.dumps(NMT_SENTENCES + [""]), json.dumps(src_ids.tolist()), json.dumps(ELMO_SENTENCES),
         json.dumps(char_ids.tolist())], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    with np.load(out_file) as data:
        return json.loads(line[len("REPORT "):]), dict(data)


def _keras_nmt(exports, src_ids):
    """The Keras model's n-best (ids, scores) with the export's settings (beam 4, lp 0.6, decode length rule)."""
    translator = Translator(exports["nmt_model"], beam_size=4, decoder="fused")
    decode_len_b = np.minimum(40, 2 * (np.asarray(src_ids) != 0).sum(axis=1) + 10)  # each sentence's own cap
    ids, scores = translator(src_ids, decode_len_b, 0.6)
    return ids.numpy(), scores.numpy()


def _strip(ids_kl):
    return [tuple(row[:list(row).index(3)] if 3 in row else row) for row in ids_kl.tolist()]


@pytest.mark.parametrize("flavour", ["fused", "portable"])
def test_exports_match_keras_models_in_a_fresh_process(tmp_path, exports, flavour):
    sp_src = exports["sp_src"]
    src_ids = nmt.pad_batch(sp_src.encode(NMT_SENTENCES, out_type=int))
    char_ids = elmo.batch_to_ids(ELMO_SENTENCES)
    report, got = _run_child(tmp_path, flavour, exports, src_ids, char_ids)

    # Which ops each graph needs beyond stock TensorFlow, and whether the op library was loaded.
    missing = report["missing_before"]
    if flavour == "fused":
        assert "FusedLSTMSequence" in missing["nmt"] and "FusedLSTMSequence" in missing["elmo"]
        assert report["library_loaded"]
    else:
        assert missing["elmo"] == []
        assert set(missing["nmt"]) <= {"SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp"}
        assert not report["library_loaded"], "the portable flavour loaded the op library"
    assert set(missing["nmt"]) >= {"SentencepieceOp", "SentencepieceTokenizeOp"}

    # NMT on ids and on text: the Keras Translator's n-best lists.
    want_ids, want_scores = _keras_nmt(exports, src_ids)
    assert got["ids_ids"].shape[:2] == (len(NMT_SENTENCES), 4)
    for b in range(len(NMT_SENTENCES)):
        assert _strip(got["ids_ids"][b]) == _strip(want_ids[b]), b
    # Scores sum ~20 log-probabilities of a deliberately sharp model: compared relative to their size.
    np.testing.assert_allclose(got["ids_scores"], want_scores, atol=1e-5, rtol=1e-5)
    sp_tgt = nmt.load_sentencepiece(os.path.dirname(exports["paths"]["nmt", "fused"]).replace(
        os.path.join("serving", "nmt"), "nmt_run"))[1]
    want_text = [[sp_tgt.decode(list(h)) for h in _strip(want_ids[b])] for b in range(len(NMT_SENTENCES))]
    assert got["text_translations"][:-1].tolist() == want_text
    np.testing.assert_allclose(got["text_scores"][:-1], want_scores, atol=1e-5, rtol=1e-5)
    # The appended empty sentence: the empty translation, score 0, in every slot.
    assert got["text_translations"][-1].tolist() == [""] * 4
    np.testing.assert_array_equal(got["text_scores"][-1], 0.0)

    # ELMo on tokens and on char ids: the Keras model's layers.
    want = {k: v.numpy() for k, v in exports["elmo_model"](tf.constant(char_ids)).items()}
    for k, v in want.items():
        for prefix in ("tokens_", "chars_"):
            assert got[prefix + k].shape == v.shape, (prefix + k, got[prefix + k].shape, v.shape)
            if v.dtype == bool:
                np.testing.assert_array_equal(got[prefix + k], v)
            else:
                assert np.abs(v).max() > 0.1
                # float32 agreement within 1e-5 relative (the ELMo issue's own criterion), plus 1e-5 absolute for
                # values near zero. The top layer of this 2 x 4096 biLM reaches |v| ~ 4, and float32 rounding
                # differences of a few ulp (another graph, another process, another activation polynomial) grow
                # through it to ~1.3e-5 absolute, 9e-6 relative.
                np.testing.assert_allclose(got[prefix + k], v, atol=1e-5, rtol=1e-5, err_msg=prefix + k)

    # Warm-up requests: both signatures of both models ran.
    ran = {(name, signature) for name, _, signature, _ in report["warmup"]}
    assert ran == {("nmt", "serving_default"), ("nmt", "translate_ids"), ("elmo", "serving_default"),
                   ("elmo", "embed_char_ids")}
    assert {model_name for _, model_name, _, _ in report["warmup"]} == {"nmt", "elmo"}

    # Every malformed request raised, and the model still answers afterwards.
    failed_to_raise = [what for what, error in report["errors"].items() if error is None]
    assert not failed_to_raise, failed_to_raise
    assert "empty" in report["errors"]["nmt empty batch"] and "empty" in report["errors"]["elmo empty batch"]
    assert "sequence_len" in report["errors"]["elmo length too long"]
    assert "src_ids" in report["errors"]["nmt id out of range"]
    for what, name in (("nmt id past int32", "src_ids: values must fit int32"), ("nmt float ids", "src_ids"),
                       ("nmt ragged ids", "src_ids"), ("nmt None text", "text"),
                       ("elmo length past int32", "sequence_len: values must fit int32")):
        assert report["errors"][what] and report["errors"][what].startswith("InvalidArgumentError"), what
        assert name in report["errors"][what], (what, report["errors"][what])
    assert "NoneType" in report["errors"]["nmt None text"]
    assert report["alone_vs_crowd"][0] and report["alone_vs_crowd"][1] < 1e-5, report["alone_vs_crowd"]
    assert len(report["still_works"][0]) == 4


def test_saved_model_cli_lists_the_signatures(exports):
    for model, signatures in (("nmt", ["serving_default", "translate_ids"]),
                              ("elmo", ["serving_default", "embed_char_ids"])):
        for flavour in ("fused", "portable"):
            proc = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                                   exports["paths"][model, flavour], "--all"], capture_output=True, text=True,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            for name in signatures:
                assert f"signature_def['{name}']" in proc.stdout, (model, flavour, name)


def test_versions_and_server_files(exports, tmp_path):
    from export import saved_model
    serving = exports["serving"]
    assert sorted(os.listdir(serving / "nmt")) == ["1", "2"]  # fused, then portable: a new number each
    assert not [name for name in os.listdir(serving / "nmt") if name.startswith(".tmp")]
    config = (serving / "models.config").read_text()
    for name in ("nmt", "elmo"):
        assert f"name: '{name}'" in config and f"base_path: '{serving / name}'" in config
    assert "max_batch_size" in (serving / "batching_parameters.txt").read_text()
    meta = json.loads((serving / "nmt" / "2" / "assets.extra" / "fused_rnn_export.json").read_text())
    assert meta["flavour"] == "portable" and meta["fused_ops"] == [] and meta["decoding"]["beam_size"] == 4
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model.export(None, str(serving / "nmt"), version=1)
    # Version directories are readable by a server running as another user (mkdtemp makes them 0700).
    umask = os.umask(0)
    os.umask(umask)
    for version in ("1", "2"):
        assert (serving / "nmt" / version).stat().st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(ValueError, match="version must be an integer >= 0"):
        saved_model.export(None, str(tmp_path / "m"), version=-1)
    with pytest.raises(TypeError, match="NmtServing or ElmoServing"):
        saved_model.export(object(), str(tmp_path / "generic"))
    assert not (tmp_path / "generic").exists()  # nothing written for a refused export
    # Paths with quotes and backslashes are escaped in models.config (a text-format proto).
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format
    odd = tmp_path / "o'brien\\x"
    shutil.copytree(serving / "elmo", odd / "elmo")
    saved_model.write_server_files(str(odd))
    parsed = text_format.Parse((odd / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.base_path for c in parsed.model_config_list.config] == [str(odd / "elmo")]


def test_load_names_an_unknown_op(exports, tmp_path):
    import export
    from tensorflow.core.protobuf import saved_model_pb2
    copy = tmp_path / "tampered"
    shutil.copytree(exports["paths"]["elmo", "portable"], copy)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    renamed = 0
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "MatMul":
                node.op = "NoSuchOpV9"
                renamed += 1
    assert renamed
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(tf.errors.NotFoundError, match="NoSuchOpV9"):
        export.load(str(copy))
    with pytest.raises(FileNotFoundError):
        export.load(str(tmp_path / "nothing_here"))


def test_nmt_serving_refuses_a_length_penalty_every_request_would_fail_on():
    from export import saved_model
    model = NMTModel(NMTConfig(src_vocab_size=11, tgt_vocab_size=11, emb_dim=4, hidden=4, enc_layers=1,
                               dec_layers=1))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="length_penalty"):
            saved_model.NmtServing(model, "unused_src.model", "unused_tgt.model", length_penalty=bad)


def test_export_cli_mistakes_are_one_line_errors(tmp_path, capsys):
    from export import saved_model
    model_dir = str(tmp_path / "run")
    _make_nmt_dir(model_dir)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["nmt", "--portable", "--model-dir", model_dir]
    cases = [
        (["nmt", "--portable", "--model-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "s" / "m")],
         "holds no trained model"),
        (base + ["--out", str(tmp_path / "s" / "m"), "--length-penalty", "-1"], "length_penalty"),
        (base + ["--out", str(tmp_path / "s" / "m"), "--length-penalty", "nan"], "length_penalty"),
        (base + ["--out", str(tmp_path / "s" / "m"), "--beam-size", "2", "--n-best", "3"], "n_best"),
        (base + ["--out", str(a_file / "m")], "a_file"),
        (base + ["--out", "/"], "--out"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            saved_model.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (argv, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "s" / "m").exists()  # nothing written for a refused export


def test_batching_parameters_leave_tf_servings_first_element_padding_off(tmp_path):
    # TF Serving pads variable-length inputs with each tensor's first element (batching_util.cc PadTensor), which
    # the id signatures would read as tokens: the server files must not turn that padding on.
    from export import saved_model
    saved_model.write_server_files(str(tmp_path))
    text = (tmp_path / saved_model.BATCHING_PARAMETERS).read_text()
    assert "max_batch_size" in text and "pad_variable_length_inputs" not in text
