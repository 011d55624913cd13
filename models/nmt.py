"""Train and run the OpenNMT-style translation model (models/nmt_model.py) from raw text.

    python -m models.nmt train --src train.en --tgt train.de --valid-src val.en --valid-tgt val.de \
        --model-dir /work/nmt_runs/en-de --max-steps 20000 --time-budget 60m
    python -m models.nmt translate --model-dir /work/nmt_runs/en-de --beam-size 5 < in.en > out.de

train: SentencePiece models trained on the training text (separate, or one shared with --shared-vocab), the model,
Adam with warm-up and a cosine decay to --max-steps, gradient clipping, length-bucketed batches of about
--batch-tokens tokens. Every --eval-every steps it translates the validation set (beam search, fused decoder),
logs sacreBLEU, and checkpoints (ckpt-last.npz, and ckpt-best.npz for the best BLEU). It stops on --max-steps or
before the run's total time (across resumes) would pass --time-budget, saving a checkpoint (one of the two is
required: a run without either is refused); SIGINT/SIGTERM also save one and stop. The time budget is a bound
on the run's wall clock: no training step or evaluation starts that the longest ones so far say would not end,
with the final evaluation and checkpoint, within it (the run's first evaluation, which nothing predicts, starts
only while training goes on). Run the same command again to resume: the model directory holds the config, the
SentencePiece models and the checkpoint (weights, optimizer state, step, elapsed time); the batch order and every
dropout mask are functions of (seed, step), so a resumed run continues exactly as an uninterrupted one would. The
saved settings win on resume: an option given on the command line that contradicts them (another --hidden, --lr,
--src, ...) is refused (exit 2); only --max-steps, --time-budget, --eval-every, --log-every and --save-every may
change (an --eval-every or --log-every left out keeps the saved one). A directory without ckpt-last.npz (a run killed
before its first checkpoint) starts from scratch, with a fresh log. A resume whose --max-steps or --time-budget is
already spent (no step, and no evaluation the stopped run still owes, fits) says so in one line and exits 0, adding no
stop record or checkpoint to the stopped run's. The config, SentencePiece models and checkpoints are written to a
temporary file, fsync'ed and renamed (the directory fsync'ed too), so that neither a kill nor a power loss leaves one
empty or truncated. train_log.jsonl in the model directory has one line per log/eval event (step, time, loss, BLEU,
load average); a train line averages the loss over the "steps" since the line before (--log-every, or fewer: the first
line after a resume, the last before a stop), and its tokens_per_s counts training time only.

translate: raw text lines on stdin, detokenised translations on stdout (n lines per input with --n-best n, best
first; --with-scores prefixes "score<TAB>").
"""
import argparse
import collections
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.nmt_model import NMTConfig, NMTModel, Translator, decode_lengths  # noqa: E402

CONFIG_FILE = "config.json"
LOG_FILE = "train_log.jsonl"
SPM_SRC, SPM_TGT = "spm_src", "spm_tgt"
# Special ids fixed in every SentencePiece model trained here (and in NMTConfig's defaults).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


# ---- text and vocabularies ------------------------------------------------------------------------------------
def read_lines(path, what="file"):
    """The lines of a UTF-8 text file, stripped; only '\n' ends a line ('\r\n' too), as `wc -l` and the translate
    command's stdin count them (a stray '\r' inside a line stays in it). Errors name the file and the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path!r} is a directory, not a text file") from None
    return _decode_lines(data, f"{what} {path!r}")


def _decode_lines(data, source):
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM is not part of the first line (and moves no line number)
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{source} is not UTF-8 text: line {line} ({e.reason})") from None
    if text.endswith("\n"):
        text = text[:-1]
    return [line.strip() for line in text.split("\n")] if text else []


def train_sentencepiece(files, prefix, vocab_size, model_type, seed_sentences=2_000_000):
    """Trains a SentencePiece model on the given text files; returns the path of the .model file."""
    try:
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            input_sentence_size=seed_sentences, shuffle_input_sentence=False, num_threads=2,
            hard_vocab_limit=False, minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary size below SentencePiece's minimum for this text
        raise ValueError(f"SentencePiece training on {', '.join(files)} (vocab size {vocab_size}) failed: "
                         f"{str(e).strip()}") from None
    return prefix + ".model"


def load_sentencepiece(model_dir):
    """The (source, target) SentencePiece models of a model directory; a missing or damaged one is a one-line
    FileNotFoundError / ValueError naming the file (SentencePiece itself raises OSError or RuntimeError)."""
    models = []
    for name in (SPM_SRC, SPM_TGT):
        path = os.path.join(model_dir, name + ".model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path!r} is missing from --model-dir {model_dir!r}")
        try:
            models.append(spm.SentencePieceProcessor(model_file=path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"SentencePiece model {path!r} cannot be loaded (damaged?): "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return tuple(models)


# ---- batches --------------------------------------------------------------------------------------------------
def pad_batch(seqs, pad_id=PAD_ID):
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), width), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def make_batches(src_ids, tgt_ids, batch_tokens, seed):
    """Length-bucketed batches: lists of example indices whose padded size stays under batch_tokens."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(src_ids)), [len(s) for s in src_ids], [len(t) for t in tgt_ids]))
    batches, current, longest = [], [], 0
    for i in order:
        size = max(len(src_ids[i]), len(tgt_ids[i]) + 1)
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(int(i))
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def batch_arrays(indices, src_ids, tgt_ids):
    src = pad_batch([src_ids[i] for i in indices])
    tgt_in = pad_batch([[BOS_ID] + tgt_ids[i] for i in indices])
    tgt_out = pad_batch([tgt_ids[i] + [EOS_ID] for i in indices])
    return src, tgt_in, tgt_out


# ---- checkpoints ----------------------------------------------------------------------------------------------
def write_durably(path, write, text=False):
    """Writes a file through write(f) on a temporary file beside it, renamed over path: atomic (a reader, or a run
    killed meanwhile, sees the old file or the new one) and durable (the data is fsync'ed before the rename, the
    directory's entry after it), so that not even a power loss leaves an empty or truncated file under path."""
    tmp = path + ".tmp"
    try:
        with (open(tmp, "w", encoding="utf-8") if text else open(tmp, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(os.path.dirname(path) or ".")


def _fsync_directory(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform where a directory cannot be opened (Windows): its rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # (a file system that cannot sync a directory); a failed sync is an error
            raise
    finally:
        os.close(fd)


def save_checkpoint(path, model, optimizer, meta):
    """Weights, optimizer state and meta in one .npz, written atomically and durably (write_durably)."""
    arrays = {f"model_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays.update({f"optimizer_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays["meta"] = np.array(json.dumps(meta))
    write_durably(path, lambda f: np.savez(f, **arrays))


class CheckpointMismatch(ValueError):
    """A checkpoint whose arrays do not fit the model (or optimizer) it is loaded into: another config."""


def load_checkpoint(path, model, optimizer=None):
    """Restores a checkpoint written by save_checkpoint; returns its meta. A truncated or damaged file is a one-line
    ValueError naming the file; one from another model config (another number of arrays than the model has weights,
    or other shapes) is a one-line CheckpointMismatch (a ValueError) naming the file, both counts and the shapes that
    differ. Nothing is assigned unless every array fits: a failed load leaves the model and optimizer as they were."""
    try:
        return _load_checkpoint(path, model, optimizer)
    except CheckpointMismatch:
        raise
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, tf.errors.OpError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path!r} cannot be loaded (truncated, damaged, or not from this model's "
                         f"config): {detail}") from None


def _checkpoint_group(path, data, prefix, variables, what):
    """The arrays prefix_0000.. of an open checkpoint, checked against the variables they are for."""
    names = sorted(k for k in data.files if k.startswith(prefix + "_"))
    if names != [f"{prefix}_{i:04d}" for i in range(len(names))]:
        raise ValueError(f"its {prefix} arrays are not numbered 0..{len(names) - 1}")
    arrays = [data[name] for name in names]
    mismatches = [f"#{i} {getattr(v, 'path', None) or v.name} {tuple(v.shape)} in the {what}, "
                  f"{tuple(a.shape)} in the checkpoint"
                  for i, (v, a) in enumerate(zip(variables, arrays)) if tuple(v.shape) != tuple(a.shape)]
    if len(arrays) != len(variables) or mismatches:
        shapes = ""
        if len(mismatches) == 1:
            shapes = f"; the shapes differ at one position: {mismatches[0]}"
        elif mismatches:
            shapes = (f"; the shapes differ at {len(mismatches)} positions, the first "
                      f"{min(len(mismatches), 3)}: {'; '.join(mismatches[:3])}")
        raise CheckpointMismatch(
            f"checkpoint {path!r} does not fit this {what} (saved from another config?): it holds {len(arrays)} "
            f"{prefix} arrays, the {what} has {len(variables)} variables{shapes}")
    return arrays


def _load_checkpoint(path, model, optimizer=None):
    with np.load(path) as data:
        pairs = list(zip(model.weights, _checkpoint_group(path, data, "model", model.weights, "model")))
        if optimizer is not None:
            pairs += zip(optimizer.variables, _checkpoint_group(path, data, "optimizer", optimizer.variables,
                                                                "optimizer"))
        meta = json.loads(str(data["meta"]))
    for v, array in pairs:  # every shape checked first: a mismatch assigns nothing
        v.assign(array)
    return meta


def read_config(config_path):
    """A model directory's config.json; unreadable or damaged ones are a one-line ValueError naming the file."""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{config_path!r} cannot be read as a model config (damaged?): {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or \
            not isinstance(config.get("train", {}), dict):
        raise ValueError(f"{config_path!r} is not a model config (no 'model' section)")
    return config


def load_model(model_dir, checkpoint="best"):
    """(model, config dict, src SentencePiece, tgt SentencePiece) from a model directory."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"--model-dir {model_dir!r} is not a directory")
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"--model-dir {model_dir!r} holds no trained model (no {CONFIG_FILE}; train one with "
                                "python -m models.nmt train)")
    config = read_config(config_path)
    try:
        model = NMTModel(NMTConfig.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path!r} holds no valid model config: {type(e).__name__}: {e}") from None
    path = os.path.join(model_dir, f"ckpt-{checkpoint}.npz")
    if checkpoint == "best" and not os.path.exists(path):
        path = os.path.join(model_dir, "ckpt-last.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint in --model-dir {model_dir!r} (looked for {path})")
    load_checkpoint(path, model)
    sp_src, sp_tgt = load_sentencepiece(model_dir)
    return model, config, sp_src, sp_tgt


# ---- translation ----------------------------------------------------------------------------------------------
def translate_ids(translator, src_ids, batch_size=64, length_penalty=0.0, max_length=200, n_best=1):
    """Beam-search translations of id lists: per input, n_best (ids, score) pairs, best first (EOS removed)."""
    if not 1 <= n_best <= translator.beam_size:
        raise ValueError(f"n_best ({n_best}) must be in [1, beam_size={translator.beam_size}]")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # An empty source translates to the empty hypothesis with score 0 in every slot, as the export does: the
    # model never saw one in training (and the stock decoder cannot run zero steps).
    results = [[([], 0.0)] * n_best if len(ids) == 0 else None for ids in src_ids]
    order = sorted((i for i in range(len(src_ids)) if len(src_ids[i])), key=lambda i: len(src_ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        src = pad_batch([src_ids[i] for i in chunk])
        ids_bkl, scores_bk = translator(src, decode_lengths(src, max_length, PAD_ID), length_penalty)
        ids_bkl, scores_bk = ids_bkl.numpy(), scores_bk.numpy()
        for row, i in enumerate(chunk):
            hyps = []
            for k in range(n_best):
                seq = ids_bkl[row, k].tolist()
                if EOS_ID in seq:
                    seq = seq[:seq.index(EOS_ID)]
                hyps.append((seq, float(scores_bk[row, k])))
            results[i] = hyps
    return results


def translate_lines(model, sp_src, sp_tgt, lines, beam_size=5, batch_size=64, length_penalty=0.0, n_best=1,
                    decoder="fused", max_length=200, translator=None, int8=False):
    translator = translator or Translator(model, beam_size=beam_size, decoder=decoder, int8=int8)
    src_ids = sp_src.encode(lines, out_type=int)
    results = translate_ids(translator, src_ids, batch_size, length_penalty, max_length, n_best)
    return [[(sp_tgt.decode(ids), score) for ids, score in hyps] for hyps in results]


def corpus_bleu(hypotheses, references):
    import sacrebleu  # imported late: translate does not need it
    return sacrebleu.corpus_bleu(hypotheses, [references])


# ---- training -------------------------------------------------------------------------------------------------
def parse_duration(text):
    """'3600', '3600s', '60m', '1.5h' -> seconds."""
    if text is None:
        return None
    text = str(text).strip()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 60m, 1h)")  # argparse names the option


def learning_rate(step, args):
    """Linear warm-up, constant, then a cosine decay from --decay-start to --max-steps down to lr * --min-lr."""
    lr = args.lr * min(1.0, (step + 1) / max(args.warmup_steps, 1))
    # The decay ends where the first run's --max-steps said: a resume that extends the budget must not move it.
    decay_end = getattr(args, "decay_end", None) or args.max_steps
    if decay_end and args.decay_start is not None and step >= args.decay_start:
        span = max(decay_end - args.decay_start, 1)
        progress = min(1.0, (step - args.decay_start) / span)
        lr *= args.min_lr + (1.0 - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def _model_config_from_args(args, src_vocab, tgt_vocab):
    return NMTConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, emb_dim=args.emb_dim, hidden=args.hidden,
                     enc_layers=args.layers, dec_layers=args.layers, attention=args.attention,
                     input_feed=not args.no_input_feed, tie_output=not args.no_tie, dropout=args.dropout,
                     label_smoothing=args.label_smoothing, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.stop = True
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _TimeBudget:
    """Whether the next training step, or an evaluation, still ends within --time-budget together with what the
    run must do after it (the final evaluation, when one can be predicted, and the final checkpoint), predicted
    from the longest ones timed so far. timing (saved in the checkpoint's meta, so a resumed run predicts too):
    "first_step" (a session's first step, which traces the training function), "eval" and "save", the longest
    seconds each. Later steps are predicted by the longest of this session's last 50 (the first excluded)."""

    def __init__(self, budget, timing=None):
        self.budget = budget
        self.timing = dict(timing or {})
        self._first_step = None
        self._recent_steps = collections.deque(maxlen=50)

    def record(self, kind, seconds):
        if kind == "step" and self._first_step is None:
            self._first_step = seconds
            kind = "first_step"
        elif kind == "step":
            self._recent_steps.append(seconds)
            return
        self.timing[kind] = max(seconds, self.timing.get(kind) or 0.0)

    def step_seconds(self):
        if self._recent_steps:
            return max(self._recent_steps)
        return self._first_step if self._first_step is not None else self.timing.get("first_step")

    def _after_eval(self):
        return self.timing["eval"] + 2 * (self.timing.get("save") or 0.0)  # ckpt-best.npz and ckpt-last.npz

    def step_needs(self, validating):
        """The seconds the next step, with the final evaluation and checkpoint after it, is predicted to take."""
        end = self._after_eval() if validating and self.timing.get("eval") is not None else \
            (self.timing.get("save") or 0.0)
        return (self.step_seconds() or 0.0) + end

    def step_fits(self, elapsed, validating):
        if self.budget is None:
            return True
        return elapsed + self.step_needs(validating) <= self.budget

    def eval_fits(self, elapsed):
        """True or False; None when no evaluation has been timed yet (its time cannot be predicted)."""
        if self.budget is None:
            return True
        if self.timing.get("eval") is None:
            return None
        return elapsed + self._after_eval() <= self.budget


def _already_spent(args, step, elapsed, budget, validating):
    """The line a resume whose budget is already spent says instead of training."""
    spent, options = [], []
    if args.max_steps is not None and step >= args.max_steps:
        spent.append(f"step {step}, --max-steps {args.max_steps}")
        options.append("--max-steps")
    if not budget.step_fits(elapsed, validating):
        spent.append(f"{elapsed:.0f}s of --time-budget {args.time_budget:.0f}s used, and one more step with the final "
                     f"{'evaluation and ' if validating and budget.timing.get('eval') is not None else ''}"
                     f"checkpoint needs about {budget.step_needs(validating):.0f}s")
        options.append("--time-budget")
    return (f"nothing to do: the run's budget is already spent ({'; '.join(spent)}); to train on, run "
            f"again with a larger {' and a larger '.join(options)}")


def _drop_log_records_after(path, step):
    """A run killed between checkpoints logged steps that the resumed run does again: keep the log to what the
    checkpoint holds, so every step appears once."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    kept = []
    for line in text.split("\n"):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:  # a line cut short by a kill -9 while it was written
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    if "".join(kept) != text:  # (also when the last line lost its newline: the next record would join it)
        write_durably(path, lambda f: f.writelines(kept), text=True)


# Settings a resumed run takes from the model directory; a different value given on the command line is refused.
# Budgets (--max-steps, --time-budget, --eval-every, --log-every, --save-every) may change on resume.
_MODEL_OPTIONS = {"emb_dim": ("emb_dim", None), "hidden": ("hidden", None), "layers": ("enc_layers", None),
                  "attention": ("attention", None), "no_input_feed": ("input_feed", lambda v: not v),
                  "no_tie": ("tie_output", lambda v: not v), "dropout": ("dropout", None),
                  "label_smoothing": ("label_smoothing", None)}
_RECIPE_OPTIONS = ("shared_vocab", "src_vocab_size", "tgt_vocab_size", "spm_type", "batch_tokens", "max_len", "lr",
                   "warmup_steps", "decay_start", "min_lr", "clip_norm", "seed", "valid_beam_size",
                   "valid_batch_size", "valid_length_penalty")
_PATH_OPTIONS = ("src", "tgt", "valid_src", "valid_tgt")


def _check_resume_settings(args, saved, config_path):
    """A resumed run continues the saved recipe. An option given on the command line (not a default) that the
    saved one contradicts is a one-line ValueError: silently training another model than the one asked for, or
    ignoring the asked-for setting, would be worse."""
    explicit = getattr(args, "explicit_options", None) or ()
    conflicts = []
    for name in explicit:
        given = getattr(args, name)
        if name in _MODEL_OPTIONS:
            key, to_saved = _MODEL_OPTIONS[name]
            if key not in saved["model"]:
                continue
            want, have = (to_saved(given) if to_saved else given), saved["model"][key]
        elif name in _RECIPE_OPTIONS and name in saved["train"]:
            want, have = given, saved["train"][name]
        elif name in _PATH_OPTIONS and saved["train"].get(name) is not None and given is not None:
            # The saved path is the one the run reads (relative to the current directory, as on the first run).
            if os.path.realpath(given) == os.path.realpath(saved["train"][name]):
                continue
            want, have = given, saved["train"][name]
        else:
            continue
        if want != have:
            conflicts.append(f"--{name.replace('_', '-')} {given!r} (the saved run has {have!r})")
    if conflicts:
        raise ValueError(f"--model-dir {os.path.dirname(config_path)!r} holds a run with other settings: "
                         f"{', '.join(sorted(conflicts))}; a resumed run continues its saved settings (only "
                         "--max-steps, --time-budget, --eval-every, --log-every and --save-every may change): "
                         "use a new --model-dir for a new model")


def check_train_files(args):
    """The training and validation files exist, are UTF-8 and line-aligned, and validation comes in pairs."""
    if bool(args.valid_src) != bool(args.valid_tgt):
        raise ValueError("--valid-src and --valid-tgt go together (validation BLEU needs both)")
    pairs = [("--src", args.src, "--tgt", args.tgt)]
    if args.valid_src:
        pairs.append(("--valid-src", args.valid_src, "--valid-tgt", args.valid_tgt))
    for name_a, path_a, name_b, path_b in pairs:
        a, b = read_lines(path_a, name_a), read_lines(path_b, name_b)
        if len(a) != len(b):
            raise ValueError(f"{name_a} has {len(a)} lines but {name_b} has {len(b)}: they must be line-aligned")
        if not a:
            raise ValueError(f"{name_a} {path_a!r} is empty")


def check_train_settings(args):
    for name in ("eval_every", "save_every", "log_every", "batch_tokens", "max_len", "valid_beam_size",
                 "valid_batch_size", "src_vocab_size", "tgt_vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup_steps", "valid_length_penalty"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    _check_a_budget_is_given(args)
    # Written as `not (x > 0)` so that nan is refused too. --clip-norm 0 would zero every gradient
    # (tf.clip_by_global_norm scales by clip_norm / max(norm, clip_norm)), --lr <= 0 never (or wrongly) moves a weight.
    for name in ("lr", "clip_norm"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    if not (args.min_lr >= 0 and math.isfinite(args.min_lr)):
        raise ValueError(f"--min-lr must be a finite number >= 0 (a fraction of --lr), got {args.min_lr}")
    if args.decay_start is not None and args.decay_start < 0:
        raise ValueError(f"--decay-start must be >= 0, got {args.decay_start}")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise ValueError(f"--time-budget must be a finite duration > 0, got {args.time_budget}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    # The cosine decay ends at the first run's --max-steps (saved as decay_end: a resume's --max-steps, larger or
    # smaller, does not move it, and the resume continues the saved --decay-start), so the first run's values are
    # the ones the schedule uses. Without --max-steps, or with --decay-start at or after it, no step would decay.
    if args.decay_start is not None and not _resumable(args.model_dir):
        if args.max_steps is None:
            raise ValueError("--decay-start needs --max-steps on the first run (the cosine decay ends at the first "
                             "run's --max-steps)")
        if args.decay_start >= args.max_steps:
            raise ValueError(f"--decay-start {args.decay_start} is not before --max-steps {args.max_steps}: the "
                             "cosine decay runs from --decay-start to the first run's --max-steps, so no step would "
                             "decay (give a smaller --decay-start, or a larger --max-steps)")
    if not _resumable(args.model_dir):
        _model_config_from_args(args, 1, 1)  # model settings that cannot work, before the model directory exists


def _check_a_budget_is_given(args):
    if args.max_steps is None and args.time_budget is None:
        raise ValueError("give --max-steps or --time-budget (or both; on a resume too): without either, training "
                         "would only stop on a signal")


def _resumable(model_dir):
    return all(os.path.isfile(os.path.join(model_dir, name)) for name in (CONFIG_FILE, "ckpt-last.npz"))


def train(args, log=print):
    """The train command; returns the final meta (step, elapsed, best BLEU, history)."""
    start_wall = time.time()
    _check_a_budget_is_given(args)
    if os.path.exists(args.model_dir) and not os.path.isdir(args.model_dir):
        raise ValueError(f"--model-dir {args.model_dir!r} is a file, not a directory")
    try:
        os.makedirs(args.model_dir, exist_ok=True)
    except OSError as e:  # a file there, or a file on the way to it, or no permission
        raise ValueError(f"--model-dir {args.model_dir!r} cannot be created as a directory: "
                         f"{e.strerror or e}") from None
    config_path = os.path.join(args.model_dir, CONFIG_FILE)
    last_path = os.path.join(args.model_dir, "ckpt-last.npz")
    best_path = os.path.join(args.model_dir, "ckpt-best.npz")
    import keras
    keras.utils.set_random_seed(args.seed)  # initial weights

    resuming = _resumable(args.model_dir)
    if resuming:
        saved = read_config(config_path)
        if not isinstance(saved.get("train"), dict):
            raise ValueError(f"{config_path!r} has no 'train' section to resume from")
        _check_resume_settings(args, saved, config_path)
        # The saved recipe wins: a resumed run must continue the same one. Only budgets may change.
        train_args = dict(saved["train"])
        # Directories from before decay_end was saved: the first run's --max-steps is the saved one.
        train_args.setdefault("decay_end", train_args.get("max_steps"))
        # An --eval-every or --log-every left out of the resuming command keeps the saved schedule (its default
        # would silently move the evaluations); one given applies to this session.
        explicit = getattr(args, "explicit_options", None)
        for key in ("max_steps", "time_budget", "eval_every", "log_every"):
            if (key in ("eval_every", "log_every") and explicit is not None and key not in explicit
                    and train_args.get(key) is not None):
                continue
            train_args[key] = getattr(args, key)
        for key in ("valid_src", "valid_tgt"):  # validation files a first run lacked may be given on resume
            if train_args.get(key) is None and getattr(args, key):
                train_args[key] = os.path.abspath(getattr(args, key))
        args = argparse.Namespace(**{**vars(args), **train_args})
        try:
            model_cfg = NMTConfig.from_dict(saved["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{config_path!r} holds no valid model config: {type(e).__name__}: {e}") from None
        log(f"resuming from {last_path}")
    check_train_files(args)  # the (saved) recipe's files, before anything is written or trained
    if not resuming:
        _model_config_from_args(args, 1, 1)  # bad model settings fail now, not after the SentencePiece training
        # A run stopped before its first checkpoint (kill -9) left a log of steps this run does again, and perhaps a
        # ckpt-best.npz of the old settings: this run starts from scratch, so do they.
        for stale in (os.path.join(args.model_dir, LOG_FILE), best_path):
            if os.path.exists(stale):
                os.remove(stale)
        if args.shared_vocab:
            path = train_sentencepiece([args.src, args.tgt], os.path.join(args.model_dir, "spm_shared"),
                                       args.src_vocab_size, args.spm_type)
            trained = {SPM_SRC: path, SPM_TGT: path}
        else:
            trained = {name: train_sentencepiece([text], os.path.join(args.model_dir, name), size, args.spm_type)
                       for name, text, size in ((SPM_SRC, args.src, args.src_vocab_size),
                                                (SPM_TGT, args.tgt, args.tgt_vocab_size))}
        # (Re)written durably: once config.json and ckpt-last.npz are, the directory is resumed from, and a power
        # loss must not have left these (which SentencePiece writes without an fsync) empty.
        for name, path in trained.items():
            for ext in (".model", ".vocab"):
                with open(path[:-6] + ext, "rb") as f:
                    data = f.read()
                write_durably(os.path.join(args.model_dir, name + ext), lambda g: g.write(data))
    sp_src, sp_tgt = load_sentencepiece(args.model_dir)
    if not resuming:
        model_cfg = _model_config_from_args(args, sp_src.get_piece_size(), sp_tgt.get_piece_size())
        train_keys = ["src", "tgt", "valid_src", "valid_tgt", "shared_vocab", "src_vocab_size", "tgt_vocab_size",
                      "spm_type", "batch_tokens", "max_len", "lr", "warmup_steps", "decay_start", "min_lr",
                      "clip_norm", "seed", "valid_beam_size", "valid_batch_size", "valid_length_penalty",
                      "max_steps", "time_budget", "eval_every", "log_every", "decay_end"]
        args.decay_end = args.max_steps
        config = {"model": dataclasses.asdict(model_cfg),
                  # Data paths absolute: a resume from another working directory reads the same files.
                  "train": {k: (os.path.abspath(getattr(args, k)) if k in _PATH_OPTIONS and getattr(args, k)
                                else getattr(args, k)) for k in train_keys}}
        write_durably(config_path, lambda f: json.dump(config, f, indent=1, sort_keys=True), text=True)

    # Data: encoded once; pairs that are empty or longer than --max-len are left out of training.
    src_lines, tgt_lines = read_lines(args.src, "--src"), read_lines(args.tgt, "--tgt")
    src_ids = sp_src.encode(src_lines, out_type=int)
    tgt_ids = sp_tgt.encode(tgt_lines, out_type=int)
    keep = [i for i in range(len(src_ids)) if 0 < len(src_ids[i]) <= args.max_len and
            0 < len(tgt_ids[i]) <= args.max_len]
    if not keep:
        raise ValueError(f"no training pair is left: every pair is empty or longer than --max-len {args.max_len} "
                         "subwords")
    src_ids = [src_ids[i] for i in keep]
    tgt_ids = [tgt_ids[i] for i in keep]
    batches = make_batches(src_ids, tgt_ids, args.batch_tokens, args.seed)
    valid_src = read_lines(args.valid_src, "--valid-src") if args.valid_src else []
    valid_ref = read_lines(args.valid_tgt, "--valid-tgt") if args.valid_tgt else []

    model = NMTModel(model_cfg)
    optimizer = keras.optimizers.Adam(learning_rate=args.lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    optimizer.build(model.trainable_variables)
    meta = {"step": 0, "elapsed": 0.0, "best_bleu": None, "best_step": None}
    if resuming:
        meta = {**meta, **load_checkpoint(last_path, model, optimizer)}
        _drop_log_records_after(os.path.join(args.model_dir, LOG_FILE), meta["step"])
    log(f"{len(keep)} training pairs, {len(batches)} batches/epoch, vocab {model_cfg.src_vocab_size}/"
        f"{model_cfg.tgt_vocab_size}, {sum(int(np.prod(v.shape)) for v in model.trainable_variables)} parameters")

    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([2], tf.int64),
                                  tf.TensorSpec([], tf.float32)])
    def train_step(src, tgt_in, tgt_out, seed_2, lr):
        with tf.GradientTape() as tape:
            loss, tokens = model.token_loss(src, tgt_in, tgt_out, seed_2, training=True)
        grads = tape.gradient(loss, variables)
        grads, norm = tf.clip_by_global_norm(grads, args.clip_norm)
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, tokens, norm

    translator = Translator(model, beam_size=args.valid_beam_size, decoder="fused")

    def evaluate():
        t0 = time.time()
        hyps = translate_lines(model, sp_src, sp_tgt, valid_src, batch_size=args.valid_batch_size,
                               length_penalty=args.valid_length_penalty, translator=translator)
        bleu = corpus_bleu([h[0][0] for h in hyps], valid_ref)
        return bleu, time.time() - t0

    def write_log(record):
        # fsync'ed like the checkpoints: after a power loss the log still holds the records up to the checkpoint it
        # resumes from (a line cut short is dropped on resume, _drop_log_records_after).
        with open(os.path.join(args.model_dir, LOG_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    budget = _TimeBudget(args.time_budget, meta.get("timing"))
    validating = bool(valid_src)

    # The budget is the run's wall clock: this session's start-up (and on a first run the SentencePiece training)
    # counts, as do evaluations and checkpoints.
    session_start = time.time()
    elapsed_before = meta["elapsed"] + (session_start - start_wall)

    def clock():
        return elapsed_before + time.time() - session_start

    def timed_save(path):
        meta["timing"] = dict(budget.timing)  # the longest step, evaluation and save so far, for a resumed run
        meta["elapsed"] = clock() + (budget.timing.get("save") or 0.0)  # (at the end of this save, as predicted)
        t0 = time.time()
        save_checkpoint(path, model, optimizer, meta)
        budget.record("save", time.time() - t0)

    if args.time_budget is not None and budget.timing.get("save") is None:
        # The final checkpoint must fit in the budget too: time one (to a scratch file) before any is needed.
        probe = os.path.join(args.model_dir, "ckpt-probe.npz")
        timed_save(probe)
        os.remove(probe)

    # The steps since the last train log line: token-weighted loss, tokens, and their training time (the steps
    # only: evaluations and checkpoints in between are not training time).
    window = {"steps": 0, "loss": 0.0, "tokens": 0, "seconds": 0.0, "lr": None, "norm": None}

    def log_window(step):
        record = {"event": "train", "step": step, "epoch": round(step / len(batches), 3),
                  "elapsed": round(clock(), 1), "loss": round(window["loss"] / max(window["tokens"], 1), 4),
                  "steps": window["steps"], "tokens": window["tokens"],
                  "tokens_per_s": round(window["tokens"] / max(window["seconds"], 1e-9), 1), "lr": window["lr"],
                  "grad_norm": round(window["norm"], 3), "loadavg": os.getloadavg()[0]}
        log(" ".join(f"{k} {v}" for k, v in record.items() if k != "event"))
        write_log(record)
        window.update(steps=0, loss=0.0, tokens=0, seconds=0.0)

    step = meta["step"]
    spent_checked = not resuming
    with _StopSignal() as stopper:
        while True:
            elapsed = clock()
            at_max = args.max_steps is not None and step >= args.max_steps
            # Out of time: the next step, then the final evaluation and checkpoint, would not end in the budget.
            out_of_time = not at_max and not budget.step_fits(elapsed, validating)
            finished = at_max or out_of_time or stopper.stop
            if finished and window["steps"]:
                log_window(step)  # the steps since the last line (fewer than --log-every), so that each is logged
            new_steps = step > meta["step"]
            periodic = new_steps and step % args.eval_every == 0
            # What an uninterrupted run with room in its budget evaluates here (a stop signal or the budget may
            # skip it: then the resumed run does it first).
            would_eval = validating and ((new_steps and (periodic or at_max or out_of_time)) or
                                         bool(meta.get("eval_due")))
            if not spent_checked:
                spent_checked = True
                if finished and not stopper.stop and not (would_eval and budget.eval_fits(elapsed)):
                    # A resume with nothing to do (no step, and no due evaluation, fits): the stopped run's
                    # checkpoint and stop record stand; another stop record (or checkpoint) would only repeat them.
                    log(_already_spent(args, step, elapsed, budget, validating))
                    return meta
            evaluated = skipped = False
            if would_eval and not stopper.stop:
                fits = budget.eval_fits(elapsed)
                # An evaluation none before can predict (the run's first) starts only while training goes on.
                if fits or (fits is None and not finished):
                    bleu, eval_seconds = evaluate()
                    budget.record("eval", eval_seconds)
                    elapsed = clock()
                    record = {"event": "eval", "step": step, "elapsed": round(elapsed, 1),
                              "bleu": round(bleu.score, 2), "eval_seconds": round(eval_seconds, 1),
                              "loadavg": os.getloadavg()[0]}
                    log(f"step {step} valid BLEU {bleu.score:.2f} ({bleu}) eval {eval_seconds:.0f}s")
                    write_log(record)
                    meta.update(step=step, eval_due=False)
                    if meta["best_bleu"] is None or bleu.score > meta["best_bleu"]:
                        meta.update(best_bleu=bleu.score, best_step=step)
                        timed_save(best_path)
                    timed_save(last_path)
                    evaluated = True
                    if not finished:
                        continue  # the evaluation took time: whether a step still fits is decided again
                else:
                    skipped = True
                    need = "no evaluation has been timed yet" if fits is None else \
                        f"evaluations take up to {budget.timing['eval']:.0f}s"
                    log(f"step {step}: no evaluation, it would not end within --time-budget "
                        f"{args.time_budget:.0f}s ({elapsed:.0f}s spent, {need})")
            if not evaluated and ((new_steps and (finished or step % args.save_every == 0)) or
                                  (finished and not os.path.exists(last_path))):
                # An evaluation skipped by a stop signal, or by the budget at a step where one was due, is done
                # first by the resumed run (with a larger budget), as an uninterrupted run would have done it.
                due = would_eval and (stopper.stop or (skipped and (periodic or at_max or
                                                                    bool(meta.get("eval_due")))))
                meta.update(step=step, eval_due=bool(due))
                timed_save(last_path)
            if finished:
                why = "interrupted" if stopper.stop else ("max steps" if at_max else "time budget")
                meta["interrupted_by"] = getattr(stopper, "signum", None) if stopper.stop else None
                elapsed = clock()
                of_budget = f" of --time-budget {args.time_budget:.0f}s" if args.time_budget is not None else ""
                log(f"stopped at step {step} ({why}), {elapsed:.0f}s in total{of_budget}")
                write_log({"event": "stop", "step": step, "elapsed": round(elapsed, 1), "why": why})
                break
            t0 = time.time()
            epoch, position = divmod(step, len(batches))
            perm = np.random.default_rng([args.seed, epoch]).permutation(len(batches))
            src, tgt_in, tgt_out = batch_arrays(batches[perm[position]], src_ids, tgt_ids)
            lr = learning_rate(step, args)
            loss, tokens, norm = train_step(src, tgt_in, tgt_out, tf.constant([args.seed, step], tf.int64),
                                            tf.constant(lr, tf.float32))
            loss, tokens, norm = float(loss), int(tokens), float(norm)
            step += 1
            seconds = time.time() - t0
            budget.record("step", seconds)
            window["steps"] += 1
            window["loss"] += loss * tokens
            window["tokens"] += tokens
            window["seconds"] += seconds
            window.update(lr=lr, norm=norm)
            if step % args.log_every == 0:
                log_window(step)
    return meta


def translate_main(args):
    for name in ("beam_size", "n_best", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.length_penalty < 0:
        raise ValueError(f"--length-penalty must be >= 0, got {args.length_penalty}")
    if args.n_best > args.beam_size:
        raise ValueError(f"--n-best ({args.n_best}) must be <= --beam-size ({args.beam_size})")
    if args.int8 and args.decoder == "stock":
        raise ValueError("--int8 needs --decoder fused or fused_op (the stock path has no int8 kernels)")
    model, _, sp_src, sp_tgt = load_model(args.model_dir, args.checkpoint)
    lines = _decode_lines(sys.stdin.buffer.read(), "stdin")
    results = translate_lines(model, sp_src, sp_tgt, lines, beam_size=args.beam_size,
                              batch_size=args.batch_size, length_penalty=args.length_penalty, n_best=args.n_best,
                              decoder=args.decoder, max_length=args.max_length, int8=args.int8)
    out = sys.stdout
    for hyps in results:
        for text, score in hyps:
            out.write(f"{score:.4f}\t{text}\n" if args.with_scores else text + "\n")
    out.flush()


def _recording(action_class):
    """An argparse action class that also adds its dest to namespace.explicit_options."""
    class Recording(action_class):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.explicit_options = sorted(set(getattr(namespace, "explicit_options", None) or ()) | {self.dest})
    return Recording


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m models.nmt", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) a model")
    # Record which options the command line gave (a resumed run refuses those that contradict its saved settings).
    for registry_name in (None, "store", "store_true"):
        t.register("action", registry_name, _recording(t._registry_get("action", registry_name)))
    t.add_argument("--src", required=True, help="training source text, one sentence a line")
    t.add_argument("--tgt", required=True, help="training target text, line-aligned with --src")
    t.add_argument("--valid-src", help="validation source text")
    t.add_argument("--valid-tgt", help="validation reference text (raw, for sacreBLEU)")
    t.add_argument("--model-dir", required=True)
    t.add_argument("--shared-vocab", action="store_true", help="one SentencePiece model for both sides")
    t.add_argument("--src-vocab-size", type=int, default=8000, help="(the shared size with --shared-vocab)")
    t.add_argument("--tgt-vocab-size", type=int, default=8000)
    t.add_argument("--spm-type", default="bpe", choices=("bpe", "unigram"))
    t.add_argument("--emb-dim", type=int, default=256)
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--layers", type=int, default=2, help="encoder and decoder layers")
    t.add_argument("--attention", default="general", choices=("general", "dot"))
    t.add_argument("--no-input-feed", action="store_true")
    t.add_argument("--no-tie", action="store_true", help="a separate output projection")
    t.add_argument("--dropout", type=float, default=0.3)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per batch (about)")
    t.add_argument("--max-len", type=int, default=100, help="longest training sentence, in subwords")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--decay-start", type=int, default=None, help="step where the cosine decay starts")
    t.add_argument("--min-lr", type=float, default=0.05, help="final learning rate, as a fraction of --lr")
    t.add_argument("--clip-norm", type=float, default=5.0)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many training steps (counted across resumes); --max-steps or "
                        "--time-budget (or both) is required")
    t.add_argument("--time-budget", type=parse_duration, default=None,
                   help="the run's total wall-clock time across resumes, e.g. 3600, 60m, 1h: SentencePiece "
                        "training, start-up, training steps, evaluations and checkpoints all count (not the time "
                        "a killed run lost after its last checkpoint). No step or evaluation starts that the "
                        "longest ones so far say would not end, with the final evaluation and checkpoint, within "
                        "it; the run's first evaluation, which nothing predicts, starts only while training goes "
                        "on")
    t.add_argument("--eval-every", type=int, default=1000)
    t.add_argument("--save-every", type=int, default=200)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--valid-beam-size", type=int, default=5)
    t.add_argument("--valid-batch-size", type=int, default=64)
    t.add_argument("--valid-length-penalty", type=float, default=0.6)
    r = sub.add_parser("translate", help="translate stdin to stdout")
    r.add_argument("--model-dir", required=True)
    r.add_argument("--checkpoint", default="best", choices=("best", "last"))
    r.add_argument("--beam-size", type=int, default=5)
    r.add_argument("--n-best", type=int, default=1)
    r.add_argument("--length-penalty", type=float, default=0.6)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--max-length", type=int, default=200)
    r.add_argument("--decoder", default="fused", choices=("fused", "fused_op", "stock"),
                   help="fused: fused encoder (the fast path); fused_op: also each decoder step on the op; "
                        "stock: stock Keras layers and cells")
    r.add_argument("--with-scores", action="store_true")
    r.add_argument("--int8", action="store_true",
                   help="INT8 recurrent weights, one scale per row (encoder and decoder; not with --decoder stock)")
    return parser


def main(argv=None):
    """Exit status: 0 done, 2 a bad argument or input file (one line on stderr, no traceback), 128 + the signal
    when a SIGINT/SIGTERM stopped training (after saving a checkpoint; run the same command to resume)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            check_train_settings(args)
            meta = train(args, log=lambda msg: print(msg, flush=True))
            if meta.get("interrupted_by"):  # saved and stopped early: not a finished run (128 + signal, as shells)
                sys.exit(128 + int(meta["interrupted_by"]))
        else:
            translate_main(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")


if __name__ == "__main__":
    main()
