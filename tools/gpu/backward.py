#!/usr/bin/env python3
"""Device harness for the CUDA backward (CudaBackward): correctness against float64 autograd of an independent
PyTorch transcription of the cell equations (tests/numpy_reference.py's, step by step), against cuDNN's gradients
(torch.nn.LSTM) where cuDNN has the same model, and timing of a training step against cuDNN in the same process.

    python3 tools/gpu/backward.py --lib BUILD/libfused_rnn_gpu.so --out OUT [--skip-timing]

Every gradient output is poisoned with NaN before each call; d_output holds large garbage past each length (the
backward must ignore it); lengths are ragged (0, 1 and T included); each case runs twice and must be bitwise equal.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import CELL, DIRECTION, FusedRnn, Lib, graph_of, poisoned, ptr, rel_err, time_ms, to_dev  # noqa: E402
from harness_common import make_inputs  # noqa: E402

TOL = 1e-5  # relative L2 error of each gradient against float64 autograd


class FusedBwd:
    def __init__(self, lib, cell, direction, T, B, H, P=0, time_major=False, cell_clip=0.0, proj_clip=0.0):
        L = lib.L
        P64, PF, PU64 = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint64)
        L.frg_backward_workspace_bytes.restype = ctypes.c_int64
        L.frg_backward_workspace_bytes.argtypes = [P64, PF]
        L.frg_backward.restype = ctypes.c_char_p
        L.frg_backward.argtypes = [P64, PF, PU64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64]
        self.L = L
        self.shape = (ctypes.c_int64 * 7)(CELL[cell], DIRECTION[direction], T, B, H, P, int(time_major))
        self.clips = (ctypes.c_float * 2)(cell_clip, proj_clip)
        self.ws_bytes = L.frg_backward_workspace_bytes(self.shape, self.clips)
        self.ws = torch.empty(max(self.ws_bytes, 256), dtype=torch.uint8, device="cuda")
        self.ptrs = (ctypes.c_uint64 * 16)()

    NAMES = ["U", "Pk", "lengths", "h0", "c0", "out", "reserve", "d_out", "d_fh", "d_fc", "d_x", "d_U", "d_rb",
             "d_Pk", "d_h0", "d_c0"]

    def bind(self, **t):
        self.keep = t
        for i, n in enumerate(self.NAMES):
            self.ptrs[i] = ptr(t.get(n))

    def __call__(self):
        err = self.L.frg_backward(self.shape, self.clips, self.ptrs, self.ws.data_ptr(), self.ws_bytes,
                                  torch.cuda.current_stream().cuda_stream)
        if err:
            raise RuntimeError(err.decode())


def set_backward_plan(lib, persistent, reg_rows=-1):
    """The backward's plan for the next calls: -1 automatic, 0 the per-step kernels, 1 the persistent kernel; and
    the persistent kernel's k-rows of U per thread in registers (-1 automatic, 0, 8, 16, 32)."""
    lib.L.frg_set_backward_persistent(ctypes.c_int(persistent))
    lib.L.frg_set_backward_reg_rows(ctypes.c_int(reg_rows))


# ---- float64 autograd reference -----------------------------------------------------------------------------

def ref_forward64(cell, direction, x, U, Pk, rb, lengths, h0, c0, cell_clip, proj_clip):
    """x [B, T, D*G*H] (batch-major), U [D, R, G*H], Pk [D, H, P] or None, rb [D, G*H] or None, h0 [D, B, R],
    c0 [D, B, H]. Returns output [B, T, D*R] (zero past each length), final_h, final_c; differentiable."""
    B, T, _ = x.shape
    D, R, GH = U.shape
    lstm = cell == "lstm"
    H = GH // (4 if lstm else 3)
    zeros = torch.zeros(R, dtype=x.dtype)
    pieces, fhs, fcs = {}, [], []
    clip = (lambda v, c: torch.clamp(v, -c, c) if c > 0 else v)
    for d in range(D):
        rev = direction == "reverse" or (direction == "bidirectional" and d == 1)
        fh_d, fc_d = [], []
        for b in range(B):
            h = h0[d, b]
            c = c0[d, b] if lstm else None
            n = int(lengths[b])
            for s in range(n):
                t = n - 1 - s if rev else s
                xt = x[b, t, d * GH:(d + 1) * GH]
                if lstm:
                    z = xt + h @ U[d]
                    i, f = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H])
                    g, o = torch.tanh(z[2 * H:3 * H]), torch.sigmoid(z[3 * H:])
                    c = clip(f * c + i * g, cell_clip)
                    m = o * torch.tanh(c)
                    h = clip(m @ Pk[d], proj_clip) if Pk is not None else m
                else:
                    a = h @ U[d] + (rb[d] if rb is not None else 0.0)
                    zg, rg = torch.sigmoid(xt[:H] + a[:H]), torch.sigmoid(xt[H:2 * H] + a[H:2 * H])
                    ng = torch.tanh(xt[2 * H:] + rg * a[2 * H:])
                    h = zg * h + (1 - zg) * ng
                pieces[(b, t, d)] = h
            fh_d.append(h)
            if lstm:
                fc_d.append(c)
        fhs.append(torch.stack(fh_d))
        if lstm:
            fcs.append(torch.stack(fc_d))
    out = torch.stack([torch.stack([torch.cat([pieces.get((b, t, d), zeros) for d in range(D)]) for t in range(T)])
                       for b in range(B)])
    return out, torch.stack(fhs), (torch.stack(fcs) if lstm else None)


def check_case(lib, name, cell, direction, T, B, H, P=0, cell_clip=0.0, proj_clip=0.0, time_major=False,
               with_init=True, gru_bias=True, final_grads=True, seed=0, perturb_reference=0.0, fwd_tuning=None,
               bwd_persistent=-1, bwd_regs=-1):
    rng = np.random.default_rng(seed)
    inp = make_inputs(rng, cell, direction, T, B, H, P, True, with_init, gru_bias)
    lstm = cell == "lstm"
    G, D, R = (4 if lstm else 3), (2 if direction == "bidirectional" else 1), (P if P else H)
    F = (5 * H + P) if lstm else 4 * H
    lengths = inp["lengths"]
    # Output gradients: random at valid positions, large garbage past each length (must be ignored).
    d_out = rng.standard_normal((B, T, D * R)).astype(np.float32)
    for b in range(B):
        d_out[b, lengths[b]:] = 1e3 * rng.standard_normal((T - lengths[b], D * R))
    d_fh = rng.standard_normal((D, B, R)).astype(np.float32) if final_grads else None
    d_fc = rng.standard_normal((D, B, H)).astype(np.float32) if (final_grads and lstm) else None
    tm = (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2))) if time_major else (lambda a: a)

    # Our forward (training: writes the reserve), then our backward.
    fwd = FusedRnn(lib, cell, direction, T, B, H, P, time_major, cell_clip, proj_clip, tuning=fwd_tuning)
    dev = {k: to_dev(v) for k, v in dict(U=inp["U"], Pk=inp["Pk"], rb=inp["rb"], lengths=lengths, h0=inp["h0"],
                                         c0=inp["c0"]).items()}
    x_dev = to_dev(tm(inp["x"]))
    out = poisoned((T, B, D * R) if time_major else (B, T, D * R))
    fh, fc = poisoned((D, B, R)), (poisoned((D, B, H)) if lstm else None)
    reserve = poisoned((D, B, T, F))
    fwd.bind(x_dev, w_rec=dev["U"], rec_bias=dev["rb"], w_proj=dev["Pk"], lengths=dev["lengths"], h0=dev["h0"],
             c0=dev["c0"], out=out, final_h=fh, final_c=fc, reserve=reserve)
    fwd()
    bwd = FusedBwd(lib, cell, direction, T, B, H, P, time_major, cell_clip, proj_clip)
    grads = dict(d_x=poisoned(tuple(x_dev.shape)), d_U=poisoned((D, R, G * H)),
                 d_rb=poisoned((D, G * H)) if not lstm else None, d_Pk=poisoned((D, H, P)) if P else None,
                 d_h0=poisoned((D, B, R)), d_c0=poisoned((D, B, H)) if lstm else None)
    bwd.bind(U=dev["U"], Pk=dev["Pk"], lengths=dev["lengths"], h0=dev["h0"], c0=dev["c0"], out=out,
             reserve=reserve, d_out=to_dev(tm(d_out)), d_fh=to_dev(d_fh), d_fc=to_dev(d_fc), **grads)
    runs = []
    set_backward_plan(lib, bwd_persistent, bwd_regs)
    try:
        for _ in range(2):
            for g in grads.values():
                if g is not None:
                    g.fill_(float("nan"))
            bwd()
            torch.cuda.synchronize()
            runs.append({k: v.cpu().numpy().copy() for k, v in grads.items() if v is not None})
    finally:
        set_backward_plan(lib, -1)
    got = runs[0]
    bitwise = all(np.array_equal(runs[0][k], runs[1][k], equal_nan=True) for k in got)
    if time_major:
        got["d_x"] = got["d_x"].transpose(1, 0, 2)

    # float64 autograd of the same network.
    t64 = (lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True))
    x = t64(inp["x"])
    U = t64(inp["U"])
    Pk = t64(inp["Pk"]) if P else None
    rb = t64(inp["rb"]) if inp["rb"] is not None else None
    h0 = t64(inp["h0"] if inp["h0"] is not None else np.zeros((D, B, R)))
    c0 = t64(inp["c0"] if inp["c0"] is not None else np.zeros((D, B, H)))
    o64, fh64, fc64 = ref_forward64(cell, direction, x, U, Pk, rb, lengths, h0, c0 if lstm else None, cell_clip,
                                    proj_clip)
    d_out_ref = d_out.astype(np.float64)
    d_out_ref[0, 0, 0] += perturb_reference  # negative control: the comparison must notice this
    loss = (o64 * torch.tensor(d_out_ref)).sum()
    if d_fh is not None:
        loss = loss + (fh64 * torch.tensor(d_fh, dtype=torch.float64)).sum()
    if d_fc is not None:
        loss = loss + (fc64 * torch.tensor(d_fc, dtype=torch.float64)).sum()
    wrt = [x, U, h0] + ([c0] if lstm else []) + ([Pk] if P else []) + ([rb] if rb is not None else [])
    g64 = torch.autograd.grad(loss, wrt, allow_unused=True)
    g64 = [np.zeros(w.shape) if g is None else g.numpy() for w, g in zip(wrt, g64)]
    want = {"d_x": g64[0], "d_U": g64[1], "d_h0": g64[2]}
    i = 3
    if lstm:
        want["d_c0"] = g64[i]
        i += 1
    if P:
        want["d_Pk"] = g64[i]
        i += 1
    if rb is not None:
        want["d_rb"] = g64[i]
    errs = {k: rel_err(got[k], want[k]) for k in want}
    past = np.zeros((B, T), bool)
    for b in range(B):
        past[b, lengths[b]:] = True
    errs["d_x_nonzero_past_len"] = int(np.count_nonzero(got["d_x"][past]))
    errs["unwritten"] = int(sum(np.sum(~np.isfinite(v)) for v in got.values()))
    errs["bitwise_repeat"] = bool(bitwise)
    ok = (all(errs[k] <= TOL for k in want) and errs["d_x_nonzero_past_len"] == 0 and errs["unwritten"] == 0
          and bitwise)
    return {"name": name, "passed": bool(ok), "errors": errs}


def correctness(lib, only=None):
    small = dict(T=9, B=6, H=20)
    cases = []
    for direction in ("forward", "reverse", "bidirectional"):
        for tmaj in (False, True):
            tag = f"{direction}{' time-major' if tmaj else ''}"
            cases.append((f"lstm {tag}", dict(cell="lstm", direction=direction, time_major=tmaj, **small)))
            cases.append((f"lstm+proj+clips {tag}", dict(cell="lstm", direction=direction, time_major=tmaj, P=12,
                                                         cell_clip=0.9, proj_clip=0.35, **small)))
            cases.append((f"gru {tag}", dict(cell="gru", direction=direction, time_major=tmaj, **small)))
    cases += [
        ("lstm+cell clip only bi", dict(cell="lstm", direction="bidirectional", cell_clip=0.8, **small)),
        ("lstm+proj no clips bi", dict(cell="lstm", direction="bidirectional", P=7, **small)),
        ("lstm no init, no final grads", dict(cell="lstm", direction="bidirectional", with_init=False,
                                              final_grads=False, **small)),
        ("gru no bias no init", dict(cell="gru", direction="bidirectional", gru_bias=False, with_init=False, **small)),
        ("gru H=13 (odd)", dict(cell="gru", direction="bidirectional", T=7, B=5, H=13)),
        ("lstm B=1 T=1", dict(cell="lstm", direction="bidirectional", T=1, B=1, H=16)),
        ("lstm B=19 (row groups of 16)", dict(cell="lstm", direction="bidirectional", T=6, B=19, H=40)),
        ("lstm H=100 B=3 T=12", dict(cell="lstm", direction="bidirectional", T=12, B=3, H=100)),
        ("lstm+proj H=70 P=33 B=9", dict(cell="lstm", direction="forward", T=8, B=9, H=70, P=33, cell_clip=1.0,
                                         proj_clip=0.5)),
        ("gru H=96 B=17", dict(cell="gru", direction="reverse", T=8, B=17, H=96)),
        # B > 8 with K = G*H >= 512: the tiled carry with its K split over several blocks.
        ("lstm B=12 H=256 (split-K carry)", dict(cell="lstm", direction="forward", T=5, B=12, H=256)),
        ("gru B=10 H=200 bi (split-K carry)", dict(cell="gru", direction="bidirectional", T=4, B=10, H=200)),
        # >= 512 positions on small weights: the weight gradients split over positions, summed in order.
        ("lstm+proj+clips B=40 T=16 bi (split weight gradients)",
         dict(cell="lstm", direction="bidirectional", T=16, B=40, H=32, P=16, cell_clip=0.9, proj_clip=0.4)),
        ("gru B=33 T=16 (split weight gradients)", dict(cell="gru", direction="forward", T=16, B=33, H=16)),
        ("lstm+proj B=70 H=160 P=96 (two row tiles)", dict(cell="lstm", direction="reverse", T=3, B=70, H=160,
                                                           P=96, cell_clip=1.0, proj_clip=0.6)),
        # The training forward on float32 tensor cores (3xTF32, mode 4) writes the reserve the backward reads.
        ("lstm B=40 H=64 bi clip, forward on tensor cores", dict(cell="lstm", direction="bidirectional", T=7, B=40,
                                                                 H=64, cell_clip=0.8, fwd_tuning={"mode": 4})),
        ("gru B=24 H=72 time-major, forward on tensor cores", dict(cell="gru", direction="forward", T=6, B=24, H=72,
                                                                   time_major=True, fwd_tuning={"mode": 4})),
    ]
    # The persistent small-H kernel (automatic for the small cases above): its limits, forced, and the per-step
    # kernels forced on shapes the automatic plan now gives the persistent kernel, so both paths stay checked.
    cases += [
        ("persistent: lstm H=112 (U^T 200 KB of shared memory) B=5 bi clip",
         dict(cell="lstm", direction="bidirectional", T=6, B=5, H=112, cell_clip=0.7, bwd_persistent=1)),
        ("persistent: gru H=130 B=4 reverse", dict(cell="gru", direction="reverse", T=6, B=4, H=130,
                                                   bwd_persistent=1)),
        ("persistent: lstm B=300 H=24 bi (several rounds of blocks)",
         dict(cell="lstm", direction="bidirectional", T=5, B=300, H=24, bwd_persistent=1)),
        ("persistent: gru H=6 T=1 B=7 time-major no init", dict(cell="gru", direction="forward", T=1, B=7, H=6,
                                                                time_major=True, with_init=False,
                                                                bwd_persistent=1)),
        # U rows held in registers (auto: 32 a thread where a slice has them): a short last slice (GRU H=110:
        # 12 of 32 rows), register rows past every slice's end (H=20 forced to 32), and each size forced.
        ("persistent: gru H=110 B=3 bi (short last slice, auto registers)",
         dict(cell="gru", direction="bidirectional", T=7, B=3, H=110, bwd_persistent=1)),
        ("persistent regs=32 forced: lstm H=20 (register rows past every slice)",
         dict(cell="lstm", direction="bidirectional", cell_clip=0.8, bwd_persistent=1, bwd_regs=32, **small)),
        ("persistent regs=0 forced: lstm H=100 B=3 T=12",
         dict(cell="lstm", direction="bidirectional", T=12, B=3, H=100, bwd_persistent=1, bwd_regs=0)),
        ("persistent regs=8 forced: gru H=64 B=5", dict(cell="gru", direction="reverse", T=8, B=5, H=64,
                                                         bwd_persistent=1, bwd_regs=8)),
        ("persistent regs=16 forced: lstm H=48 B=4 time-major",
         dict(cell="lstm", direction="forward", T=8, B=4, H=48, time_major=True, bwd_persistent=1, bwd_regs=16)),
        ("per-step kernels forced: lstm bi clip", dict(cell="lstm", direction="bidirectional", cell_clip=0.8,
                                                       bwd_persistent=0, **small)),
        ("per-step kernels forced: gru H=13 (odd)", dict(cell="gru", direction="bidirectional", T=7, B=5, H=13,
                                                         bwd_persistent=0)),
        ("per-step kernels forced: lstm H=100 B=3 T=12", dict(cell="lstm", direction="bidirectional", T=12, B=3,
                                                              H=100, bwd_persistent=0)),
    ]
    results = []
    for i, (name, kw) in enumerate(cases):
        if only and only not in name:
            continue
        r = check_case(lib, name, seed=100 + i, **kw)
        results.append(r)
        e = r["errors"]
        worst = max(v for k, v in e.items() if k.startswith("d_") and isinstance(v, float))
        print(f"{'PASS' if r['passed'] else 'FAIL'} {name}: worst rel {worst:.1e} "
              + " ".join(f"{k}={v:.1e}" for k, v in e.items() if isinstance(v, float))
              + f" past_len_nonzero={e['d_x_nonzero_past_len']} unwritten={e['unwritten']} "
              f"bitwise={e['bitwise_repeat']}", flush=True)
    if only:  # a subset (e.g. under compute-sanitizer): no control cases
        return results
    results.append(empty_case(lib))
    results.append(refusal_case(lib))
    # Negative control: a reference whose one output gradient moved by 1e-2 must fail the same comparison.
    ctl = check_case(lib, "control", "lstm", "bidirectional", seed=99, perturb_reference=1e-2, **small)
    detected = not ctl["passed"]
    print(f"{'PASS' if detected else 'FAIL'} negative control (reference d_output[0,0,0] + 1e-2) detected: "
          f"d_x rel {ctl['errors']['d_x']:.1e}", flush=True)
    results.append({"name": "negative control detected", "passed": detected, "errors": ctl["errors"]})
    return results


def refusal_case(lib):
    """The persistent kernel forced where it cannot run (a projection; U too large): a message, no launch."""
    msgs = []
    for kw in (dict(cell="lstm", direction="forward", T=3, B=2, H=16, P=8), dict(cell="lstm", direction="forward",
                                                                                T=3, B=2, H=256),
               dict(cell="lstm", direction="forward", T=3, B=2, H=16, regs=12)):  # not a register-row size
        D, H, P = 1, kw["H"], kw.get("P", 0)
        R = P or H
        bwd = FusedBwd(lib, kw["cell"], kw["direction"], kw["T"], kw["B"], H, P)
        cu = dict(device="cuda")
        bwd.bind(U=torch.zeros(D, R, 4 * H, **cu), Pk=torch.zeros(D, H, P, **cu) if P else None,
                 out=torch.zeros(kw["B"], kw["T"], R, **cu), reserve=torch.zeros(D, kw["B"], kw["T"], 5 * H + P, **cu),
                 d_out=torch.zeros(kw["B"], kw["T"], R, **cu), d_x=torch.zeros(kw["B"], kw["T"], 4 * H, **cu),
                 d_U=torch.zeros(D, R, 4 * H, **cu), d_Pk=torch.zeros(D, H, P, **cu) if P else None,
                 d_h0=torch.zeros(D, kw["B"], R, **cu), d_c0=torch.zeros(D, kw["B"], H, **cu))
        set_backward_plan(lib, 1, kw.get("regs", -1))
        try:
            bwd()
            msgs.append(None)
        except RuntimeError as e:
            msgs.append(str(e))
        finally:
            set_backward_plan(lib, -1)
        torch.cuda.synchronize()
    ok = all(m is not None and "persistent" in m for m in msgs)
    print(f"{'PASS' if ok else 'FAIL'} persistent backward forced where it cannot run: refused ({msgs})", flush=True)
    return {"name": "persistent backward refusal", "passed": bool(ok), "errors": {"messages": msgs}}


def empty_case(lib):
    """B=0 and T=0: weight gradients zero, state gradients pass through."""
    ok = True
    for T, B in ((0, 3), (5, 0)):
        D, H = 2, 8
        bwd = FusedBwd(lib, "lstm", "bidirectional", T, B, H)
        d_fh = torch.randn(D, B, H, device="cuda")
        d_fc = torch.randn(D, B, H, device="cuda")
        g = dict(d_U=poisoned((D, H, 4 * H)), d_h0=poisoned((D, B, H)), d_c0=poisoned((D, B, H)))
        bwd.bind(U=torch.randn(D, H, 4 * H, device="cuda"), d_fh=d_fh, d_fc=d_fc, **g)
        bwd()
        torch.cuda.synchronize()
        ok &= bool(torch.all(g["d_U"] == 0)) and torch.equal(g["d_h0"], d_fh) and torch.equal(g["d_c0"], d_fc)
    print(f"{'PASS' if ok else 'FAIL'} empty batch / zero steps", flush=True)
    return {"name": "empty batch / zero steps", "passed": bool(ok), "errors": {}}


# ---- against cuDNN ------------------------------------------------------------------------------------------

class Layer:
    """One training step of a layer as the TF op runs it: x_proj = x @ W + b, the fused forward (with reserve),
    the fused backward, then d_x = d_x_proj @ W^T, dW = x^T d_x_proj, db = sum d_x_proj (cuBLAS, TF32 off)."""

    def __init__(self, lib, cell, direction, T, B, I, H, P=0, cell_clip=0.0, proj_clip=0.0, seed=0):
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        lstm = cell == "lstm"
        G, D, R = (4 if lstm else 3), (2 if direction == "bidirectional" else 1), (P if P else H)
        F = (5 * H + P) if lstm else 4 * H
        cu = dict(device="cuda")
        self.T, self.B, self.I, self.D, self.G, self.H, self.R = T, B, I, D, G, H, R
        self.x = torch.randn(B, T, I, generator=g, **cu)
        self.W = torch.empty(I, D * G * H, **cu).uniform_(-1, 1, generator=g) / math.sqrt(I)
        self.bias = torch.zeros(D * G * H, **cu)
        self.U = torch.empty(D, R, G * H, **cu).uniform_(-1, 1, generator=g) / math.sqrt(R)
        self.Pk = torch.empty(D, H, P, **cu).uniform_(-1, 1, generator=g) / math.sqrt(H) if P else None
        self.rb = torch.zeros(D, G * H, **cu) if not lstm else None
        self.h0, self.c0 = torch.zeros(D, B, R, **cu), (torch.zeros(D, B, H, **cu) if lstm else None)
        self.xproj = torch.empty(B, T, D * G * H, **cu)
        self.out = torch.empty(B, T, D * R, **cu)
        self.fh, self.fc = torch.empty(D, B, R, **cu), (torch.empty(D, B, H, **cu) if lstm else None)
        self.reserve = torch.empty(D, B, T, F, **cu)
        self.d_out = torch.randn(B, T, D * R, generator=g, **cu)
        self.d_x = torch.empty_like(self.x)
        self.d_xproj = torch.empty_like(self.xproj)
        self.d_W = torch.empty_like(self.W)
        self.d_U = torch.empty_like(self.U)
        self.d_Pk = torch.empty_like(self.Pk) if P else None
        self.d_rb = torch.empty_like(self.rb) if not lstm else None
        self.d_h0, self.d_c0 = torch.empty_like(self.h0), (torch.empty_like(self.c0) if lstm else None)
        self.fwd = FusedRnn(lib, cell, direction, T, B, H, P, False, cell_clip, proj_clip)
        self.fwd.bind(self.xproj, w_rec=self.U, rec_bias=self.rb, w_proj=self.Pk, h0=self.h0, c0=self.c0,
                      out=self.out, final_h=self.fh, final_c=self.fc, reserve=self.reserve)
        self.bwd = FusedBwd(lib, cell, direction, T, B, H, P, False, cell_clip, proj_clip)
        self.bwd.bind(U=self.U, Pk=self.Pk, h0=self.h0, c0=self.c0, out=self.out, reserve=self.reserve,
                      d_out=self.d_out, d_x=self.d_xproj, d_U=self.d_U, d_rb=self.d_rb, d_Pk=self.d_Pk,
                      d_h0=self.d_h0, d_c0=self.d_c0)

    def recurrence_only(self):
        self.fwd()
        self.bwd()

    def step(self):
        x2, xp2 = self.x.view(-1, self.I), self.xproj.view(-1, self.xproj.shape[-1])
        torch.addmm(self.bias, x2, self.W, out=xp2)
        self.fwd()
        self.bwd()
        dxp2 = self.d_xproj.view(-1, self.d_xproj.shape[-1])
        torch.mm(dxp2, self.W.t(), out=self.d_x.view(-1, self.I))
        torch.mm(x2.t(), dxp2, out=self.d_W)
        self.d_bias = dxp2.sum(0)


def cudnn_agreement(lib):
    """Plain LSTM (full length, no clips): our gradients against torch.nn.LSTM's (cuDNN, float32)."""
    results = []
    for bi in (False, True):
        T, B, I, H = 30, 4, 24, 48
        lay = Layer(lib, "lstm", "bidirectional" if bi else "forward", T, B, I, H, seed=7)
        lay.bias.uniform_(-0.2, 0.2)
        m = torch.nn.LSTM(I, H, batch_first=True, bidirectional=bi).cuda()
        G = 4
        with torch.no_grad():
            for d in range(lay.D):
                sfx = "_reverse" if d else ""
                getattr(m, "weight_ih_l0" + sfx).copy_(lay.W[:, d * G * H:(d + 1) * G * H].t())
                getattr(m, "weight_hh_l0" + sfx).copy_(lay.U[d].t())
                getattr(m, "bias_ih_l0" + sfx).copy_(lay.bias[d * G * H:(d + 1) * G * H])
                getattr(m, "bias_hh_l0" + sfx).zero_()
        x = lay.x.clone().requires_grad_(True)
        out, _ = m(x)
        out.backward(lay.d_out)
        lay.step()
        torch.cuda.synchronize()
        e = {"output": rel_err(lay.out.cpu().numpy(), out.detach().cpu().numpy()),
             "d_x": rel_err(lay.d_x.cpu().numpy(), x.grad.cpu().numpy())}
        for d in range(lay.D):
            sfx = "_reverse" if d else ""
            e[f"d_U[{d}]"] = rel_err(lay.d_U[d].t().cpu().numpy(), getattr(m, "weight_hh_l0" + sfx).grad.cpu().numpy())
            e[f"d_W[{d}]"] = rel_err(lay.d_W[:, d * G * H:(d + 1) * G * H].t().cpu().numpy(),
                                     getattr(m, "weight_ih_l0" + sfx).grad.cpu().numpy())
            e[f"d_bias[{d}]"] = rel_err(lay.d_bias[d * G * H:(d + 1) * G * H].cpu().numpy(),
                                        getattr(m, "bias_ih_l0" + sfx).grad.cpu().numpy())
        ok = all(v <= 1e-4 for v in e.values())
        name = f"cuDNN agreement {'biLSTM' if bi else 'LSTM'} T={T} B={B} H={H}"
        print(f"{'PASS' if ok else 'FAIL'} {name}: " + " ".join(f"{k}={v:.1e}" for k, v in e.items()), flush=True)
        results.append({"name": name, "passed": bool(ok), "errors": e})
    return results


# ---- timing -------------------------------------------------------------------------------------------------

TIMED = [
    # label, cell, direction, B, I, H, P, clips
    ("biLSTM H=100 B=1", "lstm", "bidirectional", 1, 100, 100, 0, 0.0),
    ("biLSTM H=100 B=64", "lstm", "bidirectional", 64, 100, 100, 0, 0.0),
    ("LSTM H=512 B=1", "lstm", "forward", 1, 512, 512, 0, 0.0),
    ("LSTM H=1024 B=1", "lstm", "forward", 1, 1024, 1024, 0, 0.0),
    ("LSTM H=1024 B=64", "lstm", "forward", 64, 1024, 1024, 0, 0.0),
    ("GRU H=512 B=1", "gru", "forward", 1, 512, 512, 0, 0.0),
    ("ELMo layer (bi 4096/512, clips) B=1", "lstm", "bidirectional", 1, 512, 4096, 512, 3.0),
    # The persistent small-H backward's range: four rounds of blocks, and a GRU near its shared-memory limit.
    ("biLSTM H=100 B=256", "lstm", "bidirectional", 256, 100, 100, 0, 0.0),
    ("biGRU H=128 B=16", "gru", "bidirectional", 16, 128, 128, 0, 0.0),
]


def cudnn_step(cell, bi, B, T, I, H, P):
    m = (torch.nn.LSTM(I, H, proj_size=P, batch_first=True, bidirectional=bi) if cell == "lstm"
         else torch.nn.GRU(I, H, batch_first=True, bidirectional=bi)).cuda().train()
    x = torch.randn(B, T, I, device="cuda", requires_grad=True)
    params = [x] + list(m.parameters())
    g = torch.randn(B, T, (2 if bi else 1) * (P if P else H), device="cuda")

    def fn():
        out, _ = m(x)
        torch.autograd.grad(out, params, g)
    return fn


def timing(lib, only=None):
    rows = []
    T = 100
    for label, cell, direction, B, I, H, P, clip in TIMED:
        if only and not any(o in label for o in only.split(",")):
            continue
        lay = Layer(lib, cell, direction, T, B, I, H, P, clip, clip)
        r = {"case": label}
        fwd_only = time_ms(lay.fwd, 50)["median"]
        reps = int(min(200, max(20, 100.0 / max(fwd_only * 3, 0.05))))
        r["fused fwd (training)"] = time_ms(lay.fwd, reps)["median"]
        r["fused bwd"] = time_ms(lay.bwd, reps)["median"]
        r["fused step plain"] = time_ms(lay.step, reps)["median"]
        try:
            # The automatic plan and the per-step kernels forced, each captured in its own graph, alternated.
            graphs = {}
            variants = [("", -1, -1), (" per-step", 0, -1)]
            if H <= 130 and P == 0:  # the persistent kernel's range: also with no U rows in registers
                variants.append((" regs=0", 1, 0))
            for tag, plan, regs in variants:
                set_backward_plan(lib, plan, regs)
                graphs[tag] = (graph_of(lay.bwd), graph_of(lay.step))
            set_backward_plan(lib, -1)
            for rnd in range(3):
                for tag, (g_bwd, g_step) in graphs.items():
                    r.setdefault(f"fused bwd graph{tag}", []).append(time_ms(g_bwd.replay, reps)["median"])
                    r.setdefault(f"fused step graph{tag}", []).append(time_ms(g_step.replay, reps)["median"])
            for k in [k for k in r if k.startswith("fused") and isinstance(r[k], list)]:
                r[k] = float(np.median(r[k]))
        except Exception as e:  # noqa: BLE001
            set_backward_plan(lib, -1)
            r["graph error"] = str(e)[:200]
        fn = cudnn_step(cell, direction == "bidirectional", B, T, I, H, P)
        r["cuDNN step plain"] = time_ms(fn, reps)["median"]
        try:
            r["cuDNN step graph"] = time_ms(graph_of(fn).replay, reps)["median"]
        except Exception as e:  # noqa: BLE001
            r["cuDNN graph error"] = str(e)[:200]
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--only", default=None, help="only the correctness cases whose name contains this (no cuDNN "
                    "agreement, controls or timing)")
    ap.add_argument("--timed", default=None, help="only the timed cases whose label contains one of these "
                    "comma-separated strings")
    ap.add_argument("--profile", action="store_true", help="only run the persistent backward of the timed small-H "
                    "cases, automatic and with no U rows in registers, twice each (for Nsight Compute)")
    args = ap.parse_args()
    if args.profile:
        lib = Lib(args.lib)
        for label, cell, direction, B, I, H, P, clip in TIMED:
            if H > 130 or P or (args.timed and not any(o in label for o in args.timed.split(","))):
                continue
            lay = Layer(lib, cell, direction, 100, B, I, H, P, clip, clip)
            lay.fwd()
            for regs in (-1, 0):
                set_backward_plan(lib, 1, regs)
                for _ in range(2):
                    lay.bwd()
                torch.cuda.synchronize()
                print(f"profiled {label} regs={regs}", flush=True)
        set_backward_plan(lib, -1)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lib = Lib(args.lib)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    res = correctness(lib, args.only) + ([] if args.only else cudnn_agreement(lib))
    n_ok = sum(r["passed"] for r in res)
    print(f"== backward correctness: {n_ok}/{len(res)} passed ({time.time() - t0:.1f} s)", flush=True)
    timed = [] if (args.skip_timing or args.only) else timing(lib, args.timed)
    with open(os.path.join(args.out, "backward_results.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "correctness": res, "timing": timed}, f, indent=1)
    return 0 if n_ok == len(res) else 1


if __name__ == "__main__":
    sys.exit(main())
