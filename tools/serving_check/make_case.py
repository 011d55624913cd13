"""Writes the serving check's case (tools/check_serving_build.sh): a small ELMo with random weights exported in both
flavours by export.saved_model, a ragged batch of tokens, and the expected outputs of its serving_default signature,
computed by the *portable* export (the stock-op recurrence, no fused op) in this Python process. The C++ program then
loads the *fused* export with the op linked in, as a TF Serving model server would, and must reproduce them.

    .venv/bin/python tools/serving_check/make_case.py OUT_DIR
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from export import saved_model  # noqa: E402
from models import elmo  # noqa: E402

OPTIONS = {"lstm": {"dim": 48, "projection_dim": 24, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                    "use_skip_connections": True},
           "char_cnn": {"embedding": {"dim": 8}, "filters": [[1, 8], [2, 8], [3, 16]], "n_highway": 1,
                        "n_characters": 262, "max_characters_per_token": 50, "activation": "relu"}}
# Ragged: the padding token "" past each length; a long token, non-ASCII ones, the boundary markers' text.
SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["über", "naïve", "x" * 70, "<S>", "</S>"], ["a"], []]


def main(out):
    keras.utils.set_random_seed(7)
    model = elmo.build_elmo(OPTIONS)
    rng = np.random.default_rng(7)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    options_file, weight_file = elmo.write_bilm_tf(model, os.path.join(out, "elmo_files"))
    paths = {}
    for flavour in ("fused", "portable"):
        extra = ["--portable"] if flavour == "portable" else []
        paths[flavour] = saved_model.main(["elmo", "--options", options_file, "--weights", weight_file,
                                           "--out", os.path.join(out, flavour)] + extra)
    width = max(len(s) for s in SENTENCES)
    tokens = np.array([s + [""] * (width - len(s)) for s in SENTENCES], dtype=object)
    lengths = np.array([len(s) for s in SENTENCES], np.int32)
    served = tf.saved_model.load(paths["portable"]).signatures["serving_default"]
    want = served(tokens=tf.constant(tokens), sequence_len=tf.constant(lengths))
    with open(os.path.join(out, "case.txt"), "w", encoding="utf-8") as f:
        # The fused export's directory, the batch, then one token per line and the lengths.
        f.write(f"{paths['fused']}\n{tokens.shape[0]} {tokens.shape[1]}\n")
        for token in tokens.reshape(-1):
            f.write(f"{token}\n")
        f.write(" ".join(str(n) for n in lengths) + "\n")
        names = sorted(k for k in want if k.startswith("layer_"))
        f.write(" ".join(names) + "\n")
    for name in names:
        value = want[name].numpy().astype(np.float32)
        value.tofile(os.path.join(out, name + ".f32"))
    print(f"case: {len(SENTENCES)} sentences (lengths {lengths.tolist()}), outputs {names}, "
          f"shape {tuple(want[names[0]].shape)}; fused export {paths['fused']}")


if __name__ == "__main__":
    main(sys.argv[1])
