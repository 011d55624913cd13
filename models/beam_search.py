"""Beam search in plain TensorFlow ops, inside one tf.while_loop: runs in a stock TF Serving (no custom op).

    ids_bkl, scores_bk = beam_search(symbols_to_logits_fn, initial_ids_b, initial_state, beam_size=5,
                                     max_length=100, eos_id=2, length_penalty=0.6)

`max_length` caps the hypotheses' length: one cap for every sentence, or a [batch] vector, a cap per sentence
(e.g. 2 * its source length + 10), so that a sentence's result never depends on the others in its batch.
`symbols_to_logits_fn(ids_n, step, state) -> (logits_nv, new_state)` sees the flattened working rows
(n = working batch * beam_size), the scalar int32 `step` (how many tokens each hypothesis already has) and `state`,
any nested structure of tensors whose leading dimension is n. The search tiles `initial_ids` [batch] and every
`initial_state` leaf [batch, ...] beam_size times, reorders every state row after each step to follow its beam
(the "beam shuffle"), and returns

    ids_bkl     [batch, beam_size, length] int32: hypotheses best first; the EOS that ends a hypothesis is
                included, positions after it hold eos_id; length <= max_length is the number of steps run
                (with a cap per sentence, a hypothesis cut at its sentence's cap is followed by eos_id too).
    scores_bk   [batch, beam_size] float32: sum of token log-probabilities / ((5 + len) / 6) ** length_penalty
                (GNMT), len counting the EOS; -inf marks a slot with no hypothesis (fewer than beam_size exist).

The algorithm is the one of the TensorRT NMT sample (and OpenNMT), on the CPU in TF ops:
- candidates: intra-beam top-k (the best beam_size tokens of each live beam), then inter-beam top-k over those
  beam_size**2 candidates: the step's beam_size best extensions of the sentence.
- beam scoring: an extension ending in EOS is finished: it leaves the live beam (its slot is dead for the next
  step, -inf) and joins the sentence's finished hypotheses, kept apart, the best beam_size by normalized score.
  At max_length the live hypotheses are finished as they are (truncated, no EOS).
- early stop: a sentence is done once its beam_size-th finished score is at least the best score any live beam
  could still reach (its log-probability only falls; the length penalty grows at most to max_length's).
  Stopping then gives exactly the result that running to max_length would.
- batch reduction: a done sentence's results are scattered into the outputs and its rows leave the working batch,
  so symbols_to_logits_fn sees fewer rows in later steps.

Greedy decoding is beam_size=1 (the best token each step; EOS ends it). The n-best list is the beam_size rows.
"""
import numbers

import tensorflow as tf

_NEG_INF = float("-inf")


def gnmt_length_penalty(length, alpha):
    """((5 + length) / 6) ** alpha, the GNMT length normalization (Wu et al. 2016); 1 for alpha = 0."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"beam_search: {name} must be a Python int, got {value!r}")
    if value < minimum:
        raise ValueError(f"beam_search: {name} must be >= {minimum}, got {value}")
    return int(value)


def _scalar(value, dtype, name, minimum):
    """A Python number (checked now) or a scalar tensor (checked when the graph runs)."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if value < minimum:
            raise ValueError(f"beam_search: {name} must be >= {minimum}, got {value}")
        return tf.constant(value, dtype)
    tensor = tf.convert_to_tensor(value)
    if tensor.shape.rank not in (None, 0):
        raise ValueError(f"beam_search: {name} must be a scalar, got shape {tensor.shape}")
    tensor = tf.cast(tensor, dtype)
    with tf.control_dependencies([tf.debugging.assert_greater_equal(
            tensor, tf.cast(minimum, dtype), message=f"beam_search: {name} must be >= {minimum}")]):
        return tf.identity(tensor)


def _max_lengths(value, batch):
    """max_length as a [batch] int32 vector: a Python int or a scalar tensor (every sentence's cap), or a [batch]
    vector (a cap per sentence, e.g. from its source length); every cap >= 1 (checked now or when the graph
    runs)."""
    # An integer only: a float cap would be truncated (3.7 -> 3) or fail in a conversion naming no argument.
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"beam_search: max_length must be an integer, got {value!r}")
        return tf.fill([batch], _scalar(value, tf.int32, "max_length", 1))
    tensor = tf.convert_to_tensor(value)
    if not tensor.dtype.is_integer:
        raise ValueError(f"beam_search: max_length must be an integer (a Python or NumPy int, an int32/int64 "
                         f"tensor), got a {tensor.dtype.name} tensor")
    if tensor.shape.rank not in (None, 0, 1):
        raise ValueError(f"beam_search: max_length must be a scalar or [batch], got shape {tensor.shape}")
    tensor = tf.cast(tensor, tf.int32)
    checks = [tf.debugging.assert_greater_equal(tensor, 1, message="beam_search: max_length must be >= 1"),
              tf.debugging.assert_less_equal(tf.rank(tensor), 1, message="beam_search: max_length must be a "
                                             "scalar or [batch]")]
    with tf.control_dependencies(checks):
        tensor = tf.identity(tensor)
    if tensor.shape.rank == 0:
        return tf.fill([batch], tensor)
    if tensor.shape.rank == 1:
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.size(tensor), batch, message="beam_search: max_length [batch] must have one cap per sentence")]):
            return tf.identity(tensor)
    return tf.broadcast_to(tensor, [batch])  # unknown rank: a scalar broadcasts, a [batch] vector stays


def _leading_rows(leaf, rows_n):
    """Selects rows of a state leaf along its leading dimension (the beam shuffle and the batch reduction)."""
    return tf.gather(leaf, rows_n, axis=0)


def beam_search(symbols_to_logits_fn, initial_ids, initial_state, beam_size, max_length, eos_id,
                length_penalty=0.0, name=None):
    """Returns (ids [batch, beam_size, length] int32, scores [batch, beam_size] float32), best first.

    See the module docstring for the contract. beam_size and eos_id are Python ints; max_length (a scalar, or
    [batch]: a cap per sentence) and length_penalty (the GNMT alpha, >= 0; 0 ranks by the plain sum of
    log-probabilities) may be Python numbers or tensors (e.g. SavedModel signature inputs); max_length an integer
    (a float one is a ValueError).
    """
    beam_size = _check_int(beam_size, "beam_size", 1)
    eos_id = _check_int(eos_id, "eos_id", 0)
    if not callable(symbols_to_logits_fn):
        raise ValueError(f"beam_search: symbols_to_logits_fn must be callable, got {symbols_to_logits_fn!r}")
    with tf.name_scope(name or "beam_search"):
        alpha = _scalar(length_penalty, tf.float32, "length_penalty", 0.0)
        initial_ids = tf.convert_to_tensor(initial_ids)
        if initial_ids.shape.rank not in (None, 1):
            raise ValueError(f"beam_search: initial_ids must be [batch], got shape {initial_ids.shape}")
        if not initial_ids.dtype.is_integer:
            raise ValueError(f"beam_search: initial_ids must be integer ids, got {initial_ids.dtype.name}")
        initial_ids_b = tf.cast(initial_ids, tf.int32)
        batch = tf.shape(initial_ids_b)[0]
        # Each sentence's own cap (so a sentence decodes the same alone and in any batch); the loop and the
        # output width run to the largest.
        max_len_b = _max_lengths(max_length, batch)
        max_length = tf.maximum(tf.reduce_max(max_len_b), 1)
        if initial_state is None:
            initial_state = ()
        initial_state = tf.nest.map_structure(tf.convert_to_tensor, initial_state)
        for path, leaf in _flatten_with_paths(initial_state):
            if leaf.shape.rank == 0:
                raise ValueError(f"beam_search: initial_state{path} must have a leading batch dimension, got a "
                                 "scalar")
            if (leaf.shape.rank is not None and leaf.shape[0] is not None and initial_ids.shape[0] is not None
                    and leaf.shape[0] != initial_ids.shape[0]):
                raise ValueError(f"beam_search: initial_state{path} has leading dimension {leaf.shape[0]}, "
                                 f"initial_ids has batch {initial_ids.shape[0]}")
        k = beam_size

        # Every hypothesis of a sentence starts from the same row; only beam 0 is live at first, so the first
        # step's candidates are k distinct tokens rather than k copies of the best one.
        state_n = tf.nest.map_structure(lambda leaf: tf.repeat(leaf, k, axis=0), initial_state)
        last_ids_bk = tf.tile(initial_ids_b[:, None], [1, k])
        alive_logp_bk = tf.tile(tf.constant([[0.0] + [_NEG_INF] * (k - 1)]), [batch, 1])
        alive_seq_bkt = tf.zeros([batch, k, 0], tf.int32)
        fin_seq_bkt = tf.zeros([batch, k, 0], tf.int32)
        fin_score_bk = tf.fill([batch, k], _NEG_INF)
        sentence_b = tf.range(batch)  # original batch row of each working sentence
        out_ids_bkl = tf.fill([batch, k, max_length], eos_id)
        out_scores_bk = tf.fill([batch, k], _NEG_INF)

        def cond(step, sentence_b, *_):
            return tf.logical_and(step < max_length, tf.size(sentence_b) > 0)

        def body(step, sentence_b, last_ids_bk, alive_seq_bkt, alive_logp_bk, state_n, fin_seq_bkt, fin_score_bk,
                 out_ids_bkl, out_scores_bk):
            work = tf.shape(sentence_b)[0]
            cap_b = tf.gather(max_len_b, sentence_b)  # the working sentences' own caps
            logits_nv, new_state_n = symbols_to_logits_fn(tf.reshape(last_ids_bk, [-1]), step, state_n)
            try:
                tf.nest.assert_same_structure(state_n, new_state_n)
            except (ValueError, TypeError) as e:
                raise ValueError("beam_search: symbols_to_logits_fn must return a state of the same structure "
                                 f"as the state it was given: {e}") from None
            logits_nv = tf.convert_to_tensor(logits_nv)
            if logits_nv.shape.rank not in (None, 2):
                raise ValueError(f"beam_search: symbols_to_logits_fn must return logits [rows, vocab], got shape "
                                 f"{logits_nv.shape}")
            logp_bkv = tf.reshape(tf.nn.log_softmax(tf.cast(logits_nv, tf.float32)), [work, k, -1])
            vocab = tf.shape(logp_bkv)[2]
            cand_bkv = alive_logp_bk[:, :, None] + logp_bkv

            # Intra-beam top-k, then inter-beam top-k over the k * k_intra survivors.
            k_intra = tf.minimum(k, vocab)
            intra_logp_bkj, intra_tok_bkj = tf.math.top_k(cand_bkv, k_intra)
            intra_logp_bc = tf.reshape(intra_logp_bkj, [work, -1])
            intra_tok_bc = tf.reshape(intra_tok_bkj, [work, -1])
            logp_bk, flat_bk = tf.math.top_k(intra_logp_bc, k)
            parent_bk = flat_bk // k_intra
            tok_bk = tf.gather(intra_tok_bc, flat_bk, batch_dims=1)
            seq_bkt = tf.concat([tf.gather(alive_seq_bkt, parent_bk, batch_dims=1), tok_bk[:, :, None]], axis=2)

            # Beam scoring: EOS extensions are finished (and leave the live beam); at a sentence's max_length
            # every extension is.
            new_len = step + 1
            is_last_b = new_len >= cap_b
            is_eos_bk = tf.equal(tok_bk, eos_id)
            finishes_bk = tf.logical_or(is_eos_bk, is_last_b[:, None])
            cand_score_bk = tf.where(finishes_bk, logp_bk / gnmt_length_penalty(new_len, alpha), _NEG_INF)
            alive_logp_bk = tf.where(is_eos_bk, _NEG_INF, logp_bk)
            merged_seq_bct = tf.concat([tf.pad(fin_seq_bkt, [[0, 0], [0, 0], [0, 1]], constant_values=eos_id),
                                        seq_bkt], axis=1)
            merged_score_bc = tf.concat([fin_score_bk, cand_score_bk], axis=1)
            # top_k keeps the lower index first on ties: an earlier-finished hypothesis wins a tie.
            fin_score_bk, keep_bk = tf.math.top_k(merged_score_bc, k)
            fin_seq_bkt = tf.gather(merged_seq_bct, keep_bk, batch_dims=1)

            # Early stop: no live beam can still beat the k-th finished hypothesis.
            best_reachable_b = tf.reduce_max(alive_logp_bk, axis=1) / gnmt_length_penalty(cap_b, alpha)
            done_b = tf.logical_or(fin_score_bk[:, k - 1] >= best_reachable_b, is_last_b)

            def write_done():
                done_rows = tf.where(done_b)
                done_seq_bkt = tf.gather_nd(fin_seq_bkt, done_rows)
                done_seq_bkl = tf.pad(done_seq_bkt, [[0, 0], [0, 0], [0, max_length - new_len]],
                                      constant_values=eos_id)
                target_rows = tf.gather_nd(sentence_b, done_rows)[:, None]
                return (tf.tensor_scatter_nd_update(out_ids_bkl, target_rows, done_seq_bkl),
                        tf.tensor_scatter_nd_update(out_scores_bk, target_rows, tf.gather_nd(fin_score_bk,
                                                                                             done_rows)))

            out_ids_bkl, out_scores_bk = tf.cond(tf.reduce_any(done_b), write_done,
                                                 lambda: (out_ids_bkl, out_scores_bk))

            # Batch reduction and beam shuffle in one gather per state leaf: the rows of the sentences still
            # working, each reordered to follow its parent beam.
            keep_b = tf.reshape(tf.where(tf.logical_not(done_b)), [-1])
            parent_rows_bk = parent_bk + (tf.range(work) * k)[:, None]
            state_rows_n = tf.reshape(tf.gather(parent_rows_bk, keep_b), [-1])
            new_state_n = tf.nest.map_structure(lambda leaf: _leading_rows(leaf, state_rows_n), new_state_n)
            return (new_len, tf.gather(sentence_b, keep_b), tf.gather(tok_bk, keep_b),
                    tf.gather(seq_bkt, keep_b), tf.gather(alive_logp_bk, keep_b), new_state_n,
                    tf.gather(fin_seq_bkt, keep_b), tf.gather(fin_score_bk, keep_b), out_ids_bkl, out_scores_bk)

        def rows_unknown(leaf):
            # Rows change with batch reduction; middle dims may change per step (a growing decoder cache [n, t, d]),
            # so only the last (feature) dim stays known, as Keras layers in symbols_to_logits_fn need it.
            rank = leaf.shape.rank
            if not rank:
                return leaf.shape
            return tf.TensorShape([None] * (rank - 1)).concatenate(leaf.shape[-1:]) if rank > 1 else \
                tf.TensorShape([None])

        loop_vars = (tf.constant(0), sentence_b, last_ids_bk, alive_seq_bkt, alive_logp_bk, state_n, fin_seq_bkt,
                     fin_score_bk, out_ids_bkl, out_scores_bk)
        invariants = (tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([None, k]),
                      tf.TensorShape([None, k, None]), tf.TensorShape([None, k]),
                      tf.nest.map_structure(rows_unknown, state_n), tf.TensorShape([None, k, None]),
                      tf.TensorShape([None, k]), tf.TensorShape([None, k, None]), tf.TensorShape([None, k]))
        results = tf.while_loop(cond, body, loop_vars, shape_invariants=invariants, maximum_iterations=max_length)
        steps_run, out_ids_bkl, out_scores_bk = results[0], results[8], results[9]
        return out_ids_bkl[:, :, :steps_run], out_scores_bk


def _flatten_with_paths(structure, prefix=""):
    """(path like "['decoder'][0]", leaf) for every leaf, for error messages (tf.nest has no public paths)."""
    if isinstance(structure, dict):
        items = sorted(structure.items(), key=lambda kv: str(kv[0]))
    elif isinstance(structure, (list, tuple)):
        items = list(enumerate(structure))
    else:
        return [(prefix, structure)]
    return [pair for key, value in items for pair in _flatten_with_paths(value, f"{prefix}[{key!r}]")]
