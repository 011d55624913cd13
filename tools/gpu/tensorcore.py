#!/usr/bin/env python3
"""Device harness for the tensor-core mode of the CUDA core (mode 4, cc/cuda/fused_rnn_cuda_tc.cuh): 16-bit
weights as mma.sync fragments, h_{t-1} rounded to the weight type for the product, float32 accumulation; and
float32 weights as 3xTF32 products (hi/lo TF32 parts of U and h, float32 accumulation), checked to float32's
tolerance; and float32 weights with TF32 allowed (CudaTuning::allow_tf32, TensorFlow's default policy): U and
h_{t-1} rounded to TF32 for one product, checked like the 16-bit weights ("tf32" below).

Correctness, against float64 NumPy oracles computed here:
  * "emulated": the same recurrence in float64 on the kernel's 16-bit weights with h_{t-1} rounded to 16 bits
    before each product, as the kernel does, and teacher-forced: each step starts from the kernel's own float32
    h_{t-1} (its output one step earlier), so the rare value that rounds to the other 16-bit neighbour in float64
    cannot make the two diverge. This checks the kernel (fragment layouts, tiles, passes, row groups, the
    exchange, lengths, directions) to the float32 tolerance, 1e-5; the free-running error is reported too;
  * the float32 weights, no rounding at all: the issue's 16-bit tolerance, 1e-2 (also for TF32; float32 weights
    without TF32: 1e-5, free running, the same check as the general kernel's);
  * negative controls (two k-rows of U swapped in the kernel's copy, 16-bit, float32 and TF32) must fail the 1e-4
    check.
Timing: the tensor-core kernel against the general kernel on the same 16-bit weights, the float32 kernel (exact and
TF32), and cuDNN (float32 with TF32 off and on, float16; torch.nn.LSTM/GRU) in the same process; CUDA events over
CUDA-graph replays, median. The input GEMM of the "full" timings follows the row's precision (TF32 for the TF32 rows).

    BUILD_ONLY=1 BUILD_DIR=/tmp/gb GPU_ARCH="-gencode arch=compute_90,code=sm_90" OUT=$OUT bash tools/gpu/run_all.sh
    python3 tools/gpu/tensorcore.py --lib /tmp/gb/libfused_rnn_gpu.so --out $OUT
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402
from driver import (FusedLayer, FusedRnn, Lib, LOG_LINES, dev16, log, make_inputs, poisoned, rel_err,  # noqa: E402
                    round_weights, time_cudnn, time_fused_layer, to_dev)

TOL_EMULATED = 1e-5
TOL_VS_F32 = 1e-2
TOL_F32 = 1e-5  # float32 weights (3xTF32): the general kernel's float32 tolerance, free running
TC = {"mode": 4}
EXTRA_TUNING = {}  # --extra-tuning: CudaTuning fields added to every correctness case


def round16(a, wt):
    """a rounded to the 16-bit type wt ("f16", "bf16"), or to TF32 ("tf32": 10 mantissa bits, ties away from zero,
    as the kernel's RoundTf32), as float64; Inf and NaN unchanged."""
    a32 = np.asarray(a, np.float32)
    if wt == "tf32":
        bits = a32.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32)
        out = rounded.view(np.float32).astype(np.float64)
        return np.where(np.isfinite(a32), out, a32.astype(np.float64))
    if wt == "f16":
        return a32.astype(np.float16).astype(np.float64)
    bits = a32.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isfinite(a32), out, a32.astype(np.float64))


def colscaled_f16(U):
    """U [D, K, GH] as the TF32-through-float16 plans use it (fused_rnn_cuda_tc_f16copy.cu), as float64: each column
    times 2^e (e = 15 - the exponent of its largest finite magnitude, at most 126; 0 for a zero column), rounded to
    float16, times 2^-e."""
    U32 = np.asarray(U, np.float32)
    a = np.abs(U32.astype(np.float64))
    m = np.where(np.isfinite(a), a, 0.0).max(axis=1, keepdims=True)  # [D, 1, GH]
    _, ex = np.frexp(m)
    e = np.where(m > 0, np.minimum(15 - ex, 126), 0)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.ldexp(U32.astype(np.float64), e).astype(np.float16).astype(np.float64)
    return np.ldexp(scaled, -e)


def h0_shift_of(h0):
    """The per-row shifts [D, B] of the TF32-through-float16 LSTM plan (fused_rnn_cuda_tc_f16copy.cu): for each
    batch row, s = ilogb(max finite |h0 row|) - 13 when that maximum exceeds 65504, else 0. None without h0."""
    if h0 is None:
        return None
    a = np.abs(np.asarray(h0, np.float32).astype(np.float64))
    m = np.where(np.isfinite(a), a, 0.0).max(axis=2)  # [D, B]
    _, ex = np.frexp(m)  # m = f * 2^ex, f in [0.5, 1): ilogb = ex - 1
    return np.where(m > 65504, ex - 1 - 13, 0).astype(np.int64)


def reference(cell, direction, inp, U, cell_clip, wt=None, teacher=None, h0_shift=None):
    """Float64 recurrence, vectorised over the batch. wt: round h_{t-1} to that 16-bit type before each product
    (None: no rounding). teacher: the kernel's output [B, T, D*H]; each step then starts from the kernel's own
    h_{t-1} (teacher forcing), so a value the kernel rounded one way cannot send the reference down another path.
    h0_shift: [D, B] or None; step 0's h of row b is rounded as h * 2^-shift and scaled back (the LSTM's scaled
    initial state).
    Returns out [B, T, D*H], final_h [D, B, H], final_c [D, B, H] or None."""
    x = inp["x"].astype(np.float64)  # batch-major
    B, T, _ = x.shape
    D, H, GH = U.shape
    lengths = inp["lengths"] if inp["lengths"] is not None else np.full(B, T, np.int32)
    lengths = lengths.astype(np.int64)
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    out = np.zeros((B, T, D * H))
    fh = np.zeros((D, B, H))
    fc = np.zeros((D, B, H)) if cell == "lstm" else None
    rows = np.arange(B)
    with np.errstate(invalid="ignore", over="ignore"):
        for d, reverse in enumerate(dirs):
            u = U[d].astype(np.float64)
            h = inp["h0"][d].astype(np.float64) if inp["h0"] is not None else np.zeros((B, H))
            c = inp["c0"][d].astype(np.float64) if (cell == "lstm" and inp["c0"] is not None) else np.zeros((B, H))
            rb = inp["rb"][d].astype(np.float64) if (cell == "gru" and inp["rb"] is not None) else 0.0
            for s in range(T):
                active = s < lengths
                t = np.where(reverse, lengths - 1 - s, s).clip(0, T - 1)
                xt = x[rows, t, d * GH:(d + 1) * GH]
                if teacher is not None and s > 0:
                    tp = np.where(reverse, t + 1, t - 1).clip(0, T - 1)
                    h = np.where(active[:, None], teacher[rows, tp, d * H:(d + 1) * H].astype(np.float64), h)
                if wt and s == 0 and h0_shift is not None and np.any(h0_shift[d]):
                    sh = h0_shift[d][:, None]
                    hr = np.ldexp(round16(np.ldexp(h, -sh), wt), sh)
                else:
                    hr = round16(h, wt) if wt else h
                z = hr @ u
                if cell == "lstm":
                    i, f = sig(xt[:, :H] + z[:, :H]), sig(xt[:, H:2 * H] + z[:, H:2 * H])
                    g, o = np.tanh(xt[:, 2 * H:3 * H] + z[:, 2 * H:3 * H]), sig(xt[:, 3 * H:] + z[:, 3 * H:])
                    cn = f * c + i * g
                    if cell_clip > 0:
                        cn = np.where(np.isnan(cn), cn, np.clip(cn, -cell_clip, cell_clip))
                    hn = o * np.tanh(cn)
                    c = np.where(active[:, None], cn, c)
                else:
                    a = z + rb
                    zg, rg = sig(xt[:, :H] + a[:, :H]), sig(xt[:, H:2 * H] + a[:, H:2 * H])
                    n = np.tanh(xt[:, 2 * H:] + rg * a[:, 2 * H:])
                    hn = zg * h + (1.0 - zg) * n
                h = np.where(active[:, None], hn, h)
                out[rows[active], t[active], d * H:(d + 1) * H] = hn[active]
            fh[d] = h
            if cell == "lstm":
                fc[d] = c
    return out, fh, fc


def run_tc_case(lib, name, cell, direction, T, B, H, wt="f16", tuning=None, ragged=True, time_major=False,
                with_init=True, gru_bias=True, cell_clip=0.0, seed=0, negative=False, inject_nan=False,
                h0_big=None, col_spread=False):
    """wt: "f16", "bf16", "f32" (exact, 3xTF32), or float32 weights with TF32 allowed: "tf32" (the float32-exchange
    kernel; tf32_exchange16 = 0), "tf32h" (TF32 through float16 forced: tf32_exchange16 = 1; the plan must say so),
    "tf32a" (the planner's choice). h0_big: a value put into h0 (beyond 65504: the float32-exchange fallback must
    run). col_spread: U's columns scaled by 2^-30 .. 2^12 (or 2^col_spread) (the float16 copy's per-column scales).
    TF32 rows are held to the 16-bit tolerance against the float32 weights, or to twice the error that exact TF32
    arithmetic (the float64 oracle on TF32-rounded U and h, free running) has on the same inputs, if larger: weights
    with a large gain make the recurrence amplify any 10-bit rounding, whichever kernel does it."""
    rng = np.random.default_rng(seed)
    inp = make_inputs(rng, cell, direction, T, B, H, 0, ragged, with_init, gru_bias)
    if inject_nan:
        inp["x"][0, T // 2, 0] = np.nan
        inp["x"][B - 1, 1, -1] = np.inf
    if col_spread:  # True: up to 2^12; a number: up to 2^that (beyond float16's range without the scales)
        top = 12 if col_spread is True else int(col_spread)
        inp["U"] = (inp["U"] * np.exp2(rng.integers(-30, top + 1, size=(1, 1, inp["U"].shape[2])))).astype(np.float32)
    if h0_big is not None:
        inp["h0"][0, B // 2, H // 3] = h0_big
        inp["h0"][-1, B - 1, H - 1] = -h0_big
        if B > 1:
            inp["h0"][0, 1, 0] = h0_big / 2  # row 1: length 0 when ragged, so its final h must be h0 itself
    D = 2 if direction == "bidirectional" else 1
    tf32_mode = {"tf32": 0, "tf32h": 1, "tf32a": -1}.get(wt)
    tf32 = tf32_mode is not None  # float32 weights, TF32 products allowed
    wt = "tf32" if tf32 else wt
    f32 = wt == "f32" or tf32
    if tf32:
        U_used, U16 = round16(inp["U"], "tf32"), None  # replaced below if the float16 exchange runs
    else:
        U_used, U16 = round_weights(inp["U"], wt)
    U_kernel = torch.from_numpy(np.ascontiguousarray(inp["U"])) if f32 else U16
    if negative:  # two k-rows swapped in the kernel's copy: a layout bug of the kind the check is for
        U_kernel = U_kernel.clone()
        U_kernel[:, [1, H - 2]] = U_kernel[:, [H - 2, 1]]
    wround = "tf32" if tf32 else (None if f32 else wt)  # float32: h enters the product unrounded
    tun = dict(tuning if tuning else TC, **({"allow_tf32": 1, "tf32_exchange16": tf32_mode} if tf32 else {}))
    tun.update(EXTRA_TUNING)
    f = FusedRnn(lib, cell, direction, T, B, H, 0, time_major, cell_clip, 0.0, "f32" if f32 else wt, tun)
    plan = f.describe()
    via16 = "via f16" in plan
    h0_fits = inp["h0"] is None or not np.any(np.isfinite(inp["h0"]) & (np.abs(inp["h0"]) > 65504))
    # An LSTM keeps the float16 kernel for any h0 (step 0's h scaled by 2^-shift); a GRU falls back to float32
    # exchange when h0 does not fit.
    f16_path = tf32 and via16 and (h0_fits or cell == "lstm")
    h0_shift = h0_shift_of(inp["h0"]) if (f16_path and cell == "lstm") else None
    max_shift = int(h0_shift.max()) if h0_shift is not None else 0
    if f16_path:  # the float16 kernel on the column-scaled copy, h exchanged as float16
        U_used, wround = colscaled_f16(inp["U"]), "f16"
    x_dev = to_dev(inp["x"].transpose(1, 0, 2) if time_major else inp["x"])
    out = poisoned((T, B, D * H) if time_major else (B, T, D * H))
    fh = poisoned((D, B, H))
    fc = poisoned((D, B, H)) if cell == "lstm" else None
    f.bind(x_dev, rec_bias=to_dev(inp["rb"]), lengths=to_dev(inp["lengths"]), h0=to_dev(inp["h0"]),
           c0=to_dev(inp["c0"]), out=out, final_h=fh, final_c=fc, w_rec=U_kernel.cuda() if f32 else None,
           w_rec16=None if f32 else dev16(U_kernel))
    free_o, _, _ = reference(cell, direction, inp, U_used, cell_clip, wt=wround, h0_shift=h0_shift)
    plain_o, _, _ = reference(cell, direction, inp, U_used, cell_clip, wt=None)
    f32_o, _, _ = reference(cell, direction, inp, inp["U"], cell_clip, wt=None)
    results = []
    for rep in range(2):  # a result that moves between runs is a race
        for tns in (out, fh, fc):
            if tns is not None:
                tns.fill_(float("nan"))
        f()
        torch.cuda.synchronize()
        o = out.cpu().numpy()
        if time_major:
            o = o.transpose(1, 0, 2)
        results.append((o, fh.cpu().numpy(), fc.cpu().numpy() if fc is not None else None))
    o, gh, gc = results[0]
    emu_o, emu_h, emu_c = reference(cell, direction, inp, U_used, cell_clip, wt=wround, teacher=o, h0_shift=h0_shift)
    e = {"watchdog": f.watchdog(), "moving": int(not (np.array_equal(o, results[1][0], equal_nan=True)))}
    if tf32:
        e["path"] = ("f16 exchange" + (f", h0 shift up to {max_shift}" if max_shift else "")) if f16_path \
            else "f32 exchange"
    lengths = inp["lengths"] if inp["lengths"] is not None else np.full(B, T)
    past = np.zeros(o.shape[:2], bool)
    for b in range(B):
        past[b, lengths[b]:] = True
    e["nonzero_past_len"] = int(np.count_nonzero(o[past]))
    if inject_nan:
        e["nan_mismatch"] = int(np.sum(np.isnan(o) != np.isnan(emu_o)) + np.sum(np.isnan(gh) != np.isnan(emu_h)))
        keep = ~np.isnan(emu_o)
        keep_h = ~np.isnan(emu_h)
        e["emulated"] = rel_err(o[keep], emu_o[keep])
        e["emulated_final_h"] = rel_err(gh[keep_h], emu_h[keep_h])
        e["unwritten"] = int(np.sum(~np.isfinite(o[keep])))
    else:
        e["unwritten"] = int(np.sum(~np.isfinite(o)))
        e["emulated"] = rel_err(o, emu_o)
        e["emulated_final_h"] = rel_err(gh, emu_h)
        if gc is not None:
            e["emulated_final_c"] = rel_err(gc, emu_c)
        e["free_running_emulated"] = rel_err(o, free_o)
        e["vs_fp32_math_16bit_weights"] = rel_err(o, plain_o)
        e["vs_f32_weights"] = rel_err(o, f32_o)
        if tf32:
            tf32_o, _, _ = reference(cell, direction, inp, round16(inp["U"], "tf32"), cell_clip, wt="tf32")
            e["tf32_oracle_vs_f32"] = rel_err(tf32_o, f32_o)
    ok = (e["emulated"] <= TOL_EMULATED and e["emulated_final_h"] <= TOL_EMULATED
          and e.get("emulated_final_c", 0) <= TOL_EMULATED
          and e.get("vs_f32_weights", 0) <= (TOL_F32 if f32 and not tf32
                                             else max(TOL_VS_F32, 2 * e.get("tf32_oracle_vs_f32", 0)))
          and (not tf32 or "tf32" in plan)
          and (tf32_mode != 1 or via16) and (tf32_mode != 0 or not via16)
          and e["unwritten"] == 0 and e["nonzero_past_len"] == 0 and e["watchdog"] == 0 and not e["moving"]
          and e.get("nan_mismatch", 0) == 0
          # a TF32-through-float16 LSTM with an h0 beyond float16 must take the scaled path, not a fallback
          and (not (tf32 and via16 and cell == "lstm" and not h0_fits) or (max_shift > 0 and "h0 scaled" in plan)))
    return {"name": name, "passed": bool(ok), "errors": e, "plan": plan, "negative_control": negative}


def correctness(lib):
    cases = [
        ("lstm fwd f16 B5 H40 ragged", dict(cell="lstm", direction="forward", T=13, B=5, H=40)),
        ("lstm bi f16 B37 H100 time-major clip", dict(cell="lstm", direction="bidirectional", T=12, B=37, H=100,
                                                      time_major=True, cell_clip=0.7)),
        ("gru rev bf16 B20 H72", dict(cell="gru", direction="reverse", T=11, B=20, H=72, wt="bf16")),
        ("lstm fwd f16 B70 (2 passes) H64 NT=3", dict(cell="lstm", direction="forward", T=9, B=70, H=64,
                                                      tuning={"mode": 4, "units_per_block": 6})),
        ("lstm bi bf16 B17 H130 (k-tail) NT=8", dict(cell="lstm", direction="bidirectional", T=10, B=17, H=130,
                                                     wt="bf16", tuning={"mode": 4, "units_per_block": 16})),
        ("gru fwd f16 B40 H200 NT=6 (2 passes)", dict(cell="gru", direction="forward", T=8, B=40, H=200,
                                                      tuning={"mode": 4, "units_per_block": 13})),
        ("lstm fwd f16 B16 H256 no init no lengths", dict(cell="lstm", direction="forward", T=10, B=16, H=256,
                                                          ragged=False, with_init=False)),
        ("gru bi bf16 B9 H48 no bias", dict(cell="gru", direction="bidirectional", T=9, B=9, H=48, wt="bf16",
                                             gru_bias=False)),
        ("lstm fwd f16 B64 H1024 T30 (timed shape)", dict(cell="lstm", direction="forward", T=30, B=64, H=1024)),
        ("gru fwd bf16 B64 H1024 T20", dict(cell="gru", direction="forward", T=20, B=64, H=1024, wt="bf16")),
        ("lstm fwd f16 B1 H512", dict(cell="lstm", direction="forward", T=20, B=1, H=512)),
        ("lstm fwd f16 B70 3 row groups of 32", dict(cell="lstm", direction="forward", T=12, B=70, H=96,
                                                    tuning={"mode": 4, "rows_per_block": 32})),
        ("gru bi bf16 B40 row groups of 16 time-major", dict(cell="gru", direction="bidirectional", T=10, B=40,
                                                             H=80, wt="bf16", time_major=True,
                                                             tuning={"mode": 4, "rows_per_block": 16})),
        ("lstm fwd f16 B20 H104 staged prologue, partial k-tile", dict(cell="lstm", direction="forward", T=9, B=20,
                                                                       H=104, tuning={"mode": 4, "units_per_block": 8})),
        ("NaN/Inf input lstm bi f16", dict(cell="lstm", direction="bidirectional", T=9, B=18, H=40, cell_clip=0.9,
                                           inject_nan=True)),
        ("NaN/Inf input gru fwd bf16", dict(cell="gru", direction="forward", T=9, B=18, H=40, wt="bf16",
                                            inject_nan=True)),
        # float32 weights, 3xTF32 (k-tiles of 8: KTW = 16 per warp, NT <= 4, MG = 2).
        ("f32 lstm fwd B5 H40 ragged", dict(cell="lstm", direction="forward", T=13, B=5, H=40, wt="f32")),
        ("f32 lstm bi B37 H100 time-major clip (3 passes)", dict(cell="lstm", direction="bidirectional", T=12, B=37,
                                                                H=100, wt="f32", time_major=True, cell_clip=0.7)),
        ("f32 gru rev B20 H72", dict(cell="gru", direction="reverse", T=11, B=20, H=72, wt="f32")),
        ("f32 lstm fwd B70 H64 NT=2 (3 passes)", dict(cell="lstm", direction="forward", T=9, B=70, H=64, wt="f32",
                                                      tuning={"mode": 4, "units_per_block": 4})),
        ("f32 gru fwd B40 H200 NT=3 (k-tail, direct prologue)", dict(cell="gru", direction="forward", T=8, B=40,
                                                                      H=203, wt="f32",
                                                                      tuning={"mode": 4, "units_per_block": 7})),
        ("f32 lstm fwd B16 H256 no init no lengths", dict(cell="lstm", direction="forward", T=10, B=16, H=256,
                                                          wt="f32", ragged=False, with_init=False)),
        ("f32 gru bi B9 H48 no bias", dict(cell="gru", direction="bidirectional", T=9, B=9, H=48, wt="f32",
                                            gru_bias=False)),
        ("f32 lstm fwd B64 H1024 T30 (timed shape)", dict(cell="lstm", direction="forward", T=30, B=64, H=1024,
                                                          wt="f32")),
        ("f32 gru fwd B64 H1024 T20", dict(cell="gru", direction="forward", T=20, B=64, H=1024, wt="f32")),
        ("f32 lstm fwd B1 H512", dict(cell="lstm", direction="forward", T=20, B=1, H=512, wt="f32")),
        ("f32 lstm fwd B70 3 row groups of 32", dict(cell="lstm", direction="forward", T=12, B=70, H=96, wt="f32",
                                                    tuning={"mode": 4, "rows_per_block": 32})),
        ("f32 NaN/Inf input lstm bi", dict(cell="lstm", direction="bidirectional", T=9, B=18, H=40, cell_clip=0.9,
                                           wt="f32", inject_nan=True)),
        # float32 weights with TF32 allowed: one product on TF32-rounded U and h (the plan must say tf32).
        ("tf32 lstm fwd B5 H40 ragged", dict(cell="lstm", direction="forward", T=13, B=5, H=40, wt="tf32")),
        ("tf32 lstm bi B37 H100 time-major clip (3 passes)", dict(cell="lstm", direction="bidirectional", T=12,
                                                                 B=37, H=100, wt="tf32", time_major=True,
                                                                 cell_clip=0.7)),
        ("tf32 gru rev B20 H72", dict(cell="gru", direction="reverse", T=11, B=20, H=72, wt="tf32")),
        ("tf32 gru fwd B40 H203 NT=3 (k-tail, direct prologue)", dict(cell="gru", direction="forward", T=8, B=40,
                                                                       H=203, wt="tf32",
                                                                       tuning={"mode": 4, "units_per_block": 7})),
        ("tf32 lstm fwd B70 H64 NT=2 (3 passes)", dict(cell="lstm", direction="forward", T=9, B=70, H=64,
                                                       wt="tf32", tuning={"mode": 4, "units_per_block": 4})),
        ("tf32 lstm fwd B16 H256 no init no lengths", dict(cell="lstm", direction="forward", T=10, B=16, H=256,
                                                           wt="tf32", ragged=False, with_init=False)),
        ("tf32 lstm fwd B64 H1024 T30 (timed shape)", dict(cell="lstm", direction="forward", T=30, B=64, H=1024,
                                                           wt="tf32")),
        ("tf32 gru bi B64 H512 T20", dict(cell="gru", direction="bidirectional", T=20, B=64, H=512, wt="tf32")),
        ("tf32 NaN/Inf input lstm bi", dict(cell="lstm", direction="bidirectional", T=9, B=18, H=40, cell_clip=0.9,
                                            wt="tf32", inject_nan=True)),
        ("tf32 NaN/Inf input gru fwd", dict(cell="gru", direction="forward", T=9, B=18, H=40, wt="tf32",
                                            inject_nan=True)),
        # TF32 through float16 (tf32_exchange16 = 1): the float16 kernel on the column-scaled float16 copy of U, h
        # exchanged as float16; checked against a float64 oracle on exactly those values (the plan must say so).
        ("tf32h lstm fwd B5 H40 ragged", dict(cell="lstm", direction="forward", T=13, B=5, H=40, wt="tf32h")),
        ("tf32h lstm bi B37 H100 time-major clip", dict(cell="lstm", direction="bidirectional", T=12, B=37, H=100,
                                                        wt="tf32h", time_major=True, cell_clip=0.7)),
        ("tf32h gru rev B20 H72", dict(cell="gru", direction="reverse", T=11, B=20, H=72, wt="tf32h")),
        ("tf32h gru fwd B40 H203 NT=3 (k-tail, direct prologue)", dict(cell="gru", direction="forward", T=8, B=40,
                                                                        H=203, wt="tf32h",
                                                                        tuning={"mode": 4, "units_per_block": 7})),
        ("tf32h lstm fwd B70 H64 NT=3 (2 passes)", dict(cell="lstm", direction="forward", T=9, B=70, H=64,
                                                        wt="tf32h", tuning={"mode": 4, "units_per_block": 6})),
        ("tf32h lstm fwd B70 3 row groups of 32", dict(cell="lstm", direction="forward", T=12, B=70, H=96,
                                                      wt="tf32h", tuning={"mode": 4, "rows_per_block": 32})),
        ("tf32h lstm fwd B16 H256 no init no lengths", dict(cell="lstm", direction="forward", T=10, B=16, H=256,
                                                            wt="tf32h", ragged=False, with_init=False)),
        ("tf32h lstm fwd B64 H1024 T30 (timed shape)", dict(cell="lstm", direction="forward", T=30, B=64, H=1024,
                                                            wt="tf32h")),
        ("tf32h gru bi B64 H512 T20", dict(cell="gru", direction="bidirectional", T=20, B=64, H=512, wt="tf32h")),
        # The copy kernel holds rows [0, 1024) (16-byte loads) or [0, 256) (4-byte loads) in registers and reads
        # the rest again. No tensor-core plan has H > 1024 (8 warps of 8 k-tiles), so the re-read is reached with
        # 4-byte loads only (G * H not a multiple of 4).
        ("tf32h gru bi B16 H301 T6 (4-byte copy, rows past 256)", dict(cell="gru", direction="bidirectional", T=6,
                                                                      B=16, H=301, wt="tf32h")),
        ("tf32h lstm fwd B24 H96 columns scaled 2^-30..2^12", dict(cell="lstm", direction="forward", T=10, B=24,
                                                                   H=96, wt="tf32h", col_spread=True)),
        ("tf32h gru bi B24 H80 columns scaled 2^-30..2^17", dict(cell="gru", direction="bidirectional", T=10, B=24,
                                                                 H=80, wt="tf32h", col_spread=17)),
        ("tf32h lstm fwd B16 H64 h0 60000 (fits float16)", dict(cell="lstm", direction="forward", T=8, B=16, H=64,
                                                                wt="tf32h", h0_big=60000.0)),
        ("tf32h gru bi B16 H64 h0 60000 (fits float16)", dict(cell="gru", direction="bidirectional", T=8, B=16,
                                                              H=64, wt="tf32h", h0_big=60000.0)),
        # An LSTM keeps the float16 kernel with step 0's h scaled by 2^-shift per batch row (1e5: shift 3; 1e30:
        # shift 86, the row's other h0 values then float16 zeros or subnormals; other rows keep their precision).
        ("tf32h lstm bi B16 H64 h0 1e5 (scaled h0)", dict(cell="lstm", direction="bidirectional", T=8, B=16, H=64,
                                                          wt="tf32h", h0_big=1e5)),
        ("tf32h lstm rev B20 H72 h0 1e30 ragged (scaled h0)", dict(cell="lstm", direction="reverse", T=8, B=20,
                                                                   H=72, wt="tf32h", h0_big=1e30)),
        ("tf32h gru fwd B20 H72 h0 1e5 (float32-exchange fallback)", dict(cell="gru", direction="forward", T=8,
                                                                          B=20, H=72, wt="tf32h", h0_big=1e5)),
        ("tf32h NaN/Inf input lstm bi", dict(cell="lstm", direction="bidirectional", T=9, B=18, H=40,
                                             cell_clip=0.9, wt="tf32h", inject_nan=True)),
        ("tf32h NaN/Inf input gru fwd", dict(cell="gru", direction="forward", T=9, B=18, H=40, wt="tf32h",
                                             inject_nan=True)),
        ("tf32 auto lstm fwd B64 H1024 T30", dict(cell="lstm", direction="forward", T=30, B=64, H=1024,
                                                  wt="tf32a")),
    ]
    results = []
    for i, (name, kw) in enumerate(cases):
        try:
            r = run_tc_case(lib, name, seed=300 + i, **kw)
        except Exception as ex:  # noqa: BLE001
            r = {"name": name, "passed": False, "errors": {"exception": str(ex)}, "plan": ""}
            log(traceback.format_exc())
        results.append(r)
        log(f"{'PASS' if r['passed'] else 'FAIL'} {name}: " +
            " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in r["errors"].items()) +
            f" | {r['plan']}")
    for wt in ("f16", "f32", "tf32", "tf32h"):
        neg = run_tc_case(lib, f"negative control ({wt}): two k-rows of U swapped", "lstm", "forward", T=10, B=16,
                          H=64, wt=wt, seed=999, negative=True)
        neg["passed_as_control"] = not neg["passed"]
        log(f"{'CAUGHT' if not neg['passed'] else 'MISSED'} negative control ({wt}): "
            f"emulated={neg['errors']['emulated']:.2e}")
        results.append(neg)
    return results


TIMED = [
    # label, cell, direction, B, H
    ("LSTM H=1024", "lstm", "forward", [1, 8, 16, 32, 64, 128], 1024),
    ("LSTM H=512", "lstm", "forward", [1, 16, 64, 128], 512),
    ("GRU H=1024", "gru", "forward", [64], 1024),
    ("biLSTM H=512", "lstm", "bidirectional", [64], 512),
    ("biLSTM H=100", "lstm", "bidirectional", [64], 100),
]


def timing(lib):
    rows = []
    for label, cell, direction, batches, H in TIMED:
        bi = direction == "bidirectional"
        for B in batches:
            row = {"case": f"{label} B={B}", "B": B}
            for key, wt, tun in (("tc_f16", "f16", TC), ("tc_bf16", "bf16", TC), ("simt_f16", "f16", {"mode": 2}),
                                 ("auto_f16", "f16", None), ("auto_f32", "f32", None), ("tc_f32", "f32", TC),
                                 ("simt_f32", "f32", {"mode": 2}), ("auto_tf32", "f32", {"allow_tf32": 1}),
                                 ("tc_tf32", "f32", dict(TC, allow_tf32=1, tf32_exchange16=0)),
                                 ("tc_tf32h", "f32", dict(TC, allow_tf32=1, tf32_exchange16=1))):
                if key == "tc_bf16" and not (H == 1024 and B == 64):
                    continue
                if key in ("simt_f16", "simt_f32") and bi and H <= 100:
                    tun = {"mode": 0}
                tf32 = "tf32" in key  # the input GEMM (cuBLAS) in TF32 too, as TensorFlow's would be
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    lay = FusedLayer(lib, cell, direction, 100, B, H, H, wt=wt, tuning=tun, seed=B)
                    r = time_fused_layer([lay], plain=False)
                    row[key] = {"kernel": r["kernel_graph"]["median"], "full": r["full_graph"]["median"],
                                "plan": lay.f.describe()}
                    del lay
                except Exception as ex:  # noqa: BLE001
                    row[key] = {"error": str(ex)}
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = False
            for key, dt, tf32 in (("cudnn_f32", torch.float32, False), ("cudnn_tf32", torch.float32, True),
                                  ("cudnn_f16", torch.float16, False)):
                torch.backends.cudnn.allow_tf32 = tf32
                try:
                    c = time_cudnn(cell, H, H, bi, B, 100, dtype=dt, plain=False)
                finally:
                    torch.backends.cudnn.allow_tf32 = False
                row[key] = c["graph"]["median"]
            rows.append(row)
            fmt = lambda k: (f"{row[k]['kernel']:.4f}/{row[k]['full']:.4f}" if isinstance(row.get(k), dict)  # noqa
                             and "kernel" in row[k] else str(row.get(k, {}).get("error", "-"))[:40])
            log(f"{row['case']:<22} tc_f16 {fmt('tc_f16')} simt_f16 {fmt('simt_f16')} auto_f16 {fmt('auto_f16')} "
                f"tc_bf16 {fmt('tc_bf16')} | tc_f32 {fmt('tc_f32')} simt_f32 {fmt('simt_f32')} auto_f32 "
                f"{fmt('auto_f32')} tc_tf32 {fmt('tc_tf32')} tc_tf32h {fmt('tc_tf32h')} auto_tf32 {fmt('auto_tf32')} | cuDNN f32 "
                f"{row['cudnn_f32']:.4f} tf32 {row['cudnn_tf32']:.4f} f16 {row['cudnn_f16']:.4f} | auto_f16 plan: "
                f"{row['auto_f16'].get('plan', '')[:50]} | auto_f32 plan: {row['auto_f32'].get('plan', '')[:50]} | "
                f"auto_tf32 plan: {row['auto_tf32'].get('plan', '')[:60]}")
            torch.cuda.empty_cache()
    return rows


def plot(rows, path):
    """Latency against batch size (the GRNN figure) for the LSTM cases timed at several batch sizes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [lab for lab, _, _, bs, _ in TIMED if len(bs) > 1]
    fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.2))
    for ax, lab in zip(axes, labels):
        rs = [r for r in rows if r["case"].startswith(lab + " B=")]
        bs = [r["B"] for r in rs]
        for key, style, name in (("tc_f16", "o-", "fused, f16 weights, tensor cores"),
                                 ("auto_f32", "s-", "fused, f32 weights (automatic plan)"),
                                 ("simt_f32", "x:", "fused, f32 weights, general kernel"),
                                 ("auto_tf32", "d-", "fused, f32 weights, TF32 allowed (automatic plan)"),
                                 ("cudnn_f16", "^--", "cuDNN f16"), ("cudnn_f32", "v--", "cuDNN f32"),
                                 ("cudnn_tf32", "<--", "cuDNN f32, TF32 allowed")):
            ys = [(r[key].get("full", np.nan) if isinstance(r[key], dict) else r[key]) for r in rs]
            ax.plot(bs, ys, style, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch B (T=100)")
        ax.set_ylabel("median ms, CUDA graph replay")
        ax.set_title(f"{lab}: whole layer (input GEMM + recurrence)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(torch.cuda.get_device_name())
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--extra-tuning", default="{}", help="CudaTuning fields (JSON) added to every correctness case")
    args = ap.parse_args()
    EXTRA_TUNING.update(json.loads(args.extra_tuning))
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lib = Lib(args.lib)
    dev = {"name": torch.cuda.get_device_name(), "limits": list(lib.limits), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version()}
    log("device:", dev)
    summary = {"device": dev}
    summary["correctness"] = correctness(lib)
    ok = all(r["passed"] for r in summary["correctness"] if not r.get("negative_control")) and all(
        r.get("passed_as_control", True) for r in summary["correctness"])
    log(f"== tensor-core correctness: {'ALL PASS' if ok else 'FAILURES'} "
        f"({sum(r['passed'] for r in summary['correctness'] if not r.get('negative_control'))}/"
        f"{sum(1 for r in summary['correctness'] if not r.get('negative_control'))}, negative control "
        f"{'caught' if all(r.get('passed_as_control', True) for r in summary['correctness']) else 'MISSED'})")
    driver.PROFILE_CASES["tc1024_b64"] = ("LSTM H=1024 B=64 f16 tensor cores", dict(
        cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f16"), TC)
    driver.PROFILE_CASES["tc1024_b16"] = ("LSTM H=1024 B=16 f16 tensor cores", dict(
        cell="lstm", direction="forward", T=100, B=16, I=1024, H=1024, wt="f16"), TC)
    driver.PROFILE_CASES["simt1024_b64"] = ("LSTM H=1024 B=64 f16 general kernel (counter)", dict(
        cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f16"), {"mode": 2})
    driver.PROFILE_CASES["tcf32_1024_b64"] = ("LSTM H=1024 B=64 f32 tensor cores (3xTF32)", dict(
        cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f32"), TC)
    driver.PROFILE_CASES["tctf32_1024_b64"] = ("LSTM H=1024 B=64 f32 tensor cores, TF32", dict(
        cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f32"), dict(TC, allow_tf32=1,
                                                                                  tf32_exchange16=0))
    driver.PROFILE_CASES["tctf32h_1024_b64"] = ("LSTM H=1024 B=64 f32 tensor cores, TF32 through float16", dict(
        cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024, wt="f32"), dict(TC, allow_tf32=1,
                                                                                  tf32_exchange16=1))
    summary["profiles"] = []
    for key in ("tc1024_b64", "tc1024_b16", "simt1024_b64", "tcf32_1024_b64", "tctf32_1024_b64",
                "tctf32h_1024_b64"):
        label, kw, tun = driver.PROFILE_CASES[key]
        driver.PROFILE_CASES[key] = (label, kw, dict(tun, **EXTRA_TUNING))  # --extra-tuning reaches the profiles
        try:
            summary["profiles"].append(driver.phase_profile(lib, key))
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    if not args.skip_timing:
        try:
            summary["timing"] = timing(lib)
            plot(summary["timing"], os.path.join(args.out, "tensorcore_latency_vs_batch.png"))
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    with open(os.path.join(args.out, "tensorcore.json"), "w") as fj:
        json.dump(summary, fj, indent=1, default=str)
    with open(os.path.join(args.out, "tensorcore_log.txt"), "w") as fl:
        fl.write("\n".join(LOG_LINES) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
