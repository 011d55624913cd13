#!/usr/bin/env python3
"""Cross-block timing of the int8 tensor-core kernel (mode 6) from `trace_i8mma.py --raw` stamps (NumPy only: runs
anywhere, e.g. on the saved bench/gpu/trace_int8mma_raw_*.npz).

Each block's clock64 is mapped onto the global timer by a least-squares line through its step-start stamps (the
only ones with a globaltimer read; the timer ticks in 32 ns steps, and int64 nanoseconds must be made small before
any float arithmetic, or float64 rounds them to 256 ns). Then, per step and direction, it prints when each phase
ends in global time and how late each block is against the earliest block of its own direction (the directions
are independent chains and drift against each other).

    python3 tools/gpu/trace_skew.py bench/gpu/trace_int8mma_raw_h100_session28.npz
"""
import sys

import numpy as np

# Step slots written by thread 0 (see fused_rnn_cuda_i8mma.cuh's trace() calls and trace_i8mma.py).
SLOTS = {0: "step start", 1: "fetch (thread 0)", 2: "fetch barrier", 4: "products + cell", 6: "cell barrier",
         7: "partials stored (warp 0)", 14: "reduce-scatter polls done", 8: "h published"}


def to_global_ns(runs, pro, steps, slots):
    """Per run: (global-ns stamps [grid, steps, slots], each warp's 'partials stored' [grid, steps, 32], GHz)."""
    n2 = 2 * (pro + steps * slots)
    out = []
    for flat in runs:
        grid = flat.shape[0]
        tr = flat[:, :n2].reshape(grid, pro + steps * slots, 2)
        clk = tr[:, pro:, 0].reshape(grid, steps, slots).astype(np.int64)
        gt = tr[:, pro:, 1].reshape(grid, steps, slots).astype(np.int64)
        warp = flat[:, n2:].reshape(grid, steps, 2, 32).astype(np.int64)
        c0 = clk[:, :, 0]
        g0 = gt[:, :, 0] - gt[:, :, 0].min()  # small before float
        cref = c0[:, :1]
        x = (c0 - cref).astype(np.float64)
        fit = np.array([np.polyfit(x[b], g0[b].astype(np.float64), 1) for b in range(grid)])  # ns/cycle, offset
        resid = g0 - (x * fit[:, :1] + fit[:, 1:])

        def ns(c):
            c = c - (cref if c.ndim == 2 else cref[:, :, None])
            k = fit[:, :1] if c.ndim == 2 else fit[:, :1, None]
            o = fit[:, 1:] if c.ndim == 2 else fit[:, 1:, None]
            return o + c.astype(np.float64) * k

        stamps = np.stack([ns(clk[:, :, s]) for s in range(slots)], axis=2)
        out.append((stamps, ns(warp[:, :, 1, :]), 1.0 / np.median(fit[:, 0]), float(np.abs(resid).max())))
    return out


def main():
    z = np.load(sys.argv[1])
    pro, steps, slots = int(z["tr_pro"]), int(z["tr_steps"]), int(z["tr_slots"])
    plan = str(z["plan"])
    nwarps = int(plan.split("threads=")[1].split()[0]) // 32
    grid = int(plan.split("grid=")[1].split()[0])
    half = grid // 2  # blocks [0, half) forward, [half, grid) reverse (D = 2)
    print(plan)
    runs = to_global_ns(z["runs"], pro, steps, slots)
    late = {k: [] for k in ("step start", "fetch barrier", "last partial")}
    chain, period = [], []
    for ri, (st, pw, ghz, res) in enumerate(runs):
        last_partial = pw[:, :, :nwarps].max(axis=2)
        print(f"run {ri}: clock {ghz:.3f} GHz, clock-to-timer fit residual max {res:.0f} ns")
        for d, blocks in enumerate((slice(0, half), slice(half, grid))):
            s0 = st[blocks, :, 0]
            period += np.diff(s0.mean(axis=0)).tolist()
            if ri == 0 and d == 0:
                print("  forward direction, ns after the direction's earliest step start (median / max over blocks):")
                for s in range(1, steps - 1):
                    t0 = s0[:, s].min()
                    cells = " ".join(f"{name} {np.median(st[blocks, s, k] - t0):5.0f}/{np.max(st[blocks, s, k] - t0):5.0f}"
                                     for k, name in SLOTS.items())
                    print(f"  step {s}: {cells} | next start {np.median(s0[:, s + 1] - t0):5.0f}")
            for key, x in (("step start", s0), ("fetch barrier", st[blocks, :, 2]),
                           ("last partial", last_partial[blocks])):
                late[key].append(x - x.min(axis=0))
            chain.append(last_partial[blocks] - st[blocks, :, 2])
    period = np.array(period)
    print(f"step period (direction mean): median {np.median(period):.0f} ns, p10 {np.percentile(period, 10):.0f}, "
          f"p90 {np.percentile(period, 90):.0f}")
    ch = np.concatenate(chain, axis=1)
    print(f"own chain, fetch barrier -> block's last partial stored: median {np.median(ch):.0f} ns, "
          f"p10 {np.percentile(ch, 10):.0f}, p90 {np.percentile(ch, 90):.0f}")
    for key, parts in late.items():
        # parts: [run0 fwd, run0 rev, run1 fwd, ...], each [half, steps]: stack blocks as 0..grid-1 per run.
        per_run = [np.concatenate(parts[i:i + 2], axis=0) for i in range(0, len(parts), 2)]
        x = np.concatenate(per_run, axis=1)  # [grid, runs * steps]
        m = x.mean(axis=1)
        groups = x.reshape(grid // 8, 8, -1).mean(axis=(1, 2))
        print(f"{key:14s} lateness vs the direction's earliest block: mean {x.mean():4.0f} ns, p90 "
              f"{np.percentile(x, 90):4.0f}, max {x.max():5.0f}; per-block mean std {m.std():3.0f}, noise std "
              f"{(x - m[:, None]).std():3.0f}")
        print(f"{'':14s} by 8-block group: {np.round(groups).astype(int).tolist()}")
        if key == "last partial":
            print(f"{'':14s} latest block (both directions pooled), per step: {np.argmax(x.reshape(grid, -1), axis=0).tolist()}")


if __name__ == "__main__":
    main()
