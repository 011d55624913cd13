"""models/beam_search.py against independent NumPy references: exhaustive search, greedy decoding and a plain
Python beam search, on a toy "model" whose logits are a fixed random function of (sentence, prefix).

The toy model: vocabulary V (EOS included), a NumPy table of random logits with one row per (sentence, prefix);
the prefix is carried in the search state as an integer code (bijective base V+1), so the search must carry and
shuffle its state right for the logits it sees to be right.
"""
import numpy as np
import pytest
import tensorflow as tf

from models.beam_search import beam_search

EOS = 0


def lp(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class ToyModel:
    """Logits = table[sentence * C + code(prefix)] (+ an EOS bonus once a prefix reaches eos_after[sentence])."""

    def __init__(self, num_sentences, vocab, max_length, seed, scale=2.0, eos_after=None, eos_shift=0.0):
        self.vocab, self.max_length = vocab, max_length
        self.codes = (vocab + 1) ** (max_length - 1)  # codes of prefixes shorter than max_length
        assert num_sentences * self.codes * vocab <= 4_000_000, "toy table too large: lower vocab or max_length"
        rng = np.random.default_rng(seed)
        self.table = (rng.standard_normal((num_sentences * self.codes, vocab)) * scale).astype(np.float32)
        self.table[:, EOS] += eos_shift
        self.eos_after = None if eos_after is None else np.asarray(eos_after, np.int32)

    def code(self, prefix):
        c = 0
        for tok in prefix:
            c = c * (self.vocab + 1) + tok + 1
        return c

    def logits(self, sentence, prefix):
        row = self.table[sentence * self.codes + self.code(prefix)].astype(np.float64)
        if self.eos_after is not None and len(prefix) >= self.eos_after[sentence]:
            row[EOS] += 10.0
        return row

    def logp(self, sentence, prefix):
        return log_softmax(self.logits(sentence, prefix))

    # -- the TF side --
    def initial_state(self, sentences):
        sentences = tf.constant(sentences, tf.int32)
        return {"sentence": sentences, "code": tf.zeros_like(sentences)}

    def tf_fn(self, seen_rows=None):
        table = tf.constant(self.table)
        eos_after = None if self.eos_after is None else tf.constant(self.eos_after)
        vocab, codes = self.vocab, self.codes

        def fn(ids, step, state):
            if seen_rows is not None:
                seen_rows.append(int(ids.shape[0]))  # eager only: the working rows of this step
            # ids is the token chosen at the previous step (the start id at step 0, not part of the prefix).
            code = tf.where(step > 0, state["code"] * (vocab + 1) + ids + 1, state["code"])
            logits = tf.gather(table, state["sentence"] * codes + code)
            if eos_after is not None:
                bonus = tf.cast(step >= tf.gather(eos_after, state["sentence"]), tf.float32) * 10.0
                logits = logits + bonus[:, None] * tf.one_hot(EOS, vocab)
            return logits, {"sentence": state["sentence"], "code": code}
        return fn


# ---- independent references ----------------------------------------------------------------------------------
def exhaustive(model, sentence, alpha):
    """Every hypothesis (ends in EOS, or has max_length tokens), best first: [(score, ids)]."""
    hyps = []

    def extend(prefix, logp):
        step_logp = model.logp(sentence, prefix)
        for tok in range(model.vocab):
            seq, total = prefix + (tok,), logp + step_logp[tok]
            if tok == EOS or len(seq) == model.max_length:
                hyps.append((total / lp(len(seq), alpha), seq))
            else:
                extend(seq, total)

    extend((), 0.0)
    return sorted(hyps, key=lambda h: -h[0])


def greedy(model, sentence, alpha):
    prefix, total = (), 0.0
    while True:
        step_logp = model.logp(sentence, prefix)
        tok = int(np.argmax(step_logp))
        prefix, total = prefix + (tok,), total + step_logp[tok]
        if tok == EOS or len(prefix) == model.max_length:
            return total / lp(len(prefix), alpha), prefix


def reference_beam(model, sentence, k, alpha, max_length=None):
    """The same search written plainly: each step the k best extensions of the live hypotheses; those ending in
    EOS (all of them at max_length) are finished; the best k finished are kept; stop when no live hypothesis can
    reach the k-th finished score. Returns ([(score, ids)] best first, padded with (-inf, None); steps run)."""
    max_length = max_length or model.max_length
    live, finished = [((), 0.0)], []
    for step in range(max_length):
        cands = [(logp + step_logp[tok], prefix + (tok,))
                 for prefix, logp in live
                 for step_logp in [model.logp(sentence, prefix)]
                 for tok in range(model.vocab)]
        cands = sorted(cands, key=lambda c: -c[0])[:k]
        live = []
        for logp, seq in cands:
            if seq[-1] == EOS or len(seq) == max_length:
                finished.append((logp / lp(len(seq), alpha), seq))
            else:
                live.append((seq, logp))
        finished = sorted(finished, key=lambda h: -h[0])[:k]
        if not live or (len(finished) == k and
                        finished[-1][0] >= max(l for _, l in live) / lp(max_length, alpha)):
            break
    return finished + [(-np.inf, None)] * (k - len(finished)), step + 1


def run(model, sentences, k, alpha, graph=True, seen_rows=None, max_length=None):
    fn = model.tf_fn(seen_rows)

    def search():
        return beam_search(fn, tf.fill([len(sentences)], 99), model.initial_state(sentences), k,
                           model.max_length if max_length is None else max_length, EOS, length_penalty=alpha)
    ids, scores = tf.function(search)() if graph else search()
    return ids.numpy(), scores.numpy()


def strip(ids_row):
    """A hypothesis' tokens up to and including its EOS."""
    ids_row = list(map(int, ids_row))
    return tuple(ids_row[:ids_row.index(EOS) + 1]) if EOS in ids_row else tuple(ids_row)


def assert_same_hyps(ids_kl, scores_k, want, tol=1e-4):
    """Scores within tol; ids equal wherever a rank's score is clear of its neighbours (no float32 near-tie)."""
    want_scores = np.array([s for s, _ in want])
    finite = np.isfinite(want_scores)
    np.testing.assert_array_equal(np.isfinite(scores_k), finite)
    np.testing.assert_allclose(scores_k[finite], want_scores[finite], rtol=0, atol=tol)
    checked = 0
    for i, (score, seq) in enumerate(want):
        if seq is None or not np.isfinite(score):
            continue
        neighbours = [want_scores[j] for j in (i - 1, i + 1) if 0 <= j < len(want)]
        if all(abs(score - n) > tol for n in neighbours):
            assert strip(ids_kl[i]) == seq, (i, strip(ids_kl[i]), seq)
            checked += 1
    assert checked >= max(1, finite.sum() - 4)  # near-ties are rare: most ranks are checked


# ---- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_wide_beam_is_exhaustive_search(alpha):
    # V=4, max_length=4: 121 hypotheses; a beam of 108 keeps every candidate of every step, so the n-best list
    # must be exactly the exhaustive one. 130 > 121: the extra slots are empty (-inf).
    model = ToyModel(num_sentences=3, vocab=4, max_length=4, seed=11)
    for k in (108, 130):
        ids, scores = run(model, [0, 1, 2], k, alpha)
        assert ids.shape == (3, k, 4) and scores.shape == (3, k)
        for s in range(3):
            want = exhaustive(model, s, alpha)
            assert len(want) == 121
            want = (want + [(-np.inf, None)] * k)[:k]
            assert_same_hyps(ids[s], scores[s], want)


def test_known_answer_beam_beats_greedy():
    # P(a)=.5, P(b)=.4, P(EOS)=.1; after a: P(EOS)=.4, P(a)=P(b)=.3; after b: P(EOS)=.9.
    # Greedy: a EOS (p=.2). Beam 2: b EOS (p=.36), then a EOS (p=.2).
    model = ToyModel(num_sentences=1, vocab=3, max_length=3, seed=0)
    a, b = 1, 2
    rows = {(): [.1, .5, .4], (a,): [.4, .3, .3], (b,): [.9, .05, .05]}
    for prefix, probs in rows.items():
        model.table[model.code(prefix)] = np.log(probs)
    ids, scores = run(model, [0], 1, 0.0)
    assert strip(ids[0, 0]) == (a, EOS)
    np.testing.assert_allclose(scores[0], [np.log(.2)], atol=1e-5)
    ids, scores = run(model, [0], 2, 0.0)
    assert [strip(r) for r in ids[0]] == [(b, EOS), (a, EOS)]
    np.testing.assert_allclose(scores[0], np.log([.36, .2]), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_one_is_greedy(alpha):
    model = ToyModel(num_sentences=8, vocab=5, max_length=7, seed=3)
    ids, scores = run(model, list(range(8)), 1, alpha)
    for s in range(8):
        score, seq = greedy(model, s, alpha)
        assert strip(ids[s, 0]) == seq
        np.testing.assert_allclose(scores[s, 0], score, atol=1e-4)


@pytest.mark.parametrize("k,alpha", [(2, 0.0), (3, 0.6), (5, 1.0), (4, 2.0)])
def test_narrow_beam_matches_reference(k, alpha):
    model = ToyModel(num_sentences=5, vocab=6, max_length=6, seed=100 + k)
    ids, scores = run(model, list(range(5)), k, alpha)
    for s in range(5):
        want, _ = reference_beam(model, s, k, alpha)
        assert_same_hyps(ids[s], scores[s], want)
        assert np.all(np.diff(scores[s][np.isfinite(scores[s])]) <= 0), "best first"


def test_ids_after_eos_are_eos_and_length_is_steps_run():
    model = ToyModel(num_sentences=4, vocab=5, max_length=7, seed=5)
    ids, _ = run(model, [0, 1, 2, 3], 3, 0.6)
    steps = max(reference_beam(model, s, 3, 0.6)[1] for s in range(4))
    assert ids.shape[2] == steps
    for row in ids.reshape(-1, ids.shape[2]).tolist():
        if EOS in row:
            assert all(t == EOS for t in row[row.index(EOS):])


def test_sentence_alone_equals_inside_a_batch():
    model = ToyModel(num_sentences=6, vocab=5, max_length=7, seed=21, eos_after=[1, 6, 2, 4, 3, 5])
    batch_ids, batch_scores = run(model, list(range(6)), 4, 0.6)
    for s in range(6):
        ids, scores = run(model, [s], 4, 0.6)
        np.testing.assert_allclose(scores[0], batch_scores[s], rtol=0, atol=1e-6)  # SIMD tails: 1 ulp
        np.testing.assert_array_equal(ids[0], batch_ids[s, :, :ids.shape[2]])
        assert np.all(batch_ids[s, :, ids.shape[2]:] == EOS)  # the batch ran longer: padding only


@pytest.mark.parametrize("graph", [True, False])
def test_a_cap_per_sentence(graph):
    """max_length as [batch]: each sentence is searched up to its own cap (the reference run with that cap), the
    same alone as in the batch, whatever the others' caps (a sentence's translation must not depend on the
    lengths of the others in its request)."""
    model = ToyModel(num_sentences=5, vocab=4, max_length=7, seed=31)
    caps = [7, 2, 5, 1, 3]
    ids, scores = run(model, list(range(5)), 3, 0.6, graph=graph, max_length=tf.constant(caps))
    for s, cap in enumerate(caps):
        want, steps = reference_beam(model, s, 3, 0.6, max_length=cap)
        # A hypothesis cut at its cap is followed by eos_id padding up to the batch's width: read cap tokens.
        assert_same_hyps(ids[s, :, :cap], scores[s], want)
        alone_ids, alone_scores = run(model, [s], 3, 0.6, graph=graph, max_length=cap)
        np.testing.assert_allclose(alone_scores[0], scores[s], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(alone_ids[0], ids[s, :, :alone_ids.shape[2]])
    # Caps that are truncating matter: with one cap of 7 for all, sentence 1 would decode differently.
    all_ids, _ = run(model, list(range(5)), 3, 0.6, graph=graph)
    assert any(strip(a) != strip(b) for a, b in zip(all_ids[1], ids[1, :, :caps[1]]))


def test_bad_caps_are_errors():
    model = ToyModel(num_sentences=3, vocab=4, max_length=4, seed=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one cap per sentence"):
        run(model, [0, 1, 2], 2, 0.0, graph=False, max_length=tf.constant([3, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length must be >= 1"):
        run(model, [0, 1, 2], 2, 0.0, graph=False, max_length=tf.constant([3, 0, 3]))
    with pytest.raises(ValueError, match="scalar or \\[batch\\]"):
        run(model, [0, 1, 2], 2, 0.0, graph=False, max_length=tf.constant([[3, 3, 3]]))


def test_batch_reduction_shrinks_the_working_batch():
    # Sentence s strongly prefers EOS once its prefix has eos_after[s] tokens, so its k beams all finish at that
    # step and it leaves the working batch; the fn (run eagerly) records the rows it is given.
    eos_after = [3, 0, 5, 1, 3]
    k = 3
    model = ToyModel(num_sentences=5, vocab=4, max_length=8, seed=8, eos_after=eos_after)
    seen_rows = []
    ids, scores = run(model, list(range(5)), k, 0.0, graph=False, seen_rows=seen_rows)
    steps_run = [reference_beam(model, s, k, 0.0)[1] for s in range(5)]
    assert len(set(steps_run)) >= 3  # the scenario is what it claims to be: sentences finish at different steps
    want_rows = [k * sum(1 for n in steps_run if n > t) for t in range(max(steps_run))]
    assert seen_rows == want_rows, (seen_rows, want_rows)
    assert seen_rows[-1] < seen_rows[0]
    for s in range(5):
        assert_same_hyps(ids[s], scores[s], reference_beam(model, s, k, 0.0)[0])
    # The same search under tf.function gives the same result.
    graph_ids, graph_scores = run(model, list(range(5)), k, 0.0)
    np.testing.assert_array_equal(graph_ids, ids)
    np.testing.assert_array_equal(graph_scores, scores)


def test_nested_state_is_shuffled_with_its_beam():
    # Three views of the prefix in a nested state: the code (int), its digits in a [rows, L] history matrix, and a
    # float copy in a tuple inside a list. The logits come from the float copy; the fn checks that all agree, so a
    # leaf reordered differently from the others fails (InvalidArgumentError), and a wrong shuffle of all of them
    # gives results that differ from the reference.
    model = ToyModel(num_sentences=3, vocab=5, max_length=6, seed=13)
    table = tf.constant(model.table)
    vocab, codes, length = model.vocab, model.codes, model.max_length
    powers = tf.constant([(vocab + 1) ** (length - 1 - i) for i in range(length)], tf.int32)

    def fn(ids, step, state):
        history = state["deep"][0]["history"]
        code = state["code"]
        float_code = state["deep"][1][0]
        history = tf.where(step > 0, history + tf.one_hot(step - 1, length, dtype=tf.int32) * (ids + 1)[:, None],
                           history)
        code = tf.where(step > 0, code * (vocab + 1) + ids + 1, code)
        float_code = tf.where(step > 0, float_code * (vocab + 1) + tf.cast(ids + 1, tf.float64), float_code)
        from_history = tf.reduce_sum(history * powers, axis=1) // ((vocab + 1) ** (length - step))
        checks = [tf.debugging.assert_equal(from_history, code, message="history leaf out of step"),
                  tf.debugging.assert_equal(tf.cast(float_code, tf.int32), code, message="float leaf out of step")]
        with tf.control_dependencies(checks):
            logits = tf.gather(table, state["sentence"] * codes + tf.cast(float_code, tf.int32))
        return logits, {"sentence": state["sentence"], "code": code,
                        "deep": [{"history": history}, (float_code,)]}

    n = 3
    state = {"sentence": tf.range(n), "code": tf.zeros([n], tf.int32),
             "deep": [{"history": tf.zeros([n, length], tf.int32)}, (tf.zeros([n], tf.float64),)]}
    ids, scores = tf.function(lambda: beam_search(fn, tf.zeros([n], tf.int32), state, 4, length, EOS, 0.6))()
    for s in range(n):
        assert_same_hyps(ids.numpy()[s], scores.numpy()[s], reference_beam(model, s, 4, 0.6)[0])


def test_state_leaf_that_grows_every_step():
    # A decoder cache [rows, steps so far, 1] that grows by one column a step (the shape a Transformer-style cache
    # has): the prefix is read back from the cache alone, so a cache reordered apart from its beam, or a loop that
    # refuses the changing shape (graph mode used to: "enters the loop with shape (None, 0, 1)"), fails.
    model = ToyModel(num_sentences=3, vocab=5, max_length=6, seed=17)
    table = tf.constant(model.table)
    vocab, codes = model.vocab, model.codes

    def fn(ids, step, state):
        cache = state["cache"]
        cache = tf.cond(step > 0, lambda: tf.concat([cache, tf.cast(ids + 1, tf.float64)[:, None, None]], axis=1),
                        lambda: cache)
        t = tf.shape(cache)[1]
        powers = tf.cast(vocab + 1, tf.float64) ** tf.cast(t - 1 - tf.range(t), tf.float64)
        code = tf.cast(tf.reduce_sum(cache[:, :, 0] * powers, axis=1), tf.int32)
        logits = tf.gather(table, state["sentence"] * codes + code)
        return logits, {"sentence": state["sentence"], "cache": cache}

    n = 3
    state = {"sentence": tf.range(n), "cache": tf.zeros([n, 0, 1], tf.float64)}
    for run in (lambda f: f(), lambda f: tf.function(f)()):
        ids, scores = run(lambda: beam_search(fn, tf.zeros([n], tf.int32), state, 4, model.max_length, EOS, 0.6))
        for s in range(n):
            assert_same_hyps(ids.numpy()[s], scores.numpy()[s], reference_beam(model, s, 4, 0.6)[0])


def _copy_model_fn(noise_table, vocab):
    """A "copy the source" model on padded sources: token src[step] (EOS past the length) gets +8."""
    noise = tf.constant(noise_table)

    def fn(ids, step, state):
        src, length = state["src"], state["length"]
        width = tf.shape(src)[1]
        # The token at position step (a zero column past the end keeps the gather in range), EOS past the length.
        at_step = tf.gather(tf.pad(src, [[0, 0], [0, 1]]), tf.minimum(step, width), axis=1)
        want = tf.where(step < length, at_step, EOS)
        logits = 8.0 * tf.one_hot(want, vocab) + tf.gather(noise, tf.minimum(step, noise.shape[0] - 1))
        return logits, state
    return fn


def test_padded_and_empty_sources():
    vocab, k = 7, 3
    noise = np.random.default_rng(4).standard_normal((20, vocab)).astype(np.float32)
    fn = _copy_model_fn(noise, vocab)
    sources = [[3, 5, 1], [], [6, 6, 2, 4, 1], [2]]
    width = max(len(s) for s in sources)
    src = np.zeros((len(sources), width), np.int32)
    for i, s in enumerate(sources):
        src[i, :len(s)] = s

    @tf.function
    def search(src, length):
        return beam_search(fn, tf.zeros_like(length), {"src": src, "length": length}, k, 12, EOS, 0.6)

    ids, scores = search(src, tf.constant([len(s) for s in sources]))
    for i, s in enumerate(sources):
        assert strip(ids.numpy()[i, 0]) == tuple(s) + (EOS,)  # the copy, EOS straight away for the empty one
        alone_src = np.array([s], np.int32).reshape(1, len(s))
        alone_ids, alone_scores = search(alone_src, tf.constant([len(s)]))
        np.testing.assert_allclose(alone_scores.numpy()[0], scores.numpy()[i], rtol=0, atol=1e-6)
        n = alone_ids.shape[2]
        np.testing.assert_array_equal(alone_ids.numpy()[0], ids.numpy()[i, :, :n])


def test_empty_batch():
    model = ToyModel(num_sentences=1, vocab=4, max_length=5, seed=0)
    for graph in (True, False):
        ids, scores = run(model, [], 3, 0.6, graph=graph)
        assert ids.shape == (0, 3, 0) and scores.shape == (0, 3)


def test_max_length_one_and_tensor_arguments():
    model = ToyModel(num_sentences=2, vocab=5, max_length=3, seed=2)
    ids, scores = run(model, [0, 1], 2, 0.0, max_length=1)
    assert ids.shape == (2, 2, 1)
    for s in range(2):
        logp = model.logp(s, ())
        best = np.argsort(-logp)[:2]
        np.testing.assert_array_equal(ids[s, :, 0], best)
        np.testing.assert_allclose(scores[s], logp[best] / lp(1, 0.0), atol=1e-5)
    # max_length and length_penalty as tensors (e.g. a signature's inputs) give the same as Python numbers.
    fn = model.tf_fn()
    got = tf.function(lambda m, a: beam_search(fn, tf.fill([2], 9), model.initial_state([0, 1]), 2, m, EOS, a))(
        tf.constant(3), tf.constant(0.6))
    want = run(model, [0, 1], 2, 0.6)
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_array_equal(got[1].numpy(), want[1])


def _op_types(concrete_fn):
    graph_def = concrete_fn.graph.as_graph_def()
    types = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        types |= {n.op for n in f.node_def}
    return types


def test_saved_model_with_stock_ops_only(tmp_path):
    model = ToyModel(num_sentences=4, vocab=5, max_length=6, seed=9)
    fn = model.tf_fn()

    class Searcher(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),
                                      tf.TensorSpec([], tf.float32)])
        def search(self, sentences, max_length, alpha):
            state = {"sentence": sentences, "code": tf.zeros_like(sentences)}
            return beam_search(fn, tf.zeros_like(sentences), state, 3, max_length, EOS, alpha)

    searcher = Searcher()
    types = _op_types(searcher.search.get_concrete_function())
    assert "While" in types or "StatelessWhile" in types  # one loop in the graph, not a Python loop per step
    assert not {t for t in types if "PyFunc" in t or t.startswith("Fused")}, types
    tf.saved_model.save(searcher, str(tmp_path / "searcher"))
    loaded = tf.saved_model.load(str(tmp_path / "searcher"))
    ids, scores = loaded.search(tf.constant([0, 1, 2, 3]), tf.constant(6), tf.constant(0.6))
    want_ids, want_scores = run(model, [0, 1, 2, 3], 3, 0.6)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_array_equal(scores.numpy(), want_scores)


def test_bad_arguments_raise_clear_errors():
    model = ToyModel(num_sentences=2, vocab=4, max_length=3, seed=0)
    fn, state, ids = model.tf_fn(), model.initial_state([0, 1]), tf.zeros([2], tf.int32)
    cases = [
        (dict(beam_size=0), "beam_size"),
        (dict(beam_size=2.5), "beam_size"),
        (dict(max_length=0), "max_length"),
        (dict(eos_id=-1), "eos_id"),
        (dict(length_penalty=-0.5), "length_penalty"),
        (dict(initial_ids=tf.zeros([2, 1], tf.int32)), "initial_ids"),
        (dict(initial_ids=tf.zeros([2], tf.float32)), "initial_ids"),
        (dict(initial_state={"sentence": tf.zeros([3], tf.int32), "code": tf.zeros([2], tf.int32)}),
         "initial_state['sentence']"),
        (dict(symbols_to_logits_fn=lambda i, s, st: (tf.zeros([6, 4]), {"code": st["code"]})), "same structure"),
        (dict(symbols_to_logits_fn=lambda i, s, st: (tf.zeros([6]), st)), "logits"),
    ]
    for override, needle in cases:
        kwargs = dict(symbols_to_logits_fn=fn, initial_ids=ids, initial_state=state, beam_size=3, max_length=3,
                      eos_id=EOS, length_penalty=0.0)
        kwargs.update(override)
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            beam_search(**kwargs)


def test_hypotheses_of_every_length_are_ranked_by_normalized_score():
    # With a strong length penalty the best hypothesis can be a long one that greedy-by-log-prob would not pick;
    # check the ranking against the exhaustive list's normalized scores directly.
    model = ToyModel(num_sentences=1, vocab=3, max_length=5, seed=2, eos_shift=-1.5)
    for alpha in (0.0, 3.0):
        want = exhaustive(model, 0, alpha)
        ids, scores = run(model, [0], 48, alpha)  # 2**4 * 3 = 48 covers the widest step
        assert_same_hyps(ids[0], scores[0], (want + [(-np.inf, None)] * 48)[:48])
    # The scenario matters: the best hypothesis under alpha=3 is longer than the best under alpha=0.
    assert len(exhaustive(model, 0, 3.0)[0][1]) > len(exhaustive(model, 0, 0.0)[0][1])


def test_max_length_and_beam_size_must_be_integers():
    """A float max_length (a Python float, even 3.0, or a float tensor, scalar or [batch]) is an error naming it,
    not a cap silently truncated (3.7 -> 3); Python, NumPy and int32/int64 tensor caps work alike. beam_size is a
    Python or NumPy int."""
    model = ToyModel(num_sentences=2, vocab=4, max_length=3, seed=0)
    fn, state, ids = model.tf_fn(), model.initial_state([0, 1]), tf.zeros([2], tf.int32)

    def search(max_length, beam_size=2):
        return beam_search(fn, ids, state, beam_size, max_length, EOS, 0.6)

    for bad in (3.0, 3.7, np.float32(3.0), tf.constant(3.7), tf.constant([3.0, 2.0]), tf.constant(3, tf.float64),
                True, tf.constant(True)):
        with pytest.raises(ValueError, match="max_length must be an integer"):
            search(bad)
        with pytest.raises(ValueError, match="max_length must be an integer"):
            tf.function(search)(bad)
    traced = tf.function(search, input_signature=[tf.TensorSpec([], tf.float32)])
    with pytest.raises(ValueError, match="max_length must be an integer"):
        traced(tf.constant(3.0))
    want = [t.numpy() for t in search(3)]
    for good in (np.int32(3), np.int64(3), tf.constant(3), tf.constant(3, tf.int64), tf.constant([3, 3], tf.int64),
                 np.array([3, 3])):
        for got in (search(good), tf.function(search)(good)):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(search(3, np.int64(2))[0], want[0])
    for bad in (2.0, np.float32(2.0), tf.constant(2), True):
        with pytest.raises(ValueError, match="beam_size must be"):
            search(3, bad)
