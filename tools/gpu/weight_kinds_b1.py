"""Float32 against 16-bit and int8 recurrent weights on the shapes of the INT8 suite's timing, in one process: kernel
alone, CUDA-graph replays, median ms, with each plan. Prints a markdown table.

    python3 tools/gpu/weight_kinds_b1.py --lib /tmp/gb/libfused_rnn_gpu.so
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, Lib, time_fused_layer  # noqa: E402

SHAPES = [("biLSTM H=100 B=1", dict(cell="lstm", direction="bidirectional", B=1, I=100, H=100)),
          ("LSTM H=256 B=1", dict(cell="lstm", direction="forward", B=1, I=256, H=256)),
          ("LSTM H=512 B=1", dict(cell="lstm", direction="forward", B=1, I=512, H=512)),
          ("LSTM H=1024 B=1", dict(cell="lstm", direction="forward", B=1, I=1024, H=1024)),
          ("GRU H=512 B=1", dict(cell="gru", direction="forward", B=1, I=512, H=512)),
          ("biLSTM H=512 B=4", dict(cell="lstm", direction="bidirectional", B=4, I=512, H=512))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--kinds", default="f32,f16,bf16,i8")
    ap.add_argument("--T", type=int, default=100)
    args = ap.parse_args()
    lib = Lib(args.lib)
    kinds = args.kinds.split(",")
    rows = []
    for name, kw in SHAPES:
        row = {"case": name}
        for wt in kinds:
            layer = FusedLayer(lib, seed=5, wt=wt, T=args.T, **kw)
            row[wt] = time_fused_layer([layer], plain=False)["kernel_graph"]["median"]
            row[wt + "_plan"] = layer.f.describe()
            del layer
        torch.cuda.empty_cache()
        rows.append(row)
        print(name, {k: (round(v, 4) if isinstance(v, float) else v[:70]) for k, v in row.items() if k != "case"},
              flush=True)
    print(f"\n{torch.cuda.get_device_name()}, T={args.T}, kernel alone, graph replay, median ms\n")
    print("| case | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for r in rows:
        print(f"| {r['case']} | " + " | ".join(f"{r[k]:.4f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
