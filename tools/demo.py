"""The main job's end-to-end demo (tools/main.sh runs it after the set-up), in a few minutes on 2 cores (the
README: about 100 s on the development VM):

 1. generate a translation task (tools/toy_task.py: reordering, a made-up lexicon) and train a small NMT model on
    it with the fused ops (python -m models.nmt train);
 2. export it as a SavedModel in both flavours (fused op; --portable, stock TensorFlow ops only), and a small
    ELMo (random weights, written in the released bilm-tf format) likewise;
 3. in a fresh Python process: load the portable export (the op library stays unloaded) and the fused one,
    translate a few test sentences, score the test set with sacreBLEU through both, embed a few sentences with
    the ELMo exports, and time the served models, fused against portable;
 4. print the fused-versus-stock layer speed table for this machine (bench/cpu_bench.py), and on a machine
    with an NVIDIA GPU the CUDA core against cuDNN (tools/gpu/run_all.sh).

    .venv/bin/python tools/demo.py [--work-dir demo_run] [--steps 700] [--skip-bench]

Everything lands in --work-dir (default demo_run/, ignored by git): data/, nmt/ (the trained model), elmo/,
exports/ (a TF Serving model directory: nmt/<v>/, nmt_portable/<v>/, elmo/<v>/, elmo_portable/<v>/,
models.config, batching_parameters.txt).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SMALL_ELMO = {"lstm": {"dim": 256, "projection_dim": 64, "n_layers": 2, "cell_clip": 3.0, "proj_clip": 3.0,
                       "use_skip_connections": True},
              "char_cnn": {"embedding": {"dim": 16}, "filters": [[1, 32], [2, 32], [3, 64], [4, 128]],
                           "n_highway": 1, "n_characters": 262, "max_characters_per_token": 50,
                           "activation": "relu"}}


def banner(text):
    print(f"\n=== {text} " + "=" * max(0, 100 - len(text)), flush=True)


def train_nmt(work, steps, log):
    import toy_task
    from models import nmt
    data = os.path.join(work, "data")
    counts = toy_task.write_task(data, train=20000, valid=300, test=300, seed=7)
    log(f"generated task: {counts} sentence pairs in {data}")
    with open(os.path.join(data, "train.src")) as f, open(os.path.join(data, "train.tgt")) as g:
        log(f"  e.g. {f.readline().strip()!r} -> {g.readline().strip()!r}")
    model_dir = os.path.join(work, "nmt")
    args = nmt.build_parser().parse_args([
        "train", "--src", os.path.join(data, "train.src"), "--tgt", os.path.join(data, "train.tgt"),
        "--valid-src", os.path.join(data, "valid.src"), "--valid-tgt", os.path.join(data, "valid.tgt"),
        "--model-dir", model_dir, "--shared-vocab", "--src-vocab-size", "160", "--emb-dim", "128",
        "--hidden", "128", "--layers", "1", "--dropout", "0.1", "--batch-tokens", "2048", "--lr", "3e-3",
        "--warmup-steps", "100", "--max-steps", str(steps), "--decay-start", str(steps // 2),
        "--eval-every", str(max(steps // 2, 1)), "--log-every", "100", "--valid-beam-size", "4"])
    meta = nmt.train(args, log=lambda m: log("  " + m))
    return model_dir, meta


def make_elmo(work, log):
    import keras
    from models import elmo
    keras.utils.set_random_seed(1)
    model = elmo.build_elmo(SMALL_ELMO)
    options_file, weight_file = elmo.write_bilm_tf(model, os.path.join(work, "elmo"))
    params = sum(int(v.shape.num_elements() if hasattr(v.shape, "num_elements") else
                     __import__("numpy").prod(v.shape)) for v in model.weights)
    log(f"small ELMo (random weights, {params} parameters: LSTM 256 units, projection 64, 2 layers) written in the "
        f"bilm-tf format: {options_file}, {weight_file}")
    return options_file, weight_file


# Runs in a fresh process: nothing of the exporting process (op library, traced functions) carries over.
CHILD = r'''
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import export, tf_ops
exports, data = sys.argv[2], sys.argv[3]

def read(name):
    with open(os.path.join(data, name), encoding="utf-8") as f:
        return [line.strip() for line in f]

src, ref = read("test.src"), read("test.tgt")
portable = export.load(os.path.join(exports, "nmt_portable"))
print(f"loaded {portable.path} (portable): op library loaded = {tf_ops._loader._module is not None}")
fused = export.load(os.path.join(exports, "nmt"))
print(f"loaded {fused.path} (fused): op library loaded = {tf_ops._loader._module is not None}")
out = fused(text=src[:4])
for s, row, score in zip(src[:4], out["translations"].numpy(), out["scores"].numpy()):
    print(f"  {s}\n    -> {row[0].decode()}   (score {score[0]:.3f}; 2nd best: {row[1].decode()})")

import sacrebleu
bleu = {}
for name, model in (("fused", fused), ("portable", portable)):
    hyps = []
    for i in range(0, len(src), 64):
        hyps += [row[0].decode() for row in model(text=src[i:i + 64])["translations"].numpy()]
    bleu[name] = sacrebleu.corpus_bleu(hyps, [ref])
    print(f"test set ({len(src)} sentences) through the {name} export: {bleu[name]}")

def median_ms(fn, repeats):
    fn(); fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)

rows = []
for batch in (1, 32):
    texts = src[:batch]
    ms = {name: median_ms(lambda m=m: m(text=texts), 15 if batch == 1 else 5)
          for name, m in (("portable", portable), ("fused", fused))}
    rows.append((f"NMT translate, beam 5, batch {batch}", ms["portable"], ms["fused"], batch))

emb_portable = export.load(os.path.join(exports, "elmo_portable"))
emb = export.load(os.path.join(exports, "elmo"))
sentences = [s.split() for s in src[:8]]
width = max(len(s) for s in sentences)
tokens = [s + [""] * (width - len(s)) for s in sentences]
lengths = [len(s) for s in sentences]
vec = emb(tokens=tokens, sequence_len=lengths)
print(f"ELMo export: {len(sentences)} sentences -> " + ", ".join(
    f"{k} {list(v.shape)}" for k, v in sorted(vec.items())))
ref_vec = emb_portable(tokens=tokens, sequence_len=lengths)
diff = max(float(np.abs(vec[k].numpy() - ref_vec[k].numpy()).max()) for k in vec if k != "mask")
print(f"  fused vs portable ELMo export: max |difference| {diff:.2e}")
for batch in (1, 8):
    ms = {name: median_ms(lambda m=m: m(tokens=tokens[:batch], sequence_len=lengths[:batch]), 20)
          for name, m in (("portable", emb_portable), ("fused", emb))}
    rows.append((f"ELMo (small) embed, batch {batch}", ms["portable"], ms["fused"], batch))
print("\nServed models, fused export against the portable (stock-op) export of the same weights, in this process")
print(f"{'request':<40}{'portable ms':>12}{'fused ms':>10}{'speed-up':>10}")
for label, a, b, _ in rows:
    print(f"{label:<40}{a:>12.1f}{b:>10.1f}{a / b:>9.1f}x")
print("JSON " + json.dumps({"bleu": {k: v.score for k, v in bleu.items()}, "rows": rows}))
'''


def gpu_table(log):
    """On a machine with an NVIDIA GPU (and PyTorch for the cuDNN anchor): the CUDA core against cuDNN
    (tools/gpu/run_all.sh). Elsewhere, say where the measured table is."""
    import shutil
    has_gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    if not has_gpu:
        log("no NVIDIA GPU on this machine. The CUDA core's results against cuDNN (measured on an H100, without "
            "TensorFlow) are in bench/gpu/RESULTS.md; `bash tools/gpu/run_all.sh` re-measures them on a GPU "
            "machine with nvcc and PyTorch.")
        return
    log("GPU found: building the CUDA core and timing it against cuDNN (tools/gpu/run_all.sh)")
    result = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu", "run_all.sh")])
    if result.returncode != 0:
        log(f"tools/gpu/run_all.sh failed (exit {result.returncode}): it needs nvcc and PyTorch with CUDA")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "demo_run"))
    parser.add_argument("--steps", type=int, default=700, help="NMT training steps (~14 steps/s on 2 cores)")
    parser.add_argument("--skip-bench", action="store_true", help="leave out the layer speed table")
    parser.add_argument("--bench-repeats", type=int, default=15)
    args = parser.parse_args()
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    start = time.time()
    stamps = []

    def log(message):
        print(f"[{time.time() - start:6.1f}s] {message}", flush=True)

    import tensorflow as tf
    import tf_ops
    from export import saved_model
    log(f"TensorFlow {tf.__version__}; op library {tf_ops.op_library_path()} (CPU path: {tf_ops.cpu_isa()})")

    banner("1. train a small NMT model on a generated task (fused LSTM forward and backward)")
    t = time.time()
    if os.path.exists(os.path.join(work, "nmt")):
        import shutil
        shutil.rmtree(os.path.join(work, "nmt"))  # a fresh run each time (models.nmt would resume it)
    model_dir, meta = train_nmt(work, args.steps, log)
    stamps.append(("train NMT", time.time() - t))
    log(f"trained {meta['step']} steps; best validation BLEU {meta['best_bleu']:.1f}")

    banner("2. export SavedModels: fused and portable flavours")
    t = time.time()
    exports = os.path.join(work, "exports")
    paths = {
        "nmt": saved_model.export_nmt(model_dir, os.path.join(exports, "nmt"), "fused"),
        "nmt_portable": saved_model.export_nmt(model_dir, os.path.join(exports, "nmt_portable"), "portable"),
    }
    options_file, weight_file = make_elmo(work, log)
    paths["elmo"] = saved_model.export_elmo(options_file, weight_file, os.path.join(exports, "elmo"), "fused")
    paths["elmo_portable"] = saved_model.export_elmo(options_file, weight_file, os.path.join(exports, "elmo_portable"),
                                                     "portable")
    for name, path in paths.items():
        with open(os.path.join(path, "assets.extra", saved_model.METADATA_FILE)) as f:
            meta_json = json.load(f)
        log(f"{name}: {path} (fused ops in the graph: {meta_json['fused_ops'] or 'none'})")
    log(f"TF Serving files: {os.path.join(exports, saved_model.MODELS_CONFIG)}, "
        f"{os.path.join(exports, saved_model.BATCHING_PARAMETERS)}")
    stamps.append(("export", time.time() - t))

    banner("3. load the exports in a fresh process: translate, score, embed, time")
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, exports, os.path.join(work, "data")],
                          stdout=subprocess.PIPE, text=True)
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("JSON ")), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"the fresh-process step failed (exit {proc.returncode})")
    stamps.append(("load, translate, embed", time.time() - t))

    if not args.skip_bench:
        banner("4. fused vs stock Keras layers on this machine (bench/cpu_bench.py)")
        t = time.time()
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cpu_bench.py"), "--repeats",
                        str(args.bench_repeats)], check=True)
        stamps.append(("layer speed table", time.time() - t))

        banner("5. GPU")
        t = time.time()
        gpu_table(log)
        stamps.append(("GPU", time.time() - t))

    banner("done")
    for what, seconds in stamps:
        print(f"  {what:<28}{seconds:7.1f} s")
    print(f"  {'total':<28}{time.time() - start:7.1f} s")


if __name__ == "__main__":
    main()
