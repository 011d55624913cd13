#!/usr/bin/env python3
"""Device harness for the INT8 path of the CUDA core (issue: INT8 recurrent weights): correctness against the
float64 oracle on the dequantized weights (the kernel, within 1e-5), the scheme's error against the float32 weights,
a negative control, then timing of the INT8 kernels against the float32 / 16-bit kernels and cuDNN (float32 and
float16) in the same process, CUDA events over CUDA-graph replays.

    BUILD_ONLY=1 BUILD_DIR=/tmp/gb OUT=$OUT bash tools/gpu/run_all.sh
    python3 tools/gpu/int8.py --lib /tmp/gb/libfused_rnn_gpu.so --out $OUT
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import (Lib, FusedLayer, TOL_F32, log, run_case, time_cudnn, time_fused_layer, LOG_LINES)  # noqa: E402

SMALL = dict(T=11, B=5, H=24)


def correctness(lib, quick):
    cases = []
    modes = [("local", {"mode": 0}), ("tagged", {"mode": 1}), ("counter", {"mode": 2}), ("cluster", {"mode": 3})]
    for mname, tun in modes:
        cases += [
            (f"lstm forward {mname}", dict(cell="lstm", direction="forward", **SMALL, tuning=tun)),
            (f"lstm+proj+clip bidirectional {mname} time-major",
             dict(cell="lstm", direction="bidirectional", T=11, B=5, H=24, P=16, cell_clip=0.6, proj_clip=0.4,
                  time_major=True, tuning=tun)),
            (f"gru reverse {mname}", dict(cell="gru", direction="reverse", **SMALL, tuning=tun)),
        ]
        if quick:
            break
    cases += [
        ("lstm bi local all weights streamed from smem H100", dict(cell="lstm", direction="bidirectional", T=9, B=3,
                                                                   H=100, tuning={"mode": 0, "max_reg_chunks": 0,
                                                                                  "stream_location": 0})),
        ("lstm+proj tagged weights streamed from the workspace H64 P24",
         dict(cell="lstm", direction="forward", T=9, B=3, H=64, P=24, cell_clip=1.0, proj_clip=0.7,
              tuning={"mode": 1, "max_reg_chunks": 0, "stream_location": 1})),
        ("gru odd H=37 streamed (3 words per chunk) no recurrent bias", dict(cell="gru", direction="bidirectional",
                                                                            T=8, B=4, H=37, gru_bias=False,
                                                                            tuning={"mode": 0, "max_reg_chunks": 0})),
        ("lstm zero rows (scale 0) counter", dict(cell="lstm", direction="bidirectional", T=9, B=4, H=40, P=12,
                                                  zero_rows=True, tuning={"mode": 2})),
        ("lstm rows/block 4 (RC=4) B9 local", dict(cell="lstm", direction="forward", T=7, B=9, H=32,
                                                   tuning={"mode": 0, "rows_per_block": 9})),
        ("[dequant] lstm auto plan H=200 B=2", dict(cell="lstm", direction="forward", T=12, B=2, H=200)),
        ("[dequant] gru auto plan H=130 B=6 no init", dict(cell="gru", direction="forward", T=10, B=6, H=130, with_init=False)),
        # The prologue's weight copy: one chunk per staging pass (several passes), and no staging at all.
        ("lstm+proj tagged staged 1 chunk/pass H96 P40", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=96,
                                                             P=40, cell_clip=1.0, proj_clip=0.7,
                                                             tuning={"mode": 1, "units_per_block": 24,
                                                                     "stage_weights": 1})),
        ("gru bi local unstaged H=37", dict(cell="gru", direction="bidirectional", T=8, B=4, H=37,
                                            tuning={"mode": 0, "stage_weights": 0})),
    ]
    # Non-finite inputs: NaN must come out exactly where the float64 reference has it, through the int8 products.
    for mname, tun in modes[:3]:
        cases.append((f"NaN/Inf input lstm+proj+clip bidirectional {mname}",
                      dict(cell="lstm", direction="bidirectional", T=9, B=3, H=24, P=16, cell_clip=0.6,
                           proj_clip=0.4, inject_nan=True, tuning=dict(tun, units_per_block=9) if mname != "local"
                           else tun)))
        cases.append((f"NaN/Inf input gru bidirectional {mname}",
                      dict(cell="gru", direction="bidirectional", T=9, B=3, H=24, inject_nan=True,
                           tuning=dict(tun, units_per_block=9) if mname != "local" else tun)))
    # Phase B as a reduce-scatter of partial sums, forced on and off (int8 scales of the block's own P rows).
    for rs in (1, 0):
        cases.append((f"lstm+proj tagged reduce-scatter={rs} B3 H40 P12 upb=7",
                      dict(cell="lstm", direction="bidirectional", T=9, B=3, H=40, P=12, cell_clip=0.8, proj_clip=0.5,
                           tuning={"mode": 1, "units_per_block": 7, "proj_reduce": rs})))
    # Long k (many chunks per thread): H=1000, a projection of 300 (k = 1000 in phase B).
    cases.append(("lstm+proj tagged H=1000 P=300 auto", dict(cell="lstm", direction="forward", T=6, B=2, H=1000,
                                                             P=300, cell_clip=2.0, proj_clip=1.5,
                                                             tuning={"mode": 1})))
    # Mode 6, integer tensor cores (LSTM, B <= 2, a known bound on |h|): forced, every feature, and the auto plans
    # that must take it. A name with "[int8mma]" requires the plan to say mode=int8mma.
    m6 = {"mode": 6}
    cases += [
        ("[int8mma] lstm forward H=64 B=1", dict(cell="lstm", direction="forward", T=12, B=1, H=64, tuning=m6)),
        ("[int8mma] lstm bidirectional H=100 B=2 time-major", dict(cell="lstm", direction="bidirectional", T=11, B=2,
                                                                   H=100, time_major=True, tuning=m6)),
        ("[int8mma] lstm reverse H=72 B=2 no init", dict(cell="lstm", direction="reverse", T=9, B=2, H=72,
                                                         with_init=False, tuning=m6)),
        ("[int8mma] lstm+proj+clip bidirectional H=96 P=40 B=2 upb=8",
         dict(cell="lstm", direction="bidirectional", T=10, B=2, H=96, P=40, cell_clip=1.0, proj_clip=0.7,
              tuning=dict(m6, units_per_block=8))),
        ("[int8mma] lstm+proj+clip H=200 P=48 B=1 reserve", dict(cell="lstm", direction="forward", T=9, B=1, H=200,
                                                                 P=48, cell_clip=2.0, proj_clip=1.5,
                                                                 check_reserve=True, tuning=m6)),
        ("[int8mma] lstm H=130 B=2 reserve", dict(cell="lstm", direction="forward", T=8, B=2, H=130,
                                                  check_reserve=True, tuning=m6)),
        ("[int8mma] lstm zero rows (scale 0) H=40 P=12 B=2", dict(cell="lstm", direction="bidirectional", T=9, B=2,
                                                                  H=40, P=12, cell_clip=1.0, proj_clip=0.5,
                                                                  zero_rows=True, tuning=m6)),
        ("[int8mma] NaN/Inf input lstm+proj+clip bidirectional B=2", dict(cell="lstm", direction="bidirectional",
                                                                          T=9, B=2, H=24, P=16, cell_clip=0.6,
                                                                          proj_clip=0.4, inject_nan=True, tuning=m6)),
        ("[int8mma] NaN/Inf input lstm B=2", dict(cell="lstm", direction="forward", T=9, B=2, H=48,
                                                  inject_nan=True, tuning=m6)),
        ("[int8mma] lstm+proj long k H=1000 P=300 B=2", dict(cell="lstm", direction="forward", T=6, B=2, H=1000,
                                                             P=300, cell_clip=2.0, proj_clip=1.5, tuning=m6)),
        # A row width with a trailing 16-byte pair of padding alone (R % 4 == 2) in the general kernel's tagged
        # exchange: polled forever before session 25's fix (the watchdog then poisoned the outputs).
        ("general tagged lstm H=130 B=2 (R % 4 == 2)", dict(cell="lstm", direction="forward", T=8, B=2, H=130,
                                                             tuning={"mode": 1})),
        ("[int8mma] lstm H=1024 B=1 (8 k-slices)", dict(cell="lstm", direction="forward", T=7, B=1, H=1024,
                                                         tuning=m6)),
        ("[int8mma] auto ELMo-size layer H=4096 P=512 B=1", dict(cell="lstm", direction="bidirectional", T=5, B=1,
                                                                 H=4096, P=512, cell_clip=3.0, proj_clip=3.0)),
        # The auto plans above dequantize (CudaTuning::as_float32); the same shapes on the int8 kernels alone.
        ("[int8 kernels] lstm auto plan H=200 B=2", dict(cell="lstm", direction="forward", T=12, B=2, H=200,
                                                         tuning={"as_float32": 0})),
        ("[int8 kernels] gru auto plan H=130 B=6 no init", dict(cell="gru", direction="forward", T=10, B=6, H=130,
                                                                with_init=False, tuning={"as_float32": 0})),
        # INT8 weights dequantized to float32 per call, then the float32 plan: forced, every feature; odd widths take
        # the kernel's one-column path (G*H or P not a multiple of 4), zero scales give zero rows.
        ("[dequant] lstm forward", dict(cell="lstm", direction="forward", **SMALL, tuning={"as_float32": 1})),
        ("[dequant] lstm+proj+clip bidirectional time-major", dict(cell="lstm", direction="bidirectional", **SMALL,
                                                                   P=16, cell_clip=0.5, proj_clip=0.4,
                                                                   time_major=True, tuning={"as_float32": 1})),
        ("[dequant] gru reverse H=37 (G*H odd)", dict(cell="gru", direction="reverse", T=9, B=3, H=37,
                                                      tuning={"as_float32": 1})),
        ("[dequant] lstm+proj P=7 H=50 (odd P) no init", dict(cell="lstm", direction="forward", T=9, B=3, H=50, P=7,
                                                              proj_clip=0.3, with_init=False,
                                                              tuning={"as_float32": 1})),
        ("[dequant] lstm+proj zero rows (scale 0)", dict(cell="lstm", direction="bidirectional", T=9, B=2, H=40,
                                                         P=12, zero_rows=True, tuning={"as_float32": 1})),
        ("[dequant] NaN/Inf input lstm+proj+clip bidirectional", dict(cell="lstm", direction="bidirectional",
                                                                      **SMALL, P=16, cell_clip=0.5, proj_clip=0.4,
                                                                      inject_nan=True,
                                                                      tuning={"as_float32": 1})),
        ("[dequant] tagged plan lstm H=512 B=3 reserve", dict(cell="lstm", direction="forward", T=8, B=3, H=512,
                                                              check_reserve=True,
                                                              tuning={"as_float32": 1, "mode": 1})),
        ("[int8mma] stays with as_float32 forced: lstm+proj+clip B=2", dict(cell="lstm", direction="forward", T=9,
                                                                              B=2, H=50, P=7, proj_clip=0.3,
                                                                              tuning={"as_float32": 1})),
        ("[dequant] auto lstm H=1024 B=1 T=100", dict(cell="lstm", direction="forward", T=100, B=1, H=1024)),
        ("[dequant] auto gru H=512 B=1 T=100", dict(cell="gru", direction="forward", T=100, B=1, H=512)),
        ("[dequant] auto lstm H=512 B=64 (3xTF32 tensor cores)", dict(cell="lstm", direction="forward", T=6, B=64,
                                                                      H=512)),
    ]
    results = []
    for i, (name, kw) in enumerate(cases):
        r = run_case(lib, "int8 " + name, wt="i8", seed=100 + i, repeat=2, **kw)
        ran_rs = " reduce-scatter]" in r["plan"]
        if "reduce-scatter=" in name and name.split("reduce-scatter=")[1][0] != ("1" if ran_rs else "0"):
            r["passed"] = False  # the forced phase-B path did not run
        if "[int8mma]" in name and "mode=int8mma" not in r["plan"]:
            r["passed"] = False  # the integer tensor-core kernel did not run
        if ("[dequant]" in name) != ("int8 weights converted to float32" in r["plan"]):
            r["passed"] = False  # dequantized where it should not be, or not where it should
        if "3xTF32" in name and "mode=tensorcore" not in r["plan"]:
            r["passed"] = False
        results.append(r)
        e = r["errors"]
        log(f"{'PASS' if r['passed'] else 'FAIL'} {r['name']}: out {e['out']:.1e} final_h {e['final_h']:.1e} "
            f"vs f32 weights {e.get('out_vs_f32_weights', 0):.1e} | {r['plan'][:90]}")
    # Negative control: scales off by 1% must be caught by the 1e-5 check.
    neg = run_case(lib, "int8 negative control (scales x1.01)", "lstm", "bidirectional", 9, 3, 24, wt="i8", seed=7,
                   corrupt_scale=True)
    caught = not neg["passed"] and neg["errors"]["out"] > TOL_F32
    log(f"negative control: out error {neg['errors']['out']:.1e} -> {'caught' if caught else 'NOT CAUGHT'}")
    results.append({"name": "negative control: corrupted scales are caught", "passed": bool(caught),
                    "errors": neg["errors"], "plan": neg["plan"]})
    return results


def timing(lib, results):
    rows = []
    for name, kw in [
        ("biLSTM H=100 B=1", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100)),
        ("LSTM H=512 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512)),
        ("LSTM H=1024 B=1", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024)),
        ("LSTM H=1024 B=64", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024)),
        ("GRU H=512 B=1", dict(cell="gru", direction="forward", T=100, B=1, I=512, H=512)),
    ]:
        row = {"case": name}
        # i8: the automatic plan (int8 kernels, or dequantized to float32 where the planner finds that cheaper);
        # i8k: the int8 kernels alone (CudaTuning::as_float32 = 0).
        for wt in ("f32", "i8", "i8k"):
            layer = FusedLayer(lib, seed=11, wt="i8" if wt == "i8k" else wt,
                               tuning={"as_float32": 0} if wt == "i8k" else None, **kw)
            rows_chk = [0] if kw["B"] == 1 else [0, kw["B"] - 1]
            chk = layer.check_rows(rows_chk, kw["cell"], kw["direction"])
            results.append({"name": f"[timed shape] {name} {wt}", "passed": bool(
                chk["out"] <= TOL_F32 and chk["final_h"] <= TOL_F32 and chk["unwritten"] == 0 and chk["watchdog"] == 0),
                "errors": chk, "plan": layer.f.describe()})
            t = time_fused_layer([layer], plain=False)
            row[wt] = {"kernel_graph": t["kernel_graph"]["median"], "full_graph": t["full_graph"]["median"],
                       "plan": layer.f.describe()}
            del layer
        cud = time_cudnn(kw["cell"], kw["I"], kw["H"], kw["direction"] == "bidirectional", kw["B"], kw["T"])
        row["cudnn_graph"] = cud["graph"]["median"]
        rows.append(row)
        log(f"{name}: kernel f32 {row['f32']['kernel_graph']:.4f} ms, int8 {row['i8']['kernel_graph']:.4f} ms "
            f"(int8 kernels alone {row['i8k']['kernel_graph']:.4f}); gemm+kernel f32 {row['f32']['full_graph']:.4f}, "
            f"int8 {row['i8']['full_graph']:.4f} ({row['i8k']['full_graph']:.4f}); cuDNN graph "
            f"{row['cudnn_graph']:.4f} | int8 plan {row['i8']['plan']}")
    # ELMo biLM: 2 layers x 2 directions, LSTM 4096 cells, projection 512, clips 3, B=1, 100 tokens.
    row = {"case": "ELMo biLM (2 layers, 4096/512), B=1"}
    for wt in ("f32", "f16", "i8"):
        l1 = FusedLayer(lib, "lstm", "bidirectional", 100, 1, 512, 4096, 512, wt=wt, cell_clip=3.0, proj_clip=3.0,
                        seed=21)
        l2 = FusedLayer(lib, "lstm", "bidirectional", 100, 1, 1024, 4096, 512, wt=wt, cell_clip=3.0, proj_clip=3.0,
                        seed=22, x=l1.out)
        chk = l1.check_rows([0], "lstm", "bidirectional", 3.0, 3.0)
        results.append({"name": f"[timed shape] ELMo layer 1 {wt}", "passed": bool(
            chk["out"] <= TOL_F32 and chk["unwritten"] == 0 and chk["watchdog"] == 0), "errors": chk,
            "plan": l1.f.describe()})
        t = time_fused_layer([l1, l2], plain=False)
        row[wt] = {"kernel_graph": t["kernel_graph"]["median"], "full_graph": t["full_graph"]["median"],
                   "plan": l1.f.describe()}
        log(f"ELMo {wt}: kernels {row[wt]['kernel_graph']:.4f} ms, gemm+kernels {row[wt]['full_graph']:.4f} | "
            f"{l1.f.describe()}")
        del l1, l2
        torch.cuda.empty_cache()
    row["cudnn_f32_graph"] = time_cudnn("lstm", 512, 4096, True, 1, 100, P=512, layers=2)["graph"]["median"]
    row["cudnn_f16_graph"] = time_cudnn("lstm", 512, 4096, True, 1, 100, P=512, layers=2,
                                        dtype=torch.float16)["graph"]["median"]
    log(f"ELMo cuDNN graph: f32 {row['cudnn_f32_graph']:.4f} ms, f16 {row['cudnn_f16_graph']:.4f} ms")
    rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lib = Lib(args.lib)
    dev = torch.cuda.get_device_name()
    log(f"device: {dev}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    results = correctness(lib, args.quick)
    timings = [] if args.no_timing else timing(lib, results)
    passed = sum(r["passed"] for r in results)
    log(f"INT8 correctness: {passed}/{len(results)} passed")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "int8_results.json"), "w") as f:
        json.dump({"device": dev, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                   "correctness": results, "timing": timings}, f, indent=1, default=float)
    with open(os.path.join(args.out, "int8_log.txt"), "w") as f:
        f.write("\n".join(LOG_LINES) + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
