"""INT8 recurrent weights on CPU: the fused op with int8 weights against the same op with float32 weights and
the stock Keras layer, in one process, inside tf.function. T=100, B=1 unless stated, input width = H (512 for the
ELMo layer), median of warm runs, milliseconds; plus the relative L2 error of the int8 outputs.

    .venv/bin/python bench/int8_bench.py [--repeats 30] [--no-stock]
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

# (label, units, num_proj, bidirectional, input width, batch)
CASES = [
    ("LSTM H=512", 512, None, False, 512, 1),
    ("LSTM H=1024", 1024, None, False, 1024, 1),
    ("LSTM H=1024, B=16", 1024, None, False, 1024, 16),
    ("ELMo layer: biLSTM 4096/512 + clips", 4096, 512, True, 512, 1),
]
T = 100


def median_ms(fn, repeats, warmup=3):
    time.sleep(0.3)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-stock", action="store_true", help="skip the (slow) stock Keras column")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"# INT8 recurrent weights, T={T}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, ISA {tf_ops.cpu_isa()}, load average {os.getloadavg()[0]:.2f}")
    print("| case | B | stock Keras ms | fused float32 ms | fused int8 ms | int8 vs float32 | int8 vs stock "
          "| int8 rel. L2 error |")
    print("|---|---|---|---|---|---|---|---|")
    for label, units, num_proj, bidirectional, width, batch in CASES:
        clips = dict(cell_clip=3.0, proj_clip=3.0) if num_proj else {}
        fused = tf_ops.FusedLSTM(units, num_proj=num_proj, bidirectional=bidirectional, return_sequences=True,
                                 recurrent_initializer="glorot_uniform", **clips)
        x = tf.constant(rng.standard_normal((batch, T, width)).astype(np.float32))
        fused.build(x.shape)
        int8 = tf_ops.FusedLSTM(units, num_proj=num_proj, bidirectional=bidirectional, return_sequences=True,
                                int8_weights=True, **clips)
        int8.build(x.shape)
        int8.set_weights(tf_ops.quantized_weights(fused))
        run_fused = tf.function(lambda: fused(x))
        run_int8 = tf.function(lambda: int8(x))
        ref = run_fused().numpy()
        err = float(np.linalg.norm(run_int8().numpy() - ref) / np.linalg.norm(ref))
        stock_ms = float("nan")
        if not args.no_stock and num_proj is None and not bidirectional:
            stock = keras.layers.LSTM(units, return_sequences=True)
            stock.build(x.shape)
            stock.set_weights(fused.get_weights())
            run_stock = tf.function(lambda: stock(x))
            stock_ms = median_ms(lambda: run_stock().numpy(), max(3, args.repeats // 6))
        fused_ms = median_ms(lambda: run_fused().numpy(), args.repeats)
        int8_ms = median_ms(lambda: run_int8().numpy(), args.repeats)
        print(f"| {label} | {batch} | {stock_ms:.2f} | {fused_ms:.2f} | {int8_ms:.2f} | {fused_ms / int8_ms:.2f}x | "
              f"{stock_ms / int8_ms:.1f}x | {err:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
