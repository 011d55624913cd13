"""Float64 NumPy reference of the fused recurrence: the test oracle.

Independent of TensorFlow (so the GPU harness can use it on a machine without TF) and written for clarity,
one timestep and one batch row at a time, straight from the cell equations:

  LSTM (Keras gate order i, f, c, o):
    z = x_proj[t] + h_prev @ U                    (x_proj already holds x @ W + b)
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_c)
    c = f * c_prev + i * g;  c = clip(c, +-cell_clip) if cell_clip > 0
    m = o * tanh(c)
    h = clip(m @ P, +-proj_clip) if a projection P is given (TF LSTMCell(num_proj=...)), else m
  GRU (Keras, reset_after=True, gate order z, r, n):
    a = h_prev @ U + b_r;  z = sigmoid(x_z + a_z);  r = sigmoid(x_r + a_r)
    n = tanh(x_n + r * a_n);  h = z * h_prev + (1 - z) * n

Layouts are those of cc/core/fused_rnn.h.
"""
import numpy as np


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def rnn_forward(cell, x_proj, recurrent_kernel, lengths, initial_h, initial_c=None, recurrent_bias=None,
                projection_kernel=None, cell_clip=0.0, proj_clip=0.0, direction="forward",
                time_major=False):
    """Returns (output, final_h, final_c or None) in float64.

    x_proj: [B, T, D*G*H] (or [T, B, ...] if time_major); recurrent_kernel: [D, R, G*H];
    lengths: [B] ints; initial_h: [D, B, R]; initial_c: [D, B, H] (LSTM).
    """
    x = np.asarray(x_proj, np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    batch, max_time, _ = x.shape
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    num_dirs = len(dirs)
    u_all = np.asarray(recurrent_kernel, np.float64)
    gates = 4 if cell == "lstm" else 3
    units = u_all.shape[2] // gates
    proj = None if projection_kernel is None else np.asarray(projection_kernel, np.float64)
    width = proj.shape[2] if proj is not None and proj.shape[2] > 0 else units
    if proj is not None and proj.shape[2] == 0:
        proj = None
    lengths = np.asarray(lengths, np.int64)
    out = np.zeros((batch, max_time, num_dirs * width))
    final_h = np.zeros((num_dirs, batch, width))
    final_c = np.zeros((num_dirs, batch, units)) if cell == "lstm" else None
    for d, reverse in enumerate(dirs):
        u = u_all[d]
        gw = gates * units
        for b in range(batch):
            h = np.asarray(initial_h, np.float64)[d, b].copy()
            c = np.asarray(initial_c, np.float64)[d, b].copy() if cell == "lstm" else None
            n_steps = int(lengths[b])
            for s in range(n_steps):
                t = n_steps - 1 - s if reverse else s
                xt = x[b, t, d * gw:(d + 1) * gw]
                if cell == "lstm":
                    z = xt + h @ u
                    i = _sigmoid(z[:units])
                    f = _sigmoid(z[units:2 * units])
                    g = np.tanh(z[2 * units:3 * units])
                    o = _sigmoid(z[3 * units:])
                    c = f * c + i * g
                    if cell_clip > 0:
                        c = np.clip(c, -cell_clip, cell_clip)
                    m = o * np.tanh(c)
                    if proj is not None:
                        h = m @ proj[d]
                        if proj_clip > 0:
                            h = np.clip(h, -proj_clip, proj_clip)
                    else:
                        h = m
                else:
                    a = h @ u
                    if recurrent_bias is not None:
                        a = a + np.asarray(recurrent_bias, np.float64)[d]
                    zg = _sigmoid(xt[:units] + a[:units])
                    rg = _sigmoid(xt[units:2 * units] + a[units:2 * units])
                    n = np.tanh(xt[2 * units:] + rg * a[2 * units:])
                    h = zg * h + (1.0 - zg) * n
                out[b, t, d * width:(d + 1) * width] = h
            final_h[d, b] = h
            if cell == "lstm":
                final_c[d, b] = c
    if time_major:
        out = out.transpose(1, 0, 2)
    return out, final_h, final_c
