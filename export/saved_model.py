"""SavedModel export for TF Serving: ELMo and the NMT model, on raw text, in TF Serving's directory layout.

    python -m export.saved_model nmt  --model-dir RUN_DIR --out DIR/NAME [--portable] [--beam-size 5 ...]
    python -m export.saved_model elmo --options options.json --weights lm_weights.hdf5 --out DIR/NAME [--portable]

Each call writes a new version DIR/NAME/<n>/ (n = the largest existing version + 1; an existing version is never
overwritten, and the version appears atomically: it is written under a temporary name and renamed, so a server
watching DIR/NAME never loads a half-written one). DIR also gets `models.config` (every model under DIR, for
tensorflow_model_server --model_config_file) and `batching_parameters.txt` (for --batching_parameters_file).

Signatures
    nmt  serving_default   text [B] string (raw sentences)  ->  translations [B, N] string (detokenised n-best,
                           best first), scores [B, N] float32 (length-normalised log-probabilities; -inf marks
                           a slot with no hypothesis). SentencePiece runs in the graph (tensorflow-text's op).
         translate_ids     src_ids [B, S] int32 (SentencePiece ids, right-padded with 0, no BOS/EOS)  ->
                           ids [B, N, L] int32 (EOS-padded after each hypothesis' EOS), scores [B, N].
                           An empty source translates to the empty string (all EOS), score 0.
    elmo serving_default   tokens [B, T] string (tokenised sentences, right-padded), sequence_len [B] int32 ->
                           layer_0 .. layer_<n> [B, T, 2P] float32 (zero past each length), mask [B, T] bool.
         embed_char_ids    char_ids [B, T + 2, 50] int32 (models.elmo.batch_to_ids) -> the same outputs.

Flavours: the default graph calls the fused op (FusedLSTMSequence: needs a model server with the op linked in,
export/SERVING.md); --portable traces the same weights with the pure-TensorFlow recurrence (tf_ops.reference),
so the graph holds stock TensorFlow ops (and, for NMT, tensorflow-text's SentencePiece ops, which the stock
tensorflow_model_server includes) only.

Beside the graph: assets/ holds the SentencePiece models (the graph's tokenizer op keeps its own copy: it takes
the model as an attribute; the assets are for clients of translate_ids), assets.extra/tf_serving_warmup_requests
holds PredictionLog warm-up requests for both signatures, and assets.extra/fused_rnn_export.json says what was
exported (flavour, model, decoding settings, the ops the graph needs).
"""
import argparse
import datetime
import json
import math
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_ops  # noqa: E402
from export.graph import METADATA_FILE  # noqa: E402
from export.graph import graph_op_types  # noqa: E402

WARMUP_FILE = "tf_serving_warmup_requests"
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
FLAVOURS = ("fused", "portable")

# Sentences for warm-up requests when the caller gives none (the warm-up only has to exercise the graph).
DEFAULT_WARMUP_TEXT = ["A man is riding a bicycle down the street .", "Two dogs play in the snow .",
                       "The children are reading books in the garden .", "Hello ."]


def _text_tensor_proto(values):
    return tf.make_tensor_proto(np.asarray(values, dtype=object))


# ---- the serving modules ----------------------------------------------------------------------------------------
class _Module(tf.Module):
    """Holds the model's variables (as tf.Variables, so tf.saved_model tracks them) and the signature functions."""

    def __init__(self, keras_model):
        super().__init__()
        # Keras 3 variables wrap a tf.Variable (.value); the traced functions capture those.
        self.model_variables = [v.value for v in keras_model.weights]


class NmtServing(_Module):
    @staticmethod
    def check_settings(beam_size=5, n_best=None, max_length=200, length_penalty=0.6):
        """Refuses decoding settings that would make every request fail (or mean nothing); returns n_best."""
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
        if n_best is None:
            n_best = beam_size
        if not 1 <= n_best <= beam_size:
            raise ValueError(f"n_best must be in [1, beam_size={beam_size}], got {n_best}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        # The beam search checks this at run time: a bad value would be exported and then fail every request.
        if not (length_penalty >= 0 and math.isfinite(length_penalty)):
            raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
        return n_best

    def __init__(self, model, spm_src_path, spm_tgt_path, beam_size=5, n_best=None, max_length=200,
                 length_penalty=0.6):
        import tensorflow_text as text
        from models.nmt_model import Translator
        n_best = self.check_settings(beam_size, n_best, max_length, length_penalty)
        super().__init__(model)
        self.settings = {"beam_size": int(beam_size), "n_best": int(n_best), "max_length": int(max_length),
                         "length_penalty": float(length_penalty)}
        self.config = model.config
        self.translator = Translator(model, beam_size=beam_size, decoder="fused")
        # Distinct names are needed: after a SavedModel load, tensorflow-text 2.21's kernel-owned SentencePiece
        # resources of the same node name are shared, and the target side would detokenise with the source
        # model (tests/test_export.py caught it).
        with open(spm_src_path, "rb") as f:
            self.src_tokenizer = text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32, name="spm_src")
        with open(spm_tgt_path, "rb") as f:
            self.tgt_tokenizer = text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32, name="spm_tgt")
        self.spm_src_asset = tf.saved_model.Asset(spm_src_path)
        self.spm_tgt_asset = tf.saved_model.Asset(spm_tgt_path)

    def _decode(self, src_ids_bs):
        """(ids [B, n_best, L], scores [B, n_best]) with the decode length the translate CLI uses."""
        s = self.settings
        from models.nmt_model import decode_lengths
        max_length_b = decode_lengths(src_ids_bs, s["max_length"], self.config.pad_id)
        ids_bkl, scores_bk = self.translator._fn(src_ids_bs, max_length_b, tf.constant(s["length_penalty"]))
        return ids_bkl[:, :s["n_best"]], scores_bk[:, :s["n_best"]]

    @staticmethod
    def _check_batch(batch, name):
        return tf.debugging.assert_positive(batch, message=f"{name}: the request's batch is empty")

    def translate_ids(self, src_ids):
        checks = [tf.debugging.assert_non_negative(src_ids, message="src_ids: ids must be >= 0"),
                  tf.debugging.assert_less(src_ids, self.config.src_vocab_size,
                                           message=f"src_ids: ids must be < the source vocabulary size "
                                                   f"({self.config.src_vocab_size})"),
                  self._check_batch(tf.shape(src_ids)[0], "src_ids")]
        with tf.control_dependencies(checks):
            src_ids = tf.identity(src_ids)
        ids, scores = self._decode(src_ids)
        ids, scores = self._empty_rows(src_ids, ids, scores)
        return {"ids": ids, "scores": scores}

    def _empty_rows(self, src_ids_bs, ids_bkl, scores_bk):
        """An empty source (no ids) translates to the empty hypothesis (all EOS) with score 0, in every slot:
        the model never saw one in training, and what it would decode from nothing is noise."""
        empty_b = tf.reduce_all(tf.equal(src_ids_bs, self.config.pad_id), axis=1)
        ids_bkl = tf.where(empty_b[:, None, None], tf.constant(self.config.eos_id), ids_bkl)
        return ids_bkl, tf.where(empty_b[:, None], 0.0, scores_bk)

    def translate_text(self, text):
        with tf.control_dependencies([self._check_batch(tf.shape(text)[0], "text")]):
            pieces = self.src_tokenizer.tokenize(tf.identity(text))
        src_ids_bs = pieces.to_tensor(default_value=self.config.pad_id)
        ids_bkl, scores_bk = self._decode(src_ids_bs)
        ids_bkl, scores_bk = self._empty_rows(src_ids_bs, ids_bkl, scores_bk)
        dims = tf.shape(ids_bkl)
        flat_nl = tf.reshape(ids_bkl, [-1, dims[2]])
        # Each hypothesis ends at its first EOS (positions after it hold EOS too).
        lengths_n = tf.reduce_sum(tf.cast(tf.equal(tf.cumsum(tf.cast(tf.equal(flat_nl, self.config.eos_id),
                                                                     tf.int32), axis=1), 0), tf.int32), axis=1)
        texts_n = self.tgt_tokenizer.detokenize(tf.RaggedTensor.from_tensor(flat_nl, lengths=lengths_n))
        return {"translations": tf.reshape(texts_n, dims[:2]), "scores": scores_bk}

    def signatures(self):
        return {
            "serving_default": tf.function(self.translate_text, input_signature=[
                tf.TensorSpec([None], tf.string, name="text")]),
            "translate_ids": tf.function(self.translate_ids, input_signature=[
                tf.TensorSpec([None, None], tf.int32, name="src_ids")]),
        }

    def warmup_inputs(self, sentences):
        ids = [self.src_tokenizer.tokenize(tf.constant(sentences)).to_tensor(self.config.pad_id).numpy()]
        return [("serving_default", {"text": _text_tensor_proto(sentences[:1])}),
                ("serving_default", {"text": _text_tensor_proto(sentences)}),
                ("translate_ids", {"src_ids": tf.make_tensor_proto(ids[0].astype(np.int32))})]

    def metadata(self):
        return {"model": "nmt", "config": json.loads(self.config.to_json()), "decoding": self.settings}


class ElmoServing(_Module):
    def __init__(self, model):
        super().__init__(model)
        self.model = model
        self.max_chars = model.options["char_cnn"]["max_characters_per_token"]
        self.n_outputs = model.options["lstm"]["n_layers"] + 1

    def _outputs(self, char_ids):
        outputs = self.model(char_ids)
        return {**{f"layer_{k}": outputs[f"layer_{k}"] for k in range(self.n_outputs)}, "mask": outputs["mask"]}

    def embed_char_ids(self, char_ids):
        checks = [tf.debugging.assert_non_negative(char_ids, message="char_ids: ids must be >= 0"),
                  tf.debugging.assert_less(char_ids, self.model.char_encoder.n_characters,
                                           message=f"char_ids: ids must be < {self.model.char_encoder.n_characters}"),
                  tf.debugging.assert_greater_equal(tf.shape(char_ids)[1], 2,
                                                    message="char_ids: needs at least the <S> and </S> rows"),
                  tf.debugging.assert_positive(tf.shape(char_ids)[0], message="char_ids: the request's batch is "
                                                                             "empty")]
        with tf.control_dependencies(checks):
            return self._outputs(tf.identity(char_ids))

    def embed_tokens(self, tokens, sequence_len):
        from models.elmo import tokens_to_char_ids
        with tf.control_dependencies([tf.debugging.assert_positive(tf.shape(tokens)[0],
                                                                   message="tokens: the request's batch is empty")]):
            char_ids = tokens_to_char_ids(tf.identity(tokens), sequence_len, self.max_chars)
        return self._outputs(char_ids)

    def signatures(self):
        return {
            "serving_default": tf.function(self.embed_tokens, input_signature=[
                tf.TensorSpec([None, None], tf.string, name="tokens"),
                tf.TensorSpec([None], tf.int32, name="sequence_len")]),
            "embed_char_ids": tf.function(self.embed_char_ids, input_signature=[
                tf.TensorSpec([None, None, self.max_chars], tf.int32, name="char_ids")]),
        }

    def warmup_inputs(self, sentences):
        from models.elmo import batch_to_ids
        tokenised = [s.split() for s in sentences]
        width = max(len(t) for t in tokenised)
        tokens = [t + [""] * (width - len(t)) for t in tokenised]
        lengths = np.array([len(t) for t in tokenised], np.int32)
        return [("serving_default", {"tokens": _text_tensor_proto(tokens[:1]),
                                     "sequence_len": tf.make_tensor_proto(lengths[:1])}),
                ("serving_default", {"tokens": _text_tensor_proto(tokens),
                                     "sequence_len": tf.make_tensor_proto(lengths)}),
                ("embed_char_ids", {"char_ids": tf.make_tensor_proto(batch_to_ids(tokenised, self.max_chars))})]

    def metadata(self):
        return {"model": "elmo", "options": self.model.options}


# ---- writing ----------------------------------------------------------------------------------------------------
def _is_version_name(name):
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() refuses (and TF Serving ignores).
    return name.isascii() and name.isdigit()


def _next_version(model_base):
    versions = [int(name) for name in os.listdir(model_base) if _is_version_name(name)] \
        if os.path.isdir(model_base) else []
    return max(versions, default=0) + 1


def _write_warmup(path, model_name, requests):
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def write_server_files(base_dir, batching=None):
    """(Re)writes base_dir/models.config listing every model directory under base_dir that holds a version, and
    base_dir/batching_parameters.txt. Paths are absolute (mount base_dir at the same path in a container, or
    edit base_path)."""
    base_dir = os.path.abspath(base_dir)
    names = sorted(name for name in os.listdir(base_dir)
                   if os.path.isdir(os.path.join(base_dir, name)) and
                   any(_is_version_name(v) and os.path.exists(os.path.join(base_dir, name, v, "saved_model.pb"))
                       for v in os.listdir(os.path.join(base_dir, name))))
    entries = "".join(f"  config {{\n    name: {_text_proto_string(name)}\n"
                      f"    base_path: {_text_proto_string(os.path.join(base_dir, name))}\n"
                      f"    model_platform: 'tensorflow'\n  }}\n" for name in names)
    with open(os.path.join(base_dir, MODELS_CONFIG), "w") as f:
        f.write("model_config_list {\n" + entries + "}\n")
    b = {"max_batch_size": 32, "batch_timeout_micros": 2000, "max_enqueued_batches": 64,
         "num_batch_threads": os.cpu_count() or 2, **(batching or {})}
    with open(os.path.join(base_dir, BATCHING_PARAMETERS), "w") as f:
        # Requests are batched along dimension 0. pad_variable_length_inputs is left off on purpose: TF Serving's
        # padding (tensorflow_serving/batching/batching_util.cc, PadTensor) fills with each tensor's FIRST
        # ELEMENT, not with 0 / "", and the id signatures read every non-zero id as a token (translate_ids'
        # src_ids, ELMo embed_char_ids' char_ids), so a request batched with a longer one would get a different
        # answer. With padding off, requests to a rank > 1 input whose widths differ cannot share a batch (TF
        # Serving fails such a batch with "padding is turned off"): clients pad to a fixed width themselves (0 for
        # src_ids / char_ids, "" with sequence_len for ELMo tokens), as export/SERVING.md says. The NMT
        # serving_default (text [B]) is rank 1 and batches freely.
        f.write("".join(f"{k} {{ value: {v} }}\n" for k, v in b.items()))


def _text_proto_string(value):
    """A protobuf text-format string literal: quotes and backslashes escaped (a path may hold either)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def export(module, out, flavour="fused", warmup_sentences=None, version=None):
    """Writes module (NmtServing / ElmoServing) as a new version under `out` (DIR/NAME); returns the version dir."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"version must be an integer >= 0 (TF Serving reads numbered directories), got {version!r}")
    out = os.path.abspath(out)
    model_name = os.path.basename(out.rstrip("/"))
    if not model_name or not all(c.isalnum() or c in "-_." for c in model_name):
        raise ValueError(f"--out must end in a model name (letters, digits, -, _, .), got {out!r}")
    if version is not None and os.path.exists(os.path.join(out, str(version))):
        raise FileExistsError(f"version {version} already exists in {out!r}; versions are never overwritten")
    if not isinstance(module, _Module):  # checked before anything is written
        raise TypeError(f"export takes an NmtServing or ElmoServing module, got {type(module).__name__}; for "
                        "any other Keras model (fused, converted with tf_ops.fuse_model, quantized) use "
                        "model.export(path) with the op library loaded where it is served")
    os.makedirs(out, exist_ok=True)
    if version is None:
        version = _next_version(out)
    final_dir = os.path.join(out, str(version))
    implementation = "op" if flavour == "fused" else "reference"
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=out)
    try:
        with tf_ops.implementation_scope(implementation):
            signatures = {name: fn.get_concrete_function() for name, fn in module.signatures().items()}
            tf.saved_model.save(module, tmp_dir, signatures=signatures)
        ops = sorted(graph_op_types(tmp_dir))
        ours = sorted(set(ops) & set(tf_ops.OP_NAMES))
        if flavour == "portable" and ours:
            raise RuntimeError(f"the portable graph holds fused ops {ours}: a layer bypassed implementation_scope")
        extra = os.path.join(tmp_dir, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        _write_warmup(os.path.join(extra, WARMUP_FILE), model_name,
                      module.warmup_inputs(warmup_sentences or DEFAULT_WARMUP_TEXT))
        metadata = {**module.metadata(), "flavour": flavour, "version": version, "fused_ops": ours,
                    "signatures": sorted(signatures), "tensorflow": tf.__version__,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=1, sort_keys=True)
        # mkdtemp makes the directory 0700; a model server running as another user must be able to read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_dir, 0o777 & ~umask)
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    write_server_files(os.path.dirname(out))
    return final_dir


def export_nmt(model_dir, out, flavour="fused", checkpoint="best", beam_size=5, n_best=None, max_length=200,
               length_penalty=0.6, warmup_sentences=None, version=None):
    from models import nmt
    NmtServing.check_settings(beam_size, n_best, max_length, length_penalty)  # before the slow load
    model, _, _, _ = nmt.load_model(model_dir, checkpoint)
    module = NmtServing(model, os.path.join(model_dir, nmt.SPM_SRC + ".model"),
                        os.path.join(model_dir, nmt.SPM_TGT + ".model"), beam_size=beam_size, n_best=n_best,
                        max_length=max_length, length_penalty=length_penalty)
    return export(module, out, flavour, warmup_sentences, version)


def export_elmo(options_file, weight_file, out, flavour="fused", warmup_sentences=None, version=None):
    from models import elmo
    model = elmo.load_elmo(options_file, weight_file)  # stateful=False: a request never sees another's state
    return export(ElmoServing(model), out, flavour, warmup_sentences, version)


def _read_warmup(path):
    if path is None:
        return None
    # A mistake here is a bad argument (exit 2 naming --warmup-text), as every other one.
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"--warmup-text {path!r} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ValueError(f"--warmup-text {path!r} cannot be read: {e.strerror or e}") from None
    if not lines:
        raise ValueError(f"--warmup-text {path!r} holds no sentences")
    return lines[:8]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m export.saved_model", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="model", required=True)

    def common(p):
        p.add_argument("--out", required=True, help="DIR/NAME: the model's base path; a new version is added")
        p.add_argument("--portable", action="store_true",
                       help="stock TensorFlow ops only (an unmodified tensorflow_model_server can serve it)")
        p.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
        p.add_argument("--warmup-text", default=None, help="a text file whose first lines become the warm-up "
                                                           "requests (ELMo: tokenised, split on whitespace)")

    n = sub.add_parser("nmt", help="an NMT model directory (python -m models.nmt train)")
    n.add_argument("--model-dir", required=True)
    n.add_argument("--checkpoint", default="best", choices=("best", "last"))
    n.add_argument("--beam-size", type=int, default=5)
    n.add_argument("--n-best", type=int, default=None, help="hypotheses returned per sentence (default: beam size)")
    n.add_argument("--max-length", type=int, default=200, help="decode at most min(this, 2 * source + 10) tokens")
    n.add_argument("--length-penalty", type=float, default=0.6)
    common(n)
    e = sub.add_parser("elmo", help="a bilm-tf ELMo (options.json and lm_weights.hdf5)")
    e.add_argument("--options", required=True)
    e.add_argument("--weights", required=True)
    common(e)
    return parser


def main(argv=None):
    """Exit status: 0 written; 2 a bad argument, model directory or --out (one line on stderr, no traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, OSError) as e:  # OSError: FileNotFoundError, FileExistsError, NotADirectoryError, ...
        parser.exit(2, f"{parser.prog} {args.model}: error: {e}\n")


def _main(args):
    flavour = "portable" if args.portable else "fused"
    if flavour == "fused" and not tf_ops.op_library_available():
        raise SystemExit("the fused flavour needs the op library: run tools/setup.sh, or pass --portable")
    warmup = _read_warmup(args.warmup_text)
    if args.model == "nmt":
        path = export_nmt(args.model_dir, args.out, flavour, args.checkpoint, args.beam_size, args.n_best,
                          args.max_length, args.length_penalty, warmup, args.version)
    else:
        path = export_elmo(args.options, args.weights, args.out, flavour, warmup, args.version)
    print(f"wrote {path} ({flavour}); server files in {os.path.dirname(os.path.abspath(args.out))}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
