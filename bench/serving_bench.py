"""Served-model benchmark: the fused SavedModel export against the portable (stock-op) export of the same weights,
both loaded with export.load in one process, the request run through the serving_default signature (raw text in).
Median milliseconds per request of warm runs.

    .venv/bin/python bench/serving_bench.py [--nmt-model-dir RUN_DIR --nmt-text valid.en] [--elmo-tokens 20]

ELMo: the full-size "original" options (2 x 4096/512 biLSTM with projection and clips, 2048-filter char CNN) with
random weights (bench/elmo_bench.py's), sentences of --elmo-tokens tokens, batch 1 and 8. NMT: a model directory
from `python -m models.nmt train` (skipped when not given), the first sentences of --nmt-text, beam 5, batch 1
and 16. Exports go to a temporary directory.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import export  # noqa: E402
from export import saved_model  # noqa: E402


def median_ms(fns, repeats):
    """{name: median ms}: the calls interleaved (one of each per round), so load drift hits every flavour alike."""
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nmt-model-dir")
    parser.add_argument("--nmt-text")
    parser.add_argument("--elmo-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-elmo", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="serving_bench_")
    rows = []
    print(f"# served models: fused vs portable export, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"median ms of {args.repeats} warm requests", flush=True)

    if args.nmt_model_dir:
        with open(args.nmt_text, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        models = {flavour: export.load(saved_model.export_nmt(args.nmt_model_dir, os.path.join(work, "nmt_" + flavour),
                                                              flavour))
                  for flavour in ("portable", "fused")}
        for batch in (1, 16):
            texts = lines[:batch]
            ms = median_ms({f: (lambda m=m: m(text=texts)) for f, m in models.items()}, args.repeats)
            rows.append((f"NMT ({os.path.basename(args.nmt_model_dir.rstrip('/'))}), beam 5, B={batch}", ms))
            print(rows[-1], flush=True)

    if not args.skip_elmo:
        import elmo_bench
        from models import elmo
        rng = np.random.default_rng(0)
        model = elmo.build_elmo(elmo_bench.ORIGINAL_OPTIONS)
        elmo.set_bilm_tf_weights(model, elmo_bench.random_bilm_tf_weights(elmo_bench.ORIGINAL_OPTIONS, rng))
        options_file, weight_file = elmo.write_bilm_tf(model, os.path.join(work, "elmo_files"))
        del model
        models = {flavour: export.load(saved_model.export_elmo(options_file, weight_file,
                                                               os.path.join(work, "elmo_" + flavour), flavour))
                  for flavour in ("portable", "fused")}
        sentences = elmo_bench.random_sentences(rng, 8, args.elmo_tokens)
        for batch in (1, 8):
            tokens = sentences[:batch]
            lengths = [len(s) for s in tokens]
            ms = median_ms({f: (lambda m=m: m(tokens=tokens, sequence_len=lengths)) for f, m in models.items()},
                           args.repeats)
            rows.append((f"ELMo original (4096/512), {args.elmo_tokens} tokens, B={batch}", ms))
            print(rows[-1], flush=True)

    print("\n| request | portable export | fused export | speed-up |\n|---|---:|---:|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms['portable']:.1f} | {ms['fused']:.1f} | {ms['portable'] / ms['fused']:.1f}x |")


if __name__ == "__main__":
    main()
