"""The NMT model (models/nmt_model.py) and its train/translate commands (models/nmt.py).

- The model's math against a float64 NumPy forward pass written from the equations (every attention / input
  feeding / tying variant), and the label-smoothed loss against its formula.
- Decoding: the fused, fused_op and stock decoders give the same translations for the same weights; greedy
  decoding picks, token by token, the NumPy forward pass's argmax (the decoder step and the training loop are
  separate code: both are checked against the same oracle).
- Training: a generated task (reversing random letter strings) learned to >= 98% exact match with beam search;
  resuming after an interruption (a step budget, or SIGTERM) gives bit-for-bit the uninterrupted run.
- The command line on tiny generated data, and on ../shared's toy-ende when it is there.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, SHARED
from models import nmt
from models.nmt_model import NMTConfig, NMTModel, Translator

PAD, BOS, EOS = 0, 2, 3


def small_model(seed=0, **overrides):
    import keras
    keras.utils.set_random_seed(seed)
    values = dict(src_vocab_size=23, tgt_vocab_size=19, emb_dim=12, hidden=12, enc_layers=2, dec_layers=2,
                  dropout=0.0, label_smoothing=0.0)
    values.update(overrides)
    model = NMTModel(NMTConfig(**values))
    # Random non-zero biases, so every weight shows up in the outputs.
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "bias" in v.path:
            v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    return model


# ---- a float64 NumPy forward pass, from the equations ---------------------------------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lstm(xs, kernel, recurrent, bias, h, c):
    """Runs an LSTM (gate order i, f, c, o) over the rows of xs; returns (outputs, h, c)."""
    outs = []
    for x in xs:
        z = x @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outs.append(h)
    return outs, h, c


def numpy_logp(model, src, tgt_in, decoding=False):
    """log p(. | src, tgt_in[:t+1]) for every target position t of one sentence: [T, V] float64.
    decoding=True: as the Translator decodes, PAD and BOS excluded (logits -inf)."""
    cfg = model.config
    w = lambda v: np.asarray(v.numpy(), np.float64)  # noqa: E731
    half = cfg.hidden // 2
    x = [w(model.src_embedding.embeddings)[i] for i in src]
    states = []
    for layer in model.encoder_layers:
        zeros = np.zeros(half)
        fw, hf, cf = _lstm(x, w(layer.forward_kernel), w(layer.forward_recurrent_kernel), w(layer.forward_bias),
                           zeros, zeros)
        bw, hb, cb = _lstm(x[::-1], w(layer.backward_kernel), w(layer.backward_recurrent_kernel),
                           w(layer.backward_bias), zeros, zeros)
        x = [np.concatenate([f, b]) for f, b in zip(fw, bw[::-1])]
        states.append([np.concatenate([hf, hb]), np.concatenate([cf, cb])])
    values = np.array(x).reshape(len(src), cfg.hidden)
    keys = values @ w(model.attention_kernel.kernel) if cfg.attention == "general" else values
    tgt_emb = w(model.tgt_embedding.embeddings)
    out_kernel = tgt_emb.T if cfg.tie_output else w(model.output_projection.kernel)
    feed = np.zeros(cfg.hidden)
    rows = []
    for y in tgt_in:
        inp = np.concatenate([tgt_emb[y], feed]) if cfg.input_feed else tgt_emb[y]
        for layer, cell in enumerate(model.decoder_cells):
            _, h, c = _lstm([inp], w(cell.kernel), w(cell.recurrent_kernel), w(cell.bias), *states[layer])
            states[layer] = [h, c]
            inp = h
        scores = keys @ inp
        align = np.exp(scores - scores.max()) if len(src) else scores
        align = align / align.sum() if len(src) else align
        context = align @ values if len(src) else np.zeros(cfg.hidden)
        feed = np.tanh(np.concatenate([context, inp]) @ w(model.attention_out.kernel))
        logits = feed @ out_kernel + w(model.output_bias)
        if decoding:
            logits[[PAD, BOS]] = -np.inf
        rows.append(logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
    return np.array(rows)


def _pad(seqs):
    return nmt.pad_batch(seqs)


VARIANTS = [dict(attention="general"), dict(attention="dot"), dict(attention="general", input_feed=False),
            dict(attention="dot", tie_output=False, emb_dim=8), dict(enc_layers=1, dec_layers=1)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_forward_matches_numpy(variant):
    model = small_model(seed=1, **variant)
    rng = np.random.default_rng(2)
    srcs = [list(rng.integers(4, 23, n)) for n in (5, 1, 3)]
    tgts = [list(rng.integers(4, 19, n)) for n in (4, 6, 1)]
    tgt_in = [[BOS] + t for t in tgts]
    tgt_out = [t + [EOS] for t in tgts]
    memory, states = model.encode(tf.constant(_pad(srcs)))
    attn = model.decode_teacher_forced(memory, states, tf.constant(_pad(tgt_in)))
    logp = tf.nn.log_softmax(model.logits(attn)).numpy()
    total, count = 0.0, 0
    for i in range(3):
        want = numpy_logp(model, srcs[i], tgt_in[i])
        got = logp[i, :len(tgt_in[i])]
        assert np.max(np.abs(got - want)) < 2e-5, np.max(np.abs(got - want))
        total -= sum(want[t, y] for t, y in enumerate(tgt_out[i]))
        count += len(tgt_out[i])
    loss, tokens = model.token_loss(tf.constant(_pad(srcs)), tf.constant(_pad(tgt_in)), tf.constant(_pad(tgt_out)))
    assert int(tokens) == count
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_label_smoothing_loss_formula():
    model = small_model(seed=3, label_smoothing=0.2)
    src, tgt = [[5, 6, 7]], [[8, 9]]
    tgt_in, tgt_out = [[BOS] + tgt[0]], [tgt[0] + [EOS]]
    want = numpy_logp(model, src[0], tgt_in[0])
    # (1 - eps) * NLL + eps * cross-entropy against the uniform distribution, averaged over tokens.
    per_token = [0.8 * -want[t, y] + 0.2 * -want[t].mean() for t, y in enumerate(tgt_out[0])]
    loss, _ = model.token_loss(tf.constant(src), tf.constant(tgt_in), tf.constant(tgt_out))
    np.testing.assert_allclose(float(loss), np.mean(per_token), rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[:4], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_fused_and_stock_decoders_agree_and_match_teacher_forcing(variant):
    model = small_model(seed=4, **variant)
    bias = model.output_bias.numpy()
    bias[EOS] -= 2.0  # longer outputs: more decoder steps compared
    model.output_bias.assign(bias)
    rng = np.random.default_rng(5)
    srcs = [list(rng.integers(4, 23, n)) for n in (6, 2, 9, 4)] + [[]]  # padded batch, one empty source
    src = _pad(srcs)
    results = {}
    for decoder in ("fused", "fused_op", "stock"):
        ids, scores = Translator(model, beam_size=4, decoder=decoder)(src, 15, 0.6)
        results[decoder] = ids.numpy(), scores.numpy()
    for decoder in ("fused_op", "stock"):
        np.testing.assert_array_equal(results["fused"][0], results[decoder][0])
        np.testing.assert_allclose(results["fused"][1], results[decoder][1], rtol=0, atol=1e-4)
    # Greedy: each token is the argmax of the NumPy forward pass over the tokens before it, and the score is
    # the sum of their log-probabilities.
    ids, scores = Translator(model, beam_size=1, decoder="fused")(src, 15, 0.0)
    for i, s in enumerate(srcs):
        seq = ids.numpy()[i, 0].tolist()
        seq = seq[:seq.index(EOS) + 1] if EOS in seq else seq
        want = numpy_logp(model, s, [BOS] + seq[:-1], decoding=True)
        np.testing.assert_array_equal(np.argmax(want, axis=1), seq)
        np.testing.assert_allclose(scores.numpy()[i, 0], sum(want[t, y] for t, y in enumerate(seq)), atol=1e-4)


def test_int8_translator_matches_the_model_on_dequantized_weights():
    """int8=True (encoder on the int8 op; decoder steps on the int8 op or on dequantized cell math) against the
    float translator of a copy of the model whose recurrent kernels were quantized and dequantized: the same
    hypotheses, scores within 1e-4; and not the float model's scores (the int8 path is really taken)."""
    import tf_ops
    model = small_model(seed=6, hidden=32, emb_dim=32)
    bias = model.output_bias.numpy()
    bias[EOS] -= 2.0
    model.output_bias.assign(bias)
    rng = np.random.default_rng(7)
    src = _pad([list(rng.integers(4, 23, n)) for n in (7, 3, 10, 5)])
    want_float = Translator(model, beam_size=4, decoder="fused")(src, 15, 0.6)[1].numpy()
    got = {decoder: Translator(model, beam_size=4, decoder=decoder, int8=True)(src, 15, 0.6)
           for decoder in ("fused", "fused_op")}
    dequantized = small_model(seed=6, hidden=32, emb_dim=32)
    dequantized.set_weights(model.get_weights())
    for v in dequantized.weights:
        if "recurrent_kernel" in v.path:
            v.assign(tf_ops.dequantize_rows(*tf_ops.quantize_rows(v.numpy())))
    want_ids, want_scores = Translator(dequantized, beam_size=4, decoder="fused")(src, 15, 0.6)
    for decoder, (ids, scores) in got.items():
        np.testing.assert_array_equal(ids.numpy(), want_ids.numpy(), err_msg=decoder)
        np.testing.assert_allclose(scores.numpy(), want_scores.numpy(), rtol=0, atol=1e-4, err_msg=decoder)
    assert np.max(np.abs(got["fused"][1].numpy() - want_float)) > 1e-5, "int8 gave the float model's scores"
    with pytest.raises(ValueError, match="int8"):
        Translator(model, decoder="stock", int8=True)


def test_config_and_translator_errors_name_the_argument():
    base = dict(src_vocab_size=10, tgt_vocab_size=10)
    for bad, needle in [(dict(hidden=13, emb_dim=13), "hidden"), (dict(attention="mlp"), "attention"),
                        (dict(emb_dim=8, hidden=16), "tie_output"), (dict(enc_layers=2, dec_layers=1), "enc_layers"),
                        (dict(dropout=1.0), "dropout"), (dict(label_smoothing=-0.1), "label_smoothing")]:
        with pytest.raises(ValueError, match=needle):
            NMTConfig(**base, **bad)
    model = small_model()
    with pytest.raises(ValueError, match="decoder"):
        Translator(model, decoder="cudnn")
    with pytest.raises(ValueError, match="beam_size"):
        Translator(model, beam_size=0)
    with pytest.raises(ValueError, match="n_best"):
        nmt.translate_ids(Translator(model, beam_size=2), [[5, 6]], n_best=3)


# ---- training -------------------------------------------------------------------------------------------------
LETTERS = "abcdefghij"


def reversal_data(path, n, seed, min_len=3, max_len=9):
    """n random letter strings (space-separated letters, one SentencePiece piece each) and their reversals."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        letters = [LETTERS[i] for i in rng.integers(0, len(LETTERS), rng.integers(min_len, max_len + 1))]
        src.append(" ".join(letters))
        tgt.append(" ".join(reversed(letters)))
    os.makedirs(path, exist_ok=True)
    for name, lines in (("src.txt", src), ("tgt.txt", tgt)):
        with open(os.path.join(path, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(path, "src.txt"), os.path.join(path, "tgt.txt"), src, tgt


def train_args(data_dir, model_dir, *extra):
    src, tgt = os.path.join(data_dir, "src.txt"), os.path.join(data_dir, "tgt.txt")
    return nmt.build_parser().parse_args([
        "train", "--src", src, "--tgt", tgt, "--model-dir", str(model_dir), "--shared-vocab",
        "--src-vocab-size", "40", "--emb-dim", "64", "--hidden", "64", "--layers", "1", "--batch-tokens", "600",
        "--warmup-steps", "20", "--log-every", "1", "--eval-every", "1000000", "--save-every", "1000000",
        *extra])


def test_learns_to_reverse_strings(tmp_path):
    reversal_data(tmp_path / "data", 4000, seed=0)
    # Attention has to learn to walk the source backwards: the loss drops sharply at about step 250 here.
    args = train_args(tmp_path / "data", tmp_path / "model", "--max-steps", "600", "--lr", "3e-3",
                      "--decay-start", "400", "--dropout", "0.1", "--label-smoothing", "0.0", "--emb-dim", "128",
                      "--hidden", "128")
    nmt.train(args, log=lambda msg: None)
    _, _, test_src, test_tgt = reversal_data(tmp_path / "test", 300, seed=1)
    model, _, sp_src, sp_tgt = nmt.load_model(str(tmp_path / "model"), "last")
    hyps = nmt.translate_lines(model, sp_src, sp_tgt, test_src, beam_size=5, batch_size=100, length_penalty=0.6)
    exact = np.mean([h[0][0] == t for h, t in zip(hyps, test_tgt)])
    assert exact >= 0.98, exact


def _checkpoint_arrays(model_dir):
    with np.load(os.path.join(model_dir, "ckpt-last.npz")) as data:
        return {k: data[k] for k in data.files if k != "meta"}, json.loads(str(data["meta"]))


def test_resume_after_interruption_is_exact(tmp_path):
    reversal_data(tmp_path / "data", 500, seed=3)
    common = ("--dropout", "0.3", "--label-smoothing", "0.1")
    nmt.train(train_args(tmp_path / "data", tmp_path / "straight", "--max-steps", "8", *common), log=lambda m: None)
    # Interrupted by its step budget, then resumed with a larger one.
    nmt.train(train_args(tmp_path / "data", tmp_path / "resumed", "--max-steps", "3", *common), log=lambda m: None)
    nmt.train(train_args(tmp_path / "data", tmp_path / "resumed", "--max-steps", "8", *common), log=lambda m: None)

    # Interrupted by SIGTERM right after step 5 (the handler lets the step finish and saves a checkpoint).
    def log(message):
        if message.startswith("step 5 "):
            os.kill(os.getpid(), signal.SIGTERM)
    meta = nmt.train(train_args(tmp_path / "data", tmp_path / "signalled", "--max-steps", "8", *common), log=log)
    assert meta["step"] == 5 and meta["interrupted_by"] == signal.SIGTERM
    # As if killed (-9) after logging steps 6 and 7 but before their checkpoint: the resumed run redoes them,
    # and the log must list each step once.
    with open(tmp_path / "signalled" / nmt.LOG_FILE, "a") as f:
        for step in (6, 7):
            f.write(json.dumps({"event": "train", "step": step, "loss": 0.0}) + "\n")
    nmt.train(train_args(tmp_path / "data", tmp_path / "signalled", "--max-steps", "8", *common), log=lambda m: None)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "signalled" / nmt.LOG_FILE)
             if json.loads(line)["event"] == "train"]
    assert steps == list(range(1, 9)), steps

    want, want_meta = _checkpoint_arrays(tmp_path / "straight")
    assert want_meta["step"] == 8
    assert any(k.startswith("optimizer_") for k in want)
    for other in ("resumed", "signalled"):
        got, meta = _checkpoint_arrays(tmp_path / other)
        assert meta["step"] == 8
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{other}: {key}")
    # The log shows the resumed run picking up at step 4, not from 1.
    steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / nmt.LOG_FILE)
             if json.loads(line)["event"] == "train"]
    assert steps == list(range(1, 9))


def test_stop_signal_at_an_evaluation_step_evaluates_on_resume(tmp_path):
    """SIGTERM during the step before an evaluation step: the run saves without evaluating (it must stop now),
    and the resumed run evaluates that step first, so the evaluations are those of an uninterrupted run."""
    reversal_data(tmp_path / "data", 300, seed=7)
    vsrc, vtgt, _, _ = reversal_data(tmp_path / "valid", 8, seed=8)
    extra = ("--max-steps", "6", "--eval-every", "3", "--valid-src", vsrc, "--valid-tgt", vtgt,
             "--valid-beam-size", "2")

    for stop_at in (3, 2):  # at an evaluation step, and at one that is not
        def log(message):
            if message.startswith(f"step {stop_at} "):
                os.kill(os.getpid(), signal.SIGTERM)
        model_dir = tmp_path / f"m{stop_at}"
        nmt.train(train_args(tmp_path / "data", model_dir, *extra), log=log)
        nmt.train(train_args(tmp_path / "data", model_dir, *extra), log=lambda m: None)
        evals = [json.loads(line)["step"] for line in open(model_dir / nmt.LOG_FILE)
                 if json.loads(line)["event"] == "eval"]
        assert evals == [3, 6], (stop_at, evals)


def test_learning_rate_decay_end_stays_where_the_first_run_put_it(tmp_path):
    """A resume with a larger --max-steps continues the first run's schedule (only budgets change)."""
    reversal_data(tmp_path / "data", 300, seed=9)
    extra = ("--decay-start", "2", "--warmup-steps", "1")
    nmt.train(train_args(tmp_path / "data", tmp_path / "m", "--max-steps", "4", *extra), log=lambda m: None)
    nmt.train(train_args(tmp_path / "data", tmp_path / "m", "--max-steps", "6", *extra), log=lambda m: None)
    lrs = {json.loads(line)["step"]: json.loads(line)["lr"] for line in open(tmp_path / "m" / nmt.LOG_FILE)
           if json.loads(line)["event"] == "train"}
    args = train_args(tmp_path / "data", tmp_path / "x", "--max-steps", "4", *extra)
    # The schedule of a 4-step run, continued: at and after step 4 the decay has ended at --min-lr.
    want = {step + 1: nmt.learning_rate(step, args) for step in range(6)}
    assert lrs == pytest.approx(want, rel=1e-6)
    assert lrs[5] == lrs[6] == pytest.approx(args.lr * args.min_lr)


def test_read_lines_splits_at_newlines_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa b\u2028c\r\nd\x0ce\rf\n\ng\u0085h".encode())
    assert nmt.read_lines(str(path)) == ["a b\u2028c", "d\x0ce\rf", "", "g\u0085h"]
    for prefix in (b"", b"\xef\xbb\xbf"):  # the BOM moves no line number
        path.write_bytes(prefix + b"ok\nbad \xff byte\n")
        with pytest.raises(ValueError, match="line 2"):
            nmt.read_lines(str(path), "--src")


def test_empty_sources_are_empty_translations_for_every_decoder():
    model = small_model(seed=6)
    for decoder in ("fused", "stock"):
        got = nmt.translate_ids(Translator(model, beam_size=3, decoder=decoder), [[], [5, 6], []], batch_size=2,
                                n_best=2, max_length=5)
        assert got[0] == got[2] == [([], 0.0), ([], 0.0)]
        assert len(got[1]) == 2 and got[1][0][1] >= got[1][1][1]


def test_cli_mistakes_are_one_line_errors(tmp_path, capsys):
    src, tgt, _, _ = reversal_data(tmp_path / "data", 50, seed=10)
    vsrc, vtgt, _, _ = reversal_data(tmp_path / "valid", 6, seed=11)
    short_vtgt = tmp_path / "short.txt"
    short_vtgt.write_text("a\nb\n")
    base = ["train", "--src", src, "--tgt", tgt, "--src-vocab-size", "20", "--tgt-vocab-size", "20",
            "--max-steps", "1"]
    cases = [
        (base + ["--model-dir", str(tmp_path / "m1"), "--valid-src", vsrc], "go together"),
        (base + ["--model-dir", str(tmp_path / "m2"), "--valid-src", vsrc, "--valid-tgt", str(short_vtgt)],
         "line-aligned"),
        (base + ["--model-dir", str(tmp_path / "m3"), "--eval-every", "0"], "--eval-every must be >= 1"),
        (base + ["--model-dir", str(tmp_path / "m4"), "--max-len", "1"], "no training pair is left"),
        (["translate", "--model-dir", str(tmp_path / "nothing")], "holds no trained model"),
        (["translate", "--model-dir", str(tmp_path / "nothing"), "--n-best", "0"], "--n-best must be >= 1"),
        (["translate", "--model-dir", str(tmp_path / "nothing"), "--decoder", "stock", "--int8"], "--int8"),
        (["translate", "--model-dir", str(tmp_path / "nothing"), "--length-penalty", "-1"], "--length-penalty"),
        (base + ["--model-dir", str(tmp_path / "m5"), "--valid-length-penalty", "-0.5"], "--valid-length-penalty"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            nmt.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (argv, err)
        assert needle in err and "Traceback" not in err, (needle, err)
    for model_dir in ("m1", "m2", "m3"):  # refused before anything was trained or written
        assert not os.path.exists(tmp_path / model_dir / nmt.CONFIG_FILE)


def test_cli_refuses_settings_that_silently_break_training(tmp_path, capsys):
    src, tgt, _, _ = reversal_data(tmp_path / "data", 20, seed=12)
    base = ["train", "--src", src, "--tgt", tgt, "--src-vocab-size", "20", "--tgt-vocab-size", "20",
            "--max-steps", "1", "--emb-dim", "8", "--hidden", "8", "--layers", "1"]  # (short, were one accepted)
    cases = [(["--clip-norm", "0"], "--clip-norm"), (["--clip-norm", "-1"], "--clip-norm"),
             (["--clip-norm", "nan"], "--clip-norm"), (["--lr", "0"], "--lr"), (["--lr", "-1"], "--lr"),
             (["--lr", "nan"], "--lr"), (["--min-lr", "-2"], "--min-lr"), (["--decay-start", "-5"], "--decay-start"),
             (["--time-budget", "nan"], "--time-budget"), (["--time-budget=-1m"], "--time-budget"),
             (["--seed", "-1"], "--seed"), (["--emb-dim", "6"], "--no-tie")]  # tied output: the fix is named
    for i, (extra, needle) in enumerate(cases):
        model_dir = tmp_path / f"m{i}"
        with pytest.raises(SystemExit) as exit_info:
            nmt.main(base + ["--model-dir", str(model_dir)] + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (extra, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not os.path.exists(model_dir)  # refused before anything was written


def test_damaged_model_directories_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import io
    import shutil
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=13)
    good = tmp_path / "good"
    nmt.main(["train", "--src", src, "--tgt", tgt, "--src-vocab-size", "20", "--tgt-vocab-size", "20",
              "--emb-dim", "8", "--hidden", "8", "--layers", "1", "--max-steps", "1", "--log-every", "1",
              "--model-dir", str(good)])
    capsys.readouterr()

    def truncate(path):
        with open(path, "r+b") as f:
            f.truncate(100)

    damage = {
        "spm_src.model": lambda d: os.remove(d / "spm_src.model"),
        "spm_tgt.model": lambda d: (d / "spm_tgt.model").write_bytes(b"garbage"),
        "ckpt-last.npz": lambda d: truncate(d / "ckpt-last.npz"),
        "config.json": lambda d: (d / "config.json").write_text("{not json"),
    }
    for name, mutate in damage.items():
        d = tmp_path / ("bad_" + name)
        shutil.copytree(good, d)
        mutate(d)
        commands = [["translate", "--model-dir", str(d), "--checkpoint", "last"]]
        if name != "spm_src.model":  # (a resume with a missing SentencePiece model is not checked up front)
            commands.append(["train", "--src", src, "--tgt", tgt, "--model-dir", str(d), "--max-steps", "2"])
        for argv in commands:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a b\n")))
            with pytest.raises(SystemExit) as exit_info:
                nmt.main(argv)
            err = capsys.readouterr().err
            assert exit_info.value.code == 2, (name, argv[0], err)
            assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for model_dir in (a_file, a_file / "sub"):
        for argv in (["train", "--src", src, "--tgt", tgt, "--model-dir", str(model_dir), "--max-steps", "1"],
                     ["translate", "--model-dir", str(model_dir)]):
            with pytest.raises(SystemExit) as exit_info:
                nmt.main(argv)
            err = capsys.readouterr().err
            assert exit_info.value.code == 2, (argv, err)
            assert "--model-dir" in err and "Traceback" not in err, (argv, err)


# ---- the command line -----------------------------------------------------------------------------------------
def _run(args, stdin=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "models.nmt", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _cli_smoke(tmp_path, src, tgt, valid_src, valid_tgt, lines, vocab):
    model_dir = tmp_path / "model"
    out = _run(["train", "--src", src, "--tgt", tgt, "--valid-src", valid_src, "--valid-tgt", valid_tgt,
                "--model-dir", str(model_dir), "--src-vocab-size", str(vocab), "--tgt-vocab-size", str(vocab),
                "--emb-dim", "16", "--hidden", "16", "--layers", "1", "--max-steps", "3", "--eval-every", "3",
                "--log-every", "1", "--valid-beam-size", "2", "--max-len", "60"])
    assert "valid BLEU" in out and "stopped at step 3" in out
    assert {"config.json", "ckpt-last.npz", "ckpt-best.npz", "spm_src.model", "spm_tgt.model",
            nmt.LOG_FILE} <= set(os.listdir(model_dir))
    text = "\n".join(lines) + "\n"
    out = _run(["translate", "--model-dir", str(model_dir), "--beam-size", "3", "--batch-size", "2",
                "--max-length", "8"], stdin=text)
    assert len(out.split("\n")) == len(lines) + 1  # one line per input, empty inputs included
    out = _run(["translate", "--model-dir", str(model_dir), "--beam-size", "3", "--n-best", "2", "--with-scores",
                "--decoder", "stock", "--max-length", "8"], stdin=text)
    rows = out.rstrip("\n").split("\n")
    assert len(rows) == 2 * len(lines)
    for first, second in zip(rows[0::2], rows[1::2]):
        assert float(first.split("\t")[0]) >= float(second.split("\t")[0])  # best first


def test_cli_train_and_translate_on_generated_data(tmp_path):
    src, tgt, _, _ = reversal_data(tmp_path / "data", 200, seed=5)
    vsrc, vtgt, _, _ = reversal_data(tmp_path / "valid", 20, seed=6)
    _cli_smoke(tmp_path, src, tgt, vsrc, vtgt, ["a b c", "", "j i h g f e d c b a"], vocab=20)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "nmt", "toy-ende")),
                    reason="../shared/data/nmt/toy-ende is not there")
def test_cli_on_toy_ende(tmp_path):
    d = os.path.join(SHARED, "data", "nmt", "toy-ende")
    lines = [line.strip() for line in open(os.path.join(d, "src-val.txt"), encoding="utf-8")][:4]
    _cli_smoke(tmp_path, os.path.join(d, "src-train.txt"), os.path.join(d, "tgt-train.txt"),
               os.path.join(d, "src-val.txt"), os.path.join(d, "tgt-val.txt"), lines, vocab=500)


# ---- resuming with other settings, restarting without a checkpoint ----------------------------------------------
def _tiny_train_argv(src, tgt, model_dir, *extra):
    return ["train", "--src", src, "--tgt", tgt, "--model-dir", str(model_dir), "--src-vocab-size", "20",
            "--tgt-vocab-size", "20", "--emb-dim", "8", "--hidden", "8", "--layers", "1", "--log-every", "1",
            "--eval-every", "1000", *extra]


def test_resume_refuses_settings_that_contradict_the_saved_run(tmp_path, capsys):
    """A model directory holding a run of --hidden 8: a command asking for --hidden 16 (or another --lr, --no-tie,
    --src) must not silently go on training the 8-unit model with its saved recipe."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=20)
    other_src, _, _, _ = reversal_data(tmp_path / "other", 30, seed=21)
    model_dir = tmp_path / "m"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "1"))
    capsys.readouterr()
    cases = [(["--hidden", "16", "--emb-dim", "16"], "--hidden 16"), (["--lr", "0.01"], "--lr 0.01"),
             (["--no-tie"], "--no-tie"), (["--dropout", "0.1"], "--dropout 0.1"), (["--layers", "2"], "--layers 2")]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2", *extra))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (extra, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
    argv = _tiny_train_argv(src, tgt, model_dir, "--max-steps", "2")
    argv[argv.index(src)] = other_src
    with pytest.raises(SystemExit) as exit_info:
        nmt.main(argv)
    assert exit_info.value.code == 2 and "--src" in capsys.readouterr().err
    with open(model_dir / nmt.CONFIG_FILE) as f:
        assert json.load(f)["model"]["hidden"] == 8
    _, meta = _checkpoint_arrays(model_dir)
    assert meta["step"] == 1  # nothing trained by the refused commands
    # The same command, or one that changes budgets only, or leaves settings out, resumes.
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2", "--save-every", "5"))
    nmt.main(["train", "--src", src, "--tgt", tgt, "--model-dir", str(model_dir), "--max-steps", "3"])
    _, meta = _checkpoint_arrays(model_dir)
    assert meta["step"] == 3


def test_restart_without_a_checkpoint_starts_a_fresh_log(tmp_path):
    """A first run killed (-9) before its first checkpoint: the rerun starts from scratch, so its log must list each
    step once (not the dead run's steps followed by its own), and a stale ckpt-best.npz must not outlive it."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=22)
    model_dir = tmp_path / "m"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2"))
    os.remove(model_dir / "ckpt-last.npz")  # as if killed before it was written
    (model_dir / "ckpt-best.npz").write_bytes(b"stale")
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2"))
    steps = [json.loads(line)["step"] for line in open(model_dir / nmt.LOG_FILE)
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2], steps
    assert not os.path.exists(model_dir / "ckpt-best.npz")


def test_decay_start_without_max_steps_is_refused(tmp_path, capsys):
    """The cosine decay ends at the first run's --max-steps; without one --decay-start would silently do nothing."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=23)
    with pytest.raises(SystemExit) as exit_info:
        nmt.main(_tiny_train_argv(src, tgt, tmp_path / "m", "--decay-start", "1", "--time-budget", "3s"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--decay-start" in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "m")


def test_decay_start_at_or_after_max_steps_is_refused(tmp_path, capsys):
    """The cosine decay runs from --decay-start to the first run's --max-steps: a --decay-start at or after it used
    to be accepted and silently decayed no step. Refused on a first run (exit 2, one line naming both values) before
    anything is written. A resume keeps the saved schedule whatever its --max-steps (the decay ends where the first
    run said), so a resume whose --max-steps is at or before the saved --decay-start is not refused."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=50)
    for decay_start, max_steps, extra in (("4", "4", ()), ("9", "4", ("--time-budget", "1h"))):
        model_dir = tmp_path / f"refused{decay_start}"
        with pytest.raises(SystemExit) as exit_info:
            nmt.main(_tiny_train_argv(src, tgt, model_dir, "--decay-start", decay_start, "--max-steps", max_steps,
                                      *extra))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"--decay-start {decay_start}" in err and f"--max-steps {max_steps}" in err, err
        assert not os.path.exists(model_dir)

    # A first run of 6 steps decaying from step 3, stopped (SIGTERM) after step 1; resumed with --max-steps 2 (at
    # or before --decay-start: the schedule is still the saved 3..6 one) and then with a larger --max-steps.
    model_dir = tmp_path / "m"
    argv = _tiny_train_argv(src, tgt, model_dir, "--decay-start", "3", "--warmup-steps", "1")

    def log(message):
        if message.startswith("step 1 "):
            os.kill(os.getpid(), signal.SIGTERM)
    assert nmt.train(nmt.build_parser().parse_args(argv + ["--max-steps", "6"]), log=log)["step"] == 1
    nmt.main(argv + ["--max-steps", "2"])
    nmt.main(argv + ["--max-steps", "8"])
    lrs = {r["step"]: r["lr"] for r in _log_records(model_dir, "train")}
    schedule = nmt.build_parser().parse_args(argv + ["--max-steps", "6"])
    assert lrs == pytest.approx({step + 1: nmt.learning_rate(step, schedule) for step in range(8)}, rel=1e-6)
    assert lrs[3] == pytest.approx(schedule.lr) and lrs[7] == lrs[8] == pytest.approx(schedule.lr * schedule.min_lr)


def test_export_cli_mistakes_are_exit_2_naming_the_option(tmp_path, capsys):
    """python -m export.saved_model nmt: a bad --warmup-text or --beam-size is a bad argument (exit 2, one line
    naming it), refused before the model is loaded or anything is written."""
    from export import saved_model
    empty, not_utf8 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("\n  \n")
    not_utf8.write_bytes(b"caf\xe9\n")
    base = ["nmt", "--model-dir", str(tmp_path / "no_model"), "--out", str(tmp_path / "exports" / "m")]
    cases = [(["--warmup-text", str(empty)], "--warmup-text"), (["--warmup-text", str(not_utf8)], "--warmup-text"),
             (["--warmup-text", str(tmp_path / "missing.txt")], "--warmup-text"),
             (["--beam-size", "0"], "beam_size"), (["--beam-size", "0", "--n-best", "1"], "beam_size")]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            saved_model.main(base + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (extra, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not os.path.exists(tmp_path / "exports")


def test_export_next_version_ignores_non_numeric_entries(tmp_path):
    """TF Serving reads versions from directories named by ASCII digits; anything else beside them (notes, a
    README, "v2", "²", which str.isdigit() accepts but int() refuses) must neither crash the export nor count."""
    from export import saved_model
    base = tmp_path / "m"
    for name in ("notes", "v2", "0042abc", "\u00b2", "\u0663", "7"):
        (base / name).mkdir(parents=True)
    (base / "README").write_text("x")
    assert saved_model._next_version(str(base)) == 8
    assert saved_model._next_version(str(tmp_path / "absent")) == 1


def test_translator_takes_int64_max_length_and_refuses_a_float_one():
    # An int64 tensor (as a tf.data pipeline gives) means the same cap as a Python int; a float is a mistake, not a
    # length to truncate.
    model = small_model(seed=4)
    src = _pad([[5, 6, 7], [8, 9]])
    tr = Translator(model, beam_size=2, decoder="fused")
    ids_int, scores_int = tr(src, 9, 0.6)
    ids_64, scores_64 = tr(src, tf.constant([9, 9], tf.int64), 0.6)
    np.testing.assert_array_equal(ids_int.numpy(), ids_64.numpy())
    np.testing.assert_array_equal(scores_int.numpy(), scores_64.numpy())
    with pytest.raises(TypeError, match="max_length"):
        tr(src, 9.0, 0.6)


# ---- the time budget, the train log, checkpoints of another config -----------------------------------------------
class _VirtualClock:
    """models.nmt's clock (it reads time.time() only) with seconds added by the pieces _virtual_time patches: a run
    whose steps, evaluations and saves "take" whole seconds, while the test takes a few."""

    def __init__(self):
        self.offset = 0.0

    def time(self):
        return time.time() + self.offset


def _virtual_time(monkeypatch, step, evaluation, save):
    clock = _VirtualClock()
    monkeypatch.setattr(nmt, "time", clock)
    real = {name: getattr(nmt, name) for name in ("batch_arrays", "corpus_bleu", "save_checkpoint")}

    def taking(name, seconds):
        def run(*args, **kwargs):
            clock.offset += seconds
            return real[name](*args, **kwargs)
        return run
    monkeypatch.setattr(nmt, "batch_arrays", taking("batch_arrays", step))  # once per training step
    monkeypatch.setattr(nmt, "corpus_bleu", taking("corpus_bleu", evaluation))  # once per evaluation
    monkeypatch.setattr(nmt, "save_checkpoint", taking("save_checkpoint", save))
    return clock


def _log_records(model_dir, event):
    with open(os.path.join(model_dir, nmt.LOG_FILE)) as f:
        return [r for r in map(json.loads, f) if r["event"] == event]


def test_time_budget_is_an_honest_bound(tmp_path, monkeypatch, capsys):
    """--time-budget bounds the run's wall clock: no evaluation starts once the budget is spent (the old loop
    evaluated at the budget stop, ending an evaluation late), and training stops early enough for the final
    evaluation (predicted from the run's longest) and the checkpoint saves to end within it. Steps take 5 s,
    evaluations 50 s and saves 2 s of a virtual clock (plus the real time)."""
    reversal_data(tmp_path / "data", 200, seed=30)
    vsrc, vtgt, _, _ = reversal_data(tmp_path / "valid", 4, seed=31)
    clock = _virtual_time(monkeypatch, step=5.0, evaluation=50.0, save=2.0)
    real_jitter = 2.0  # seconds: a real step may take a little longer than the longest before it

    def run(model_dir, budget, *extra):
        messages = []
        args = train_args(tmp_path / "data", model_dir, "--time-budget", str(budget), "--emb-dim", "16",
                          "--hidden", "16", "--valid-beam-size", "2", *extra)
        start = clock.time()
        meta = nmt.train(args, log=messages.append)
        return meta, clock.time() - start, messages

    # Evaluations every 10 steps: the first (nothing predicts it) runs mid-run; the budget then keeps room for a
    # final one, which runs at the stop and ends within the budget, with its checkpoints.
    valid = ("--valid-src", vsrc, "--valid-tgt", vtgt, "--eval-every", "10")
    meta, seconds, _ = run(tmp_path / "a", 300, *valid)
    assert seconds <= 300 + real_jitter, seconds
    stop = _log_records(tmp_path / "a", "stop")[-1]
    assert stop["why"] == "time budget" and stop["elapsed"] <= 300 + real_jitter, stop
    evals = [r["step"] for r in _log_records(tmp_path / "a", "eval")]
    assert evals[:2] == [10, 20] and evals[-1] == stop["step"] == meta["step"], (evals, stop)
    _, saved = _checkpoint_arrays(tmp_path / "a")
    assert saved["step"] == stop["step"]

    # Resumed with a larger budget: the resumed session predicts its first step and the final evaluation from the
    # times the checkpoint saved, and its start-up counts.
    before = stop["elapsed"]
    meta, seconds, _ = run(tmp_path / "a", 400, *valid)
    stop = _log_records(tmp_path / "a", "stop")[-1]
    assert before + seconds <= 400 + real_jitter and stop["elapsed"] <= 400 + real_jitter, (before, seconds, stop)
    assert _log_records(tmp_path / "a", "eval")[-1]["step"] == stop["step"] == meta["step"] > evals[-1]

    # No evaluation before the budget ends: none can predict the final one, so it is not started (the old loop
    # started it after the budget was spent); the checkpoint is saved, within the budget.
    meta, seconds, messages = run(tmp_path / "b", 60, "--valid-src", vsrc, "--valid-tgt", vtgt)
    stop = _log_records(tmp_path / "b", "stop")[-1]
    assert seconds <= 60 + real_jitter and stop["elapsed"] <= 60 + real_jitter, (seconds, stop)
    assert _log_records(tmp_path / "b", "eval") == []
    assert any("no evaluation" in m and "--time-budget" in m for m in messages), messages
    assert _checkpoint_arrays(tmp_path / "b")[1]["step"] == stop["step"] == meta["step"] > 0

    # --help says what the budget covers.
    with pytest.raises(SystemExit):
        nmt.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "wall-clock time across resumes" in help_text and "evaluations and checkpoints" in help_text


def test_train_without_a_step_or_time_budget_is_refused(tmp_path, capsys, monkeypatch):
    """Neither --max-steps nor --time-budget: a run that would only stop on a signal. Refused (exit 2, one line
    naming both options) before anything is written, on a first run and on a resume; nmt.train refuses too."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=24)
    model_dir = tmp_path / "m"

    def no_training(*args, **kwargs):  # the old command went on to train, forever
        raise AssertionError("training started without a budget")

    def refused(argv):
        with monkeypatch.context() as patch:
            patch.setattr(nmt, "train", no_training)
            with pytest.raises(SystemExit) as exit_info:
                nmt.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        assert "--max-steps" in err and "--time-budget" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err

    refused(_tiny_train_argv(src, tgt, model_dir))
    assert not os.path.exists(model_dir)
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "1"))
    capsys.readouterr()
    refused(_tiny_train_argv(src, tgt, model_dir))  # a resume
    assert _checkpoint_arrays(model_dir)[1]["step"] == 1

    def no_log(message):
        raise AssertionError(f"nmt.train without a budget got as far as: {message}")
    with pytest.raises(ValueError, match="--time-budget"):
        nmt.train(nmt.build_parser().parse_args(_tiny_train_argv(src, tgt, tmp_path / "api")), log=no_log)
    assert not os.path.exists(tmp_path / "api")


def test_train_log_lines_say_how_many_steps_they_average(tmp_path):
    """The first line after a resume averages the steps run since the resume (fewer than --log-every) and says
    how many, with their tokens; the steps before a stop that no line covered get a line at the stop."""
    reversal_data(tmp_path / "data", 300, seed=32)
    nmt.train(train_args(tmp_path / "data", tmp_path / "every", "--max-steps", "7"), log=lambda m: None)
    per_step = {r["step"]: r for r in _log_records(tmp_path / "every", "train")}
    assert sorted(per_step) == list(range(1, 8)) and all(r["steps"] == 1 for r in per_step.values())
    nmt.train(train_args(tmp_path / "data", tmp_path / "r", "--max-steps", "3", "--log-every", "5"),
              log=lambda m: None)
    nmt.train(train_args(tmp_path / "data", tmp_path / "r", "--max-steps", "7", "--log-every", "5"),
              log=lambda m: None)
    got = {r["step"]: r for r in _log_records(tmp_path / "r", "train")}
    assert sorted(got) == [3, 5, 7], got
    for last, first in ((3, 1), (5, 4), (7, 6)):  # at the stop, the first line after the resume, at the stop
        steps = range(first, last + 1)
        tokens = sum(per_step[s]["tokens"] for s in steps)
        loss = sum(per_step[s]["loss"] * per_step[s]["tokens"] for s in steps) / tokens
        assert got[last]["steps"] == len(steps) and got[last]["tokens"] == tokens, (last, got[last])
        assert got[last]["loss"] == pytest.approx(loss, abs=2e-4), (last, got[last], loss)


def test_tokens_per_second_counts_training_time_only(tmp_path, monkeypatch):
    """An evaluation (and its checkpoint saves) between two log lines is not training time: the old throughput
    divided the window's tokens by the evaluation's time too."""
    reversal_data(tmp_path / "data", 200, seed=33)
    vsrc, vtgt, _, _ = reversal_data(tmp_path / "valid", 4, seed=34)
    _virtual_time(monkeypatch, step=5.0, evaluation=50.0, save=2.0)
    nmt.train(train_args(tmp_path / "data", tmp_path / "m", "--max-steps", "4", "--log-every", "2",
                         "--eval-every", "2", "--valid-src", vsrc, "--valid-tgt", vtgt, "--valid-beam-size", "2",
                         "--emb-dim", "16", "--hidden", "16"), log=lambda m: None)
    after_eval = _log_records(tmp_path / "m", "train")[-1]
    assert after_eval["step"] == 4 and [r["step"] for r in _log_records(tmp_path / "m", "eval")] == [2, 4]
    seconds = after_eval["tokens"] / after_eval["tokens_per_s"]  # two 5 s steps, and their real time
    assert 10 <= seconds < 12, after_eval


def test_checkpoint_of_another_config_is_a_one_line_error_with_the_counts(tmp_path, capsys):
    """load_checkpoint checks the number of arrays, and their shapes, against the model's weights (and the
    optimizer's) before it assigns any: a checkpoint with more arrays used to load silently, one with fewer or
    other shapes failed with KeyError / assign messages and left the model partly overwritten."""
    import keras

    class NoOptimizer:
        variables = []

    def save(model, name, optimizer=NoOptimizer()):
        path = str(tmp_path / name)
        nmt.save_checkpoint(path, model, optimizer, {"step": 0})
        return path

    def error(path, model, optimizer=None):
        with pytest.raises(ValueError) as info:
            nmt.load_checkpoint(path, model, optimizer)
        message = str(info.value)
        assert path in message and "\n" not in message, message
        return message

    two, one = small_model(seed=1), small_model(seed=2, enc_layers=1, dec_layers=1)
    n2, n1 = len(two.weights), len(one.weights)
    for source, target in ((one, two), (two, one)):  # fewer arrays, more arrays
        message = error(save(source, f"layers{len(source.weights)}.npz"), target)
        assert f"{len(source.weights)} model arrays" in message and f"has {len(target.weights)} " in message, message
    # One array more than the model has weights, every shape fitting: loaded silently before.
    with np.load(save(two, "two.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[f"model_{n2:04d}"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **arrays)
    message = error(str(tmp_path / "extra.npz"), small_model(seed=3))
    assert f"{n2 + 1} model arrays" in message and f"has {n2} " in message, message
    # Same count, other shapes: named, and nothing assigned (output_bias, the first weight, fits).
    other = small_model(seed=5, src_vocab_size=25)
    before = [w.copy() for w in other.get_weights()]
    message = error(str(tmp_path / "two.npz"), other)
    assert f"{n2} model arrays" in message and "(25, 12)" in message and "(23, 12)" in message, message
    for got, want in zip(other.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    # The optimizer's arrays are counted too.
    optimizer = keras.optimizers.Adam()
    optimizer.build(two.trainable_variables)
    message = error(str(tmp_path / "two.npz"), two, optimizer)
    assert "0 optimizer arrays" in message and f"has {len(optimizer.variables)} " in message, message
    assert "optimizer" in error(save(two, "two_adam.npz", optimizer), two, keras.optimizers.Adam())
    nmt.load_checkpoint(str(tmp_path / "two_adam.npz"), two, optimizer)  # (the right one loads)

    # The commands: a model directory whose config.json says another model than its checkpoint.
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=35)
    model_dir = tmp_path / "m"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "1"))
    with open(model_dir / nmt.CONFIG_FILE) as f:
        config = json.load(f)
    config["model"].update(hidden=16, emb_dim=16)
    with open(model_dir / nmt.CONFIG_FILE, "w") as f:
        json.dump(config, f)
    capsys.readouterr()
    for argv in (["translate", "--model-dir", str(model_dir), "--checkpoint", "last"],
                 ["train", "--src", src, "--tgt", tgt, "--model-dir", str(model_dir), "--max-steps", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            nmt.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert "ckpt-last.npz" in err and "model arrays" in err, err
        assert re.search(r"\(\d+, 16\) in the model, \(\d+, 8\) in the checkpoint", err), err


def test_resume_after_a_kill_in_the_middle_of_a_log_line(tmp_path):
    """kill -9 while a train_log.jsonl line was written leaves it cut short (perhaps without its newline): the
    resume used to fail on it (a JSON error, exit 2), or to glue its first record onto it."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=36)
    model_dir = tmp_path / "m"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2"))
    with open(model_dir / nmt.LOG_FILE, "a") as f:
        f.write('{"event": "train", "step": 3, "lo')
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "3"))
    assert [r["step"] for r in _log_records(model_dir, "train")] == [1, 2, 3]
    # A complete last record whose newline was not yet written: kept, and the file ends with a newline again.
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"event": "train", "step": 1}\n{"event": "stop", "step": 1}')
    nmt._drop_log_records_after(str(path), 1)
    assert path.read_bytes() == b'{"event": "train", "step": 1}\n{"event": "stop", "step": 1}\n'


def test_resume_without_eval_every_keeps_the_saved_schedule(tmp_path):
    """A run started with --eval-every 2 --log-every 2 and resumed by a command that leaves both out must go on
    evaluating and logging every 2 steps (the defaults, 1000 and 50, would silently stop both)."""
    data = tmp_path / "data"
    src, tgt, _, _ = reversal_data(data, 30, seed=40)
    valid_src, valid_tgt = src, tgt
    model_dir = tmp_path / "m"
    common = ["train", "--src", src, "--tgt", tgt, "--valid-src", valid_src, "--valid-tgt", valid_tgt,
              "--model-dir", str(model_dir), "--src-vocab-size", "20", "--tgt-vocab-size", "20", "--emb-dim", "8",
              "--hidden", "8", "--layers", "1", "--valid-beam-size", "1"]
    nmt.main(common + ["--eval-every", "2", "--log-every", "2", "--max-steps", "2"])
    nmt.main(common + ["--max-steps", "6"])
    assert [r["step"] for r in _log_records(model_dir, "eval")] == [2, 4, 6]
    assert [r["step"] for r in _log_records(model_dir, "train")] == [2, 4, 6]
    # Given on the resuming command, it applies.
    nmt.main(common + ["--max-steps", "9", "--eval-every", "3", "--log-every", "3"])
    assert [r["step"] for r in _log_records(model_dir, "eval")] == [2, 4, 6, 9]


def test_resume_from_another_working_directory(tmp_path, monkeypatch):
    """A first run given relative data paths, resumed by the same command from another directory with paths that
    lead to the same files: it must resume (the saved paths are absolute), not refuse --src as another run's."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=41)
    monkeypatch.chdir(tmp_path / "data")
    nmt.main(_tiny_train_argv("src.txt", "tgt.txt", tmp_path / "m", "--max-steps", "1"))
    with open(tmp_path / "m" / nmt.CONFIG_FILE) as f:
        assert json.load(f)["train"]["src"] == os.path.realpath(src)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    nmt.main(_tiny_train_argv("../data/src.txt", "../data/tgt.txt", tmp_path / "m", "--max-steps", "2"))
    _, meta = _checkpoint_arrays(tmp_path / "m")
    assert meta["step"] == 2



def _record_syncs(monkeypatch):
    """os.fsync and os.replace calls, in order: ("fsync", (st_dev, st_ino), st_size) of the synced file or
    directory, ("replace", src, dst)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino), st.st_size))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _assert_written_durably(events, path):
    """The last rename onto path: the renamed file, whole (flushed: its full size), was fsync'ed after the rename
    before it and before this one; its directory after this rename and before the next."""
    path = os.fspath(path)
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    at = max((i for i in renames if events[i][2] == path), default=None)
    assert at is not None, f"{path} was not written through a rename"
    before = max((i for i in renames if i < at), default=-1)
    after = min((i for i in renames if i > at), default=len(events))
    st, d = os.stat(path), os.stat(os.path.dirname(path))
    data_syncs = [e for e in events[before + 1:at] if e[0] == "fsync" and e[1] == (st.st_dev, st.st_ino)]
    assert data_syncs and data_syncs[-1][2] == st.st_size, (path, "data not fsync'ed (whole) before the rename",
                                                             data_syncs, st.st_size)
    assert any(e[0] == "fsync" and e[1] == (d.st_dev, d.st_ino) for e in events[at + 1:after]), \
        (path, "directory not fsync'ed after the rename", events[at + 1:after])


def test_checkpoint_config_and_log_rewrites_are_durable(tmp_path, monkeypatch):
    """Each file written through a temporary file and a rename (checkpoints, config.json, the SentencePiece models,
    the trimmed train log) is fsync'ed whole before the rename and its directory after it: a rename alone leaves,
    after a power loss, perhaps an empty or truncated file under the final name. Nothing .tmp is left behind. The
    train log's appends are fsync'ed as they are written."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=51)
    model_dir = tmp_path / "m"
    events = _record_syncs(monkeypatch)
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "1", "--shared-vocab"))
    for name in ("ckpt-last.npz", nmt.CONFIG_FILE, "spm_src.model", "spm_tgt.model"):
        _assert_written_durably(events, model_dir / name)
    assert not [name for name in os.listdir(model_dir) if ".tmp" in name]
    # The log's appends are fsync'ed too, up to its last record.
    st = os.stat(model_dir / nmt.LOG_FILE)
    log_syncs = [e for e in events if e[0] == "fsync" and e[1] == (st.st_dev, st.st_ino)]
    assert log_syncs and log_syncs[-1][2] == st.st_size, ("train log not fsync'ed up to its end", log_syncs,
                                                          st.st_size)
    # A resume trims the log to the steps its checkpoint holds (after a run killed -9 between checkpoints).
    with open(model_dir / nmt.LOG_FILE, "a") as f:
        f.write(json.dumps({"event": "train", "step": 2}) + "\n")
    nmt._drop_log_records_after(str(model_dir / nmt.LOG_FILE), 1)
    _assert_written_durably(events, model_dir / nmt.LOG_FILE)
    assert [r["step"] for r in _log_records(model_dir, "train")] == [1]

    # Where a directory cannot be opened (Windows), its sync is skipped quietly; a failed write leaves the old file
    # and no temporary one.
    path = tmp_path / "file.txt"
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied", p))
                        if os.path.isdir(p) else real_open(p, *a, **k))
    nmt.write_durably(str(path), lambda f: f.write("one"), text=True)
    assert path.read_text() == "one"

    def failing(f):
        f.write("half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="space"):
        nmt.write_durably(str(path), failing, text=True)
    assert path.read_text() == "one" and not os.path.exists(str(path) + ".tmp")


def test_resume_with_its_budget_already_spent_does_nothing(tmp_path, monkeypatch, capsys):
    """Running the command of a finished run again (its --max-steps reached, or its --time-budget spent) used to
    log another stop record each time. It says in one line that the budget is spent and which option to raise, and
    exits 0 with the log and the checkpoint untouched. A resume that still owes an evaluation does it first."""
    src, tgt, _, _ = reversal_data(tmp_path / "data", 30, seed=52)

    def unchanged_by(argv, model_dir, option):
        files = {name: ((model_dir / name).read_bytes(), os.stat(model_dir / name).st_mtime_ns)
                 for name in (nmt.LOG_FILE, "ckpt-last.npz")}
        capsys.readouterr()
        nmt.main(argv)  # (no SystemExit: exit status 0)
        out = capsys.readouterr().out
        spent = [line for line in out.splitlines() if "already spent" in line]
        assert len(spent) == 1 and f"larger {option}" in spent[0], out
        assert "stopped at" not in out and "valid BLEU" not in out and "no evaluation" not in out, out
        for name, (data, mtime) in files.items():
            assert (model_dir / name).read_bytes() == data and os.stat(model_dir / name).st_mtime_ns == mtime, name
        return spent[0]

    # --max-steps reached; the same command twice, then a larger --max-steps trains on.
    model_dir = tmp_path / "steps"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2"))
    for _ in range(2):
        line = unchanged_by(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "2"), model_dir, "--max-steps")
        assert "--max-steps 2" in line, line
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--max-steps", "3"))
    assert [r["step"] for r in _log_records(model_dir, "stop")] == [2, 3]

    # Stopped at an evaluation step by a SIGTERM, before evaluating: the resume owes that evaluation, so it is not
    # spent; it evaluates and logs its stop once. Run again, it is (exit 0).
    def log(message):
        if message.startswith("step 2 "):
            os.kill(os.getpid(), signal.SIGTERM)
    model_dir = tmp_path / "owed"
    argv = _tiny_train_argv(src, tgt, model_dir, "--max-steps", "2", "--eval-every", "2", "--valid-src", src,
                            "--valid-tgt", tgt, "--valid-beam-size", "1")
    assert nmt.train(nmt.build_parser().parse_args(argv), log=log)["eval_due"]
    nmt.main(argv)
    assert [r["step"] for r in _log_records(model_dir, "eval")] == [2]
    assert [(r["step"], r["why"]) for r in _log_records(model_dir, "stop")] == [(2, "interrupted"), (2, "max steps")]
    unchanged_by(argv, model_dir, "--max-steps")

    # --time-budget spent (steps take 5 s and saves 2 s of a virtual clock): the same budget twice, then a larger
    # one trains on.
    _virtual_time(monkeypatch, step=5.0, evaluation=50.0, save=2.0)
    model_dir = tmp_path / "time"
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--time-budget", "30"))
    stop = _log_records(model_dir, "stop")[-1]
    assert stop["why"] == "time budget" and stop["step"] >= 2, stop
    for _ in range(2):
        line = unchanged_by(_tiny_train_argv(src, tgt, model_dir, "--time-budget", "30"), model_dir,
                            "--time-budget")
        assert "--time-budget 30s" in line, line
    nmt.main(_tiny_train_argv(src, tgt, model_dir, "--time-budget", "60"))
    stops = _log_records(model_dir, "stop")
    assert len(stops) == 2 and stops[-1]["step"] > stop["step"], stops
