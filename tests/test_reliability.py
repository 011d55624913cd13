"""What a custom op inside someone else's process must guarantee: no memory growth over many calls, the same
answers under concurrency as serially (bitwise), and ResourceExhausted (not an abort) when memory runs out."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf

import tf_ops
from conftest import ROOT

pytestmark = pytest.mark.skipif(not tf_ops.op_library_available(), reason="op library not built")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _workloads(rng):
    """Three tf.functions on shared weights: an LSTM forward (projection, both directions), a GRU forward, and an
    LSTM training step through the fused gradient; plus an int8 forward."""
    batch, max_time, units = 4, 9, 40
    x4 = tf.constant(rng.standard_normal((batch, max_time, 2 * 4 * units)).astype(np.float32))
    x3 = tf.constant(rng.standard_normal((batch, max_time, 3 * units)).astype(np.float32))
    rk_proj = tf.constant((rng.standard_normal((2, 16, 4 * units)) / 4).astype(np.float32))
    pk = tf.constant((rng.standard_normal((2, units, 16)) / 6).astype(np.float32))
    rk_gru = tf.constant((rng.standard_normal((1, units, 3 * units)) / 6).astype(np.float32))
    rk_lstm = tf.constant((rng.standard_normal((1, units, 4 * units)) / 6).astype(np.float32))
    lengths = tf.constant([9, 4, 0, 7], tf.int32)
    q, scale = tf_ops.quantize_rows(rk_lstm.numpy())

    @tf.function
    def lstm_proj():
        return tf_ops.lstm_sequence(x4, rk_proj, lengths, projection_kernel=pk, direction="bidirectional",
                                    cell_clip=2.0, proj_clip=1.0)[0]

    @tf.function
    def gru():
        return tf_ops.gru_sequence(x3, rk_gru, None, lengths)[0]

    @tf.function
    def lstm_grad():
        with tf.GradientTape() as tape:
            tape.watch(rk_lstm)
            out = tf_ops.lstm_sequence(x4[:, :, :4 * units], rk_lstm, lengths, training=True)[0]
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, rk_lstm)

    @tf.function
    def lstm_int8():
        return tf_ops.lstm_sequence_int8(x4[:, :, :4 * units], q, scale, lengths)[0]

    return [lstm_proj, gru, lstm_grad, lstm_int8]


def test_thousands_of_calls_do_not_grow_memory(rng):
    fns = _workloads(rng)
    for _ in range(200):  # warm up: traces, allocator pools, thread pools
        for fn in fns:
            fn()
    before = _rss_bytes()
    calls = 3000
    for _ in range(calls):
        for fn in fns:
            fn()
    growth = _rss_bytes() - before
    print(f"RSS growth over {calls * len(fns)} calls: {growth / 2**20:.2f} MiB")
    # A leak of even one small buffer per call would show: the LSTM reserve alone is 10 KiB per call.
    assert growth < 8 * 2**20


def test_concurrent_calls_match_serial_bitwise(rng):
    fns = _workloads(rng)
    serial = [fn().numpy() for fn in fns]
    # Bitwise deterministic run to run as well.
    for fn, want in zip(fns, serial):
        np.testing.assert_array_equal(fn().numpy(), want)
    errors = []

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(fns) * 25) % len(fns)
        try:
            for i in order:
                got = fns[i]().numpy()
                if not np.array_equal(got, serial[i]):
                    errors.append(f"function {i} differs under concurrency")
        except Exception as e:  # noqa: BLE001 - report whatever went wrong in the thread
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_out_of_memory_is_resource_exhausted_not_an_abort(tmp_path):
    """With the address space capped just above what is in use, a call whose outputs do not fit fails with
    ResourceExhausted, and the process goes on working (run in a child process: the cap is process-wide)."""
    script = textwrap.dedent("""
        import os, resource, sys
        import tensorflow as tf
        import tf_ops
        small_x, small_rk = tf.random.normal([1, 50, 64]), tf.random.normal([1, 16, 64])
        want = tf_ops.lstm_sequence(small_x, small_rk)[0].numpy()
        big_x, big_rk = tf.zeros([64, 2000, 4 * 512]), tf.zeros([1, 512, 4 * 512])  # 1 GiB of input
        in_use = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 200 * 2**20, resource.RLIM_INFINITY))
        try:
            tf_ops.lstm_sequence(big_x, big_rk, training=True)  # needs 256 MiB output + 1.3 GiB reserve
            print("NO ERROR")
        except tf.errors.ResourceExhaustedError as e:
            print("RESOURCE_EXHAUSTED")
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert (tf_ops.lstm_sequence(small_x, small_rk)[0].numpy() == want).all()
        print("STILL WORKING")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RESOURCE_EXHAUSTED" in result.stdout and "STILL WORKING" in result.stdout, result.stdout


def test_answers_do_not_depend_on_the_thread_count(rng, tmp_path):
    """The same inputs through TensorFlow with one intra-op thread and with two (the core splits a step's units over
    the pool's threads from ~3e5 flops a direction-step: every case below is past that) give bitwise the same
    outputs and gradients: a user's numbers must not change with the machine's core count. Each thread count runs in
    a child process (the pool's size is fixed at TensorFlow's start)."""
    units, batch, max_time = 256, 3, 7
    inputs = dict(x4=rng.standard_normal((batch, max_time, 2 * 4 * units)).astype(np.float32),
                  x3=rng.standard_normal((batch, max_time, 3 * units)).astype(np.float32),
                  rk4=(rng.standard_normal((2, units, 4 * units)) / 16).astype(np.float32),
                  rk3=(rng.standard_normal((1, units, 3 * units)) / 16).astype(np.float32),
                  lengths=np.array([7, 0, 5], np.int32))
    np.savez(tmp_path / "in.npz", **inputs)
    script = textwrap.dedent("""
        import sys
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
        import tf_ops
        a = dict(np.load(sys.argv[2]))
        x4, x3, rk4, rk3 = (tf.constant(a[k]) for k in ("x4", "x3", "rk4", "rk3"))
        lengths = tf.constant(a["lengths"])
        out = {}
        out["lstm_bi"] = tf_ops.lstm_sequence(x4, rk4, lengths, direction="bidirectional")[0]
        out["gru"] = tf_ops.gru_sequence(x3, rk3, None, lengths)[0]
        q, s = tf_ops.quantize_rows(a["rk4"])
        out["lstm_int8_bi"] = tf_ops.lstm_sequence_int8(x4, q, s, lengths, direction="bidirectional")[0]
        with tf.GradientTape() as tape:
            tape.watch([x4, rk4])
            y = tf_ops.lstm_sequence(x4, rk4, lengths, direction="bidirectional", training=True)[0]
            loss = tf.reduce_sum(y * tf.cos(y))
        out["grad_x"], out["grad_rk"] = tape.gradient(loss, [x4, rk4])
        assert all(np.all(np.isfinite(v.numpy())) for v in out.values())
        np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
        print("DONE", tf.config.threading.get_intra_op_parallelism_threads())
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    results = {}
    for threads in (1, 2):
        path = tmp_path / f"out{threads}.npz"
        run = subprocess.run([sys.executable, "-c", script, str(threads), str(tmp_path / "in.npz"), str(path)],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0 and f"DONE {threads}" in run.stdout, run.stderr[-2000:]
        results[threads] = dict(np.load(path))
    for name, one in results[1].items():
        two = results[2][name]
        assert one.tobytes() == two.tobytes(), (name, float(np.max(np.abs(one - two))))
