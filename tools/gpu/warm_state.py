"""Does a layer's graph-replay time depend on what the GPU ran before it? (on the GPU machine)

The tensor-core timing table (tensorcore.py) times LSTM H=1024 B=64 ~3% above the A/B harness (ab_time.py) in
sessions 38-41 on the same build. The table reaches that row after a minute of back-to-back kernels; the A/B after a
few seconds. This times one layer (ab_time's case, CUDA graph, kernel alone) in rounds: from idle, then after a
given time of heavy load (the same layer replayed, and a large cuBLAS GEMM), recording the SM clock, temperature and
power that nvidia-smi reports between rounds. Prints a table and writes JSON.

    python3 tools/gpu/warm_state.py --lib /tmp/g/libfused_rnn_gpu.so --out $OUT [--load-s 40]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, Lib, graph_of, log, time_ms  # noqa: E402


def smi():
    q = "clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active"
    r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"], capture_output=True,
                       text=True)
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--load-s", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    lib = Lib(args.lib)
    kw = dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024)
    layers = {"TF32 (seed 3)": FusedLayer(lib, seed=3, tuning={"allow_tf32": 1}, **kw),
              "TF32 (seed 64)": FusedLayer(lib, seed=64, tuning={"allow_tf32": 1}, **kw),
              "f16 (seed 3)": FusedLayer(lib, seed=3, wt="f16", **kw)}
    for l in layers.values():
        l.full()
    torch.cuda.synchronize()
    graphs = {k: graph_of(l.f) for k, l in layers.items()}
    a = torch.randn(8192, 8192, device="cuda")
    res = {"device": torch.cuda.get_device_name(), "phases": []}

    def measure(phase):
        rows = {k: [] for k in graphs}
        states = []
        for _ in range(args.rounds):
            for k, g in graphs.items():
                rows[k].append(time_ms(g.replay, 60)["median"])
            states.append(smi())
        med = {k: float(np.median(v)) for k, v in rows.items()}
        res["phases"].append({"phase": phase, "median_ms": med, "rounds": rows, "smi": states})
        log(f"== {phase}: " + "  ".join(f"{k} {v:.4f}" for k, v in med.items()) + f"  | smi {states[0]} .. {states[-1]}")

    time.sleep(20)  # idle
    log(f"idle: {smi()}")
    measure("after 20 s idle")
    t0 = time.time()
    while time.time() - t0 < args.load_s:
        for _ in range(50):
            graphs["TF32 (seed 64)"].replay()
        a @ a
        torch.cuda.synchronize()
    log(f"after load: {smi()}")
    measure(f"after {args.load_s:.0f} s of load")
    time.sleep(20)
    measure("after 20 s idle again")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "warm_state.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
