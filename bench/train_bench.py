"""Training-step benchmark: forward + backward (gradients of the input and every weight) of the fused layer
against the stock Keras layer with the same weights, in one process, inside tf.function. T=100, float32, input
width = H, median of warm runs, milliseconds. The loss is sum(output * w) for a fixed random w; no optimizer
update (the same for both).

    .venv/bin/python bench/train_bench.py [--repeats 20] [--batches 1,32] [--markdown]
"""
import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_ops  # noqa: E402

# (label, cell, units, bidirectional): the shapes of the inference benchmark (bench/cpu_bench.py).
CASES = [
    ("LSTM H=100", "lstm", 100, False),
    ("LSTM H=256", "lstm", 256, False),
    ("LSTM H=512", "lstm", 512, False),
    ("LSTM H=1024", "lstm", 1024, False),
    ("biLSTM H=100", "lstm", 100, True),
    ("GRU H=256", "gru", 256, False),
]
T = 100


def median_ms(fn, repeats, warmup=3):
    time.sleep(0.3)  # let the other framework's spinning pool threads go idle (2 cores)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def interleaved_ms(slow, fast, rounds, fast_per_round, warmup=3):
    """Medians of `slow` and `fast`, timed alternately (one slow call, then fast_per_round fast calls, per round),
    so that load changes on a shared machine hit both sides alike."""
    time.sleep(0.3)
    for _ in range(warmup):
        slow()
        fast()
    slow_times, fast_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        slow()
        slow_times.append(time.perf_counter() - start)
        for _ in range(fast_per_round):
            start = time.perf_counter()
            fast()
            fast_times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(slow_times)), 1e3 * float(np.median(fast_times))


def make_step(layer, x, w_out, training):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=training) * w_out)
        return tape.gradient(loss, [x] + layer.trainable_weights)
    return step


def run_case(cell, units, batch, bidirectional, repeats, rng):
    stock_cls, fused_cls = (keras.layers.LSTM, tf_ops.FusedLSTM) if cell == "lstm" else (keras.layers.GRU,
                                                                                         tf_ops.FusedGRU)
    stock = stock_cls(units, return_sequences=True)
    if bidirectional:
        stock = keras.layers.Bidirectional(stock)
    fused = fused_cls(units, return_sequences=True, bidirectional=bidirectional)
    x = tf.constant(rng.standard_normal((batch, T, units)).astype(np.float32))
    stock.build(x.shape)
    fused.build(x.shape)
    fused.set_weights([w * 1.0 for w in stock.get_weights()])
    w_out = tf.constant(rng.standard_normal((batch, T, units * (2 if bidirectional else 1))).astype(np.float32))
    stock_step = make_step(stock, x, w_out, True)
    fused_step = make_step(fused, x, w_out, True)
    fused_recompute = make_step(fused, x, w_out, False)  # no reserve: the gradient re-runs the forward
    got, want = fused_step(), stock_step()
    err = max(float(np.max(np.abs(g.numpy() - s.numpy())) / (np.max(np.abs(s.numpy())) + 1e-30))
              for g, s in zip(got, want))
    assert err < 1e-4, f"fused and stock gradients disagree (relative {err})"
    fused_fwd = tf.function(lambda: fused(x))
    stock_ms, fused_ms = interleaved_ms(lambda: [t.numpy() for t in stock_step()],
                                        lambda: [t.numpy() for t in fused_step()], max(3, repeats // 4), 4)
    return {
        "stock": stock_ms,
        "fused": fused_ms,
        "fused_recompute": median_ms(lambda: [t.numpy() for t in fused_recompute()], repeats),
        "fused_forward": median_ms(lambda: fused_fwd().numpy(), repeats),
        "err": err,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--cases", default="", help="only the cases whose label contains this text")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]
    print(f"# training step (forward + backward), T={T}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, ISA {tf_ops.cpu_isa()}, load average {load:.2f}")
    print("| case | B | stock Keras ms | fused ms | speedup | fused, forward not training ms | fused forward only ms "
          "| max rel. grad diff |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        for label, cell, units, bidirectional in CASES:
            if args.cases and args.cases not in label:
                continue
            r = run_case(cell, units, batch, bidirectional, args.repeats, rng)
            print(f"| {label} | {batch} | {r['stock']:.2f} | {r['fused']:.2f} | {r['stock'] / r['fused']:.1f}x | "
                  f"{r['fused_recompute']:.2f} | {r['fused_forward']:.2f} | {r['err']:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
