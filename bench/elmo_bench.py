"""ELMo benchmark: the full-size "original" ELMo with random weights, the biLM on the fused op (float32 weights;
bfloat16 recurrent/projection weights, implementation="fused_bf16"; INT8 ones, "fused_int8") against the same network with its biLM on stock
Keras layers (keras.layers.RNN of a projection LSTM cell), same weights, in one
process. Sentences of 100 tokens (102 steps with <S> and </S>), B=1 and B=32, each model inside one tf.function,
median milliseconds per batch of warm runs. Also the biLM alone (token embeddings in, the LSTM layers out) and the
character CNN alone (the same stock-Keras layers in both models).

    .venv/bin/python bench/elmo_bench.py [--repeats 10] [--repeats-b32 3] [--max-load 0.7] [--no-wait]

On a shared machine it first waits (polling every 20 s, up to --wait-minutes) until the 1-minute load average is
below --max-load. Each row then runs fused and stock alternately, measures the CPU time other processes take
meanwhile and times a fixed probe job before and after; a disturbed row (others over 10% of the CPUs, or the probe
over 1.3x its idle time) is redone once the CPUs are idle. The table reports all three.
"""
import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_ops  # noqa: E402
from models import elmo  # noqa: E402

# The published "original" ELMo (elmo_2x4096_512_2048cnn_2xhighway_options.json).
ORIGINAL_OPTIONS = {
    "lstm": {"use_skip_connections": True, "projection_dim": 512, "cell_clip": 3, "proj_clip": 3, "dim": 4096,
             "n_layers": 2},
    "char_cnn": {"activation": "relu", "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512],
                                                   [7, 1024]],
                 "n_highway": 2, "embedding": {"dim": 16}, "n_characters": 262, "max_characters_per_token": 50},
}
TOKENS = 100


def random_bilm_tf_weights(options, rng):
    """Random weights in the bilm-tf layout, scaled like trained ones (about 1/sqrt(fan-in))."""
    weights = {}
    for path, shape in elmo.bilm_tf_weight_shapes(elmo.validate_options(options)).items():
        fan_in = shape[-2] * (shape[1] if path.startswith("CNN/W_cnn") else 1) if len(shape) > 1 else 1
        scale = 0.1 if len(shape) == 1 else 1.0 / np.sqrt(fan_in)
        weights[path] = (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return weights


def random_sentences(rng, batch, tokens):
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(1, 12))))
             for _ in range(2000)]
    return [[words[i] for i in rng.integers(0, len(words), tokens)] for _ in range(batch)]


def load_1min():
    return os.getloadavg()[0]


def wait_for_quiet(max_load, minutes):
    """Polls every 20 s until the 1-minute load average is below max_load; returns (load, whether it was)."""
    deadline = time.monotonic() + 60 * minutes
    while True:
        load = load_1min()
        if load < max_load:
            return load, True
        if time.monotonic() > deadline:
            return load, False
        print(f"waiting: 1-minute load average {load:.2f} >= {max_load} (another process is busy)",
              file=sys.stderr, flush=True)
        time.sleep(20)


class OthersCpu:
    """CPU time that other processes take while this one measures: busy time of all CPUs (/proc/stat) minus this
    process's own (all its threads). The 1-minute load average cannot tell: it counts this benchmark too."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        busy_s = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return time.monotonic(), busy_s, own.user + own.system

    def share(self):
        """Others' share of all CPUs since construction (0 = nobody else ran, 1 = they took every CPU)."""
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max((wall1 - wall0) * os.cpu_count(), 1e-9)


def wait_for_idle_cpus(max_share=0.05, window_s=5.0, minutes=10.0):
    """Waits (this process idle) until others use under max_share of the CPUs over a window_s window."""
    deadline = time.monotonic() + 60 * minutes
    while True:
        meter = OthersCpu()
        time.sleep(window_s)
        share = meter.share()
        if share < max_share or time.monotonic() > deadline:
            return share
        print(f"waiting: other processes use {100 * share:.0f}% of the CPUs", file=sys.stderr, flush=True)


class Probe:
    """A fixed job (stream 64 MB, one 1024^3 matmul): its time against an idle baseline shows a disturbed machine
    even when the guest's CPU accounting does not (e.g. the VM's host taking our vCPUs or memory bandwidth)."""

    def __init__(self):
        data = tf.constant(np.ones(16 * 2**20, np.float32))
        square = tf.constant(np.ones((1024, 1024), np.float32))
        self.job = tf.function(lambda: (tf.reduce_sum(data), tf.reduce_sum(tf.matmul(square, square))))
        self.job()
        self.baseline_ms = self.ms()

    def ms(self):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            [t.numpy() for t in self.job()]
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    def slowdown(self):
        return self.ms() / self.baseline_ms


def interleaved_median_ms(fns, repeats, warmup, probe, max_others=0.10, max_slowdown=1.3, attempts=4):
    """Median ms of each of fns, run alternately (so that both see the same machine). Returns (medians, others'
    CPU share during the runs, worst probe slowdown around them, 1-minute load). A disturbed row (others over
    max_others of the CPUs, or the probe over max_slowdown) is redone once the CPUs are idle; the least disturbed
    attempt is kept."""
    best = None
    for _ in range(attempts):
        wait_for_idle_cpus()
        for fn in fns:
            for _ in range(warmup):
                fn()
        slowdown = probe.slowdown()
        times = [[] for _ in fns]
        others = OthersCpu()
        for _ in range(repeats):
            for fn, bucket in zip(fns, times):
                start = time.perf_counter()
                fn()
                bucket.append(time.perf_counter() - start)
        share = others.share()
        slowdown = max(slowdown, probe.slowdown())
        result = ([1e3 * float(np.median(t)) for t in times], share, slowdown, load_1min())
        disturbance = max(share / max_others, slowdown / max_slowdown)
        if best is None or disturbance < best[0]:
            best = (disturbance, result)
        if disturbance <= 1.0:
            break
        print(f"redoing a row: other processes took {100 * share:.0f}% of the CPUs, the probe ran {slowdown:.2f}x "
              "its idle time", file=sys.stderr, flush=True)
    return best[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each model at B=1")
    parser.add_argument("--repeats-b32", type=int, default=3, help="timed runs of each model at B=32 (slow)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument("--wait-minutes", type=float, default=10.0)
    parser.add_argument("--no-wait", action="store_true", help="time at once, whatever the load")
    args = parser.parse_args()
    if not tf_ops.op_library_available():
        sys.exit("the op library is not built: run tools/setup.sh")

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    weights = random_bilm_tf_weights(ORIGINAL_OPTIONS, rng)
    models = {}
    for implementation in ("keras", "fused", "fused_bf16", "fused_int8"):
        model = elmo.build_elmo(ORIGINAL_OPTIONS, implementation=implementation, name=f"elmo_{implementation}")
        elmo.set_bilm_tf_weights(model, weights)
        models[implementation] = model
    del weights
    n_params = sum(int(np.prod(v.shape)) for v in models["fused"].weights)
    print(f"built both models ({n_params / 1e6:.1f} M parameters each) in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)

    cases = []
    int8_errors, bf16_errors = {}, {}
    for batch in [int(b) for b in args.batches.split(",")]:
        char_ids = tf.constant(elmo.batch_to_ids(random_sentences(rng, batch, TOKENS)))
        token_embeddings = models["fused"].char_encoder(char_ids)
        mask = tf.reduce_any(char_ids > 0, axis=-1)
        funcs = {}
        # Default arguments bind this batch's tensors (a closure would see the last batch's at trace time).
        for implementation, model in models.items():
            funcs[implementation] = {
                "ELMo (char CNN + biLM)": tf.function(lambda m=model, ids=char_ids: m(ids)["layer_2"]),
                "biLM alone": tf.function(lambda m=model, x=token_embeddings, mask=mask: m.bilm(x, mask=mask)[-1]),
            }
        funcs["char CNN"] = tf.function(lambda m=models["fused"], ids=char_ids: m.char_encoder(ids))
        # Same weights, same answer (float32 round-off only; int8: the scheme's error), before any timing; tracing
        # every function here.
        for label in ("ELMo (char CNN + biLM)", "biLM alone"):
            fused_out, stock_out = funcs["fused"][label]().numpy(), funcs["keras"][label]().numpy()
            int8_out = funcs["fused_int8"][label]().numpy()
            bf16_out = funcs["fused_bf16"][label]().numpy()
            assert fused_out.shape[0] == batch, fused_out.shape
            diff = float(np.max(np.abs(fused_out - stock_out)))
            int8_err = float(np.linalg.norm(int8_out - stock_out) / np.linalg.norm(stock_out))
            bf16_err = float(np.linalg.norm(bf16_out - stock_out) / np.linalg.norm(stock_out))
            print(f"B={batch}, {label}: max |fused - stock| of the top layer = {diff:.2e}; relative L2 error: "
                  f"bf16 {bf16_err:.1e}, int8 {int8_err:.1e}", file=sys.stderr, flush=True)
            assert diff < 1e-3, f"fused and stock disagree by {diff}"
            # A sanity bound only: the scheme's error on these random weights is about 1% at the top layer (0.1-0.3%
            # on the two trained upstream fixtures, tests/test_int8.py).
            assert int8_err < 5e-2, f"int8 and stock disagree by {int8_err} (relative L2)"
            # bfloat16 keeps 8 bits of mantissa: ~0.1% on the trained fixtures (tests/test_weights16.py).
            assert bf16_err < 5e-2, f"bf16 and stock disagree by {bf16_err} (relative L2)"
            int8_errors[(batch, label)] = int8_err
            bf16_errors[(batch, label)] = bf16_err
        assert funcs["char CNN"]().shape[0] == batch
        cases.append((batch, funcs))

    if args.no_wait:
        load_before, quiet = load_1min(), False
    else:
        load_before, quiet = wait_for_quiet(args.max_load, args.wait_minutes)
    wait_for_idle_cpus()
    probe = Probe()
    rows = []
    for batch, funcs in cases:
        repeats = args.repeats if batch == 1 else args.repeats_b32
        for label in ("ELMo (char CNN + biLM)", "biLM alone"):
            fused, stock, int8 = funcs["fused"][label], funcs["keras"][label], funcs["fused_int8"][label]
            bf16 = funcs["fused_bf16"][label]
            (fused_ms, stock_ms, bf16_ms, int8_ms), others, slowdown, load = interleaved_median_ms(
                [lambda: fused().numpy(), lambda: stock().numpy(), lambda: bf16().numpy(), lambda: int8().numpy()],
                repeats, warmup=1, probe=probe)
            rows.append((f"{label}, B={batch}", stock_ms, fused_ms, bf16_ms, int8_ms, others, slowdown, load))
            print(f"{rows[-1][0]}: stock {stock_ms:.1f} ms, fused {fused_ms:.1f} ms, fused bf16 {bf16_ms:.1f} ms, "
                  f"fused int8 {int8_ms:.1f} ms "
                  f"(others took {100 * others:.0f}% of the CPUs, probe {slowdown:.2f}x, load {load:.2f})",
                  file=sys.stderr, flush=True)
        (cnn_ms,), others, slowdown, load = interleaved_median_ms([lambda: funcs["char CNN"]().numpy()], repeats,
                                                                  warmup=1, probe=probe)
        rows.append((f"char CNN alone (same layers in all), B={batch}", cnn_ms, cnn_ms, cnn_ms, cnn_ms, others,
                     slowdown, load))

    print(f"\nELMo original (2x4096/512, 2048 char filters, 2 highway), random weights, {TOKENS} tokens per "
          f"sentence ({TOKENS + 2} steps), float32; {platform.machine()}, {os.cpu_count()} CPUs, TF "
          f"{tf.__version__}, ISA path {tf_ops.cpu_isa()}; each model in one tf.function; median ms per batch of "
          f"{args.repeats} runs at B=1 and {args.repeats_b32} at B=32, fused and stock runs alternating.")
    print(f"1-minute load average before timing: {load_before:.2f}"
          + ("" if quiet or args.no_wait else f" (did not fall below {args.max_load} within "
                                               f"{args.wait_minutes:g} min)")
          + f"; 'others' = share of the CPUs other processes took during the row; 'probe' = time of a fixed "
            f"job around the row over its idle time ({probe.baseline_ms:.1f} ms); 'load' = the 1-minute load "
            "average at the row's end (it counts this benchmark).\n")
    for name, errors in (("bfloat16", bf16_errors), ("INT8", int8_errors)):
        print(f"{name} relative L2 error of the top layer against stock float32: " + ", ".join(
            f"{label} B={batch} {err:.1e}" for (batch, label), err in errors.items()))
    print()
    print("| case | stock Keras (ms) | fused (ms) | speedup | fused bf16 (ms) | bf16 speedup | fused int8 (ms) "
          "| int8 speedup | others | probe | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, stock_ms, fused_ms, bf16_ms, int8_ms, others, slowdown, load in rows:
        cnn = label.startswith("char CNN")
        cols = [f"{fused_ms:.1f}"]
        if cnn:
            cols = ["-", cols[0], "-", "-", "-", "-", "-"]
        else:
            cols = [f"{stock_ms:.1f}", cols[0], f"{stock_ms / fused_ms:.1f}x", f"{bf16_ms:.1f}",
                    f"{stock_ms / bf16_ms:.1f}x", f"{int8_ms:.1f}", f"{stock_ms / int8_ms:.1f}x"]
        print(f"| {label} | " + " | ".join(cols) + f" | {100 * others:.0f}% | {slowdown:.2f}x | {load:.2f} |")

if __name__ == "__main__":
    main()
