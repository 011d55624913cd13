"""Tensor-core geometry sweep (on the GPU machine): every n-tile width (units per block) of the tensor-core kernel
forced against the automatic plan, for the shapes the planner's width ranking was fitted on ("in") and for others
("oos"), 16-bit or float32 weights. Kernel alone replayed in CUDA graphs, alternated round by round (plan_sweep.py).
Prints each shape's regret (automatic plan's time over the best forced one's) and writes plan_sweep.json.
Session 41 fitted the ranking factors in TryTensorCoreKind (cc/cuda/fused_rnn_cuda.cu) from these runs
(bench/gpu/tc_geometry_sweep_h100_session41.json, tc_geometry_sweep_f32_h100_session41.json).

    python3 tools/gpu/tc_geometry_sweep.py --lib /tmp/g/libfused_rnn_gpu.so --out $OUT --weights f16 --part in
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab_time  # noqa: E402
import plan_sweep  # noqa: E402

# (cell, direction, H, batches, units per block to force); an LSTM's width NT holds 2 * NT units, a GRU's 8 * NT / 3.
SHAPES = {
    ("f16", "in"): (("lstm", "forward", 1024, (8, 16, 32, 64), (8, 12, 16)),
                    ("lstm", "forward", 512, (8, 16, 32, 64), (4, 6, 8, 12, 16)),
                    ("gru", "forward", 1024, (16, 64), (8, 10, 16, 21)),
                    ("lstm", "bidirectional", 512, (16, 64), (4, 6, 8, 12, 16)),
                    ("lstm", "forward", 768, (16, 64), (4, 6, 8, 12, 16))),
    ("f16", "oos"): (("lstm", "forward", 256, (16, 32), (4, 6, 8, 12, 16)),
                     ("lstm", "forward", 640, (24,), (4, 6, 8, 12, 16)),
                     ("gru", "forward", 512, (16, 32), (5, 8, 10, 16, 21)),
                     ("gru", "forward", 768, (16,), (5, 8, 10, 16, 21)),
                     ("lstm", "bidirectional", 1024, (16,), (8, 12, 16)),
                     ("lstm", "forward", 1024, (128,), (8, 12, 16)),
                     ("gru", "bidirectional", 512, (64,), (5, 8, 10, 16, 21))),
    ("f32", "in"): (("lstm", "forward", 1024, (16, 32), (8,)),
                    ("lstm", "forward", 512, (16, 64, 128), (4, 6, 8)),
                    ("lstm", "bidirectional", 512, (64,), (4, 6, 8))),
    ("f32", "oos"): (("lstm", "forward", 256, (16, 32, 64), (4, 6, 8)),
                     ("lstm", "forward", 384, (64,), (4, 6, 8)),
                     ("lstm", "forward", 640, (32,), (4, 6, 8)),
                     ("gru", "forward", 512, (32, 64), (5, 8, 10)),
                     ("lstm", "bidirectional", 512, (16,), (4, 6, 8)),
                     ("lstm", "forward", 768, (32,), (4, 6, 8))),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", choices=("f16", "f32"), default="f16")
    ap.add_argument("--part", choices=("in", "oos"), default="in")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    plan_sweep.VARIANTS.clear()
    keys = []
    extra = dict(wt="f16", base={"as_float32": 0}) if args.weights == "f16" else {}
    for cell, direction, H, batches, upbs in SHAPES[(args.weights, args.part)]:
        for B in batches:
            key = f"tcsw_{args.weights}_{cell}_{direction[:2]}_{H}_{B}"
            label = f"{'bi' if direction == 'bidirectional' else ''}{cell.upper()} H={H} B={B} {args.weights}"
            ab_time.CASES[key] = (label, dict(cell=cell, direction=direction, T=100, B=B, I=H, H=H, **extra))
            plan_sweep.VARIANTS[key] = [{"mode": 4, "units_per_block": u} for u in upbs]
            keys.append(key)
    sys.argv = [sys.argv[0], "--lib", args.lib, "--out", args.out, "--rounds", str(args.rounds),
                "--cases", ",".join(keys)]
    plan_sweep.main()
    rows = json.load(open(os.path.join(args.out, "plan_sweep.json")))["rows"]
    by_case = collections.defaultdict(list)
    for r in rows:
        by_case[r["case"]].append(r)
    regrets = []
    print("| case | automatic ms | best forced ms | best tuning | regret |")
    print("|---|---:|---:|---|---:|")
    for case, rs in by_case.items():
        auto = next(r for r in rs if r["tuning"] == "auto")
        best = min(rs, key=lambda r: r["ms"])
        regrets.append(auto["ms"] / best["ms"])
        print(f"| {case} | {auto['ms']:.4f} | {best['ms']:.4f} | {best['tuning']} | {regrets[-1]:.3f} |")
    print(f"mean regret {sum(regrets) / len(regrets):.4f}, worst {max(regrets):.3f} over {len(regrets)} shapes")


if __name__ == "__main__":
    main()
