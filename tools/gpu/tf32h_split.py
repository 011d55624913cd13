"""What each launch of a TF32-through-float16 call costs, timed as the tables time it (on the GPU machine): CUDA-graph
replays with events, no profiler. The same layer is captured with the float16 copy of U and/or the fallback's launch
left out (CudaTuning::test_tf32h_skip, test-only: the copy made by an earlier call is reused), beside the same shape
with float16 weights; rounds alternate the graphs. Prints a table and writes JSON.

    python3 tools/gpu/tf32h_split.py --lib /tmp/g/libfused_rnn_gpu.so --out $OUT [--rounds 9]

Since session 41 only the GRU launches the fallback: an LSTM scales an out-of-range h0 per row instead, so its
"without the fallback launch" variant is the whole call.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, Lib, graph_of, log, time_ms  # noqa: E402

SHAPES = {
    "LSTM H=1024 B=64": dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024),
    "GRU H=1024 B=64": dict(cell="gru", direction="forward", T=100, B=64, I=1024, H=1024),
}
VARIANTS = (("whole call", 0), ("without the copy", 1), ("without the fallback launch", 2),
            ("recurrence kernel only", 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    lib = Lib(args.lib)
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for label, kw in SHAPES.items():
        f16 = FusedLayer(lib, seed=3, wt="f16", **kw)
        t32 = FusedLayer(lib, seed=3, tuning={"allow_tf32": 1, "tf32_exchange16": 1}, **kw)
        graphs = {"float16 weights": graph_of(f16.f)}
        t32.f()  # the copy that the skipping graphs reuse
        for name, bits in VARIANTS:
            lib.L.frg_set_test_tf32h_skip(bits)
            graphs["TF32 via float16, " + name] = graph_of(t32.f)
        lib.L.frg_set_test_tf32h_skip(0)
        times = {k: [] for k in graphs}
        for _ in range(args.rounds):
            for k, g in graphs.items():
                times[k].append(time_ms(g.replay, 60)["median"])
        med = {k: float(np.median(v)) for k, v in times.items()}
        res["shapes"][label] = {"median_ms": med, "rounds": times, "plan": t32.f.describe()}
        log(f"== {label}: {t32.f.describe()}")
        for k, v in med.items():
            log(f"  {k:<50} {v:.4f} ms")
        base = med["TF32 via float16, recurrence kernel only"]
        log(f"  copy {1e3 * (med['TF32 via float16, without the fallback launch'] - base):.1f} us, fallback launch "
            f"{1e3 * (med['TF32 via float16, without the copy'] - base):.1f} us, recurrence kernel vs float16 weights "
            f"{1e3 * (base - med['float16 weights']):+.1f} us")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tf32h_split.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
