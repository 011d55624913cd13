"""Where one call of the core goes, kernel by kernel (on the GPU machine): CUPTI's record of every kernel and memset
the call enqueues (torch.profiler sees kernels launched through ctypes too), for a few plans, replayed in a CUDA graph
as the timing tables are. Prints, per case, each activity's median duration and the median gap before it.

    python3 tools/gpu/kernel_split.py --lib /tmp/g/libfused_rnn_gpu.so --out $OUT [--calls 30]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, Lib, graph_of, log  # noqa: E402

CASES = {
    "LSTM H=1024 B=64 f16": (dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f16"), None),
    "LSTM H=1024 B=64 TF32 via f16": (dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024),
                                      {"allow_tf32": 1, "tf32_exchange16": 1}),
    "LSTM H=1024 B=64 TF32 f32 exchange": (dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024),
                                           {"allow_tf32": 1, "tf32_exchange16": 0}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    lib = Lib(args.lib)
    results = {"device": torch.cuda.get_device_name(), "cases": {}}
    for label, (kw, tun) in CASES.items():
        lay = FusedLayer(lib, seed=3, tuning=tun, **kw)
        g = graph_of(lay.f)
        for _ in range(5):
            g.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.calls):
                g.replay()
                torch.cuda.synchronize()  # calls apart, so each call's activities are its own
        evs = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
        # Split into calls at gaps > 50 us (the synchronize between replays).
        calls, cur = [], []
        for e in evs:
            if cur and e.time_range.start - cur[-1].time_range.end > 50:
                calls.append(cur)
                cur = []
            cur.append(e)
        if cur:
            calls.append(cur)
        n = min(len(c) for c in calls)
        rows = []
        for i in range(n):
            durs = [c[i].time_range.end - c[i].time_range.start for c in calls if len(c) == n]
            gaps = [c[i].time_range.start - c[i - 1].time_range.end for c in calls if len(c) == n] if i else [0.0]
            rows.append({"name": calls[0][i].name[:90], "median_us": float(np.median(durs)),
                         "gap_before_us": float(np.median(gaps))})
        span = [c[-1].time_range.end - c[0].time_range.start for c in calls if len(c) == n]
        results["cases"][label] = {"plan": lay.f.describe(), "activities": rows, "call_span_us": float(np.median(span)),
                                   "calls": len(calls)}
        log(f"== {label}: call span {np.median(span):.1f} us over {len(calls)} calls; plan {lay.f.describe()[:80]}")
        for r in rows:
            log(f"   {r['median_us']:9.2f} us  (gap before {r['gap_before_us']:6.2f})  {r['name']}")
        del g, lay
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernel_split.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
