#!/usr/bin/env python3
"""Device harness for the CUDA core: correctness against tests/numpy_reference.py (float64), then timing against
torch.nn.LSTM / torch.nn.GRU (cuDNN) in the same process, plain and replayed inside CUDA graphs.

Run through tools/gpu/run_all.sh (which builds the library first). Writes everything under --out.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time
import traceback

import numpy as np

TORCH_FREE_MODES = ("--sanitize-cases", "--sanitize-planted", "--coresidency-check")
if __name__ == "__main__" and any(a in sys.argv for a in TORCH_FREE_MODES):
    # Torch-free modes (compute-sanitizer runs, the co-residency refusal check): no PyTorch, cuDNN or caching
    # allocator in the process, device memory straight from the library's own CUDA runtime. See sanitize_cases.py.
    import sanitize_cases  # noqa: E402
    sys.exit(sanitize_cases.main(sys.argv[1:]))

import torch  # noqa: E402

from harness_common import (CELL, DIRECTION, TOL_16_VS_F32_WEIGHTS, TOL_F32, WEIGHT,  # noqa: E402,F401
                            CoreCall, declare_core_api, make_inputs, query_limits, max_rel, numpy_reference, quantize_rows, reference, rel_err,
                            reserve_reference)

TORCH_16 = {"f16": torch.float16, "bf16": torch.bfloat16}

LOG_LINES = []


def log(*args):
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    LOG_LINES.append(line)


class Lib:
    def __init__(self, path):
        L = declare_core_api(ctypes.CDLL(path))
        L.frg_set_debug_clock.restype = None
        L.frg_set_debug_clock.argtypes = [ctypes.c_uint64]
        if hasattr(L, "frg_set_test_watchdog"):  # absent in builds before session 21 (A/B runs load those too)
            L.frg_set_test_watchdog.restype = None
            L.frg_set_test_watchdog.argtypes = [ctypes.c_int]
        if hasattr(L, "frg_set_test_tf32h_skip"):  # absent in builds before session 39
            L.frg_set_test_tf32h_skip.restype = None
            L.frg_set_test_tf32h_skip.argtypes = [ctypes.c_int]
        if hasattr(L, "frg_message_is_runtime_failure"):  # absent in builds before session 22
            L.frg_message_is_runtime_failure.restype = ctypes.c_int
            L.frg_message_is_runtime_failure.argtypes = [ctypes.c_char_p]
        self.L = L
        self.limits = query_limits(L, torch.cuda.current_device())


def ptr(t):
    return 0 if t is None else t.data_ptr()


class FusedRnn:
    """One configured call of the CUDA core on torch-owned device buffers."""

    def __init__(self, lib, cell, direction, T, B, H, P=0, time_major=False, cell_clip=0.0, proj_clip=0.0,
                 wt="f32", tuning=None):
        self.lib, self.cell, self.direction = lib, cell, direction
        self.T, self.B, self.H, self.P = T, B, H, P
        self.G = 4 if cell == "lstm" else 3
        self.D = 2 if direction == "bidirectional" else 1
        self.R = P if P else H
        self.wt = wt
        self.call = CoreCall(lib.L, lib.limits, cell, direction, T, B, H, P, time_major, cell_clip, proj_clip, wt,
                             tuning)
        self.ws_bytes = self.call.ws_bytes
        self.ws = torch.empty(max(self.ws_bytes, 256), dtype=torch.uint8, device="cuda")
        self.ptrs = [0] * 15

    def describe(self):
        return self.call.describe()

    def bind(self, x_proj, w_rec=None, rec_bias=None, w_proj=None, lengths=None, h0=None, c0=None, out=None,
             final_h=None, final_c=None, reserve=None, w_rec16=None, w_proj16=None, rec_scale=None, proj_scale=None):
        # int8 ("i8"): w_rec16 / w_proj16 carry the int8 kernels, rec_scale / proj_scale their row scales.
        self.keep = [x_proj, w_rec, rec_bias, w_proj, lengths, h0, c0, out, final_h, final_c, reserve, w_rec16,
                     w_proj16, rec_scale, proj_scale]
        self.ptrs = [ptr(t) for t in self.keep]

    def __call__(self):
        err = self.call.forward(self.ptrs, self.ws.data_ptr(), self.ws_bytes, torch.cuda.current_stream().cuda_stream)
        if err:
            raise RuntimeError(err)

    def watchdog(self):
        return self.lib.L.frg_watchdog(self.ws.data_ptr(), self.ws_bytes) if self.ws_bytes else 0


# ---------------------------------------------------------------------------------------------------------------
# Inputs and references

def round_weights(w, wt):
    """(the weights the kernel computes with, as float, and what to hand the kernel: a 16-bit tensor, or for int8
    a pair (q int8 tensor, scale float32 tensor))."""
    if w is None or wt == "f32":
        return w, None
    if wt == "i8":
        q, scale, deq = quantize_rows(w)
        return deq, (torch.from_numpy(q), torch.from_numpy(scale))
    t16 = torch.from_numpy(w).to(TORCH_16[wt])
    return t16.float().numpy(), t16


def dev16(w):  # the kernel's copy of a 16-bit or int8 weight (see round_weights)
    return None if w is None else (w[0] if isinstance(w, tuple) else w).cuda()


def dev_scale(w):
    return w[1].cuda() if isinstance(w, tuple) else None


def to_dev(a, dtype=None):
    if a is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(a)).cuda()
    return t if dtype is None else t.to(dtype)


def poisoned(shape):
    return torch.full(shape, float("nan"), dtype=torch.float32, device="cuda")


def run_case(lib, name, cell, direction, T, B, H, P=0, cell_clip=0.0, proj_clip=0.0, ragged=True, time_major=False,
             wt="f32", tuning=None, with_init=True, check_reserve=False, rows=None, seed=0, gru_bias=True,
             repeat=1, inject_nan=False, zero_rows=False, corrupt_scale=False):
    """One correctness case; returns a result dict (passed, errors, plan). zero_rows: a few all-zero weight rows
    (int8: scale 0). corrupt_scale: a negative control for int8, the kernel gets scales off by 1% (must fail)."""
    rng = np.random.default_rng(seed)
    inp = make_inputs(rng, cell, direction, T, B, H, P, ragged, with_init, gru_bias)
    if zero_rows:
        inp["U"][:, 1, :] = 0
        inp["U"][-1, -1, :] = 0
        if P:
            inp["Pk"][:, 2, :] = 0
    if inject_nan:  # NaN must flow through activations and clips exactly as in the float64 reference
        inp["x"][0, T // 2, 0] = np.nan
        inp["x"][B - 1, 1, -1] = np.inf
    G = 4 if cell == "lstm" else 3
    D = 2 if direction == "bidirectional" else 1
    R = P if P else H
    U_used, U16 = round_weights(inp["U"], wt)
    P_used, P16 = round_weights(inp["Pk"], wt)
    if corrupt_scale and isinstance(U16, tuple):
        U16 = (U16[0], U16[1] * 1.01)
    f = FusedRnn(lib, cell, direction, T, B, H, P, time_major, cell_clip, proj_clip, wt, tuning)
    plan = f.describe()
    x_dev = to_dev(inp["x"].transpose(1, 0, 2) if time_major else inp["x"])
    out = poisoned((T, B, D * R) if time_major else (B, T, D * R))
    fh = poisoned((D, B, R))
    fc = poisoned((D, B, H)) if cell == "lstm" else None
    F = (5 * H + P) if cell == "lstm" else 4 * H
    res = poisoned((D, B, T, F)) if check_reserve else None
    f.bind(x_dev, w_rec=to_dev(inp["U"]) if wt == "f32" else None, rec_bias=to_dev(inp["rb"]),
           w_proj=to_dev(inp["Pk"]) if wt == "f32" else None, lengths=to_dev(inp["lengths"]), h0=to_dev(inp["h0"]),
           c0=to_dev(inp["c0"]), out=out, final_h=fh, final_c=fc, reserve=res,
           w_rec16=dev16(U16), w_proj16=dev16(P16), rec_scale=dev_scale(U16), proj_scale=dev_scale(P16))
    errs = {}
    for rep in range(repeat):  # repeat: a moving error is a race
        for t in (out, fh, fc, res):
            if t is not None:
                t.fill_(float("nan"))
        f()
        torch.cuda.synchronize()
        wd = f.watchdog()
        o = out.cpu().numpy()
        if time_major:
            o = o.transpose(1, 0, 2)
        want_o, want_h, want_c = reference(cell, direction, inp, U_used, P_used, cell_clip, proj_clip, time_major,
                                           rows=rows)
        sel = (lambda a: a) if rows is None else (lambda a: a[rows])
        sel_state = (lambda a: a) if rows is None else (lambda a: a[:, rows])
        got_h = sel_state(fh.cpu().numpy())
        e = {}
        if inject_nan:
            # NaN exactly where the reference has NaN; the rest compared as usual.
            e["nan_mismatch"] = int(np.sum(np.isnan(sel(o)) != np.isnan(want_o)) +
                                    np.sum(np.isnan(got_h) != np.isnan(want_h)))
            e["nan_positions"] = int(np.sum(np.isnan(want_o)))
            finite_o, finite_h = ~np.isnan(want_o), ~np.isnan(want_h)
            e.update({"out": rel_err(sel(o)[finite_o], want_o[finite_o]),
                      "final_h": rel_err(got_h[finite_h], want_h[finite_h]),
                      "out_max": max_rel(sel(o)[finite_o], want_o[finite_o]), "watchdog": wd,
                      "unwritten": e["nan_mismatch"]})
        else:
            e = {"out": rel_err(sel(o), want_o), "final_h": rel_err(got_h, want_h),
                 "out_max": max_rel(sel(o), want_o), "watchdog": wd,
                 "unwritten": int(np.sum(~np.isfinite(o)))}
        lengths = inp["lengths"] if inp["lengths"] is not None else np.full(B, T)
        # Zeros past the length must be exact zeros.
        past = np.zeros(o.shape[:2], bool)
        for b in range(B):
            past[b, lengths[b]:] = True
        e["nonzero_past_len"] = int(np.count_nonzero(o[past]))
        if cell == "lstm":
            got_c = sel_state(fc.cpu().numpy())
            keep = ~np.isnan(want_c)
            e["final_c"] = rel_err(got_c[keep], want_c[keep])
            if inject_nan:
                e["nan_mismatch"] += int(np.sum(np.isnan(got_c) != np.isnan(want_c)))
        if wt != "f32":
            want_o32, _, _ = reference(cell, direction, inp, inp["U"], inp["Pk"], cell_clip, proj_clip, time_major,
                                       rows=rows)
            fin = np.isfinite(want_o32)  # NaN inputs: NaN positions are checked above, against the kernel's oracle
            e["out_vs_f32_weights"] = rel_err(sel(o)[fin], want_o32[fin])
        if check_reserve:
            want_r = reserve_reference(cell, direction, inp, U_used, P_used, cell_clip, proj_clip)
            got_r = res.cpu().numpy()
            valid = np.isfinite(want_r)
            e["reserve"] = rel_err(got_r[valid], want_r[valid])
            e["reserve_written_outside"] = int(np.sum(np.isfinite(got_r[~valid])))
        if rep == 0:
            errs = e
        else:
            for k in ("out", "final_h"):
                if e[k] != errs[k]:
                    errs["moving_error"] = True
    ok = (errs.get("nan_mismatch", 0) == 0 and errs.get("nan_positions", 1) > 0 and errs["out"] <= TOL_F32 and errs["final_h"] <= TOL_F32 and errs.get("final_c", 0) <= TOL_F32
          and errs["unwritten"] == 0 and errs["nonzero_past_len"] == 0 and errs["watchdog"] == 0
          and errs.get("reserve", 0) <= TOL_F32 and errs.get("reserve_written_outside", 0) == 0
          and errs.get("out_vs_f32_weights", 0) <= TOL_16_VS_F32_WEIGHTS and not errs.get("moving_error"))
    return {"name": name, "passed": bool(ok), "errors": errs, "plan": plan}


def error_kind_case(lib):
    """The TF kernel reports a failed CUDA call as Internal and a shape the GPU cannot run as InvalidArgument; it
    tells them apart with CudaMessageIsRuntimeFailure. A real CUDA failure (limits of a device that does not
    exist) must classify as runtime, a real planner refusal (the tensor-core mode forced on a projection LSTM, a
    projection in the small mode) as not, and null as not."""
    L = lib.L
    limits = (ctypes.c_int * 9)()
    cuda_err = L.frg_query_limits(4096, limits)
    refusals = [FusedRnn(lib, "lstm", "forward", 5, 2, 32, 8, False, 0.0, 0.0, "f32", {"mode": 4}).describe(),
                FusedRnn(lib, "lstm", "forward", 5, 2, 32, 8, False, 0.0, 0.0, "f32", {"mode": 5}).describe()]
    e = {"cuda_error": (cuda_err or b"").decode(), "cuda_error_is_runtime": L.frg_message_is_runtime_failure(cuda_err),
         "refusals": refusals,
         "refusals_runtime": [L.frg_message_is_runtime_failure(r[len("ERROR: "):].encode()) for r in refusals],
         "null_is_runtime": L.frg_message_is_runtime_failure(None)}
    ok = (bool(cuda_err) and e["cuda_error_is_runtime"] == 1 and all(r.startswith("ERROR: ") for r in refusals)
          and e["refusals_runtime"] == [0, 0] and e["null_is_runtime"] == 0)
    return {"name": "CUDA failures vs refused shapes tell apart (Internal vs InvalidArgument)", "passed": bool(ok),
            "errors": {k: v for k, v in e.items() if not isinstance(v, (list, str))}, "plan": repr(e)[:300]}


def watchdog_poison_cases(lib):
    """A device-side wait that timed out must leave every output NaN (not plausible values) and the word raised.
    The core's test hook raises the word before the launch, as a timed-out wait would, for each plan kind that
    waits (tagged and counter exchange, tensor cores); outputs start finite, so NaN proves the poisoning. The same
    call without the hook must then come back finite with the word down (the hook and the poison leave no trace)."""
    results = []
    cases = [("tagged", "lstm", 11, 5, 24, 16, "f32", {"mode": 1, "units_per_block": 5}),
             ("counter", "gru", 11, 5, 24, 0, "f32", {"mode": 2, "units_per_block": 7}),
             ("tensorcore", "lstm", 9, 16, 64, 0, "f16", {"mode": 4}),
             ("tensorcore", "lstm", 9, 16, 64, 0, "f32", {"mode": 4})]
    for name, cell, T, B, H, P, wt, tuning in cases:
        rng = np.random.default_rng(7)
        inp = make_inputs(rng, cell, "bidirectional", T, B, H, P, True, True, True)
        _, U16 = round_weights(inp["U"], wt)
        f = FusedRnn(lib, cell, "bidirectional", T, B, H, P, False, 0.0, 0.0, wt, tuning)
        plan = f.describe()
        R = P if P else H
        out = torch.full((B, T, 2 * R), 0.5, device="cuda")
        fh = torch.full((2, B, R), 0.5, device="cuda")
        fc = torch.full((2, B, H), 0.5, device="cuda") if cell == "lstm" else None
        F = (5 * H + P) if cell == "lstm" else 4 * H
        res = torch.full((2, B, T, F), 0.5, device="cuda")
        f.bind(to_dev(inp["x"]), w_rec=to_dev(inp["U"]) if wt == "f32" else None, rec_bias=to_dev(inp["rb"]),
               w_proj=to_dev(inp["Pk"]) if wt == "f32" else None, lengths=to_dev(inp["lengths"]),
               h0=to_dev(inp["h0"]), c0=to_dev(inp["c0"]), out=out, final_h=fh, final_c=fc,
               reserve=res if wt == "f32" else None, w_rec16=dev16(U16))
        e = {}
        try:
            lib.L.frg_set_test_watchdog(1)
            f()
            torch.cuda.synchronize()
        finally:
            lib.L.frg_set_test_watchdog(0)
        tensors = [t for t in (out, fh, fc, res if wt == "f32" else None) if t is not None]
        e["watchdog"] = f.watchdog()
        e["not_nan"] = int(sum(int(torch.count_nonzero(~torch.isnan(t))) for t in tensors))
        f()
        torch.cuda.synchronize()
        e["watchdog_after"] = f.watchdog()
        e["nan_after"] = int(torch.count_nonzero(torch.isnan(out[:, :1])))  # step 0 is valid in every row here
        ok = (e["watchdog"] == 1 and e["not_nan"] == 0 and e["watchdog_after"] == 0 and e["nan_after"] == 0
              and f"mode={name}" in plan)
        results.append({"name": f"watchdog raised -> outputs NaN ({name}, {wt})", "passed": bool(ok), "errors": e,
                        "plan": plan})
    return results


def correctness_suite(lib, quick=False):
    results = []
    small = dict(T=11, B=5, H=24)
    combos = [("lstm", 0, 0.0, 0.0), ("lstm", 16, 0.6, 0.35), ("gru", 0, 0.0, 0.0)]
    seed = 100
    # Every cell x projection/clip x direction x exchange mode, ragged lengths with a zero and a one.
    modes = [("local", {"mode": 0}), ("tagged", {"mode": 1, "units_per_block": 5}),
             ("counter", {"mode": 2, "units_per_block": 7})]
    if lib.limits[6] >= 9:
        modes.append(("cluster", {"mode": 3, "units_per_block": 7}))
    for mode, tun in modes:
        for cell, P, cc, pc in combos:
            for direction in ("forward", "reverse", "bidirectional"):
                seed += 1
                tm = seed % 2 == 0
                name = f"{cell}{'+proj+clip' if P else ''} {direction} {mode} T{small['T']} B{small['B']} H{small['H']}" \
                       f"{' time-major' if tm else ''}"
                results.append(run_case(lib, name, cell, direction, P=P, cell_clip=cc, proj_clip=pc, ragged=True,
                                        time_major=tm, tuning=tun, seed=seed, check_reserve=(direction != "reverse"),
                                        repeat=2 if mode != "local" else 1, **small))
    # 16-bit weights on each cell, each exchange.
    for wt in ("f16", "bf16"):
        for cell, P, cc, pc in combos:
            for mode, tun in (("local", {"mode": 0}), ("tagged", {"mode": 1, "units_per_block": 6}),
                              ("cluster", {"mode": 3, "units_per_block": 11})):
                if mode == "cluster" and lib.limits[6] < 9:
                    continue
                seed += 1
                name = f"{cell}{'+proj+clip' if P else ''} bidirectional {mode} {wt} T9 B4 H40"
                results.append(run_case(lib, name, cell, "bidirectional", T=9, B=4, H=40, P=P, cell_clip=cc,
                                        proj_clip=pc, wt=wt, tuning=tun, seed=seed))
    # Weight placement: all streamed from shared memory, all from the workspace; rows-per-pass 4 in local mode;
    # larger k (several chunks per lane); no initial state, no lengths, GRU without recurrent bias.
    extra = [
        # 16-bit weights widened to float32 per call, then the float32 plan (CudaTuning::as_float32): forced (four
        # words a thread, and one for an odd count), automatic where it is faster (B=1), and not where it is not (the
        # ELMo layer; the tensor-core plans at B=64 are in tools/gpu/as_float32_sweep.py, whose plans round h to 16
        # bits, beyond this suite's tolerance).
        ("[as f32] lstm+proj+clip bi f16 T9 B4 H40 P16", dict(cell="lstm", direction="bidirectional", T=9, B=4, H=40,
                                                               P=16, cell_clip=0.7, proj_clip=0.4, wt="f16",
                                                               tuning={"as_float32": 1})),
        ("[as f32] gru reverse bf16 T9 B3 H37 (odd count)", dict(cell="gru", direction="reverse", T=9, B=3, H=37,
                                                                 wt="bf16", tuning={"as_float32": 1})),
        ("[as f32] auto lstm f16 T100 B1 H512", dict(cell="lstm", direction="forward", T=100, B=1, H=512, wt="f16")),
        ("[as f32] auto gru bf16 T100 B1 H512", dict(cell="gru", direction="forward", T=100, B=1, H=512,
                                                     wt="bf16")),
        ("[as f32] auto lstm bi bf16 T100 B1 H100", dict(cell="lstm", direction="bidirectional", T=100, B=1, H=100,
                                                         wt="bf16")),
        ("[as f32] auto lstm f16 T100 B1 H1024", dict(cell="lstm", direction="forward", T=100, B=1, H=1024,
                                                      wt="f16")),
        ("[16-bit own] auto lstm f16 T5 B1 H1024 (short: converting costs more)", dict(
            cell="lstm", direction="forward", T=5, B=1, H=1024, wt="f16")),
        ("[16-bit own] lstm bi f16 T9 B4 H40 as_float32=0", dict(cell="lstm", direction="bidirectional", T=9, B=4,
                                                                 H=40, wt="f16", tuning={"as_float32": 0})),
        ("[16-bit own] auto ELMo-size layer f16 T3 B1", dict(cell="lstm", direction="bidirectional", T=3, B=1, H=4096,
                                                             P=512, cell_clip=3.0, proj_clip=3.0, wt="f16")),
        ("lstm bi local all-streamed-smem H100", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=100,
                                                      tuning={"mode": 0, "max_reg_chunks": 0, "stream_location": 0})),
        ("lstm bi local all-streamed-global H100", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=100,
                                                        tuning={"mode": 0, "max_reg_chunks": 0,
                                                                "stream_location": 1})),
        ("lstm+proj tagged streamed-global H64 P24", dict(cell="lstm", direction="bidirectional", T=8, B=3, H=64,
                                                          P=24, cell_clip=1.0, proj_clip=0.5,
                                                          tuning={"mode": 1, "units_per_block": 16,
                                                                  "max_reg_chunks": 1, "stream_location": 1})),
        ("gru fwd local rows/block=6 (RC=4) B13", dict(cell="gru", direction="forward", T=10, B=13, H=48,
                                                       tuning={"mode": 0, "rows_per_block": 6})),
        ("lstm rev counter B9 (RC=4) H130", dict(cell="lstm", direction="reverse", T=7, B=9, H=130,
                                                 tuning={"mode": 2, "units_per_block": 33})),
        ("lstm fwd tagged H200 lanes=4", dict(cell="lstm", direction="forward", T=6, B=2, H=200,
                                             tuning={"mode": 1, "units_per_block": 40, "lanes_per_unit": 4})),
        ("lstm fwd no-init no-lengths auto H64", dict(cell="lstm", direction="forward", T=9, B=3, H=64, ragged=False,
                                                      with_init=False)),
        ("gru bi no-bias no-init tagged H32", dict(cell="gru", direction="bidirectional", T=9, B=3, H=32,
                                                   with_init=False, gru_bias=False, tuning={"mode": 1})),
        ("lstm+proj bi local T1 B1 H8 P3", dict(cell="lstm", direction="bidirectional", T=1, B=1, H=8, P=3)),
        ("lstm+proj cluster rows/block=4 (RC=4) B9", dict(cell="lstm", direction="bidirectional", T=7, B=9, H=40,
                                                          P=12, cell_clip=0.8, proj_clip=0.4,
                                                          tuning={"mode": 3, "rows_per_block": 4,
                                                                  "units_per_block": 5})),
        ("gru rev cluster auto-size H100", dict(cell="gru", direction="reverse", T=9, B=2, H=100, tuning={"mode": 3})),
        ("gru bi all-zero lengths counter", dict(cell="gru", direction="bidirectional", T=5, B=2, H=16,
                                                 tuning={"mode": 2})),
        # The prologue's weight copy through shared memory: one chunk per pass (several passes, registers and
        # streamed chunks, both maps of a projection LSTM), and the unstaged per-thread loads it replaced.
        ("lstm+proj bi tagged staged 1 chunk/pass H160 P72", dict(cell="lstm", direction="bidirectional", T=7, B=3,
                                                                 H=160, P=72, cell_clip=1.0, proj_clip=0.5,
                                                                 tuning={"mode": 1, "units_per_block": 40,
                                                                         "max_reg_chunks": 1, "stage_weights": 1})),
        ("gru fwd counter staged 2 chunks/pass f16 H130", dict(cell="gru", direction="forward", T=8, B=5, H=130,
                                                              wt="f16", tuning={"mode": 2, "units_per_block": 33,
                                                                                "stage_weights": 2})),
        ("lstm+proj bi local staged 1 chunk/pass bf16 RC=4 B9", dict(cell="lstm", direction="bidirectional", T=6,
                                                                    B=9, H=48, P=20, cell_clip=0.8, wt="bf16",
                                                                    tuning={"mode": 0, "rows_per_block": 9,
                                                                            "stage_weights": 1})),
        ("lstm+proj bi tagged unstaged H160 P72", dict(cell="lstm", direction="bidirectional", T=7, B=3, H=160, P=72,
                                                      cell_clip=1.0, proj_clip=0.5,
                                                      tuning={"mode": 1, "units_per_block": 40,
                                                              "stage_weights": 0})),
        ("gru bi cluster unstaged H100", dict(cell="gru", direction="bidirectional", T=9, B=2, H=100,
                                              tuning={"mode": 3, "stage_weights": 0})),
        # The ELMo layer's own plan, short: unit slices at unaligned offsets (63 units of 64 lanes' columns), a last
        # block of one unit, projection blocks with no columns, 16 chunks in registers and 16 streamed per thread.
        ("lstm+proj bi f16 ELMo layer T5 B1 (auto plan)", dict(cell="lstm", direction="bidirectional", T=5, B=1,
                                                               H=4096, P=512, cell_clip=3.0, proj_clip=3.0, wt="f16")),
        ("lstm+proj bi bf16 ELMo layer T4 B2 rows/block=1", dict(cell="lstm", direction="bidirectional", T=4, B=2,
                                                                  H=4096, P=512, cell_clip=3.0, proj_clip=3.0,
                                                                  wt="bf16", tuning={"rows_per_block": 1})),
        # Phase B as a reduce-scatter of partial sums (tagged plans, even P, 16-bit / int8) forced on and off:
        # several rows per block, a last unit block of 5 units, weights streamed from the workspace, the ELMo layer.
        ("lstm+proj bi tagged reduce-scatter B3 H40 P12 upb=7", dict(
            cell="lstm", direction="bidirectional", T=7, B=3, H=40, P=12, cell_clip=0.8, proj_clip=0.4, repeat=2,
            wt="bf16", tuning={"mode": 1, "units_per_block": 7, "proj_reduce": 1})),
        ("lstm+proj fwd tagged no reduce-scatter B3 H40 P12 upb=7", dict(
            cell="lstm", direction="forward", T=7, B=3, H=40, P=12, cell_clip=0.8, proj_clip=0.4, wt="bf16",
            tuning={"mode": 1, "units_per_block": 7, "proj_reduce": 0})),
        ("lstm+proj rev tagged reduce-scatter streamed-global H64 P24 time-major", dict(
            cell="lstm", direction="reverse", T=8, B=3, H=64, P=24, cell_clip=1.0, proj_clip=0.5, time_major=True,
            wt="f16", repeat=2, tuning={"mode": 1, "units_per_block": 16, "max_reg_chunks": 1, "stream_location": 1,
                              "proj_reduce": 1})),
        ("lstm+proj bi tagged reduce-scatter f16 H160 P72 no init", dict(
            cell="lstm", direction="bidirectional", T=7, B=3, H=160, P=72, cell_clip=1.0, proj_clip=0.5, wt="f16",
            with_init=False, tuning={"mode": 1, "units_per_block": 40, "proj_reduce": 1})),
        ("lstm+proj bi f16 ELMo layer T5 B1 reduce-scatter", dict(
            cell="lstm", direction="bidirectional", T=5, B=1, H=4096, P=512, cell_clip=3.0, proj_clip=3.0, wt="f16",
            repeat=2, tuning={"proj_reduce": 1})),
        ("lstm+proj bi f16 ELMo layer T5 B1 no reduce-scatter", dict(
            cell="lstm", direction="bidirectional", T=5, B=1, H=4096, P=512, cell_clip=3.0, proj_clip=3.0, wt="f16",
            tuning={"proj_reduce": 0})),
    ]
    # NaN / Inf inputs: NaN must come out where the float64 reference has it (clips and activations keep it).
    nan_modes = [("local", {"mode": 0}), ("tagged", {"mode": 1, "units_per_block": 9}),
                 ("counter", {"mode": 2, "units_per_block": 9})]
    if lib.limits[6] >= 9:
        nan_modes.append(("cluster", {"mode": 3, "units_per_block": 9}))
    for mode, tun in nan_modes:
        for cell, P, cc, pc in combos:
            seed += 1
            results.append(run_case(lib, f"NaN/Inf input {cell}{'+proj+clip' if P else ''} bidirectional {mode}",
                                    cell, "bidirectional", T=9, B=3, H=24, P=P, cell_clip=cc, proj_clip=pc,
                                    tuning=tun, seed=seed, inject_nan=True))
    # One row per pass with every lane count the gate sums use (a reduce-scatter over the lanes of a column from 4
    # lanes up, the plain butterfly below that), both cells, local and tagged exchange, k long enough to give each
    # lane several chunks; the projection's single-gate sum on the same lane counts.
    for lanes in (1, 2, 4, 8, 16, 32):
        for cell, P in (("lstm", 0), ("gru", 0), ("lstm", 16)):
            if P and lanes > 8:  # the planner gives a lane at least 2 rows of k (R = P = 16 here)
                continue
            for mode, tun in (("local", {"mode": 0}), ("tagged", {"mode": 1, "units_per_block": 8})):
                if mode == "local" and lanes > 8:  # 72 units x lanes threads in one block
                    continue
                seed += 1
                extra.append((f"{cell}{'+proj' if P else ''} bi {mode} RC=1 lanes={lanes} H72",
                              dict(cell=cell, direction="bidirectional", T=6, B=3, H=72, P=P,
                                   tuning=dict(tun, rows_per_block=1, lanes_per_unit=lanes))))
    # Mode 5, the small-hidden-size kernel: every cell x direction, each weight kind, every lane count, the
    # register/shared-memory tail split, the staged and unstaged prologue, tiny and larger H, a grid that takes
    # several waves, NaN input. Each case must have run mode 5 (checked below), in one block per row (units_per_block
    # >= H) unless it names a cluster split.
    small = {"mode": 5, "units_per_block": 1 << 20}
    for cell, cc in (("lstm", 0.0), ("lstm", 0.45), ("gru", 0.0)):
        for direction in ("forward", "reverse", "bidirectional"):
            seed += 1
            extra.append((f"small {cell}{'+clip' if cc else ''} {direction} T11 B5 H24"
                          f"{' time-major' if seed % 2 == 0 else ''}",
                          dict(cell=cell, direction=direction, T=11, B=5, H=24, cell_clip=cc,
                               time_major=seed % 2 == 0, tuning=small)))
    for wt in ("f16", "bf16", "i8"):
        for cell in ("lstm", "gru"):
            extra.append((f"small {cell} bidirectional {wt} T9 B4 H40",
                          dict(cell=cell, direction="bidirectional", T=9, B=4, H=40, wt=wt, cell_clip=0.9,
                               tuning=small)))
    for lanes in (4, 8):
        for cell in ("lstm", "gru"):
            extra.append((f"small {cell} bi lanes={lanes} H72", dict(cell=cell, direction="bidirectional", T=6, B=3,
                                                                  H=72, tuning=dict(small, lanes_per_unit=lanes))))
    extra += [
        ("small lstm bi auto-lanes auto-split H100 (the timed shape)", dict(cell="lstm", direction="bidirectional",
                                                                           T=12, B=2, H=100, tuning={"mode": 5})),
        ("small lstm bi lanes=4 tail 2 chunks H100", dict(cell="lstm", direction="bidirectional", T=8, B=2, H=100,
                                                          tuning=dict(small, lanes_per_unit=4, max_reg_chunks=5))),
        ("small gru fwd lanes=4 tail 1 chunk H100 f16", dict(cell="gru", direction="forward", T=8, B=2, H=100,
                                                             wt="f16", tuning=dict(small, lanes_per_unit=4,
                                                                                   max_reg_chunks=6))),
        ("small lstm rev staged 1 chunk/pass H100", dict(cell="lstm", direction="reverse", T=7, B=2, H=100,
                                                         tuning=dict(small, stage_weights=1))),
        ("small gru bi unstaged H100", dict(cell="gru", direction="bidirectional", T=7, B=2, H=100,
                                            tuning=dict(small, stage_weights=0))),
        ("small lstm bi H1", dict(cell="lstm", direction="bidirectional", T=5, B=3, H=1, tuning=small)),
        ("small gru bi lanes=8 H12 (lanes without rows)", dict(cell="gru", direction="bidirectional", T=5, B=3, H=12,
                                                               tuning=dict(small, lanes_per_unit=8))),
        ("small gru fwd H3 no-bias no-init", dict(cell="gru", direction="forward", T=6, B=2, H=3, with_init=False,
                                                  gru_bias=False, tuning=small)),
        ("small lstm bi bf16 H128", dict(cell="lstm", direction="bidirectional", T=6, B=2, H=128, wt="bf16",
                                         tuning=small)),
        ("small gru bi i8 zero rows H64", dict(cell="gru", direction="bidirectional", T=6, B=3, H=64, wt="i8",
                                               zero_rows=True, tuning=small)),
        ("small lstm fwd waves B1500 H16", dict(cell="lstm", direction="forward", T=3, B=1500, H=16, tuning=small,
                                                rows=[0, 1, 777, 1499])),
        ("small lstm fwd no-init no-lengths H48", dict(cell="lstm", direction="forward", T=9, B=3, H=48,
                                                       ragged=False, with_init=False, tuning=small)),
    ]
    # Its cluster variant (sm_90): the units over C blocks that exchange h by st.async and transaction barriers.
    # "cluster=C" in a name: the plan must have taken exactly that split (checked below).
    if lib.limits[6] >= 9:
        def cl(upb, **kw):
            return dict({"mode": 5, "units_per_block": upb}, **kw)
        extra += [
            ("small lstm bi cluster=2 H100", dict(cell="lstm", direction="bidirectional", T=12, B=4, H=100,
                                                  tuning=cl(50))),
            ("small lstm bi cluster=4 H100 time-major", dict(cell="lstm", direction="bidirectional", T=12, B=4,
                                                             H=100, time_major=True, tuning=cl(25))),
            ("small lstm+clip rev cluster=4 H98 (a short last member)", dict(cell="lstm", direction="reverse", T=10,
                                                                             B=4, H=98, cell_clip=0.4,
                                                                             tuning=cl(25))),
            ("small gru fwd cluster=2 H100", dict(cell="gru", direction="forward", T=11, B=4, H=100, tuning=cl(50))),
            ("small gru bi cluster=3 H40 no-bias no-init", dict(cell="gru", direction="bidirectional", T=9, B=3, H=40,
                                                                with_init=False, gru_bias=False, tuning=cl(14))),
            ("small lstm fwd cluster=8 H128", dict(cell="lstm", direction="forward", T=9, B=3, H=128,
                                                   tuning=cl(16))),
            ("small lstm bi cluster=4 H160 tail 2 chunks", dict(cell="lstm", direction="bidirectional", T=8, B=3,
                                                                H=160, tuning=cl(40))),
            ("small lstm bi cluster=2 staged 1 chunk/pass H100", dict(cell="lstm", direction="bidirectional", T=8,
                                                                      B=3, H=100, tuning=cl(50, stage_weights=1))),
            ("small lstm bi cluster=2 waves B70 H64", dict(cell="lstm", direction="bidirectional", T=6, B=70, H=64,
                                                           tuning=cl(32), rows=[0, 1, 2, 35, 69])),
            ("small lstm fwd cluster=8 lanes=8 H256", dict(cell="lstm", direction="forward", T=9, B=3, H=256,
                                                           cell_clip=0.7, tuning=cl(32, lanes_per_unit=8))),
            ("small gru bi cluster=4 lanes=8 H200 time-major", dict(cell="gru", direction="bidirectional", T=8, B=3,
                                                                    H=200, time_major=True,
                                                                    tuning=cl(50, lanes_per_unit=8))),
            ("small lstm rev cluster=8 lanes=8 i8 zero rows H250 (a short last member)",
             dict(cell="lstm", direction="reverse", T=7, B=3, H=250, wt="i8", zero_rows=True,
                  tuning=cl(32, lanes_per_unit=8))),
            ("small lstm bi cluster=8 auto-lanes bf16 H256", dict(cell="lstm", direction="bidirectional", T=6, B=2,
                                                                  H=256, wt="bf16", tuning=cl(32))),
            ("small lstm fwd cluster=2 no-init no-lengths H48", dict(cell="lstm", direction="forward", T=9, B=3,
                                                                     H=48, ragged=False, with_init=False,
                                                                     tuning=cl(24))),
            # The wide variant (float32, 8 lanes, up to 8 chunks a lane in shared memory; clusters > 8 blocks are
            # non-portable): "wide" in a name requires the plan to have taken it (more than 8 register chunks or
            # more than 2 in shared memory).
            ("small lstm+clip fwd cluster=16 wide H512", dict(cell="lstm", direction="forward", T=9, B=2, H=512,
                                                              cell_clip=0.8, tuning=cl(32, lanes_per_unit=8))),
            ("small lstm fwd cluster=16 wide 8 reg chunks H512", dict(cell="lstm", direction="forward", T=7, B=2,
                                                                      H=512, tuning=cl(32, lanes_per_unit=8,
                                                                                       max_reg_chunks=8))),
            ("small gru bi cluster=16 wide H512 time-major", dict(cell="gru", direction="bidirectional", T=7, B=2,
                                                                  H=512, time_major=True,
                                                                  tuning=cl(32, lanes_per_unit=8))),
            ("small lstm rev cluster=16 wide H500 (a short last member)", dict(cell="lstm", direction="reverse",
                                                                              T=8, B=3, H=500,
                                                                              tuning=cl(32, lanes_per_unit=8))),
            ("small lstm bi cluster=12 wide H384 no-init", dict(cell="lstm", direction="bidirectional", T=8, B=2,
                                                                H=384, with_init=False,
                                                                tuning=cl(32, lanes_per_unit=8, max_reg_chunks=8))),
            ("small gru fwd cluster=16 wide no-bias H448", dict(cell="gru", direction="forward", T=6, B=2, H=448,
                                                                gru_bias=False, tuning=cl(28, lanes_per_unit=8,
                                                                                         max_reg_chunks=10))),
        ]
        for wt in ("f16", "bf16", "i8"):
            for cell in ("lstm", "gru"):
                extra.append((f"small {cell} bi {wt} cluster=2 H100{' zero rows' if wt == 'i8' else ''}",
                              dict(cell=cell, direction="bidirectional", T=9, B=3, H=100, wt=wt, cell_clip=0.9,
                                   zero_rows=wt == "i8", tuning=cl(50))))
        for cell, cc in (("lstm", 0.5), ("gru", 0.0)):
            seed += 1
            results.append(run_case(lib, f"NaN/Inf input small {cell} bidirectional cluster=2", cell, "bidirectional",
                                    T=9, B=3, H=40, cell_clip=cc, tuning=cl(20), seed=seed, inject_nan=True))
    for cell, cc in (("lstm", 0.5), ("gru", 0.0)):
        seed += 1
        results.append(run_case(lib, f"NaN/Inf input small {cell} bidirectional", cell, "bidirectional", T=9, B=3,
                                H=24, cell_clip=cc, tuning=small, seed=seed, inject_nan=True))
    for name, kw in extra:
        seed += 1
        if name.startswith("gru bi all-zero"):
            # handled below with explicit zero lengths
            continue
        try:
            r = run_case(lib, name, seed=seed, check_reserve=True, **kw)
        except RuntimeError as e:  # a refused plan fails the case, not the suite
            log(f"FAIL {name}: {e}")
            results.append({"name": name, "passed": False, "errors": {"run": str(e)}, "plan": ""})
            continue
        # The staging cases must have run the path they name (the plan string says weight_stage=bytes@offset).
        unstaged_plan = "weight_stage=0@" in r["plan"]
        if ("unstaged" in name and not unstaged_plan) or (" staged " in name and unstaged_plan):
            r["passed"] = False
            r["errors"]["plan"] = "the plan did not take the weight-staging path the case names"
        if (name.startswith("[as f32]") or name.startswith("[16-bit own]")) and (
                name.startswith("[as f32]") != ("16-bit weights converted to float32" in r["plan"])):
            r["passed"] = False
            r["errors"]["plan"] = "the weights were converted to float32 where they should not, or not where they should"
        if name.startswith("small ") and not r["plan"].startswith("mode=small"):
            r["passed"] = False
            r["errors"]["plan"] = "the case did not run the small-hidden-size kernel (mode 5)"
        if name.startswith("small ") and "auto-split" not in name:
            want = name.split("cluster=")[1].split()[0] if "cluster=" in name else "1"
            if f"x cluster={want})" not in r["plan"]:
                r["passed"] = False
                r["errors"]["plan"] = f"the plan did not split the units over {want} block(s)"
        if name.startswith("small ") and " wide " in name:
            tail = int(r["plan"].split(" tail=")[1].split("]")[0]) if " tail=" in r["plan"] else 0
            reg = int(r["plan"].split(" reg=")[1].split()[0]) if " reg=" in r["plan"] else 0
            if tail <= 2 and reg <= 8:
                r["passed"] = False
                r["errors"]["plan"] = "the plan did not take the wide variant (more than 2 chunks in shared memory)"
        if "reduce-scatter" in name and ("no reduce-scatter" in name) == (" reduce-scatter]" in r["plan"]):
            r["passed"] = False
            r["errors"]["plan"] = "the plan did not take the phase-B path the case names"
        results.append(r)
    return results


def zero_length_case(lib):
    """All sequences empty: outputs zero, finals = initial state."""
    f = FusedRnn(lib, "gru", "bidirectional", 5, 2, 16, tuning={"mode": 2})
    rng = np.random.default_rng(7)
    inp = make_inputs(rng, "gru", "bidirectional", 5, 2, 16, 0, ragged=False)
    out = poisoned((2, 5, 32))
    fh = poisoned((2, 2, 16))
    f.bind(to_dev(inp["x"]), w_rec=to_dev(inp["U"]), rec_bias=to_dev(inp["rb"]),
           lengths=torch.zeros(2, dtype=torch.int32, device="cuda"), h0=to_dev(inp["h0"]), out=out, final_h=fh)
    f()
    torch.cuda.synchronize()
    ok = bool(torch.all(out == 0).item()) and np.array_equal(fh.cpu().numpy(), inp["h0"])
    return {"name": "gru bi all-zero lengths counter", "passed": ok, "errors": {"out": 0.0 if ok else float("inf")},
            "plan": f.describe()}


# ---------------------------------------------------------------------------------------------------------------
# Timing

def time_ms(fn, reps, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return {"median": ts[len(ts) // 2], "p10": ts[len(ts) // 10], "p90": ts[(len(ts) * 9) // 10]}


def graph_of(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g


def reps_for(ms_guess):
    return int(min(300, max(30, 60.0 / max(ms_guess, 0.05))))


class FusedLayer:
    """x @ W + b (cuBLAS) then the fused recurrence, on preallocated buffers: one layer as the TF op runs it."""

    def __init__(self, lib, cell, direction, T, B, I, H, P=0, wt="f32", cell_clip=0.0, proj_clip=0.0, seed=0,
                 tuning=None, x=None):
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        G = 4 if cell == "lstm" else 3
        D = 2 if direction == "bidirectional" else 1
        R = P if P else H
        self.D, self.R, self.G, self.H, self.P, self.B, self.T, self.wt = D, R, G, H, P, B, T, wt
        self.x = x if x is not None else torch.randn(B, T, I, device="cuda", generator=g)
        self.W = torch.empty(I, D * G * H, device="cuda").uniform_(-1, 1, generator=g) / math.sqrt(I)
        self.bias = torch.empty(D * G * H, device="cuda").uniform_(-0.1, 0.1, generator=g)
        self.U = torch.empty(D, R, G * H, device="cuda").uniform_(-1, 1, generator=g) * (1.2 / math.sqrt(R))
        self.Pk = (torch.empty(D, H, P, device="cuda").uniform_(-1, 1, generator=g) * (1.2 / math.sqrt(H))) if P else None
        self.rb = torch.empty(D, G * H, device="cuda").uniform_(-0.1, 0.1, generator=g) if cell == "gru" else None
        self.xproj = torch.empty(B, T, D * G * H, device="cuda")
        self.out = torch.empty(B, T, D * R, device="cuda")
        self.fh = torch.empty(D, B, R, device="cuda")
        self.fc = torch.empty(D, B, H, device="cuda") if cell == "lstm" else None
        self.h0 = torch.zeros(D, B, R, device="cuda")
        self.c0 = torch.zeros(D, B, H, device="cuda") if cell == "lstm" else None
        self.f = FusedRnn(lib, cell, direction, T, B, H, P, False, cell_clip, proj_clip, wt, tuning)
        self.Uq = self.Pq = None  # int8: (q, scale, dequantized) per weight; the input GEMM stays float32
        if wt == "i8":
            self.Uq = [torch.from_numpy(a) for a in quantize_rows(self.U.cpu().numpy())]
            self.Pq = [torch.from_numpy(a) for a in quantize_rows(self.Pk.cpu().numpy())] if P else None
            self.U16 = self.P16 = None
        elif wt != "f32":
            dt = TORCH_16[wt]
            self.U16, self.P16 = self.U.to(dt), (self.Pk.to(dt) if P else None)
            self.W16, self.bias16 = self.W.to(dt), self.bias.to(dt)
            self.x16 = torch.empty(B * T, I, device="cuda", dtype=dt)
            self.xproj16 = torch.empty(B * T, D * G * H, device="cuda", dtype=dt)
        else:
            self.U16 = self.P16 = None
        if wt == "i8":
            self.f.bind(self.xproj, rec_bias=self.rb, h0=self.h0, c0=self.c0, out=self.out, final_h=self.fh,
                        final_c=self.fc, w_rec16=self.Uq[0].cuda(), w_proj16=self.Pq[0].cuda() if P else None,
                        rec_scale=self.Uq[1].cuda(), proj_scale=self.Pq[1].cuda() if P else None)
        else:
            self.f.bind(self.xproj, w_rec=self.U if wt == "f32" else None, rec_bias=self.rb,
                        w_proj=self.Pk if wt == "f32" else None, h0=self.h0, c0=self.c0, out=self.out,
                        final_h=self.fh, final_c=self.fc, w_rec16=self.U16, w_proj16=self.P16)
        self.I = I

    def gemm(self):
        if self.wt in ("f32", "i8"):
            torch.addmm(self.bias, self.x.view(-1, self.I), self.W, out=self.xproj.view(-1, self.xproj.shape[-1]))
        else:
            self.x16.copy_(self.x.view(-1, self.I))
            torch.addmm(self.bias16, self.x16, self.W16, out=self.xproj16)
            self.xproj.view(-1, self.xproj.shape[-1]).copy_(self.xproj16)

    def full(self):
        self.gemm()
        self.f()

    def check_rows(self, rows, cell, direction, cell_clip=0.0, proj_clip=0.0):
        """Runs once and compares the given batch rows with the float64 oracle."""
        self.out.fill_(float("nan"))
        self.full()
        torch.cuda.synchronize()
        U = (self.U16.float() if self.U16 is not None else self.U).cpu().numpy()
        Pk = None
        if self.P:
            Pk = (self.P16.float() if self.P16 is not None else self.Pk).cpu().numpy()
        if self.Uq is not None:  # int8: the oracle runs on the dequantized weights
            U = self.Uq[2].numpy()
            Pk = self.Pq[2].numpy() if self.P else None
        xp = self.xproj.cpu().numpy()[rows]
        h0 = self.h0.cpu().numpy()[:, rows]
        c0 = self.c0.cpu().numpy()[:, rows] if self.c0 is not None else None
        rb = self.rb.cpu().numpy() if self.rb is not None else None
        want, want_h, _ = numpy_reference.rnn_forward(cell, xp, U, np.full(len(rows), self.T), h0, c0,
                                                      recurrent_bias=rb, projection_kernel=Pk, cell_clip=cell_clip,
                                                      proj_clip=proj_clip, direction=direction)
        got = self.out.cpu().numpy()
        wd = self.f.watchdog()
        return {"out": rel_err(got[rows], want), "final_h": rel_err(self.fh.cpu().numpy()[:, rows], want_h),
                "unwritten": int(np.sum(~np.isfinite(got))), "watchdog": wd}


def cudnn_module(cell, I, H, bi, P=0, layers=1, dtype=torch.float32):
    kw = dict(num_layers=layers, bidirectional=bi, batch_first=True)
    if cell == "lstm":
        m = torch.nn.LSTM(I, H, proj_size=P, **kw)
    else:
        m = torch.nn.GRU(I, H, **kw)
    return m.cuda().to(dtype).eval()


def time_cudnn(cell, I, H, bi, B, T, P=0, layers=1, dtype=torch.float32, plain=True):
    m = cudnn_module(cell, I, H, bi, P, layers, dtype)
    x = torch.randn(B, T, I, device="cuda", dtype=dtype)

    def fn():
        with torch.no_grad():
            m(x)

    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    fn()
    torch.cuda.synchronize()
    guess = (time.time() - t0) * 1e3
    res = {}
    if plain:
        res["plain"] = time_ms(fn, reps_for(guess))
    g = graph_of(fn)
    res["graph"] = time_ms(g.replay, reps_for(guess))
    return res


def time_fused_layer(layers, plain=True):
    """layers: list of FusedLayer run in sequence (ELMo: layer 2 reads layer 1's output)."""
    def kernel_only():
        for l in layers:
            l.f()

    def full():
        for l in layers:
            l.full()

    for l in layers:
        l.full()
    torch.cuda.synchronize()
    t0 = time.time()
    full()
    torch.cuda.synchronize()
    guess = (time.time() - t0) * 1e3
    res = {}
    if plain:
        res["kernel_plain"] = time_ms(kernel_only, reps_for(guess))
    res["kernel_graph"] = time_ms(graph_of(kernel_only).replay, reps_for(guess))
    res["full_graph"] = time_ms(graph_of(full).replay, reps_for(guess))
    if plain:
        res["full_plain"] = time_ms(full, reps_for(guess))
    return res


def graph_matches_eager(lib):
    """The fused call captured in a graph computes the same as eagerly (memset + cooperative launch captured)."""
    out = {}
    for mode in (1, 2):
        l = FusedLayer(lib, "lstm", "bidirectional", 20, 3, 64, 96, P=32, tuning={"mode": mode}, seed=3,
                       cell_clip=2.0, proj_clip=1.0)
        l.full()
        torch.cuda.synchronize()
        eager = l.out.clone()
        g = graph_of(l.full)
        l.out.fill_(float("nan"))
        g.replay()
        g.replay()
        torch.cuda.synchronize()
        out[f"mode{mode}"] = bool(torch.equal(eager, l.out)) and l.f.watchdog() == 0
    return out


TIMED = [
    # name, cell, direction, T, B, I, H, P, goal_ms, cudnn layers
    ("biLSTM H=100 B=1", "lstm", "bidirectional", 100, 1, 100, 100, 0, 0.08),
    ("biLSTM H=100 B=64", "lstm", "bidirectional", 100, 64, 100, 100, 0, 0.15),
    ("LSTM H=512 B=1", "lstm", "forward", 100, 1, 512, 512, 0, 0.15),
    ("LSTM H=1024 B=1", "lstm", "forward", 100, 1, 1024, 1024, 0, 0.25),
    ("LSTM H=1024 B=64", "lstm", "forward", 100, 64, 1024, 1024, 0, 0.6),
    ("GRU H=512 B=1", "gru", "forward", 100, 1, 512, 512, 0, None),
]


def timing_suite(lib, results, variants):
    rows = []
    for name, cell, direction, T, B, I, H, P, goal in TIMED:
        bi = direction == "bidirectional"
        layer = FusedLayer(lib, cell, direction, T, B, I, H, P, seed=11)
        chk_rows = [0] if B == 1 else [0, B - 1]
        chk = layer.check_rows(chk_rows, cell, direction)
        results.append({"name": f"[timed shape] {name} rows {chk_rows}", "passed": bool(
            chk["out"] <= TOL_F32 and chk["final_h"] <= TOL_F32 and chk["unwritten"] == 0 and chk["watchdog"] == 0),
            "errors": chk, "plan": layer.f.describe()})
        fused = time_fused_layer([layer])
        cud = time_cudnn(cell, I, H, bi, B, T)
        rows.append({"case": name, "plan": layer.f.describe(), "fused": fused, "cudnn": cud, "goal_ms": goal})
        log(f"{name}: kernel {fused['kernel_graph']['median']:.4f} ms (graph) / {fused['kernel_plain']['median']:.4f} "
            f"plain; gemm+kernel {fused['full_graph']['median']:.4f} graph; cuDNN {cud['plain']['median']:.4f} / "
            f"{cud['graph']['median']:.4f} graph | {layer.f.describe()}")
        del layer
    # ELMo biLM: 2 layers x 2 directions, LSTM 4096 cells, projection 512, input 512, clips 3.
    for wt in ("f32", "f16", "bf16"):
        l1 = FusedLayer(lib, "lstm", "bidirectional", 100, 1, 512, 4096, 512, wt=wt, cell_clip=3.0, proj_clip=3.0,
                        seed=21)
        l2 = FusedLayer(lib, "lstm", "bidirectional", 100, 1, 1024, 4096, 512, wt=wt, cell_clip=3.0, proj_clip=3.0,
                        seed=22, x=l1.out)
        chk = l1.check_rows([0], "lstm", "bidirectional", 3.0, 3.0)
        results.append({"name": f"[timed shape] ELMo layer 1 {wt}", "passed": bool(
            chk["out"] <= TOL_F32 and chk["unwritten"] == 0 and chk["watchdog"] == 0), "errors": chk,
            "plan": l1.f.describe()})
        fused = time_fused_layer([l1, l2])
        entry = {"case": f"ELMo biLM 2 layers B=1 weights {wt}", "plan": l1.f.describe(), "fused": fused,
                 "goal_ms": 1.5 if wt != "f32" else None}
        if wt == "f32":
            entry["cudnn"] = time_cudnn("lstm", 512, 4096, True, 1, 100, P=512, layers=2)
        elif wt == "f16":
            entry["cudnn"] = time_cudnn("lstm", 512, 4096, True, 1, 100, P=512, layers=2, dtype=torch.float16)
        rows.append(entry)
        log(f"ELMo {wt}: kernels {fused['kernel_graph']['median']:.4f} ms graph; gemm+kernels "
            f"{fused['full_graph']['median']:.4f}; cuDNN {entry.get('cudnn', {}).get('graph', {}).get('median')} | "
            f"{l1.f.describe()}")
        del l1, l2
        torch.cuda.empty_cache()
    # Variants for NOTES.md: the exchange, the weight placement.
    for name, kw, tun in [
        ("LSTM H=512 B=1 tagged", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512), {"mode": 1}),
        ("LSTM H=512 B=1 counter", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512), {"mode": 2}),
        ("LSTM H=1024 B=1 tagged", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024), {"mode": 1}),
        ("LSTM H=1024 B=1 counter", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024), {"mode": 2}),
        ("LSTM H=1024 B=64 tagged", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024), {"mode": 1}),
        ("LSTM H=1024 B=64 counter", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024), {"mode": 2}),
        ("biLSTM H=100 B=1 local", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100), {"mode": 0}),
        ("biLSTM H=100 B=1 small", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 5}),
        ("biLSTM H=100 B=64 small", dict(cell="lstm", direction="bidirectional", T=100, B=64, I=100, H=100),
         {"mode": 5}),
        ("biLSTM H=100 B=1 small one block", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 5, "units_per_block": 100}),
        ("biLSTM H=100 B=1 small cluster 2", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 5, "units_per_block": 50}),
        ("biLSTM H=100 B=1 small cluster 4", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 5, "units_per_block": 25}),
        ("biLSTM H=100 B=1 small cluster 8", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 5, "units_per_block": 13}),
        ("biLSTM H=100 B=64 local", dict(cell="lstm", direction="bidirectional", T=100, B=64, I=100, H=100),
         {"mode": 0}),
        ("biLSTM H=100 B=1 tagged", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 1}),
        ("biLSTM H=100 B=1 cluster 2", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 3, "units_per_block": 50}),
        ("biLSTM H=100 B=1 cluster 4", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 3, "units_per_block": 25}),
        ("biLSTM H=100 B=1 cluster 8", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
         {"mode": 3, "units_per_block": 13}),
        ("LSTM H=256 B=1 cluster 8", dict(cell="lstm", direction="forward", T=100, B=1, I=256, H=256),
         {"mode": 3, "units_per_block": 32}),
        ("LSTM H=256 B=1 tagged", dict(cell="lstm", direction="forward", T=100, B=1, I=256, H=256), {"mode": 1}),
        ("biLSTM H=100 B=1 local all-smem-weights", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100,
                                                         H=100), {"mode": 0, "max_reg_chunks": 0,
                                                                  "stream_location": 0}),
        ("LSTM H=1024 B=1 tagged weights in smem+global", dict(cell="lstm", direction="forward", T=100, B=1, I=1024,
                                                               H=1024), {"mode": 1, "max_reg_chunks": 0}),
        ("LSTM H=1024 B=1 tagged weights all global", dict(cell="lstm", direction="forward", T=100, B=1, I=1024,
                                                          H=1024), {"mode": 1, "max_reg_chunks": 0,
                                                                    "stream_location": 1}),
    ]:
        try:
            l = FusedLayer(lib, seed=5, tuning=tun, **kw)
            r = time_fused_layer([l], plain=False)
            variants.append({"variant": name, "kernel_graph_ms": r["kernel_graph"]["median"], "plan": l.f.describe()})
            log(f"variant {name}: {r['kernel_graph']['median']:.4f} ms | {l.f.describe()}")
            del l
        except Exception as ex:  # noqa: BLE001
            variants.append({"variant": name, "error": str(ex)})
            log(f"variant {name}: ERROR {ex}")
    return rows


DEBUG_STEPS = 32
DEBUG_SLOTS = 3 + 5 * DEBUG_STEPS + 3
PROFILE_CASES = {
    "local100": ("biLSTM H=100 B=1 (auto)", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
                 None),
    "local100_local": ("biLSTM H=100 B=1 local", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100,
                                                      H=100), {"mode": 0}),
    "small100": ("biLSTM H=100 B=1 small", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
                 {"mode": 5}),
    "small100_unstaged": ("biLSTM H=100 B=1 small, unstaged weights",
                          dict(cell="lstm", direction="bidirectional", T=100, B=1, I=100, H=100),
                          {"mode": 5, "stage_weights": 0}),
    "local100_cluster": ("biLSTM H=100 B=1 cluster", dict(cell="lstm", direction="bidirectional", T=100, B=1,
                                                          I=100, H=100), {"mode": 3}),
    "h512_tagged": ("LSTM H=512 B=1 tagged", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512),
                    {"mode": 1}),
    "h512_wide": ("LSTM H=512 B=1 small wide, cluster of 16", dict(cell="lstm", direction="forward", T=100, B=1,
                                                                   I=512, H=512),
                  {"mode": 5, "units_per_block": 32, "lanes_per_unit": 8}),
    "h512_wide8": ("LSTM H=512 B=1 small wide, cluster of 16, 8 register chunks",
                   dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512),
                   {"mode": 5, "units_per_block": 32, "lanes_per_unit": 8, "max_reg_chunks": 8}),
    "h512_counter": ("LSTM H=512 B=1 counter", dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512),
                     {"mode": 2}),
    "h1024_tagged": ("LSTM H=1024 B=1 tagged", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024),
                     {"mode": 1}),
    "h1024_b64": ("LSTM H=1024 B=64 (auto)", dict(cell="lstm", direction="forward", T=100, B=64, I=1024, H=1024),
                  None),
    "elmo16": ("ELMo layer f16", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512,
                                      wt="f16", cell_clip=3.0, proj_clip=3.0), None),
    # The same plans with the prologue's per-thread weight loads instead of the staged copy.
    "h1024_tagged_unstaged": ("LSTM H=1024 B=1 tagged, unstaged weights",
                              dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024),
                              {"mode": 1, "stage_weights": 0}),
    "h512_tagged_unstaged": ("LSTM H=512 B=1 tagged, unstaged weights",
                             dict(cell="lstm", direction="forward", T=100, B=1, I=512, H=512),
                             {"mode": 1, "stage_weights": 0}),
    "elmo16_norc": ("ELMo layer f16, phase B fetching all of m", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512, wt="f16", cell_clip=3.0,
        proj_clip=3.0), {"proj_reduce": 0}),
    "elmo8": ("ELMo layer int8", dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512,
                                      wt="i8", cell_clip=3.0, proj_clip=3.0), None),
    "elmo8_norc": ("ELMo layer int8, phase B fetching all of m", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512, wt="i8", cell_clip=3.0,
        proj_clip=3.0), {"proj_reduce": 0}),
    "elmo8_general": ("ELMo layer int8, general kernel (tagged)", dict(
        cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512, wt="i8", cell_clip=3.0,
        proj_clip=3.0), {"mode": 1}),
    "h1024i8": ("LSTM H=1024 B=1 int8 (auto)", dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024,
                                                    wt="i8"), None),
    "h1024i8_general": ("LSTM H=1024 B=1 int8, general kernel (tagged)",
                        dict(cell="lstm", direction="forward", T=100, B=1, I=1024, H=1024, wt="i8"), {"mode": 1}),
    "elmo16_unstaged": ("ELMo layer f16, unstaged weights",
                        dict(cell="lstm", direction="bidirectional", T=100, B=1, I=512, H=4096, P=512, wt="f16",
                             cell_clip=3.0, proj_clip=3.0), {"stage_weights": 0}),
}


def phase_profile(lib, key):
    """Per-phase cycle counts of block 0 (clock64 stamps inside the kernel), averaged over steps 2..31."""
    label, kw, tun = PROFILE_CASES[key]
    l = FusedLayer(lib, seed=9, tuning=tun, **kw)
    dbg = torch.zeros(DEBUG_SLOTS, dtype=torch.int64, device="cuda")
    l.full()
    lib.L.frg_set_debug_clock(dbg.data_ptr())
    l.f()
    torch.cuda.synchronize()
    lib.L.frg_set_debug_clock(0)
    c = dbg.cpu().numpy().astype(np.int64)
    steps = [c[3 + 5 * s: 8 + 5 * s] for s in range(DEBUG_STEPS)]
    nxt = [c[3 + 5 * (s + 1)] if s + 1 < DEBUG_STEPS else c[3 + 5 * DEBUG_STEPS] for s in range(DEBUG_STEPS)]
    sel = range(2, DEBUG_STEPS - 1)
    avg = lambda f: float(np.mean([f(s) for s in sel]))  # noqa: E731
    total_ns = float(c[DEBUG_SLOTS - 1] - c[DEBUG_SLOTS - 2])
    total_cyc = float(c[3 + 5 * DEBUG_STEPS] - c[0])
    prof = {
        "case": label, "plan": l.f.describe(),
        "weights_load_cyc": float(c[1] - c[0]), "prologue_cyc": float(c[2] - c[0]),
        "step_cyc": avg(lambda s: nxt[s] - steps[s][0]),
        "fetch_cyc": avg(lambda s: steps[s][1] - steps[s][0]),
        "dot_cyc": avg(lambda s: steps[s][2] - steps[s][1]),
        "cell_cyc": avg(lambda s: steps[s][3] - steps[s][2]),
        "rest_cyc": avg(lambda s: steps[s][4] - steps[s][3]),
        "kernel_ns_globaltimer": total_ns,
        "cycles_per_ns": total_cyc / total_ns if total_ns > 0 else float("nan"),
        "kernel_graph_ms": time_fused_layer([l], plain=False)["kernel_graph"]["median"],
    }
    log("profile " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in prof.items()))
    return prof


def sweep(lib):
    out = []
    for label, cell, direction, I, H in (("biLSTM H=100", "lstm", "bidirectional", 100, 100),
                                         ("LSTM H=512", "lstm", "forward", 512, 512)):
        for B in (1, 2, 4, 8, 16, 32, 64, 128):
            l = FusedLayer(lib, cell, direction, 100, B, I, H, seed=B)
            f = time_fused_layer([l], plain=False)
            c = time_cudnn(cell, I, H, direction == "bidirectional", B, 100, plain=False)
            out.append({"config": label, "B": B, "kernel_graph": f["kernel_graph"]["median"],
                        "full_graph": f["full_graph"]["median"], "cudnn_graph": c["graph"]["median"],
                        "plan": l.f.describe()})
            log(f"sweep {label} B={B}: kernel {f['kernel_graph']['median']:.4f} gemm+kernel "
                f"{f['full_graph']['median']:.4f} cuDNN graph {c['graph']['median']:.4f}")
            del l
    return out


def plot(sweep_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = sorted(set(r["config"] for r in sweep_rows))
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.2))
    if len(configs) == 1:
        axes = [axes]
    for ax, cfg in zip(axes, configs):
        rs = [r for r in sweep_rows if r["config"] == cfg]
        bs = [r["B"] for r in rs]
        ax.plot(bs, [r["kernel_graph"] for r in rs], "o-", label="fused kernel (graph)")
        ax.plot(bs, [r["full_graph"] for r in rs], "s-", label="input GEMM + fused kernel (graph)")
        ax.plot(bs, [r["cudnn_graph"] for r in rs], "^-", label="cuDNN torch.nn.LSTM (graph)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch B (T=100, fp32)")
        ax.set_ylabel("median latency, ms")
        ax.set_title(cfg)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(torch.cuda.get_device_name())
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--profile-only", default="", help="comma-separated PROFILE_CASES keys: run just those")
    ap.add_argument("--ncu-case", default="", help="run one PROFILE_CASES key a few times (for ncu), nothing else")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lib = Lib(args.lib)
    dev = {"name": torch.cuda.get_device_name(), "limits": list(lib.limits), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version()}
    log("device:", dev)
    summary = {"device": dev}
    if args.ncu_case:
        label, kw, tun = PROFILE_CASES[args.ncu_case]
        l = FusedLayer(lib, seed=9, tuning=tun, **kw)
        for _ in range(4):
            l.full()
        torch.cuda.synchronize()
        log("ncu case done:", label, l.f.describe())
        return 0
    profiles = []
    for key in [k for k in args.profile_only.split(",") if k] or list(PROFILE_CASES):
        try:
            profiles.append(phase_profile(lib, key))
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    summary["profiles"] = profiles
    if args.profile_only:
        with open(os.path.join(args.out, "profile.json"), "w") as fjson:
            json.dump(summary, fjson, indent=1, default=str)
        return 0
    results = []
    try:
        results += correctness_suite(lib)
        results.append(zero_length_case(lib))
        results += watchdog_poison_cases(lib)
        if hasattr(lib.L, "frg_message_is_runtime_failure"):
            results.append(error_kind_case(lib))
        results.append({"name": "graph replay == eager (tagged, counter)", "passed": all(graph_matches_eager(lib).values()),
                        "errors": {}, "plan": ""})
    except Exception:  # noqa: BLE001
        log(traceback.format_exc())
        results.append({"name": "correctness suite crashed", "passed": False, "errors": {}, "plan": ""})
    for r in results:
        e = r["errors"]
        log(f"{'PASS' if r['passed'] else 'FAIL'} {r['name']}: " +
            " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()) +
            f" | {r['plan']}")
    summary["correctness"] = results
    variants = []
    timed = []
    sw = []
    if not args.skip_timing:
        try:
            timed = timing_suite(lib, results, variants)
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    summary["timing"] = timed
    summary["variants"] = variants
    if not args.skip_sweep:
        try:
            sw = sweep(lib)
            plot(sw, os.path.join(args.out, "latency_vs_batch.png"))
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
    summary["sweep"] = sw
    with open(os.path.join(args.out, "results.json"), "w") as fjson:
        json.dump(summary, fjson, indent=1, default=str)
    if sw:
        with open(os.path.join(args.out, "sweep.csv"), "w") as fcsv:
            fcsv.write("config,B,kernel_graph_ms,full_graph_ms,cudnn_graph_ms\n")
            for r in sw:
                fcsv.write(f"{r['config']},{r['B']},{r['kernel_graph']:.5f},{r['full_graph']:.5f},"
                           f"{r['cudnn_graph']:.5f}\n")
    # Short tables last.
    npass = sum(r["passed"] for r in results)
    log(f"\n== correctness: {npass}/{len(results)} passed on {dev['name']}")
    for r in results:
        if not r["passed"]:
            log(f"   FAILED: {r['name']} {r['errors']}")
    if timed:
        log("== timing (median ms, T=100): kernel graph | kernel plain | gemm+kernel graph | cuDNN plain | "
            "cuDNN graph | goal")
        for t in timed:
            f, c = t["fused"], t.get("cudnn", {})
            cp = c.get("plain", {}).get("median", float("nan"))
            cg = c.get("graph", {}).get("median", float("nan"))
            log(f"{t['case']:<36} {f['kernel_graph']['median']:8.4f} {f['kernel_plain']['median']:8.4f} "
                f"{f['full_graph']['median']:8.4f} {cp:8.4f} {cg:8.4f} {t['goal_ms']}")
    with open(os.path.join(args.out, "log.txt"), "w") as flog:
        flog.write("\n".join(LOG_LINES) + "\n")
    return 0 if npass == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
