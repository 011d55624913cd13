"""Plan sweep (on the GPU machine): times the automatic plan of each case against forced alternatives (exchange
mode, lanes per unit, weight chunks in registers, weight staging), kernel alone replayed in a CUDA graph, all in one
process and alternated round by round. It is the ground truth the planner's cost model (EstimateCycles in
cc/cuda/fused_rnn_cuda.cu) is checked against: a forced plan that beats the automatic one is a ranking error.

    python3 tools/gpu/plan_sweep.py --lib /tmp/gb/libfused_rnn_gpu.so --out $OUT [--cases h1024,elmo16] [--rounds 5]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_time import CASES  # noqa: E402
from driver import FusedLayer, Lib, graph_of, log, time_ms  # noqa: E402

# Forced alternatives per case key (the automatic plan is always timed first).
VARIANTS = {
    "bi100": [{"mode": 0}, {"mode": 3}, {"mode": 5, "lanes_per_unit": 4}, {"mode": 5, "lanes_per_unit": 4,
                                                                          "max_reg_chunks": 5},
              {"mode": 5, "lanes_per_unit": 8}, {"mode": 5, "stage_weights": 0}],
    "bi100i8": [{"mode": 5, "max_reg_chunks": 7}, {"mode": 5, "max_reg_chunks": 6}, {"mode": 5, "max_reg_chunks": 5},
                {"mode": 5, "lanes_per_unit": 8}, {"mode": 0}, {"mode": 3}],
    "h512": [{"mode": 1, "lanes_per_unit": 32}, {"mode": 1, "lanes_per_unit": 16}, {"mode": 1, "lanes_per_unit": 8},
             {"mode": 1, "lanes_per_unit": 4}, {"mode": 2}],
    "h1024": [{"stage_weights": 0}, {"mode": 1, "lanes_per_unit": 32, "max_reg_chunks": 8}, {"mode": 1, "lanes_per_unit": 32,
                                                                      "max_reg_chunks": 2},
              {"mode": 1, "lanes_per_unit": 16}, {"mode": 1, "lanes_per_unit": 8}, {"mode": 2}],
    "gru512": [{"mode": 1, "lanes_per_unit": 32}, {"mode": 1, "lanes_per_unit": 16}, {"mode": 1, "lanes_per_unit": 8},
               {"mode": 2}, {"stage_weights": 0}],
    "bi100b64": [{"mode": 5}, {"mode": 0},  {"mode": 0, "lanes_per_unit": 2}, {"mode": 0, "lanes_per_unit": 4}, {"mode": 0, "lanes_per_unit": 1}],
    "h1024b64": [{"mode": 1}, {"stage_weights": 0}],
    "lstm64": [{"mode": 0}, {"mode": 3}, {"mode": 1}, {"mode": 5}, {"mode": 5, "lanes_per_unit": 8}],
    "gru100b16": [{"mode": 0}, {"mode": 3}, {"mode": 5}],
    "bi128bf16": [{"mode": 0}, {"mode": 3}, {"mode": 1}, {"mode": 5}, {"mode": 5, "lanes_per_unit": 8}],
    "elmo16": [{"mode": 1}, {"mode": 1, "lanes_per_unit": 4}, {"mode": 2, "lanes_per_unit": 4},
               {"mode": 2, "lanes_per_unit": 2}, {"mode": 1, "lanes_per_unit": 8},
               {"mode": 1, "lanes_per_unit": 8, "max_reg_chunks": 16}, {"mode": 1, "lanes_per_unit": 2},
               {"mode": 1, "units_per_block": 64}, {"mode": 1, "units_per_block": 64, "lanes_per_unit": 8}],
    "elmo8": [{"mode": 1}, {"mode": 1, "lanes_per_unit": 4}, {"mode": 2, "lanes_per_unit": 8},
              {"mode": 2, "lanes_per_unit": 4}],
    # The tensor-core kernel (mode 4): row groups x unit-block widths around the planner's choice.
    "tc1024b64": [{"mode": 4, "rows_per_block": 64}, {"mode": 4, "rows_per_block": 16},
                  {"mode": 4, "units_per_block": 32}, {"mode": 4, "units_per_block": 32, "rows_per_block": 16},
                  {"mode": 4, "units_per_block": 32, "rows_per_block": 32},
                  {"mode": 4, "units_per_block": 8, "rows_per_block": 64}],
    # Batched mid-size shapes (session 24): the general kernel's exchanges against the small kernel's clusters.
    **{k: [{"mode": 1}, {"mode": 2}, {"mode": 5}] for k in ("h512b2", "h512b4", "h512b8", "h512b16", "gru512b8",
                                                            "h256b16", "h256b32", "h1024b8")},
    "elmo32": [{"mode": 1}, {"mode": 1, "lanes_per_unit": 4}, {"mode": 2, "lanes_per_unit": 4},
               {"mode": 2, "lanes_per_unit": 2}],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    lib = Lib(args.lib)
    rows = []
    for key in args.cases.split(","):
        label, kw = CASES[key]
        # A case's "base" tuning fields (ab_time.CASES: e.g. as_float32 = 0 on the narrow kinds) apply to every
        # variant, the automatic plan included.
        base = kw.get("base")
        kw = {k: v for k, v in kw.items() if k != "base"}
        tunings = [None] + VARIANTS.get(key, [])
        layers, graphs = [], []
        for tun in tunings:
            layer = FusedLayer(lib, seed=3, tuning=dict(base, **(tun or {})) if base else tun, **kw)
            plan = layer.f.describe()
            if plan.startswith("ERROR"):
                log(f"{label} {tun}: {plan}")
                continue
            layer.full()
            layers.append((tun, layer, plan))
            graphs.append(graph_of(layer.f))
        torch.cuda.synchronize()
        ref = layers[0][1].out.clone()
        times = [[] for _ in layers]
        for _ in range(args.rounds):
            for i, g in enumerate(graphs):
                times[i].append(time_ms(g.replay, args.reps)["median"])
        auto_ms = float(np.median(times[0]))
        for (tun, layer, plan), t in zip(layers, times):
            ms = float(np.median(t))
            est = float(plan.split("est_us=")[1]) if "est_us=" in plan else float("nan")
            diff = float((layer.out - ref).abs().max())
            row = {"case": label, "tuning": tun or "auto", "ms": ms, "vs_auto": ms / auto_ms, "est_us": est,
                   "max_abs_diff_vs_auto": diff, "plan": plan}
            rows.append(row)
            log(f"{label:24s} {str(tun or 'auto'):60s} {ms:.4f} ms ({ms / auto_ms:.3f}x auto) est {est:.0f} us "
                f"diff {diff:.1e} | {plan}")
        del graphs, layers
        torch.cuda.empty_cache()
    print("| case | tuning | ms | vs auto | planner estimate us |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['tuning']} | {r['ms']:.4f} | {r['vs_auto']:.3f} | {r['est_us']:.0f} |")
    with open(os.path.join(args.out, "plan_sweep.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
