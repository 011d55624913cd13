"""Per-block phase trace of the int8 tensor-core kernel (mode 6), from a diagnostic build.

Build the library with -DFUSED_RNN_I8MMA_TRACE (only fused_rnn_cuda_i8mma.cu needs it); thread 0 of every block
then writes (clock64, globaltimer) pairs at the phase boundaries of the prologue and of steps 8..15 into the debug
buffer after the profile's slots. This prints, per phase, the distribution over blocks (cycles), and the
cross-block timeline of one step from globaltimer (ns, relative to the earliest block).

    python3 tools/gpu/trace_i8mma.py --lib build_trace/libfused_rnn_gpu.so [--case elmo8] [--out file.json]
        [--raw stamps.npz]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import DEBUG_SLOTS, PROFILE_CASES, FusedLayer, Lib, log  # noqa: E402

TR_PRO, TR_STEPS, TR_SLOTS, TR_S0, TR_WARP = 8, 8, 16, 8, 64  # as in fused_rnn_cuda_i8mma.cuh
STEP_PHASES = ["fetch (thread 0's words)", "fetch barrier (all words)", "(empty since session 26)",
               "products + z (+ cell when fused)", "cell (thread 0; empty when fused)", "cell barrier", "phase-B products + partial stores (warp 0)",
               "reduce-scatter wait + publish (warp 0)", "to the next step"]
PRO_PHASES = ["zero + lengths", "phase-A fragments", "phase-B fragments", "column sums", "1/scale + maxima",
              "initial state + h0 max + scalings"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--case", default="elmo8")
    ap.add_argument("--out", default=None)
    ap.add_argument("--raw", default=None, help="also save every block's raw stamps (.npz: runs [3, grid, slots])")
    a = ap.parse_args()
    lib = Lib(a.lib)
    label, kw, tun = PROFILE_CASES[a.case]
    layer = FusedLayer(lib, seed=9, tuning=tun, **kw)
    desc = layer.f.describe()
    grid = int(desc.split("grid=")[1].split()[0])
    per_block = 2 * (TR_PRO + TR_STEPS * TR_SLOTS) + TR_STEPS * TR_WARP
    dbg = torch.zeros(DEBUG_SLOTS + grid * per_block, dtype=torch.int64, device="cuda")
    layer.full()
    torch.cuda.synchronize()
    runs = []
    for _ in range(3):
        dbg.zero_()
        lib.L.frg_set_debug_clock(dbg.data_ptr())
        layer.f()
        torch.cuda.synchronize()
        lib.L.frg_set_debug_clock(0)
        runs.append(dbg.cpu().numpy()[DEBUG_SLOTS:].reshape(grid, per_block))
    if a.raw:
        np.savez_compressed(a.raw, runs=np.stack(runs), plan=desc, tr_pro=TR_PRO, tr_steps=TR_STEPS,
                            tr_slots=TR_SLOTS, tr_s0=TR_S0, tr_warp=TR_WARP)
    res = {"case": label, "plan": desc, "runs": []}
    for ri, flat in enumerate(runs):
        n2 = 2 * (TR_PRO + TR_STEPS * TR_SLOTS)
        tr = flat[:, :n2].reshape(grid, TR_PRO + TR_STEPS * TR_SLOTS, 2)
        wt = flat[:, n2:].reshape(grid, TR_STEPS, 2, 32).astype(np.int64)
        clk, gt = tr[:, :, 0].astype(np.int64), tr[:, :, 1].astype(np.int64)
        pro = {}
        for i, name in enumerate(PRO_PHASES):
            d = clk[:, i + 1] - clk[:, i]
            pro[name] = [float(np.median(d)), float(d.min()), float(d.max())]
        st = clk[:, TR_PRO:].reshape(grid, TR_STEPS, TR_SLOTS)
        sg = gt[:, TR_PRO:].reshape(grid, TR_STEPS, TR_SLOTS)
        steps = {}
        for i, name in enumerate(STEP_PHASES):
            if i + 1 < 9:
                d = st[:, :-1, i + 1] - st[:, :-1, i]
            else:  # slot 8 -> next step's slot 0
                d = st[:, 1:, 0] - st[:, :-1, 8]
            steps[name] = [float(np.median(d)), float(np.percentile(d, 10)), float(np.percentile(d, 90)),
                           float(d.max())]
        step_len = st[:, 1:, 0] - st[:, :-1, 0]
        # Finer slots (thread 0 / warp 0), cycles after the named slot.
        fine = {"products: warp 0's MMA chain done (after fetch barrier)": st[:, :, 12] - st[:, :, 3],
                "products: z gathered (after fetch barrier)": st[:, :, 13] - st[:, :, 3],
                "phase B: first m-tile's MMAs + shuffles (after plb barrier)": st[:, :, 10] - st[:, :, 6],
                "phase B: first m-tile's stores (after plb barrier)": st[:, :, 11] - st[:, :, 6],
                "RS: warp 0's polls done (after partial stores)": st[:, :, 14] - st[:, :, 7]}
        nw = int(desc.split("threads=")[1].split()[0]) // 32
        partial_w = wt[:, :, 1, :nw] - st[:, :, 6][:, :, None]  # per-warp partial stores done, after plb barrier
        fine["phase B: slowest warp's partials done"] = partial_w.max(axis=2)
        fine["phase B: fastest warp's partials done"] = partial_w.min(axis=2)
        fine_res = {k: [float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90))]
                    for k, v in fine.items()}
        slow_warp_b = np.bincount(partial_w.argmax(axis=2).ravel(), minlength=nw).tolist()
        # Cross-block: globaltimer of step 10's boundaries, relative to the earliest start.
        s = 2
        t0 = sg[:, s, 0].min()
        timeline = {}
        timeline["start"] = [0.0, float(np.median(sg[:, s, 0] - t0)), float(np.max(sg[:, s, 0] - t0))]
        gt_res = np.unique(np.diff(np.unique(sg[:, :, :].ravel())))[:5].tolist()
        total_gt = float(sg[:, -1, 0].max() - sg[:, 0, 0].min()) / (TR_STEPS - 1) if TR_STEPS > 1 else 0.0
        r = {"prologue_cyc[median,min,max]": pro, "step_phase_cyc[median,p10,p90,max]": steps,
             "step_cyc[median,min,max]": [float(np.median(step_len)), float(step_len.min()), float(step_len.max())],
             "step10_globaltimer_ns[min,median,max]": timeline, "globaltimer_smallest_steps_ns": gt_res,
             "ns_per_step_gt": total_gt, "fine_cyc[median,p10,p90]": fine_res,
             "slowest_warp_counts_phaseB": slow_warp_b}
        res["runs"].append(r)
        log(f"run {ri}: step cycles median {r['step_cyc[median,min,max]']}")
        for name, v in steps.items():
            log(f"   {name:45s} med {v[0]:8.0f} p10 {v[1]:8.0f} p90 {v[2]:8.0f} max {v[3]:8.0f}")
        for name, v in pro.items():
            log(f"   prologue {name:36s} med {v[0]:8.0f} min {v[1]:8.0f} max {v[2]:8.0f}")
        for name, v in timeline.items():
            log(f"   step10 gt {name:50s} {v[0]:7.0f} {v[1]:7.0f} {v[2]:7.0f} ns")
        for name, v in fine_res.items():
            log(f"   fine {name:62s} med {v[0]:7.0f} p10 {v[1]:7.0f} p90 {v[2]:7.0f}")
        log(f"   slowest warp (phase B) {slow_warp_b}")
        log(f"   globaltimer increments {gt_res}, ns/step {total_gt:.0f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
