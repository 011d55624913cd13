"""CPU benchmark: the fused layer against the stock Keras layer with the same weights, in one process, and
against ONNX Runtime's LSTM (Microsoft's DeepCPU) and PyTorch's nn.LSTM when those are installed (neither is a
dependency of the package). T=100, float32, input width = H, median of warm runs, milliseconds. The last
columns: the same fused layer with bfloat16 recurrent weights (float32 math on the rounded weights; inference).

    .venv/bin/python bench/cpu_bench.py [--repeats 50] [--threads 2]
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

# (label, cell, units, batch, bidirectional)
CASES = [
    ("LSTM H=100, B=1", "lstm", 100, 1, False),
    ("LSTM H=256, B=1", "lstm", 256, 1, False),
    ("LSTM H=512, B=1", "lstm", 512, 1, False),
    ("LSTM H=1024, B=1", "lstm", 1024, 1, False),
    ("LSTM H=512, B=16", "lstm", 512, 16, False),
    ("biLSTM H=100, B=1", "lstm", 100, 1, True),
    ("GRU H=256, B=1", "gru", 256, 1, False),
]
T = 100


def median_ms(fn, repeats, warmup=5):
    # Let the previous framework's spinning thread pools (Eigen, ORT, OpenMP) go idle: on 2 cores they would
    # otherwise steal the cores this measurement needs.
    time.sleep(0.3)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def keras_pair(cell, units, bidirectional):
    stock_cls, fused_cls = (keras.layers.LSTM, tf_ops.FusedLSTM) if cell == "lstm" else (keras.layers.GRU,
                                                                                         tf_ops.FusedGRU)
    stock = stock_cls(units, return_sequences=True)
    if bidirectional:
        stock = keras.layers.Bidirectional(stock)
    fused = fused_cls(units, return_sequences=True, bidirectional=bidirectional)
    return stock, fused


def time_keras(cell, units, batch, bidirectional, repeats, rng):
    x = tf.constant(rng.standard_normal((batch, T, units)).astype(np.float32))
    stock, fused = keras_pair(cell, units, bidirectional)
    stock.build(x.shape)
    fused.build(x.shape)
    fused.set_weights(stock.get_weights())
    run_stock = tf.function(lambda: stock(x))
    run_fused = tf.function(lambda: fused(x))
    err = float(np.max(np.abs(run_stock().numpy() - run_fused().numpy())))
    assert err < 1e-4, f"fused and stock disagree by {err}"
    # The same layer with bfloat16 recurrent weights (inference; float32 math on the rounded weights).
    fused16 = type(fused)(units, return_sequences=True, bidirectional=bidirectional, recurrent_weight_dtype="bfloat16")
    fused16.build(x.shape)
    fused16.set_weights(tf_ops.quantized_weights(fused, "bfloat16"))
    run_fused16 = tf.function(lambda: fused16(x))
    want = run_fused().numpy()
    err16 = float(np.linalg.norm(run_fused16().numpy() - want) / np.linalg.norm(want))
    assert err16 < 1e-2, f"bfloat16 weights are off by {err16} (relative L2)"
    stock_ms = median_ms(lambda: run_stock().numpy(), max(5, repeats // 5))
    # fused and fused bf16 alternate, so load changes on this machine hit both alike.
    fused_times, fused16_times = [], []
    for _ in range(5):
        fused_times.append(median_ms(lambda: run_fused().numpy(), max(3, repeats // 5)))
        fused16_times.append(median_ms(lambda: run_fused16().numpy(), max(3, repeats // 5)))
    return stock_ms, float(np.median(fused_times)), float(np.median(fused16_times))


def time_onnxruntime(units, batch, bidirectional, threads, repeats, rng):
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    dirs = 2 if bidirectional else 1
    w = rng.standard_normal((dirs, 4 * units, units)).astype(np.float32) * 0.05
    r = rng.standard_normal((dirs, 4 * units, units)).astype(np.float32) * 0.05
    b = np.zeros((dirs, 8 * units), np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=units,
                            direction="bidirectional" if bidirectional else "forward")
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, batch, units])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("R", TensorProto.FLOAT, r.shape, r.ravel()),
         helper.make_tensor("B", TensorProto.FLOAT, b.shape, b.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((T, batch, units)).astype(np.float32)
    return median_ms(lambda: sess.run(None, {"X": x}), repeats)


def time_torch(cell, units, batch, bidirectional, threads, repeats, rng):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    module = cls(units, units, batch_first=True, bidirectional=bidirectional).eval()
    x = torch.from_numpy(rng.standard_normal((batch, T, units)).astype(np.float32))

    def run():
        with torch.inference_mode():
            module(x)

    return median_ms(run, repeats)


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cases", default="", help="comma-separated substrings of case labels to run")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    rng = np.random.default_rng(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# CPU benchmark: {cpu}, {os.cpu_count()} cores, {args.threads} threads; TF {tf.__version__}; "
          f"ISA path {tf_ops.cpu_isa()}; T={T}, float32, median ms of {args.repeats} warm runs")
    rows = []
    header = ("case", "stock Keras", "ONNX Runtime", "PyTorch", "fused", "vs Keras", "vs ORT", "fused, bf16 weights",
              "bf16 vs ORT")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for label, cell, units, batch, bidirectional in CASES:
        if args.cases and not any(s.strip() and s.strip() in label for s in args.cases.split(",")):
            continue
        stock, fused, fused16 = time_keras(cell, units, batch, bidirectional, args.repeats, rng)
        ort_ms = time_onnxruntime(units, batch, bidirectional, args.threads, args.repeats, rng) if cell == "lstm" \
            else None
        torch_ms = time_torch(cell, units, batch, bidirectional, args.threads, args.repeats, rng)
        row = (label, fmt(stock), fmt(ort_ms), fmt(torch_ms), fmt(fused), f"{stock / fused:.1f}x",
               "-" if ort_ms is None else f"{ort_ms / fused:.2f}x", fmt(fused16),
               "-" if ort_ms is None else f"{ort_ms / fused16:.2f}x")
        rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
