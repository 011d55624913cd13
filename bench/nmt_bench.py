"""Translation speed of the NMT model: fused path vs stock Keras path, same model and weights, same beam search.

    .venv/bin/python bench/nmt_bench.py --model-dir /work/nmt_runs/multi30k-ende-h256 \
        --src ../shared/data/nmt/multi30k/val.en --ref ../shared/data/nmt/multi30k/val.de

fused: tf_ops.FusedLSTM bidirectional encoder (one op call per layer), decoder steps as plain cell math.
fused_op: the same with each decoder layer step one tf_ops.lstm_sequence call (max_time=1).
stock: keras.layers.Bidirectional(keras.layers.LSTM) encoder and keras.layers.LSTMCell decoder steps, weights
copied from the same checkpoint. Both run models/beam_search.py
inside one tf.function per path. Sentences per second over the whole file (sorted into length buckets, as the
translate command does), after one warm-up pass over the first batches; prints a markdown table, the BLEU of each
path's output and whether the outputs are identical, and the load average while it ran.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import nmt  # noqa: E402
from models.nmt_model import Translator  # noqa: E402


def timed_translate(translator, src_ids, batch_size, length_penalty, repeats):
    """(best seconds over repeats, hypotheses) for translating every sentence."""
    nmt.translate_ids(translator, src_ids[:2 * batch_size], batch_size, length_penalty)  # trace + warm up
    best, results = None, None
    for _ in range(repeats):
        start = time.perf_counter()
        results = nmt.translate_ids(translator, src_ids, batch_size, length_penalty)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    return best, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--src", required=True, help="source sentences, one a line")
    parser.add_argument("--ref", help="references, for the BLEU column")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--limit-batch1", type=int, default=None,
                        help="only the first N sentences at batch size 1 (the slow case)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--paths", default="fused,fused_op,stock")
    parser.add_argument("--inter-op-threads", type=int, default=None,
                        help="TF inter-op threads (default: TF's choice); 1 runs one op at a time")
    parser.add_argument("--intra-op-threads", type=int, default=None, help="TF intra-op threads")
    args = parser.parse_args()
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    model, config, sp_src, sp_tgt = nmt.load_model(args.model_dir, args.checkpoint)
    lines = nmt.read_lines(args.src)[:args.limit]
    refs = nmt.read_lines(args.ref)[:args.limit] if args.ref else None
    src_ids = sp_src.encode(lines, out_type=int)
    paths = args.paths.split(",")
    translators = {p: Translator(model, beam_size=args.beam_size, decoder=p) for p in paths}
    m = config["model"]
    print(f"model: emb {m['emb_dim']}, hidden {m['hidden']}, {m['enc_layers']}+{m['dec_layers']} layers, "
          f"attention {m['attention']}, vocab {m['src_vocab_size']}/{m['tgt_vocab_size']}; beam {args.beam_size}, "
          f"length penalty {args.length_penalty}; TF intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}, inter-op threads "
          f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'}; best of {args.repeats}",
          flush=True)
    load_start = os.getloadavg()
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        n = args.limit_batch1 if batch_size == 1 and args.limit_batch1 else len(src_ids)
        speeds, outputs = {}, {}
        for path in paths:
            seconds, results = timed_translate(translators[path], src_ids[:n], batch_size, args.length_penalty,
                                               args.repeats)
            speeds[path] = n / seconds
            outputs[path] = [sp_tgt.decode(r[0][0]) for r in results]
            bleu = nmt.corpus_bleu(outputs[path], refs[:n]).score if refs else float("nan")
            print(f"batch {batch_size} {path}: {n} sentences in {seconds:.2f}s = {speeds[path]:.1f} sent/s, "
                  f"BLEU {bleu:.2f}, load {os.getloadavg()[0]:.2f}", flush=True)
            rows.append((batch_size, path, n, seconds, speeds[path], bleu))
        for path in paths[1:]:
            same = sum(a == b for a, b in zip(outputs[paths[0]], outputs[path]))
            print(f"batch {batch_size}: {same}/{n} translations identical between {paths[0]} and {path}")
    load_end = os.getloadavg()
    print()
    print("| batch | path | sentences | seconds | sentences/s | BLEU | vs stock |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    stock = {b: s for b, p, _, _, s, _ in rows if p == "stock"}
    for b, p, n, seconds, speed, bleu in rows:
        ratio = f"{speed / stock[b]:.2f}x" if b in stock else "-"
        print(f"| {b} | {p} | {n} | {seconds:.2f} | {speed:.1f} | {bleu:.2f} | {ratio} |")
    print(f"\nload average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}; "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
