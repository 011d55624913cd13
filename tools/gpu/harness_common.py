"""Torch-free pieces of the device harness shared by driver.py (correctness + timing through PyTorch) and
sanitize_cases.py (compute-sanitizer mode, plain device memory through the shim): the enums of the C face, the
tolerances, random inputs and the float64 references (tests/numpy_reference.py)."""
import ctypes
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
import numpy_reference  # noqa: E402

CELL = {"lstm": 0, "gru": 1}
DIRECTION = {"forward": 0, "reverse": 1, "bidirectional": 2}
WEIGHT = {"f32": 0, "f16": 1, "bf16": 2, "i8": 3}
TOL_F32 = 1e-5
TOL_16_VS_F32_WEIGHTS = 1e-2


def declare_core_api(L):
    """Argument and result types of the core's C face (tools/gpu/fused_rnn_gpu_shim.cc) on a loaded CDLL."""
    P64, PF, PI = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
    PU64 = ctypes.POINTER(ctypes.c_uint64)
    L.frg_query_limits.restype = ctypes.c_char_p
    L.frg_query_limits.argtypes = [ctypes.c_int, PI]
    L.frg_workspace_bytes.restype = ctypes.c_int64
    L.frg_workspace_bytes.argtypes = [P64, PF, ctypes.c_int, PI, PI]
    L.frg_describe.restype = ctypes.c_char_p
    L.frg_describe.argtypes = [P64, PF, ctypes.c_int, PI, PI, ctypes.c_char_p, ctypes.c_int64]
    L.frg_forward.restype = ctypes.c_char_p
    L.frg_forward.argtypes = [P64, PF, ctypes.c_int, PU64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64, PI, PI]
    L.frg_watchdog.restype = ctypes.c_int
    L.frg_watchdog.argtypes = [ctypes.c_uint64, ctypes.c_int64]
    return L


def query_limits(L, device):
    """The device limits the planner reads (CudaDeviceLimits as 9 ints)."""
    limits = (ctypes.c_int * 9)()
    err = L.frg_query_limits(device, limits)
    if err:
        raise RuntimeError(err.decode())
    return limits


TUNING_FIELDS = ("mode", "units_per_block", "rows_per_block", "max_reg_chunks", "stream_location", "lanes_per_unit",
                 "stage_weights", "proj_reduce", "allow_tf32", "tf32_exchange16", "as_float32")
TUNING_DEFAULTS = dict(mode=-1, units_per_block=0, rows_per_block=0, max_reg_chunks=-1, stream_location=-1,
                       lanes_per_unit=0, stage_weights=-1, proj_reduce=-1, allow_tf32=0,
                       tf32_exchange16=-1, as_float32=-1)


class CoreCall:
    """One configured call of the core: shape, clips, weight type, tuning (CudaTuning's fields, defaults = auto)
    and device limits, as the C face takes them."""

    def __init__(self, L, limits, cell, direction, T, B, H, P=0, time_major=False, cell_clip=0.0, proj_clip=0.0,
                 wt="f32", tuning=None):
        unknown = set(tuning or {}) - set(TUNING_FIELDS)
        if unknown:
            raise ValueError(f"unknown tuning fields {sorted(unknown)}")
        t = dict(TUNING_DEFAULTS, **(tuning or {}))
        self.L, self.limits, self.wt = L, limits, wt
        self.shape = (ctypes.c_int64 * 7)(CELL[cell], DIRECTION[direction], T, B, H, P, int(time_major))
        self.clips = (ctypes.c_float * 2)(cell_clip, proj_clip)
        self.tuning = (ctypes.c_int * len(TUNING_FIELDS))(*(t[f] for f in TUNING_FIELDS))
        self.ws_bytes = L.frg_workspace_bytes(self.shape, self.clips, WEIGHT[wt], limits, self.tuning)

    def describe(self):
        buf = ctypes.create_string_buffer(1024)
        err = self.L.frg_describe(self.shape, self.clips, WEIGHT[self.wt], self.limits, self.tuning, buf, 1024)
        return ("ERROR: " + err.decode()) if err else buf.value.decode()

    def forward(self, ptrs, ws, ws_bytes, stream=0):
        """ptrs: up to 15 device addresses in the C face's order; returns the core's error message or None."""
        arr = (ctypes.c_uint64 * 15)(*(list(ptrs) + [0] * (15 - len(ptrs))))
        err = self.L.frg_forward(self.shape, self.clips, WEIGHT[self.wt], arr, ws, ws_bytes, stream, self.limits,
                                 self.tuning)
        return err.decode() if err else None


def quantize_rows(w):
    """The package's INT8 scheme (tf_ops.quantize_rows), in NumPy: per row (last axis) scale = 127 / max|row| in
    float32, q = round(row * scale) with ties to even; a zero row has scale 0 and q = 0. Returns (q int8, scale
    float32 [rows], dequantized float64 = q / scale, the weights the kernel must agree with)."""
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w), axis=-1)
    nonzero = amax >= np.float32(127.0) / np.finfo(np.float32).max  # below: a zero row (the scale would overflow)
    scale = np.where(nonzero, np.float32(127.0) / np.where(nonzero, amax, 1), 0).astype(np.float32)
    q = np.clip(np.rint(w * scale[..., None]), -127, 127).astype(np.int8)
    deq = np.where(scale[..., None] > 0, q.astype(np.float64) / np.where(scale > 0, scale, 1)[..., None].astype(np.float64), 0.0)
    return q, scale, deq


def make_inputs(rng, cell, direction, T, B, H, P, ragged, with_init=True, gru_bias=True):
    G = 4 if cell == "lstm" else 3
    D = 2 if direction == "bidirectional" else 1
    R = P if P else H
    inp = {}
    inp["x"] = (rng.standard_normal((B, T, D * G * H)) * 0.8).astype(np.float32)
    inp["U"] = (rng.uniform(-1, 1, (D, R, G * H)) * (1.7 / math.sqrt(R))).astype(np.float32)
    inp["Pk"] = (rng.uniform(-1, 1, (D, H, P)) * (1.7 / math.sqrt(H))).astype(np.float32) if P else None
    inp["rb"] = (rng.standard_normal((D, G * H)) * 0.3).astype(np.float32) if (cell == "gru" and gru_bias) else None
    if ragged:
        lengths = rng.integers(0, T + 1, B).astype(np.int32)
        lengths[0] = T
        if B > 2:
            lengths[1] = 0
        if B > 3:
            lengths[2] = 1
        inp["lengths"] = lengths
    else:
        inp["lengths"] = None
    inp["h0"] = (rng.standard_normal((D, B, R)) * 0.5).astype(np.float32) if with_init else None
    inp["c0"] = (rng.standard_normal((D, B, H)) * 0.5).astype(np.float32) if (with_init and cell == "lstm") else None
    return inp


def reference(cell, direction, inp, U, Pk, cell_clip, proj_clip, time_major, rows=None):
    x = inp["x"]
    B = x.shape[0]
    D = U.shape[0]
    R = U.shape[1]
    H = U.shape[2] // (4 if cell == "lstm" else 3)
    lengths = inp["lengths"] if inp["lengths"] is not None else np.full(B, x.shape[1], np.int32)
    h0 = inp["h0"] if inp["h0"] is not None else np.zeros((D, B, R), np.float32)
    c0 = inp["c0"] if inp["c0"] is not None else np.zeros((D, B, H), np.float32)
    if rows is not None:
        x, lengths, h0, c0 = x[rows], lengths[rows], h0[:, rows], c0[:, rows]
    xx = x.transpose(1, 0, 2) if time_major else x
    out, fh, fc = numpy_reference.rnn_forward(
        cell, xx, U, lengths, h0, c0 if cell == "lstm" else None, recurrent_bias=inp["rb"],
        projection_kernel=Pk, cell_clip=cell_clip, proj_clip=proj_clip, direction=direction, time_major=time_major)
    if time_major:
        out = out.transpose(1, 0, 2)
    return out, fh, fc


def reserve_reference(cell, direction, inp, U, Pk, cell_clip, proj_clip):
    """Float64 training reserve [D, B, T, F] as fused_rnn.h defines it; NaN where nothing is written."""
    x = inp["x"].astype(np.float64)
    B, T, _ = x.shape
    D, R, GH = U.shape
    G = 4 if cell == "lstm" else 3
    H = GH // G
    P = 0 if Pk is None else Pk.shape[2]
    F = 5 * H + P if cell == "lstm" else 4 * H
    res = np.full((D, B, T, F), np.nan)
    lengths = inp["lengths"] if inp["lengths"] is not None else np.full(B, T)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    for d in range(D):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        u = U[d].astype(np.float64)
        for b in range(B):
            h = inp["h0"][d, b].astype(np.float64) if inp["h0"] is not None else np.zeros(R)
            c = inp["c0"][d, b].astype(np.float64) if (cell == "lstm" and inp["c0"] is not None) else np.zeros(H)
            n = int(lengths[b])
            for s in range(n):
                t = n - 1 - s if reverse else s
                xt = x[b, t, d * GH:(d + 1) * GH]
                if cell == "lstm":
                    z = xt + h @ u
                    i, f, g, o = sig(z[:H]), sig(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sig(z[3 * H:])
                    c = f * c + i * g
                    res[d, b, t, :4 * H] = np.concatenate([i, f, g, o])
                    res[d, b, t, 4 * H:5 * H] = c
                    if cell_clip > 0:
                        c = np.clip(c, -cell_clip, cell_clip)
                    m = o * np.tanh(c)
                    if P:
                        r = m @ Pk[d].astype(np.float64)
                        res[d, b, t, 5 * H:] = r
                        h = np.clip(r, -proj_clip, proj_clip) if proj_clip > 0 else r
                    else:
                        h = m
                else:
                    a = h @ u + (inp["rb"][d].astype(np.float64) if inp["rb"] is not None else 0.0)
                    zg, rg = sig(xt[:H] + a[:H]), sig(xt[H:2 * H] + a[H:2 * H])
                    ng = np.tanh(xt[2 * H:] + rg * a[2 * H:])
                    res[d, b, t] = np.concatenate([zg, rg, ng, a[2 * H:]])
                    h = zg * h + (1 - zg) * ng
    return res


def rel_err(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    den = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (den if den > 0 else 1.0))


def max_rel(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
