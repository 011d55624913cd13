"""INT8 weights on the GPU: the int8 kernels against the same weights dequantized to float32 per call (then the
float32 plan), over sequence lengths, with the planner's automatic choice alongside (CudaTuning::int8_dequant), and
the float32 weights as the anchor. Kernel alone, CUDA-graph replays, median ms, one process. Prints a markdown table
and writes JSON.

    python3 tools/gpu/int8_dequant_sweep.py --lib /tmp/gb/libfused_rnn_gpu.so --out $OUT
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, time_fused_layer  # noqa: E402
from driver import Lib  # noqa: E402

SHAPES = [("LSTM H=1024 B=1", dict(cell="lstm", direction="forward", B=1, I=1024, H=1024)),
          ("LSTM H=512 B=1", dict(cell="lstm", direction="forward", B=1, I=512, H=512)),
          ("GRU H=512 B=1", dict(cell="gru", direction="forward", B=1, I=512, H=512)),
          ("biLSTM H=100 B=1", dict(cell="lstm", direction="bidirectional", B=1, I=100, H=100)),
          ("LSTM H=1024 B=64", dict(cell="lstm", direction="forward", B=64, I=1024, H=1024))]
VARIANTS = [("f32", "f32", None), ("int8 kernels", "i8", {"int8_dequant": 0}),
            ("int8 dequantized", "i8", {"int8_dequant": 1}), ("int8 auto", "i8", None)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="5,20,100")
    args = ap.parse_args()
    lib = Lib(args.lib)
    rows = []
    for name, kw in SHAPES:
        for T in [int(t) for t in args.lengths.split(",")]:
            row = {"case": name, "T": T}
            for label, wt, tun in VARIANTS:
                layer = FusedLayer(lib, seed=5, wt=wt, T=T, tuning=tun, **kw)
                row[label] = time_fused_layer([layer], plain=False)["kernel_graph"]["median"]
                if label == "int8 auto":
                    row["auto_dequantized"] = "int8 dequantized" in layer.f.describe()
                del layer
            torch.cuda.empty_cache()
            rows.append(row)
            print(f"{name} T={T}: " + ", ".join(f"{l} {row[l]:.4f}" for l, _, _ in VARIANTS) +
                  f"; auto dequantized: {row['auto_dequantized']}", flush=True)
    print("\n| case | T | float32 | int8 kernels | int8 dequantized | auto (picks) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['case']} | {r['T']} | {r['f32']:.4f} | {r['int8 kernels']:.4f} | {r['int8 dequantized']:.4f} | "
              f"{r['int8 auto']:.4f} ({'dequantized' if r['auto_dequantized'] else 'int8 kernels'}) |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "int8_dequant_sweep.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
