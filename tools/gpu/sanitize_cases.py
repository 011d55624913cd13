#!/usr/bin/env python3
"""Torch-free modes of the device harness (reached through driver.py, or run directly):

  --sanitize-cases      a few dozen SMALL correctness cases (T 0-11, B <= 5 but for two staging cases, small H)
                        that between them select every plan the kernels have: every cell (LSTM, LSTM with
                        projection and clips, GRU) x forward / reverse / bidirectional x every exchange mode (local,
                        tagged, counter, cluster), rows per pass RC 1 and 4, weights in registers / streamed from
                        shared memory / streamed from the workspace, cross-warp k split, staged h tiles
                        (stage_rows < rows per block), float16 / bfloat16 weights, ragged lengths with 0 and 1,
                        batch- and time-major, no initial state, no lengths, all-zero lengths, T = 0 and T = 1. No
                        timing; each case is one launch. Meant to run under compute-sanitizer (tools/gpu/sanitize.sh).
  --sanitize-planted K  one launch with a planted mistake (positive control: the tool must report it).
  --coresidency-check   a multi-block (cooperative) plan whose blocks cannot all be resident must be refused with an
                        error, quickly, never hang: refusal by the planner (real limits) and by the cooperative launch
                        itself (limits that overstate the SM count, so the planner believes the grid fits). Runs in a
                        child process under a timeout, so a hang is reported as a failure instead of a stuck run.

Device memory comes from the library's own CUDA runtime (shim functions frg_malloc & co.), so no PyTorch, cuDNN or
caching allocator is in the process: sanitizer runs stay fast, and every allocation is freed before exit (leak check).
"""
import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from harness_common import (TOL_16_VS_F32_WEIGHTS, TOL_F32, CoreCall, declare_core_api,
                            make_inputs, max_rel, query_limits, quantize_rows, reference, rel_err, reserve_reference)


def log(*args):
    print(" ".join(str(a) for a in args), flush=True)


class DevLib:
    """The shared library: the core's C face plus plain device-memory helpers."""

    def __init__(self, path):
        L = declare_core_api(ctypes.CDLL(path))
        PI, PU64 = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint64)
        L.frg_malloc.restype = ctypes.c_int
        L.frg_malloc.argtypes = [PU64, ctypes.c_int64]
        L.frg_free.restype = ctypes.c_int
        L.frg_free.argtypes = [ctypes.c_uint64]
        L.frg_memcpy_h2d.restype = ctypes.c_int
        L.frg_memcpy_h2d.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int64]
        L.frg_memcpy_d2h.restype = ctypes.c_int
        L.frg_memcpy_d2h.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64]
        L.frg_memset.restype = ctypes.c_int
        L.frg_memset.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.c_int64]
        for fn in ("frg_synchronize", "frg_last_error", "frg_device_reset"):
            getattr(L, fn).restype = ctypes.c_int
            getattr(L, fn).argtypes = []
        L.frg_error_string.restype = ctypes.c_char_p
        L.frg_error_string.argtypes = [ctypes.c_int]
        L.frg_device_name.restype = ctypes.c_int
        L.frg_device_name.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        L.frg_runtime_versions.restype = ctypes.c_int
        L.frg_runtime_versions.argtypes = [PI, PI]
        self.L = L
        self.limits = query_limits(L, 0)
        self.live = {}  # device address -> bytes, to prove every allocation is freed

    def check(self, code, what):
        if code != 0:
            raise RuntimeError(f"{what}: CUDA error {code} ({self.L.frg_error_string(code).decode()})")

    def info(self):
        buf = ctypes.create_string_buffer(256)
        self.check(self.L.frg_device_name(0, buf, 256), "cudaGetDeviceProperties")
        rt, drv = ctypes.c_int(), ctypes.c_int()
        self.check(self.L.frg_runtime_versions(ctypes.byref(rt), ctypes.byref(drv)), "versions")
        return {"name": buf.value.decode(), "limits": list(self.limits), "cuda_runtime": rt.value,
                "cuda_driver": drv.value}

    # device memory
    def alloc(self, nbytes):
        p = ctypes.c_uint64(0)
        self.check(self.L.frg_malloc(ctypes.byref(p), max(int(nbytes), 1)), f"cudaMalloc({nbytes})")
        self.live[p.value] = nbytes
        return p.value

    def free(self, p):
        if p:
            self.check(self.L.frg_free(p), "cudaFree")
            del self.live[p]

    def upload(self, a):
        if a is None:
            return 0
        a = np.ascontiguousarray(a)
        p = self.alloc(a.nbytes)
        if a.nbytes:
            self.check(self.L.frg_memcpy_h2d(p, a.ctypes.data, a.nbytes), "cudaMemcpy H2D")
        return p

    def download(self, p, shape, dtype=np.float32):
        a = np.empty(shape, dtype)
        if a.nbytes:
            self.check(self.L.frg_memcpy_d2h(a.ctypes.data, p, a.nbytes), "cudaMemcpy D2H")
        return a

    def poisoned(self, shape):
        """float32 buffer filled with 0xFFFFFFFF (a NaN): unwritten elements show up as NaN."""
        n = int(np.prod(shape)) * 4
        p = self.alloc(n)
        self.check(self.L.frg_memset(p, 0xFF, n), "cudaMemset")
        return p

    def sync(self):
        self.check(self.L.frg_synchronize(), "cudaDeviceSynchronize")
        self.check(self.L.frg_last_error(), "cudaGetLastError")


class Call(CoreCall):
    """One configured call of the core (shape, clips, weight type, tuning, limits) on the library's device memory."""

    def __init__(self, lib, cell, direction, T, B, H, P=0, time_major=False, cell_clip=0.0, proj_clip=0.0, wt="f32",
                 tuning=None, limits=None):
        super().__init__(lib.L, limits if limits is not None else lib.limits, cell, direction, T, B, H, P,
                         time_major, cell_clip, proj_clip, wt, tuning)
        self.lib = lib


def round16(w, wt):
    """(float32 values the kernel sees, raw 16-bit words) for float16 / bfloat16 weights, round to nearest even;
    int8: (the dequantized weights, (q int8, per-row scale float32))."""
    if w is None or wt == "f32":
        return w, None
    if wt == "i8":
        q, scale, deq = quantize_rows(w)
        return deq, (q, scale)
    if wt == "f16":
        h = w.astype(np.float16)
        return h.astype(np.float32), h.view(np.uint16)
    u = w.astype(np.float32).view(np.uint32).astype(np.uint64)
    raw = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return (raw.astype(np.uint32) << 16).view(np.float32), raw


def run_case(lib, name, cell, direction, T, B, H, P=0, cell_clip=0.0, proj_clip=0.0, ragged=True, time_major=False,
             wt="f32", tuning=None, with_init=True, gru_bias=True, seed=0, lengths=None, check_reserve=True,
             h0_big=None):
    """One launch on fresh random inputs, compared with the float64 oracle; every buffer freed afterwards.
    h0_big: a value put into two rows' h0 (beyond float16: TF32 through float16 scales those rows or falls back)."""
    rng = np.random.default_rng(seed)
    inp = make_inputs(rng, cell, direction, T, B, H, P, ragged, with_init, gru_bias)
    if h0_big is not None:
        inp["h0"][0, B // 2, H // 3] = h0_big
        inp["h0"][-1, B - 1, H - 1] = -h0_big
    if lengths is not None:
        inp["lengths"] = np.asarray(lengths, np.int32)
    D = 2 if direction == "bidirectional" else 1
    R = P if P else H
    U_used, U16 = round16(inp["U"], wt)
    P_used, P16 = round16(inp["Pk"], wt)
    c = Call(lib, cell, direction, T, B, H, P, time_major, cell_clip, proj_clip, wt, tuning)
    plan = c.describe()
    if plan.startswith("ERROR"):
        return {"name": name, "passed": False, "errors": {"plan": plan}, "plan": plan}
    F = (5 * H + P) if cell == "lstm" else 4 * H
    bufs = {}
    try:
        bufs["x"] = lib.upload(inp["x"].transpose(1, 0, 2) if time_major else inp["x"])
        bufs["U"] = lib.upload(inp["U"]) if wt == "f32" else 0
        bufs["rb"] = lib.upload(inp["rb"])
        bufs["Pk"] = lib.upload(inp["Pk"]) if wt == "f32" else 0
        bufs["len"] = lib.upload(inp["lengths"])
        bufs["h0"] = lib.upload(inp["h0"])
        bufs["c0"] = lib.upload(inp["c0"])
        bufs["out"] = lib.poisoned((B, T, D * R))
        bufs["fh"] = lib.poisoned((D, B, R))
        bufs["fc"] = lib.poisoned((D, B, H)) if cell == "lstm" else 0
        bufs["res"] = lib.poisoned((D, B, T, F)) if check_reserve else 0
        q8 = wt == "i8"
        bufs["U16"] = lib.upload(U16[0] if q8 else U16)
        bufs["P16"] = lib.upload(P16[0] if (q8 and P16 is not None) else (None if q8 else P16))
        bufs["Us"] = lib.upload(U16[1]) if q8 else 0
        bufs["Ps"] = lib.upload(P16[1]) if (q8 and P16 is not None) else 0
        bufs["ws"] = lib.alloc(max(c.ws_bytes, 256))
        ptrs = [bufs[k] for k in ("x", "U", "rb", "Pk", "len", "h0", "c0", "out", "fh", "fc", "res", "U16", "P16",
                                  "Us", "Ps")]
        t0 = time.time()
        err = c.forward(ptrs, bufs["ws"], c.ws_bytes)
        if err:
            return {"name": name, "passed": False, "errors": {"launch": err}, "plan": plan}
        lib.sync()
        secs = time.time() - t0
        wd = lib.L.frg_watchdog(bufs["ws"], c.ws_bytes) if c.ws_bytes else 0
        o = lib.download(bufs["out"], (T, B, D * R) if time_major else (B, T, D * R))
        if time_major:
            o = o.transpose(1, 0, 2)
        got_h = lib.download(bufs["fh"], (D, B, R))
        want_o, want_h, want_c = reference(cell, direction, inp, U_used, P_used, cell_clip, proj_clip, time_major)
        e = {"out": rel_err(o, want_o), "final_h": rel_err(got_h, want_h), "out_max": max_rel(o, want_o),
             "watchdog": wd, "unwritten": int(np.sum(~np.isfinite(o))), "secs": secs}
        lens = inp["lengths"] if inp["lengths"] is not None else np.full(B, T)
        past = np.zeros(o.shape[:2], bool)
        for b in range(B):
            past[b, lens[b]:] = True
        e["nonzero_past_len"] = int(np.count_nonzero(o[past]))
        if cell == "lstm":
            e["final_c"] = rel_err(lib.download(bufs["fc"], (D, B, H)), want_c)
        if wt != "f32":
            want32, _, _ = reference(cell, direction, inp, inp["U"], inp["Pk"], cell_clip, proj_clip, time_major)
            e["out_vs_f32_weights"] = rel_err(o, want32)
        if check_reserve:
            want_r = reserve_reference(cell, direction, inp, U_used, P_used, cell_clip, proj_clip)
            got_r = lib.download(bufs["res"], (D, B, T, F))
            valid = np.isfinite(want_r)
            e["reserve"] = rel_err(got_r[valid], want_r[valid])
            e["reserve_written_outside"] = int(np.sum(np.isfinite(got_r[~valid])))
    finally:
        for p in bufs.values():
            lib.free(p)
    # The tensor-core mode rounds h_{t-1} to 16 bits for the product, so against this oracle (float32 math on the
    # 16-bit weights) it is ~1e-4 off by design; tools/gpu/tensorcore.py checks it exactly (teacher-forced, 1e-5).
    # float32 weights on the tensor-core mode (3xTF32) keep float32 accuracy: the float32 tolerance; with TF32
    # allowed they round like the 16-bit ones.
    tun = tuning or {}
    tol = 2e-3 if (tun.get("mode") == 4 and (wt != "f32" or tun.get("allow_tf32"))) else TOL_F32
    ok = (e["out"] <= tol and e["final_h"] <= tol and e.get("final_c", 0) <= tol
          and e["unwritten"] == 0 and e["nonzero_past_len"] == 0 and e["watchdog"] == 0
          and e.get("reserve", 0) <= tol and e.get("reserve_written_outside", 0) == 0
          and e.get("out_vs_f32_weights", 0) <= TOL_16_VS_F32_WEIGHTS)
    return {"name": name, "passed": bool(ok), "errors": e, "plan": plan}


def sanitize_case_list(limits):
    """(name, kwargs) of the sanitizer cases. Each comment says which code path the case is there for."""
    cases = []
    combos = [("lstm", 0, 0.0, 0.0), ("lstm", 16, 0.6, 0.35), ("gru", 0, 0.0, 0.0)]
    modes = [("local", {"mode": 0}), ("tagged", {"mode": 1, "units_per_block": 5}),
             ("counter", {"mode": 2, "units_per_block": 7})]
    if limits[6] >= 9:
        modes.append(("cluster", {"mode": 3, "units_per_block": 7}))
    seed = 500
    # Every cell x direction x exchange mode; ragged lengths with a 0 and a 1; batch- / time-major alternating.
    # B=5 gives RC=4 (one full and one partial pass of 4 rows) in tagged / counter, RC=1 in local / cluster.
    for mode, tun in modes:
        for cell, P, cc, pc in combos:
            for direction in ("forward", "reverse", "bidirectional"):
                seed += 1
                tm = seed % 2 == 0
                cases.append((f"{cell}{'+proj+clip' if P else ''} {direction} {mode} T7 B5 H24"
                              f"{' time-major' if tm else ''}",
                              dict(cell=cell, direction=direction, T=7, B=5, H=24, P=P, cell_clip=cc, proj_clip=pc,
                                   time_major=tm, tuning=tun, seed=seed)))
    extra = [
        # RC=4 in the shared-memory plans (rows per block forced): local and cluster.
        ("lstm+proj+clip bi local rows/block=5 (RC=4) T6 B5 H24", dict(
            cell="lstm", direction="bidirectional", T=6, B=5, H=24, P=12, cell_clip=0.8, proj_clip=0.4,
            tuning={"mode": 0, "rows_per_block": 5})),
        ("gru fwd local rows/block=4 (RC=4) time-major T6 B5 H32", dict(
            cell="gru", direction="forward", T=6, B=5, H=32, time_major=True, tuning={"mode": 0, "rows_per_block": 4})),
        ("lstm+proj cluster rows/block=4 (RC=4) T6 B5 H40 P12", dict(
            cell="lstm", direction="bidirectional", T=6, B=5, H=40, P=12, cell_clip=0.8, proj_clip=0.4,
            tuning={"mode": 3, "rows_per_block": 4, "units_per_block": 5})),
        # RC=1 in the exchange plans (B=3 < 4 rows).
        ("lstm bi tagged RC=1 T8 B3 H24", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=24,
                                               tuning={"mode": 1, "units_per_block": 9})),
        ("lstm+proj+clip bi counter RC=1 T8 B3 H24", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=24,
                                                          P=16, cell_clip=0.6, proj_clip=0.35,
                                                          tuning={"mode": 2, "units_per_block": 9})),
        # Weights streamed (no register chunks) from shared memory and from the workspace, each exchange mode.
        ("lstm bi local all-streamed-smem T6 B3 H64", dict(cell="lstm", direction="bidirectional", T=6, B=3, H=64,
                                                           tuning={"mode": 0, "max_reg_chunks": 0,
                                                                   "stream_location": 0})),
        ("gru bi local all-streamed-global T6 B3 H64", dict(cell="gru", direction="bidirectional", T=6, B=3, H=64,
                                                            tuning={"mode": 0, "max_reg_chunks": 0,
                                                                    "stream_location": 1})),
        ("lstm+proj tagged streamed-global T6 B3 H64 P24", dict(cell="lstm", direction="bidirectional", T=6, B=3,
                                                                H=64, P=24, cell_clip=1.0, proj_clip=0.5,
                                                                tuning={"mode": 1, "units_per_block": 16,
                                                                        "max_reg_chunks": 1, "stream_location": 1})),
        ("lstm rev counter streamed-smem (RC=4) T5 B5 H130", dict(cell="lstm", direction="reverse", T=5, B=5, H=130,
                                                                  tuning={"mode": 2, "units_per_block": 33})),
        ("gru fwd counter all-streamed-global T5 B4 H48", dict(cell="gru", direction="forward", T=5, B=4, H=48,
                                                               tuning={"mode": 2, "units_per_block": 12,
                                                                       "max_reg_chunks": 0, "stream_location": 1})),
        ("lstm+proj cluster all-streamed-smem T5 B2 H64 P16", dict(cell="lstm", direction="bidirectional", T=5, B=2,
                                                                   H=64, P=16, cell_clip=1.0, proj_clip=0.5,
                                                                   tuning={"mode": 3, "max_reg_chunks": 0,
                                                                           "stream_location": 0})),
        ("gru cluster all-streamed-global T5 B2 H64", dict(cell="gru", direction="bidirectional", T=5, B=2, H=64,
                                                           tuning={"mode": 3, "max_reg_chunks": 0,
                                                                   "stream_location": 1})),
        # The prologue's weight copy through shared memory in several passes (one chunk each), with a projection
        # (both maps) and streamed chunks; and the unstaged per-thread loads.
        ("lstm+proj bi tagged staged 1 chunk/pass T5 B3 H160 P72", dict(cell="lstm", direction="bidirectional", T=5,
                                                                       B=3, H=160, P=72, cell_clip=1.0,
                                                                       proj_clip=0.5,
                                                                       tuning={"mode": 1, "units_per_block": 40,
                                                                               "max_reg_chunks": 1,
                                                                               "stage_weights": 1})),
        ("gru bi local staged 1 chunk/pass (RC=4) T5 B6 H64", dict(cell="gru", direction="bidirectional", T=5, B=6,
                                                                   H=64, tuning={"mode": 0, "rows_per_block": 6,
                                                                                 "stage_weights": 1})),
        ("lstm bi cluster staged T5 B2 H100", dict(cell="lstm", direction="bidirectional", T=5, B=2, H=100,
                                                   tuning={"mode": 3, "stage_weights": 1})),
        ("lstm fwd tagged unstaged T5 B2 H128", dict(cell="lstm", direction="forward", T=5, B=2, H=128,
                                                     tuning={"mode": 1, "stage_weights": 0})),
        # k split over lanes and warps (ksw > 1: partial sums added across warps in shared memory).
        ("lstm fwd tagged lanes=4 T5 B2 H200", dict(cell="lstm", direction="forward", T=5, B=2, H=200,
                                                    tuning={"mode": 1, "units_per_block": 40,
                                                            "lanes_per_unit": 4})),
        ("gru fwd local rows/block=5 (RC=4) lanes=2 T5 B5 H48", dict(cell="gru", direction="forward", T=5, B=5,
                                                                     H=48, tuning={"mode": 0, "rows_per_block": 5,
                                                                                   "lanes_per_unit": 2})),
        # No initial state / no lengths / no recurrent bias; the automatic plan.
        ("lstm fwd no-init no-lengths auto T9 B3 H64", dict(cell="lstm", direction="forward", T=9, B=3, H=64,
                                                            ragged=False, with_init=False)),
        ("gru bi no-bias no-init tagged T7 B3 H32", dict(cell="gru", direction="bidirectional", T=7, B=3, H=32,
                                                         with_init=False, gru_bias=False, tuning={"mode": 1})),
        ("lstm+proj bi auto T11 B5 H40 P20", dict(cell="lstm", direction="bidirectional", T=11, B=5, H=40, P=20,
                                                  cell_clip=0.7, proj_clip=0.3)),
        # Edge lengths: T=1 B=1, T=0, every sequence empty (the recurrence loop never runs).
        ("lstm+proj bi local T1 B1 H8 P3", dict(cell="lstm", direction="bidirectional", T=1, B=1, H=8, P=3)),
        ("lstm bi tagged T0 B2 H16", dict(cell="lstm", direction="bidirectional", T=0, B=2, H=16, ragged=False,
                                          tuning={"mode": 1})),
        ("gru bi all-zero lengths counter T5 B2 H16", dict(cell="gru", direction="bidirectional", T=5, B=2, H=16,
                                                           lengths=[0, 0], tuning={"mode": 2})),
        ("lstm+proj bi all-zero lengths tagged T5 B2 H16 P8", dict(cell="lstm", direction="bidirectional", T=5, B=2,
                                                                   H=16, P=8, lengths=[0, 0],
                                                                   tuning={"mode": 1})),
    ]
    # 16-bit weights (the conversion paths: registers and streamed words) in each exchange mode.
    for wt, cell, P, cc, pc, mode, tun in [
        ("f16", "lstm", 12, 0.8, 0.4, "tagged", {"mode": 1, "units_per_block": 6}),
        ("f16", "gru", 0, 0.0, 0.0, "local", {"mode": 0}),
        ("f16", "lstm", 0, 0.0, 0.0, "cluster", {"mode": 3, "units_per_block": 11}),
        ("f16", "lstm", 0, 0.0, 0.0, "counter", {"mode": 2, "units_per_block": 10}),
        ("f16", "lstm", 0, 0.0, 0.0, "local all-streamed-smem", {"mode": 0, "max_reg_chunks": 0,
                                                                 "stream_location": 0}),
        ("bf16", "lstm", 12, 0.8, 0.4, "local", {"mode": 0}),
        ("bf16", "gru", 0, 0.0, 0.0, "cluster", {"mode": 3, "units_per_block": 11}),
        ("bf16", "lstm", 0, 0.0, 0.0, "tagged", {"mode": 1, "units_per_block": 6}),
        ("bf16", "gru", 0, 0.0, 0.0, "counter", {"mode": 2, "units_per_block": 10}),
        ("bf16", "lstm", 12, 0.8, 0.4, "tagged all-streamed-global", {"mode": 1, "units_per_block": 8,
                                                                      "max_reg_chunks": 0, "stream_location": 1}),
    ]:
        if tun["mode"] == 3 and limits[6] < 9:
            continue
        extra.append((f"{cell}{'+proj+clip' if P else ''} bi {mode} {wt} T6 B4 H40",
                      dict(cell=cell, direction="bidirectional", T=6, B=4, H=40, P=P, cell_clip=cc, proj_clip=pc,
                           wt=wt, tuning=tun)))
    # Mode 5, the small-hidden-size kernel: both cells, every direction, a shared-memory tail, the staged prologue
    # (two passes), 16-bit weights, lane counts 4 and 8, ragged rows with a length of 0 and 1.
    extra += [
        ("[small] lstm+clip bi T7 B5 H24", dict(cell="lstm", direction="bidirectional", T=7, B=5, H=24,
                                                 cell_clip=0.5, tuning={"mode": 5})),
        ("[small] gru rev time-major T7 B3 H40", dict(cell="gru", direction="reverse", T=7, B=3, H=40,
                                                      time_major=True, tuning={"mode": 5, "lanes_per_unit": 8})),
        ("[small] lstm fwd tail 2 staged 1 chunk/pass T5 B2 H100", dict(cell="lstm", direction="forward", T=5, B=2,
                                                                         H=100, tuning={"mode": 5,
                                                                                        "lanes_per_unit": 4,
                                                                                        "max_reg_chunks": 5,
                                                                                        "stage_weights": 1})),
        ("[small] gru bi f16 T6 B4 H40", dict(cell="gru", direction="bidirectional", T=6, B=4, H=40, wt="f16",
                                              tuning={"mode": 5})),
        ("[small] lstm bi bf16 T6 B3 H64", dict(cell="lstm", direction="bidirectional", T=6, B=3, H=64, wt="bf16",
                                              tuning={"mode": 5})),
    ]
    # Its cluster variant (sm_90): st.async into every member's h tile, transaction barriers, a short last member,
    # a shared-memory tail, int8 weights.
    if limits[6] >= 9:
        extra += [
            ("[small-cluster] lstm+clip bi cluster=2 T7 B5 H40", dict(cell="lstm", direction="bidirectional", T=7,
                                                                      B=5, H=40, cell_clip=0.5,
                                                                      tuning={"mode": 5, "units_per_block": 20})),
            ("[small-cluster] gru rev cluster=4 time-major T7 B3 H38", dict(cell="gru", direction="reverse", T=7, B=3,
                                                                           H=38, time_major=True,
                                                                           tuning={"mode": 5, "units_per_block": 10})),
            ("[small-cluster] lstm fwd cluster=4 tail 2 T5 B3 H160", dict(cell="lstm", direction="forward", T=5, B=3,
                                                                          H=160,
                                                                          tuning={"mode": 5, "units_per_block": 40})),
            ("[small-cluster] gru fwd cluster=8 lanes=8 T5 B3 H256", dict(cell="gru", direction="forward", T=5, B=3,
                                                                          H=256,
                                                                          tuning={"mode": 5, "units_per_block": 32,
                                                                                  "lanes_per_unit": 8})),
            ("[small-cluster] lstm bi i8 cluster=2 T6 B3 H64", dict(cell="lstm", direction="bidirectional", T=6, B=3,
                                                                    H=64, wt="i8",
                                                                    tuning={"mode": 5, "units_per_block": 32})),
            # The wide variant: 16 members (non-portable), 16-byte shared-memory slots, a short last member.
            ("[small-cluster] lstm+clip rev cluster=16 wide T4 B2 H500", dict(
                cell="lstm", direction="reverse", T=4, B=2, H=500, cell_clip=0.6,
                tuning={"mode": 5, "units_per_block": 32, "lanes_per_unit": 8, "max_reg_chunks": 8})),
            ("[small-cluster] gru bi cluster=12 wide T4 B2 H384", dict(
                cell="gru", direction="bidirectional", T=4, B=2, H=384,
                tuning={"mode": 5, "units_per_block": 32, "lanes_per_unit": 8, "max_reg_chunks": 8})),
        ]
    # Staged h tiles: rows per block larger than the shared tile holds (stage_rows < rows/block), so the fetch and
    # the dot run in several passes. Needs a tile of more than ~200 KB: B=64, H=1024 (T=3 keeps it short).
    extra += [
        ("[staging] lstm fwd counter T3 B64 H1024", dict(cell="lstm", direction="forward", T=3, B=64, H=1024,
                                                         tuning={"mode": 2}, check_reserve=False)),
        ("[staging] gru fwd tagged T3 B64 H1024 time-major", dict(cell="gru", direction="forward", T=3, B=64,
                                                                  H=1024, time_major=True, tuning={"mode": 1},
                                                                  check_reserve=False)),
    ]
    # The tensor-core kernel (mode 4): row groups, a k-tail, two m-tile passes, NT = 6 and 8, both 16-bit types.
    if limits[6] >= 8:
        extra += [
            ("[tensorcore] lstm bi f16 T6 B20 H40 row groups of 16 time-major",
             dict(cell="lstm", direction="bidirectional", T=6, B=20, H=40, cell_clip=0.8, wt="f16", time_major=True,
                  tuning={"mode": 4, "rows_per_block": 16})),
            ("[tensorcore] gru fwd bf16 T5 B37 H72 NT=6 two passes",
             dict(cell="gru", direction="forward", T=5, B=37, H=72, wt="bf16",
                  tuning={"mode": 4, "units_per_block": 13})),
            ("[tensorcore] lstm rev f16 T5 B18 H130 NT=8 k-tail",
             dict(cell="lstm", direction="reverse", T=5, B=18, H=130, wt="f16",
                  tuning={"mode": 4, "units_per_block": 16})),
            # The staged weight prologue (units per block a multiple of 8) with a partial last k-tile.
            ("[tensorcore] lstm fwd f16 T5 B20 H104 staged prologue",
             dict(cell="lstm", direction="forward", T=5, B=20, H=104, wt="f16",
                  tuning={"mode": 4, "units_per_block": 8})),
            # float32 weights (3xTF32, KTW = 16): row groups, NT = 3 with the direct prologue and two passes, the
            # staged prologue with a partial last k-tile of 8, the training reserve.
            ("[tensorcore] lstm bi f32 T5 B20 H40 row groups of 16 time-major",
             dict(cell="lstm", direction="bidirectional", T=5, B=20, H=40, cell_clip=0.8, wt="f32", time_major=True,
                  tuning={"mode": 4, "rows_per_block": 16})),
            ("[tensorcore] gru fwd f32 T5 B37 H72 NT=3 two passes",
             dict(cell="gru", direction="forward", T=5, B=37, H=72, wt="f32",
                  tuning={"mode": 4, "units_per_block": 7})),
            ("[tensorcore] lstm rev f32 T5 B20 H100 staged prologue k-tail",
             dict(cell="lstm", direction="reverse", T=5, B=20, H=100, wt="f32",
                  tuning={"mode": 4, "units_per_block": 8})),
            # TF32 through float16: the copy kernel (16-byte and 4-byte loads) and the column scales in the cell.
            ("[tensorcore] lstm fwd f32 TF32 via f16 T5 B20 H104 staged prologue",
             dict(cell="lstm", direction="forward", T=5, B=20, H=104, wt="f32",
                  tuning={"mode": 4, "units_per_block": 8, "allow_tf32": 1, "tf32_exchange16": 1})),
            ("[tensorcore] gru bi f32 TF32 via f16 T5 B20 H75",
             dict(cell="gru", direction="bidirectional", T=5, B=20, H=75, wt="f32",
                  tuning={"mode": 4, "allow_tf32": 1, "tf32_exchange16": 1})),
            # An initial state beyond float16: the LSTM scales those rows' h0 (the copy kernel's per-row shift
            # words), the GRU runs the float32-exchange fallback.
            ("[tensorcore] lstm bi f32 TF32 via f16 T5 B20 H40 h0 beyond float16",
             dict(cell="lstm", direction="bidirectional", T=5, B=20, H=40, wt="f32", h0_big=1e6,
                  tuning={"mode": 4, "allow_tf32": 1, "tf32_exchange16": 1})),
            ("[tensorcore] gru fwd f32 TF32 via f16 T5 B20 H75 h0 beyond float16 (fallback)",
             dict(cell="gru", direction="forward", T=5, B=20, H=75, wt="f32", h0_big=1e6,
                  tuning={"mode": 4, "allow_tf32": 1, "tf32_exchange16": 1})),
        ]
    # INT8 weights (int8 rows, a float scale per row, h / scale times the rebuilt weights) in every exchange mode,
    # phase A and the projection's phase B.
    for mode, tun in modes:
        extra.append((f"[int8] lstm+proj+clip bidirectional {mode} T7 B3 H24 P16",
                      dict(cell="lstm", direction="bidirectional", T=7, B=3, H=24, P=16, cell_clip=0.6,
                           proj_clip=0.35, wt="i8", tuning=tun)))
        extra.append((f"[int8] gru forward {mode} T7 B3 H24", dict(cell="gru", direction="forward", T=7, B=3, H=24,
                                                                    wt="i8", tuning=tun)))
    # INT8 weights dequantized to float32 per call (CudaTuning::as_float32), then a float32 plan: the 4-column and
    # the one-column dequantization paths, a plan without workspace of its own and a tagged one.
    extra += [
        ("[dequant] lstm+proj+clip bidirectional T7 B3 H24 P16", dict(cell="lstm", direction="bidirectional", T=7,
                                                                      B=3, H=24, P=16, cell_clip=0.6, proj_clip=0.35,
                                                                      wt="i8", tuning={"as_float32": 1})),
        ("[dequant] gru forward T6 B2 H37 (G*H odd)", dict(cell="gru", direction="forward", T=6, B=2, H=37, wt="i8",
                                                           tuning={"as_float32": 1})),
        ("[dequant] lstm+proj tagged T5 B2 H64 P7", dict(cell="lstm", direction="forward", T=5, B=2, H=64, P=7,
                                                         wt="i8", tuning={"as_float32": 1, "mode": 1})),
        # 16-bit weights widened to float32 the same way: four words a thread, and one (an odd count).
        ("[dequant] lstm+proj+clip bidirectional f16 T6 B2 H24 P16", dict(cell="lstm", direction="bidirectional",
                                                                          T=6, B=2, H=24, P=16, cell_clip=0.6,
                                                                          proj_clip=0.35, wt="f16",
                                                                          tuning={"as_float32": 1})),
        ("[dequant] gru forward bf16 T6 B2 H37 (odd count)", dict(cell="gru", direction="forward", T=6, B=2, H=37,
                                                                  wt="bf16", tuning={"as_float32": 1})),
    ]
    # Phase B as a reduce-scatter of partial sums (tagged, 16-bit / int8): forced on, several rows, a short last
    # unit block, weights streamed from shared memory and from the workspace.
    for wt, extra_tun in (("f16", {}), ("bf16", {"stream_location": 1, "max_reg_chunks": 1}), ("i8", {})):
        extra.append((f"[reduce-scatter] lstm+proj+clip bidirectional tagged {wt} T6 B3 H40 P12",
                      dict(cell="lstm", direction="bidirectional", T=6, B=3, H=40, P=12, cell_clip=0.8, proj_clip=0.4,
                           wt=wt, tuning=dict({"mode": 1, "units_per_block": 7, "proj_reduce": 1}, **extra_tun))))
    # Mode 6, int8 LSTM on integer tensor cores (sm_80+): B <= 2, with and without a projection, a short last unit
    # block (H % 4 != 0 is impossible: upb is a multiple of 4, so H=42 leaves 2 units), k in slices (ks > 1).
    if limits[6] >= 8:
        extra += [
            ("[int8mma] lstm+proj+clip bi T6 B2 H42 P20", dict(cell="lstm", direction="bidirectional", T=6, B=2,
                                                               H=42, P=20, cell_clip=0.8, proj_clip=0.4, wt="i8",
                                                               tuning={"mode": 6, "units_per_block": 8})),
            ("[int8mma] lstm rev T5 B1 H256 k-slices", dict(cell="lstm", direction="reverse", T=5, B=1, H=256,
                                                            wt="i8", tuning={"mode": 6, "units_per_block": 4})),
        ]
    for name, kw in extra:
        seed += 1
        if kw.get("tuning", {}).get("mode") == 3 and limits[6] < 9:
            continue
        kw.setdefault("seed", seed)
        cases.append((name, kw))
    return cases


PLAN_RE = re.compile(r"mode=(\w+) grid=(\d+).*?threads=(\d+) rows/block=(\d+) units/block=(\d+) proj/block=(\d+) "
                     r"RC=(\d) A\[ksl=(\d+) ksw=(\d+) kc=(\d+) reg=(\d+)\(tmpl (\d+)\) stream=([-\w]+)\] "
                     r"B\[ksl=(\d+) ksw=(\d+) kc=(\d+) stream=([-\w]+)\] stage_rows=(\d+).*?blocks/SM=(\d+)")


def plan_features(plan):
    m = PLAN_RE.search(plan)
    if not m:
        return {}
    g = m.groups()
    return {"mode": g[0], "grid": int(g[1]), "RC": int(g[6]), "ksw_a": int(g[8]), "kc_reg_tmpl": int(g[11]),
            "stream_a": g[12], "stream_b": g[16], "staged": int(g[17]) < int(g[3]), "blocks_per_sm": int(g[18])}


def coverage(results):
    """Which plan features the cases reached (printed, and checked: each must be reached at least once)."""
    seen = {}
    for r in results:
        f = plan_features(r["plan"])
        if not f:
            continue
        wt = "bf16" if " bf16 " in r["name"] else ("f16" if " f16 " in r["name"] else
                                                   ("int8" if "[int8]" in r["name"] else "f32"))
        keys = [f"mode={f['mode']}", f"mode={f['mode']} RC={f['RC']}", f"A stream={f['stream_a']}",
                f"B stream={f['stream_b']}", f"weights={wt}", f"kc_reg template={f['kc_reg_tmpl']}"]
        if f["ksw_a"] > 1:
            keys.append("A ksw>1 (cross-warp k split)")
        if f["staged"]:
            keys.append(f"staged h tile (mode={f['mode']})")
        for k in keys:
            seen[k] = seen.get(k, 0) + 1
    return seen


def sanitize_main(lib, args):
    info = lib.info()
    log("device:", info)
    cases = sanitize_case_list(lib.limits)
    if args.cases:
        cases = [c for c in cases if any(s in c[0] for s in args.cases.split(","))]
    results = []
    t_all = time.time()
    for name, kw in cases:
        try:
            r = run_case(lib, name, **kw)
        except Exception as ex:  # noqa: BLE001
            r = {"name": name, "passed": False, "errors": {"exception": str(ex)}, "plan": ""}
        results.append(r)
        e = r["errors"]
        log(f"{'PASS' if r['passed'] else 'FAIL'} {name}: " +
            " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()) +
            f" | {r['plan']}")
    cov = coverage(results)
    want = ["mode=local RC=1", "mode=local RC=4", "mode=tagged RC=1", "mode=tagged RC=4", "mode=counter RC=1",
            "mode=counter RC=4", "A stream=smem", "A stream=global", "B stream=smem", "B stream=global",
            "weights=f16", "weights=bf16", "A ksw>1 (cross-warp k split)", "staged h tile (mode=counter)",
            "staged h tile (mode=tagged)"]
    if lib.limits[6] >= 9:
        want += ["mode=cluster RC=1", "mode=cluster RC=4"]
    missing = [k for k in want if k not in cov]
    log("coverage: " + "; ".join(f"{k}: {v}" for k, v in sorted(cov.items())))
    if args.cases:
        missing = []
    if missing:
        log("coverage MISSING: " + "; ".join(missing))
    if lib.live:
        log(f"LEAK in the harness: {len(lib.live)} buffers not freed")
    npass = sum(r["passed"] for r in results)
    log(f"== sanitize cases: {npass}/{len(results)} passed in {time.time() - t_all:.1f} s on {info['name']}")
    for r in results:
        if not r["passed"]:
            log(f"   FAILED: {r['name']} {r['errors']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info, "results": results, "coverage": cov, "coverage_missing": missing}, f,
                      indent=1, default=str)
    return 0 if (npass == len(results) and not missing and not lib.live) else 1


def planted_main(lib, kind):
    """Positive controls for the sanitizer runs: one launch with a planted host-side mistake the tool must report
    inside RnnPersistentKernel (with a source line, the library being built with -lineinfo).
      short_out: the output buffer is one row (R floats) short -> memcheck: invalid __global__ write;
      uninit_x:  x_proj is allocated but never written      -> initcheck: uninitialized __global__ memory read."""
    cell, direction, T, B, H = "lstm", "forward", 7, 5, 24
    G, D, R = 4, 1, H
    rng = np.random.default_rng(3)
    inp = make_inputs(rng, cell, direction, T, B, H, 0, ragged=False)
    c = Call(lib, cell, direction, T, B, H, tuning={"mode": 0})
    log(f"planted {kind}: {c.describe()}")
    bufs = {}
    try:
        if kind == "uninit_x":
            bufs["x"] = lib.alloc(inp["x"].nbytes)
        else:
            bufs["x"] = lib.upload(inp["x"])
        bufs["U"] = lib.upload(inp["U"])
        n_out = B * T * D * R - (R if kind == "short_out" else 0)
        bufs["out"] = lib.poisoned((n_out,))
        bufs["h0"] = lib.upload(inp["h0"])
        bufs["c0"] = lib.upload(inp["c0"])
        bufs["ws"] = lib.alloc(max(c.ws_bytes, 256))
        ptrs = [bufs["x"], bufs["U"], 0, 0, 0, bufs["h0"], bufs["c0"], bufs["out"], 0, 0, 0, 0, 0]
        err = c.forward(ptrs, bufs["ws"], c.ws_bytes)
        code = lib.L.frg_synchronize()
        log(f"planted {kind}: launch error={err} synchronize={code} "
            f"({lib.L.frg_error_string(code).decode()}); the sanitizer must report it above")
    finally:
        if kind != "short_out":  # after a memcheck-detected fault the context is gone; nothing to free
            for p in bufs.values():
                lib.free(p)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Co-residency: a multi-block plan that cannot be resident must be refused with an error, never hang.

def coresidency_child(lib, args):
    info = lib.info()
    log("device:", info)
    sm = lib.limits[0]
    results = []

    def record(name, ok, **kw):
        results.append(dict(name=name, passed=bool(ok), **kw))
        log(f"{'PASS' if ok else 'FAIL'} {name}: " + " ".join(f"{k}={v}" for k, v in kw.items()))

    # Shapes: (1) B=64 rows of H=1024 per block fill the shared tile, so one block per SM; 4 units per block make
    # 256 blocks > 132 SMs. (2) One unit per block, H=8192: 8192 blocks, more than the 32 resident blocks an SM
    # can hold on any current GPU (2 x more than 132 x 32), whatever the block size.
    shapes = [("B64 H1024 units/block=4", dict(cell="lstm", direction="forward", T=3, B=64, H=1024), 4, 4),
              ("B1 H8192 units/block=1", dict(cell="lstm", direction="forward", T=2, B=1, H=8192), 1, 64)]
    for label, shp, upb, fake_factor in shapes:
        for mode_name, mode in (("tagged", 1), ("counter", 2)):
            tun = {"mode": mode, "units_per_block": upb}
            # (a) Real limits: the planner must refuse (no plan), and CudaForward must return that error at once.
            c = Call(lib, tuning=tun, **shp)
            plan = c.describe()
            t0 = time.time()
            err = c.forward([0] * 13, 0, 0)
            secs = time.time() - t0
            record(f"planner refuses {mode_name} {label} (real limits, {sm} SMs)",
                   plan.startswith("ERROR") and err is not None and secs < 5.0, plan=plan, error=err,
                   secs=f"{secs:.3f}")
            # (b) Limits that overstate the SM count: the planner believes the grid fits, so the refusal must come
            # from the cooperative launch itself (cudaErrorCooperativeLaunchTooLarge), quickly, leaving the
            # context usable.
            fake = (ctypes.c_int * 9)(*lib.limits)
            fake[0] = sm * fake_factor
            c = Call(lib, tuning=tun, limits=fake, **shp)
            plan = c.describe()
            f = plan_features(plan)
            cannot = bool(f) and f["grid"] > f["blocks_per_sm"] * sm
            bufs = {}
            try:
                H, B, T = shp["H"], shp["B"], shp["T"]
                G = 4
                bufs["x"] = lib.alloc(B * T * G * H * 4)
                bufs["U"] = lib.alloc(H * G * H * 4)
                bufs["out"] = lib.alloc(B * T * H * 4)
                bufs["ws"] = lib.alloc(max(c.ws_bytes, 256))
                for k in ("x", "U", "out"):
                    lib.check(lib.L.frg_memset(bufs[k], 0, {"x": B * T * G * H * 4, "U": H * G * H * 4,
                                                           "out": B * T * H * 4}[k]), "cudaMemset")
                lib.sync()
                ptrs = [bufs["x"], bufs["U"], 0, 0, 0, 0, 0, bufs["out"], 0, 0, 0, 0, 0]
                t0 = time.time()
                err = c.forward(ptrs, bufs["ws"], c.ws_bytes)
                sync_code = lib.L.frg_synchronize()
                last = lib.L.frg_last_error()
                secs = time.time() - t0
            finally:
                for p in bufs.values():
                    lib.free(p)
            # last == 0: the refusal is reported through the returned message only; it must not linger in the
            # runtime's last-error slot for the caller's next unrelated cudaGetLastError().
            record(f"cooperative launch refuses {mode_name} {label} (planner told {sm * fake_factor} SMs)",
                   cannot and err is not None and "cooperative" in err and sync_code == 0 and last == 0
                   and secs < 5.0, plan=plan, grid_exceeds_resident=cannot, error=err, sync_after=sync_code,
                   last_error_after=last, secs=f"{secs:.3f}")
    # The context is still healthy: a small multi-block case runs and is right after the refusals.
    r = run_case(lib, "after refusals: lstm bi tagged T7 B5 H24", "lstm", "bidirectional", T=7, B=5, H=24,
                 tuning={"mode": 1, "units_per_block": 5}, seed=7)
    record(r["name"], r["passed"], out=r["errors"].get("out"), plan=r["plan"])
    npass = sum(r["passed"] for r in results)
    log(f"== co-residency: {npass}/{len(results)} passed")
    return 0 if npass == len(results) and not lib.live else 1


def coresidency_main(args, argv):
    """Runs the check in a child process under a timeout: a hang shows up as a failure, not as a stuck run."""
    cmd = [sys.executable, os.path.abspath(__file__)] + [a for a in argv if a != "--coresidency-check"] + \
          ["--coresidency-child"]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, timeout=args.timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(p.stdout)
        rc = p.returncode
    except subprocess.TimeoutExpired as ex:
        out = ex.stdout.decode() if isinstance(ex.stdout, bytes) else (ex.stdout or "")
        sys.stdout.write(out)
        log(f"FAIL co-residency check: no answer within {args.timeout} s (a hang), child killed")
        rc = 124
    log(f"== co-residency check {'PASSED' if rc == 0 else 'FAILED'} (rc={rc}, {time.time() - t0:.1f} s wall)")
    return rc


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--sanitize-cases", action="store_true")
    ap.add_argument("--coresidency-check", action="store_true")
    ap.add_argument("--coresidency-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=120.0, help="co-residency check: seconds before 'hang'")
    ap.add_argument("--sanitize-planted", default="", choices=["", "short_out", "uninit_x"],
                    help="one launch with a planted mistake (positive control for memcheck / initcheck)")
    ap.add_argument("--cases", default="", help="sanitize cases: comma-separated name substrings to run")
    ap.add_argument("--json", default="", help="sanitize cases: write the results here")
    args, _ = ap.parse_known_args(argv)
    rc = 0
    if args.coresidency_check and not args.coresidency_child:
        rc = coresidency_main(args, [a for a in argv if a != "--sanitize-cases"])
        if not args.sanitize_cases:
            return rc
    lib = DevLib(args.lib)
    try:
        if args.coresidency_child:
            return coresidency_child(lib, args)
        if args.sanitize_planted:
            return planted_main(lib, args.sanitize_planted)
        return sanitize_main(lib, args) or rc
    finally:
        # Everything is freed by now; the reset lets the leak check see the final state of the context.
        lib.L.frg_device_reset()


if __name__ == "__main__":
    sys.exit(main())
