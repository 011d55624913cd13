"""A/B timing of two builds of the CUDA core in one process (on the GPU machine): the same layers, the same inputs,
kernel alone replayed in a CUDA graph, the two builds alternated round by round so that clock and thermal drift hit
both alike. Also checks that the two builds' outputs agree. Prints a markdown table and writes JSON.

    python3 tools/gpu/ab_time.py --lib-a /tmp/old/libfused_rnn_gpu.so --lib-b /tmp/new/libfused_rnn_gpu.so \
        --out $OUT [--cases h1024,h512] [--rounds 7] [--tune-a '{"proj_reduce": 0}'] [--tune-b ...]

The same library twice with different --tune-a / --tune-b (CudaTuning fields as JSON) compares two plans of one
build, apart from any change in code generation.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import FusedLayer, Lib, graph_of, log, time_ms  # noqa: E402

# key: (label, FusedLayer keyword arguments)
CASES = {
    "bi100": ("biLSTM H=100 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100)),
    "h512": ("LSTM H=512 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512)),
    "h1024": ("LSTM H=1024 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024)),
    "gru512": ("GRU H=512 B=1", dict(cell="gru", direction="forward", T=100, B=1, I=512, H=512)),
    "h1024b64": ("LSTM H=1024 B=64 f32", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024)),
    "lstm64": ("LSTM H=64 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=64, H=64)),
    "gru100b16": ("biGRU H=100 B=16", dict(cell="gru", direction="bidirectional", T=100, B=16, I=100, H=100)),
    "bi128bf16": ("biLSTM H=128 B=1 bf16 (own kernels)", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=128, H=128, wt="bf16", base={"as_float32": 0})),
    "tc1024b64": ("LSTM H=1024 B=64 f16", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024,
                                               wt="f16")),
    "bi100b64": ("biLSTM H=100 B=64", dict(cell="lstm", direction="bidirectional", T=100, B=64, I=100, H=100)),
    "elmo16": ("ELMo layer f16 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512,
                                          wt="f16", cell_clip=3.0, proj_clip=3.0)),
    "elmo8": ("ELMo layer int8 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512,
                                          wt="i8", cell_clip=3.0, proj_clip=3.0)),
    "bi100i8": ("biLSTM H=100 B=1 int8 (own kernels)", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100, wt="i8", base={"as_float32": 0})),
    "h512i8": ("LSTM H=512 B=1 int8 (own kernels)", dict(
        cell="lstm", direction="forward", T=100, B=1, I=512, H=512, wt="i8", base={"as_float32": 0})),
    "h1024i8": ("LSTM H=1024 B=1 int8 (own kernels)", dict(
        cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024, wt="i8", base={"as_float32": 0})),
    "gru512i8": ("GRU H=512 B=1 int8 (own kernels)", dict(
        cell="gru", direction="forward", T=100, B=1, I=512, H=512, wt="i8", base={"as_float32": 0})),
    # More shapes of the small-hidden-size kernel (mode 5), per weight kind and cell.
    "lstm32": ("LSTM H=32 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=32, H=32)),
    "gru64": ("GRU H=64 B=1", dict(cell="gru", direction="forward", T=100, B=1, I=64, H=64)),
    "bi64b8": ("biLSTM H=64 B=8", dict(cell="lstm", direction="bidirectional", T=100, B=8, I=64, H=64)),
    "bi100f16": ("biLSTM H=100 B=1 f16 (own kernels)", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100, wt="f16", base={"as_float32": 0})),
    "lstm128": ("LSTM H=128 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=128, H=128)),
    "bigru100": ("biGRU H=100 B=1", dict(cell="gru", direction="bidirectional", T=100, B=1, I=100, H=100)),
    "lstm256": ("LSTM H=256 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=256, H=256)),
    "bi256": ("biLSTM H=256 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=256, H=256)),
    "gru256": ("GRU H=256 B=1", dict(cell="gru", direction="forward", T=100, B=1, I=256, H=256)),
    "lstm200": ("LSTM H=200 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=200, H=200)),
    "bi512": ("biLSTM H=512 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=512)),
    "h512b2": ("LSTM H=512 B=2", dict(cell="lstm", direction="forward", T=100, B=2, I=512, H=512)),
    "h512b4": ("LSTM H=512 B=4", dict(cell="lstm", direction="forward", T=100, B=4, I=512, H=512)),
    "gru512b8": ("GRU H=512 B=8", dict(cell="gru", direction="forward", T=100, B=8, I=512, H=512)),
    "h256b16": ("LSTM H=256 B=16", dict(cell="lstm", direction="forward", T=100, B=16, I=256, H=256)),
    "h256b32": ("LSTM H=256 B=32", dict(cell="lstm", direction="forward", T=100, B=32, I=256, H=256)),
    "h1024b8": ("LSTM H=1024 B=8", dict(cell="lstm", direction="forward", T=100, B=8, I=1024, H=1024)),
    "h512b8": ("LSTM H=512 B=8", dict(cell="lstm", direction="forward", T=100, B=8, I=512, H=512)),
    "h512b16": ("LSTM H=512 B=16", dict(cell="lstm", direction="forward", T=100, B=16, I=512, H=512)),
    "lstm384": ("LSTM H=384 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=384, H=384)),
    "bi100b8": ("biLSTM H=100 B=8", dict(cell="lstm", direction="bidirectional", T=100, B=8, I=100, H=100)),
    "gru128bf16": ("GRU H=128 B=1 bf16 (own kernels)", dict(cell="gru", direction="forward", T=100, B=1, I=128,
                                                            H=128, wt="bf16", base={"as_float32": 0})),
    "h1024f16": ("LSTM H=1024 B=1 f16 (own kernels)", dict(
        cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024, wt="f16", base={"as_float32": 0})),
    "h512bf16": ("LSTM H=512 B=1 bf16 (own kernels)", dict(
        cell="lstm", direction="forward", T=100, B=1, I=512, H=512, wt="bf16", base={"as_float32": 0})),
    "elmo32": ("ELMo layer f32 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512,
                                          cell_clip=3.0, proj_clip=3.0)),
    # Tensor-core plans (mode 4) at larger batches; "base" tuning fields apply under --tune-a / --tune-b.
    "tc1024b16": ("LSTM H=1024 B=16 f16", dict(cell="lstm", direction="forward", T=100, B=16, I=1024, H=1024,
                                               wt="f16")),
    "tc1024b32": ("LSTM H=1024 B=32 f16", dict(cell="lstm", direction="forward", T=100, B=32, I=1024, H=1024,
                                               wt="f16")),
    "tc1024b128": ("LSTM H=1024 B=128 f16", dict(cell="lstm", direction="forward", T=100, B=128, I=1024, H=1024,
                                                 wt="f16")),
    "tc512b64": ("LSTM H=512 B=64 f16", dict(cell="lstm", direction="forward", T=100, B=64, I=512, H=512,
                                             wt="f16")),
    "tcgru1024b64": ("GRU H=1024 B=64 f16", dict(cell="gru", direction="forward", T=100, B=64, I=1024, H=1024,
                                                 wt="f16")),
    "tcbi512b64": ("biLSTM H=512 B=64 f16", dict(cell="lstm", direction="bidirectional", T=100, B=64, I=512,
                                                 H=512, wt="f16")),
    "tf32h1024b64": ("LSTM H=1024 B=64 f32, TF32", dict(cell="lstm", direction="forward", T=100, B=64, I=1024,
                                                        H=1024, base={"allow_tf32": 1})),
    "tf32h512b64": ("LSTM H=512 B=64 f32, TF32", dict(cell="lstm", direction="forward", T=100, B=64, I=512,
                                                      H=512, base={"allow_tf32": 1})),
    "tf32hgru1024b64": ("GRU H=1024 B=64 f32, TF32", dict(cell="gru", direction="forward", T=100, B=64, I=1024,
                                                          H=1024, base={"allow_tf32": 1})),
    "tf32hbi512b64": ("biLSTM H=512 B=64 f32, TF32", dict(cell="lstm", direction="bidirectional", T=100, B=64,
                                                          I=512, H=512, base={"allow_tf32": 1})),
}
# A/B and plan-sweep cases time the narrow kinds' own kernels: pin CudaTuning::as_float32 = 0 on every int8 and 16-bit
# case (auto may convert them to float32 per call), unless a case sets it itself.
for _key, (_label, _kw) in list(CASES.items()):
    if _kw.get("wt") in ("f16", "bf16", "i8") and "as_float32" not in _kw.get("base", {}):
        _kw["base"] = dict(_kw.get("base", {}), as_float32=0)
# The ELMo biLM: two layers in one graph, the second reading the first's output (as driver.py times it), so each
# layer's weights are evicted from L2 by the other's, as in the model.
for _wt, _name in (("f16", "f16"), ("i8", "int8"), ("f32", "f32")):
    CASES["bilm" + {"f16": "16", "i8": "8", "f32": "32"}[_wt]] = (
        f"ELMo biLM (2 layers) {_name} B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096,
                                                  P=512, wt=_wt, cell_clip=3.0, proj_clip=3.0, bilm=True))


def make_layers(lib, kw, tuning=None):
    """The FusedLayers of a case (two for a biLM) and the function that runs their kernels."""
    base = kw.get("base")
    kw = {k: v for k, v in kw.items() if k != "base"}
    kw["tuning"] = dict(base, **(tuning or {})) if base else tuning
    if kw.pop("bilm", False):
        l1 = FusedLayer(lib, seed=3, **kw)
        kw2 = dict(kw, I=2 * kw["P"])
        l2 = FusedLayer(lib, seed=4, x=l1.out, **kw2)
        layers = [l1, l2]
    else:
        layers = [FusedLayer(lib, seed=3, **kw)]

    def kernels():
        for l in layers:
            l.f()
    return layers, kernels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib-a", required=True)
    ap.add_argument("--lib-b", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--tune-a", default="{}", help="CudaTuning fields for build A, as JSON")
    ap.add_argument("--tune-b", default="{}", help="CudaTuning fields for build B, as JSON")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    libs = {"a": Lib(args.lib_a), "b": Lib(args.lib_b)}
    rows = []
    for key in args.cases.split(","):
        label, kw = CASES[key]
        tunes = {"a": json.loads(args.tune_a) or None, "b": json.loads(args.tune_b) or None}
        built = {k: make_layers(lib, kw, tunes[k]) for k, lib in libs.items()}
        layers = {k: b[0][-1] for k, b in built.items()}
        for k, (ls, _) in built.items():
            for l in ls:
                l.full()
        torch.cuda.synchronize()
        out_a, out_b = layers["a"].out.clone(), layers["b"].out.clone()
        diff = float((out_a - out_b).abs().max())
        graphs = {k: graph_of(b[1]) for k, b in built.items()}
        med = {"a": [], "b": []}
        for _ in range(args.rounds):
            for k in ("a", "b"):
                med[k].append(time_ms(graphs[k].replay, args.reps)["median"])
        a, b = float(np.median(med["a"])), float(np.median(med["b"]))
        row = {"case": label, "a_ms": a, "b_ms": b, "b_over_a": b / a, "max_abs_diff": diff,
               "plan_a": layers["a"].f.describe(), "plan_b": layers["b"].f.describe(),
               "rounds_a": med["a"], "rounds_b": med["b"]}
        log(f"{label}: A {a:.4f} ms  B {b:.4f} ms  B/A {b / a:.3f}  max|A-B| {diff:.2e}  plan {row['plan_b']}")
        rows.append(row)
        del graphs, layers, built
        torch.cuda.empty_cache()
    print("| case | A ms | B ms | B/A | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['a_ms']:.4f} | {r['b_ms']:.4f} | {r['b_over_a']:.3f} | {r['max_abs_diff']:.1e} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ab_time.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
