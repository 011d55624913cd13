"""What the graph nodes around the persistent kernel cost (on the GPU machine): the same layer's kernel replayed
in a CUDA graph alone, and with 1 or 2 extra nodes in front of it (a cudaMemsetAsync of the size of the layer's
workspace reset, on a separate buffer; or an empty kernel). The extra time per extra node is what the core's own
workspace memset costs a call. Median of alternated rounds, CUDA events.

    python3 tools/gpu/node_cost.py --lib BUILD/libfused_rnn_gpu.so [--cases elmo16,h512] [--rounds 5]
"""
import argparse
import ctypes
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_time import CASES, make_layers  # noqa: E402
from driver import Lib, graph_of, log, time_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", default="elmo16,bilm16,h512,h1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=60)
    args = ap.parse_args()
    lib = Lib(args.lib)
    # The driver API's memset (a memset node when captured, as cudaMemsetAsync is): libcuda is always there.
    cuda = ctypes.CDLL("libcuda.so.1")
    cuda.cuMemsetD8Async.argtypes = [ctypes.c_uint64, ctypes.c_ubyte, ctypes.c_size_t, ctypes.c_void_p]
    dummy = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for key in args.cases.split(","):
        label, kw = CASES[key]
        layers, kernels = make_layers(lib, kw)
        for l in layers:
            l.full()
        torch.cuda.synchronize()
        ws = max(l.f.ws_bytes for l in layers)
        nbytes = min(dummy.numel(), max(256, ws))

        def memset_then(n):
            def fn():
                for _ in range(n):
                    err = cuda.cuMemsetD8Async(dummy.data_ptr(), 0, nbytes,
                                               ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
                    assert err == 0, f"cuMemsetD8Async: {err}"
                kernels()
            return fn

        def empty_then(n):
            def fn():
                for _ in range(n):
                    dummy[:1].zero_()  # one tiny kernel node
                kernels()
            return fn

        variants = {"alone": kernels, "+1 memset": memset_then(1), "+2 memsets": memset_then(2),
                    "+1 kernel": empty_then(1), "+2 kernels": empty_then(2)}
        graphs = {k: graph_of(f) for k, f in variants.items()}
        med = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, g in graphs.items():
                med[k].append(time_ms(g.replay, args.reps)["median"])
        res = {k: float(np.median(v)) for k, v in med.items()}
        row = {"case": label, "layers": len(layers), "memset_bytes": nbytes, "ms": res, "rounds": med}
        log(f"{label}: " + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in res.items()))
        rows.append(row)
        del graphs, layers
        torch.cuda.empty_cache()
    print("| case | memset bytes | alone us | +1 memset | +2 memsets | +1 kernel | +2 kernels |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["ms"]
        print(f"| {r['case']} | {r['memset_bytes']} | {m['alone'] * 1e3:.1f} | {m['+1 memset'] * 1e3:.1f} | "
              f"{m['+2 memsets'] * 1e3:.1f} | {m['+1 kernel'] * 1e3:.1f} | {m['+2 kernels'] * 1e3:.1f} |")
    if args.out:
        with open(os.path.join(args.out, "node_cost.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
