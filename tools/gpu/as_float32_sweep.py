"""INT8 and 16-bit weights on the GPU: the kernels of the weights' own kind against the same weights converted to
float32 per call (then the float32 plan), over sequence lengths, with the planner's automatic choice alongside
(CudaTuning::as_float32), and the float32 weights as the anchor. Kernel alone, CUDA-graph replays, median ms, one
process. Prints a markdown table and writes JSON.

    python3 tools/gpu/as_float32_sweep.py --lib /tmp/gb/libfused_rnn_gpu.so --out $OUT [--kinds i8,f16,bf16]
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
          ("biLSTM H=512 B=4", dict(cell="lstm", direction="bidirectional", B=4, I=512, H=512)),
          ("LSTM H=1024 B=64", dict(cell="lstm", direction="forward", B=64, I=1024, H=1024))]


def variants(kind):
    return [("own kernels", kind, {"as_float32": 0}), ("converted", kind, {"as_float32": 1}), ("auto", kind, None)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="5,20,100")
    ap.add_argument("--kinds", default="i8,f16,bf16")
    args = ap.parse_args()
    lib = Lib(args.lib)
    rows = []
    for name, kw in SHAPES:
        for T in [int(t) for t in args.lengths.split(",")]:
            layer = FusedLayer(lib, seed=5, wt="f32", T=T, **kw)
            f32 = time_fused_layer([layer], plain=False)["kernel_graph"]["median"]
            del layer
            for kind in args.kinds.split(","):
                row = {"case": name, "T": T, "kind": kind, "f32": f32}
                for label, wt, tun in variants(kind):
                    layer = FusedLayer(lib, seed=5, wt=wt, T=T, tuning=tun, **kw)
                    row[label] = time_fused_layer([layer], plain=False)["kernel_graph"]["median"]
                    if label == "auto":
                        row["auto_converted"] = "converted to float32" in layer.f.describe()
                    del layer
                rows.append(row)
                print(f"{name} T={T} {kind}: f32 {f32:.4f}, " +
                      ", ".join(f"{l} {row[l]:.4f}" for l, _, _ in variants(kind)) +
                      f"; auto converted: {row['auto_converted']}", flush=True)
            torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}, kernel alone, CUDA-graph replays, median ms\n")
    print("| case | T | weights | float32 weights | own kernels | converted to float32 | auto (picks) |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['case']} | {r['T']} | {r['kind']} | {r['f32']:.4f} | {r['own kernels']:.4f} | "
              f"{r['converted']:.4f} | {r['auto']:.4f} ({'converted' if r['auto_converted'] else 'own kernels'}) |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "as_float32_sweep.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
