"""Writes the serving check's cases (tools/check_serving_build.sh): a small ELMo and a small NMT model with random
weights, each exported in both flavours by export.saved_model, with inputs and the expected outputs of a signature,
computed by the *portable* export (stock ops only, no fused op) in this Python process. The C++ program serve_once
then loads the *fused* export with the ops linked in, as a TF Serving model server would, and must reproduce them.

    .venv/bin/python tools/serving_check/make_case.py OUT_DIR
writes OUT_DIR/case_elmo.txt, OUT_DIR/case_nmt.txt (serve_once's format) and OUT_DIR/oplibs_nmt.txt (the
tensorflow-text op library that the NMT graph's SentencePiece ops live in).
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402  (registers the SentencePiece ops the NMT export uses)

import toy_task  # noqa: E402
from export import saved_model  # noqa: E402
from models import elmo, nmt  # noqa: E402
from models.nmt_model import NMTConfig, NMTModel  # noqa: E402

ELMO_OPTIONS = {"lstm": {"dim": 48, "projection_dim": 24, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                         "use_skip_connections": True},
                "char_cnn": {"embedding": {"dim": 8}, "filters": [[1, 8], [2, 8], [3, 16]], "n_highway": 1,
                             "n_characters": 262, "max_characters_per_token": 50, "activation": "relu"}}
# Ragged: the padding token "" past each length; a long token, non-ASCII ones, the boundary markers' text.
ELMO_SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["über", "naïve", "x" * 70, "<S>", "</S>"], ["a"],
                  []]
NMT_SENTENCES = ["the big dog sees a small cat", "two red horses follow the old man near a tree", "a bird",
                 "every young child paints this blue boat and the woman likes four books", ""]


def _write_case(path, export_dir, signature, inputs, outputs, out_dir):
    """inputs: [(name, array)]; outputs: {name: array} (float32 or strings), written next to the case file."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{export_dir}\n{signature}\n{len(inputs)}\n")
        for name, value in inputs:
            kind = "string" if value.dtype == object else "int32"
            f.write(f"{name} {kind} {value.ndim} {' '.join(str(d) for d in value.shape)}\n")
            for v in value.reshape(-1):
                f.write(f"{v}\n")
        f.write(f"{len(outputs)}\n")
        for name, value in sorted(outputs.items()):
            file = os.path.join(out_dir, f"{os.path.basename(path)[:-4]}.{name}")
            if value.dtype == object:
                with open(file, "w", encoding="utf-8") as g:
                    for v in value.reshape(-1):
                        g.write((v.decode() if isinstance(v, bytes) else v) + "\n")
                f.write(f"{name} string {file}\n")
            else:
                value.astype(np.float32).tofile(file)
                f.write(f"{name} float32 {file}\n")


def elmo_case(out):
    keras.utils.set_random_seed(7)
    model = elmo.build_elmo(ELMO_OPTIONS)
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    options_file, weight_file = elmo.write_bilm_tf(model, os.path.join(out, "elmo_files"))
    paths = {flavour: saved_model.main(["elmo", "--options", options_file, "--weights", weight_file,
                                        "--out", os.path.join(out, "elmo_" + flavour)]
                                       + (["--portable"] if flavour == "portable" else []))
             for flavour in ("fused", "portable")}
    width = max(len(s) for s in ELMO_SENTENCES)
    tokens = np.array([s + [""] * (width - len(s)) for s in ELMO_SENTENCES], dtype=object)
    lengths = np.array([len(s) for s in ELMO_SENTENCES], np.int32)
    served = tf.saved_model.load(paths["portable"]).signatures["serving_default"]
    want = served(tokens=tf.constant(tokens), sequence_len=tf.constant(lengths))
    outputs = {k: v.numpy() for k, v in want.items() if k.startswith("layer_")}
    _write_case(os.path.join(out, "case_elmo.txt"), paths["fused"], "serving_default",
                [("tokens", tokens), ("sequence_len", lengths)], outputs, out)
    print(f"elmo case: {len(ELMO_SENTENCES)} sentences (lengths {lengths.tolist()}), outputs {sorted(outputs)}")


def nmt_case(out):
    """As tests/test_export.py: SentencePiece models trained on generated text, large random weights (peaked
    distributions, far from ties in the beam)."""
    directory = os.path.join(out, "nmt_run")
    os.makedirs(directory, exist_ok=True)
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
    for v in model.weights:
        v.assign(rng.normal(0, 0.8, v.shape).astype(np.float32))
    with open(os.path.join(directory, nmt.CONFIG_FILE), "w") as f:
        json.dump({"model": json.loads(config.to_json()), "train": {}}, f)

    class NoOptimizer:
        variables = []
    nmt.save_checkpoint(os.path.join(directory, "ckpt-last.npz"), model, NoOptimizer(), {"step": 0})
    paths = {flavour: saved_model.main(["nmt", "--model-dir", directory, "--out", os.path.join(out, "nmt_" + flavour),
                                        "--beam-size", "4", "--max-length", "40"]
                                       + (["--portable"] if flavour == "portable" else []))
             for flavour in ("fused", "portable")}
    text = np.array(NMT_SENTENCES, dtype=object)
    served = tf.saved_model.load(paths["portable"]).signatures["serving_default"]
    want = served(text=tf.constant(text))
    outputs = {k: v.numpy() for k, v in want.items()}
    _write_case(os.path.join(out, "case_nmt.txt"), paths["fused"], "serving_default", [("text", text)], outputs, out)
    with open(os.path.join(out, "oplibs_nmt.txt"), "w") as f:
        f.write(os.path.join(os.path.dirname(tensorflow_text.__file__), "python", "ops", "_sentencepiece_tokenizer.so"))
    print(f"nmt case: {len(NMT_SENTENCES)} sentences (one empty), outputs "
          f"{ {k: tuple(v.shape) for k, v in sorted(outputs.items())} }")


if __name__ == "__main__":
    elmo_case(sys.argv[1])
    nmt_case(sys.argv[1])
