"""Which half of the NMT model makes the fused and stock translation paths differ at batch 1: the encoder (fused
biLSTM op vs keras.layers.Bidirectional(LSTM)) crossed with the decoder step (plain TF cell math vs
keras.layers.LSTMCell), same weights, same beam search, alternated round by round in one process so that the
machine's drift hits all four alike. A model of the recipe's size (models/NMT_RECIPE.md) with random weights, or a
trained one with --model-dir; random source sentences of 8-19 subwords; beam 5; medians of ms per sentence.

    .venv/bin/python bench/nmt_paths_bench.py [--model-dir runs/ende] [--sentences 30] [--rounds 15]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.nmt_model import NMTConfig, NMTModel, Translator, stock_encoder_copy  # noqa: E402

COMBOS = [("fused", "fused"), ("stock", "fused"), ("fused", "stock"), ("stock", "stock")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="a trained model (default: random weights, the recipe's sizes)")
    ap.add_argument("--sentences", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-length", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model_dir:
        from models import nmt
        model = nmt.load_model(args.model_dir, "best")[0]
    else:
        model = NMTModel(NMTConfig(src_vocab_size=8000, tgt_vocab_size=8000))
    rng = np.random.default_rng(args.seed)
    vocab = model.config.src_vocab_size
    sentences = [rng.integers(4, vocab, (1, int(rng.integers(8, 20)))).astype(np.int32)
                 for _ in range(args.sentences)]
    model.encode(sentences[0])  # builds the layers

    def translator(encoder, decoder):  # decoder "fused": plain cell math; "stock": keras.layers.LSTMCell
        t = Translator(model, beam_size=5, decoder=decoder)
        t._stock_encoder = stock_encoder_copy(model) if encoder == "stock" else None
        return t

    translators = {c: translator(*c) for c in COMBOS}
    for t in translators.values():
        t(sentences[0], args.max_length)  # trace and warm up
    ms = {c: [] for c in COMBOS}
    outputs = {}
    for r in range(args.rounds):
        for c in (COMBOS if r % 2 == 0 else COMBOS[::-1]):
            start = time.perf_counter()
            outputs[c] = [translators[c](s, args.max_length)[0].numpy() for s in sentences]
            ms[c].append((time.perf_counter() - start) / len(sentences) * 1e3)
    same = {c: sum(np.array_equal(a, b) for a, b in zip(outputs[COMBOS[0]], outputs[c])) for c in COMBOS}
    print(f"{'trained' if args.model_dir else 'random-weight'} model, {args.sentences} sentences x {args.rounds} "
          f"alternated rounds, beam 5, max length {args.max_length}; {os.cpu_count()} CPUs\n")
    print("| encoder | decoder step | median ms / sentence | p10 - p90 | translations equal to fused/fused |")
    print("|---|---|---:|---:|---:|")
    for c in COMBOS:
        v = np.array(ms[c])
        print(f"| {c[0]} | {'cell math' if c[1] == 'fused' else 'LSTMCell'} | {np.median(v):.1f} | "
              f"{np.percentile(v, 10):.1f} - {np.percentile(v, 90):.1f} | {same[c]}/{args.sentences} |")


if __name__ == "__main__":
    main()
