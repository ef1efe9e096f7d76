"""JAX scoring against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax.tasks import Encoded, collate, scoring

# Two examples with 2 and 3 candidates of different lengths.
BATCH = collate(
    [
        Encoded(context=[5, 6, 7], candidates=[[8], [9, 10]], gold=1),
        Encoded(context=[11], candidates=[[12], [13], [14, 15, 16]], gold=2),
    ],
    bucket=8,
)
VOCAB = 20


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(logits):
    """Per-row candidate token log-probabilities, by explicit loops over the layout."""
    rows = []
    for r in range(BATCH.input_ids.shape[0]):
        lp = _log_softmax(logits[r].astype(np.float64))
        rows.append([lp[t, BATCH.input_ids[r, t + 1]] for t in np.flatnonzero(BATCH.target_mask[r])])
    return rows


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(size=(*BATCH.input_ids.shape, VOCAB)).astype(np.float32) * 3


def test_candidate_logliks(logits):
    total, mean = scoring.candidate_logliks(jnp.asarray(logits), BATCH)
    ref = _reference(logits)
    np.testing.assert_allclose(total, [sum(r) for r in ref], rtol=1e-5)
    np.testing.assert_allclose(mean, [np.mean(r) for r in ref], rtol=1e-5)


def test_losses_match_numpy(logits):
    ref = _reference(logits)
    rows_of = [[0, 1], [2, 3, 4]]
    for score, reduce in [("mean", np.mean), ("sum", np.sum)]:
        expected = np.mean(
            [-_log_softmax(np.array([reduce(ref[r]) for r in rows]))[g] for rows, g in zip(rows_of, [1, 2])]
        )
        loss_fn = jax.jit(scoring.classification_loss, static_argnames="score")
        loss = loss_fn(jnp.asarray(logits), BATCH, score)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
    gold_tokens = ref[1] + ref[4]
    np.testing.assert_allclose(scoring.lm_loss(jnp.asarray(logits), BATCH), -np.mean(gold_tokens), rtol=1e-5)


def test_predict_uses_the_mean_log_likelihood():
    """Example 0: the 2-token candidate wins on mean (-0.5 > -0.7) though it loses on sum (-1.0 < -0.7)."""
    # (row, position) -> log-probability of the next token
    target_logprob = {(0, 2): -0.7, (1, 2): -0.5, (1, 3): -0.5, (2, 0): -3.0, (3, 0): -2.0}
    target_logprob |= {(4, t): -2.5 for t in range(3)}
    logits = np.zeros((*BATCH.input_ids.shape, VOCAB), np.float32)
    for (r, t), lp in target_logprob.items():
        token = BATCH.input_ids[r, t + 1]
        rest = np.log((1 - np.exp(lp)) / (VOCAB - 1))
        logits[r, t] = rest
        logits[r, t, token] = lp
    total, _ = scoring.candidate_logliks(jnp.asarray(logits), BATCH)
    np.testing.assert_allclose(total, [-0.7, -1.0, -3.0, -2.0, -7.5], rtol=1e-5)
    predictions = scoring.predict(jnp.asarray(logits), BATCH)
    assert predictions.tolist() == [1, 1]
    assert float(scoring.accuracy(predictions, BATCH.gold)) == 0.5


def test_candidate_scores_mask_missing_candidates():
    scores = scoring.candidate_scores(jnp.arange(5.0), BATCH)
    assert scores.tolist() == [[0.0, 1.0, -np.inf], [2.0, 3.0, 4.0]]


def _causal_logits(input_ids, seed=1):
    """A causal toy model: position t's logits depend on the tokens up to t only."""
    rng = np.random.default_rng(seed)
    embed, head = rng.normal(size=(VOCAB, 8)), rng.normal(size=(8, VOCAB))
    return jnp.asarray(np.cumsum(embed[input_ids], axis=1) @ head, jnp.float32)


def test_shared_rows_score_single_token_candidates_like_a_row_per_candidate():
    encoded = [
        Encoded(context=[5, 6, 7], candidates=[[8], [9]], gold=1),
        Encoded(context=[11], candidates=[[12], [13], [14]], gold=2),
    ]
    per_candidate, shared = collate(encoded, bucket=8), collate(encoded, rows="shared", bucket=8)
    assert shared.input_ids.shape[0] == 2 and per_candidate.input_ids.shape[0] == 5
    assert [np.flatnonzero(row).tolist() for row in shared.target_mask] == [[2], [0]]
    assert shared.candidate_ids.tolist() == [[8, 9, 0], [12, 13, 14]]
    scores = [scoring.example_scores(_causal_logits(b.input_ids), b) for b in (per_candidate, shared)]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5)
    assert scores[1][0, 2] == -np.inf
    for fn in (scoring.classification_loss, scoring.predict):
        np.testing.assert_allclose(
            fn(_causal_logits(shared.input_ids), shared), fn(_causal_logits(per_candidate.input_ids), per_candidate), rtol=1e-5
        )
    with pytest.raises(ValueError, match="lm_loss needs rows holding the candidate tokens"):
        scoring.lm_loss(_causal_logits(shared.input_ids), shared)
    # the logits of logit_positions alone give the same scores
    positions = scoring.logit_positions(shared)
    assert np.asarray(positions).tolist() == [[2], [0]]
    full = _causal_logits(shared.input_ids)
    at = np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], axis=1)
    np.testing.assert_array_equal(scoring.example_scores(at, shared), scoring.example_scores(full, shared))


@pytest.mark.parametrize("rows", ["all", "gold"])
@pytest.mark.parametrize("targets", [3, 6, 50])
def test_logits_at_the_target_positions_alone_score_like_every_position(rows, targets):
    """A model's logits at ``logit_positions`` ([N, K, V], K padded up to ``targets`` and at
    most T - 1) give the scores and losses of its logits at every position, and the padded
    positions change nothing (the unpadded batch is checked against numpy above)."""
    encoded = [Encoded([5, 6, 7], [[8], [9, 10]], 1), Encoded([11], [[12], [13], [14, 15, 16]], 2)]
    plain, batch = (collate(encoded, rows=rows, bucket=8, targets=t) for t in (None, targets))
    positions = np.asarray(scoring.logit_positions(batch))
    assert positions.shape[1] == min(targets, batch.input_ids.shape[1] - 1)
    full = _causal_logits(batch.input_ids)
    at = np.take_along_axis(np.asarray(full), positions[..., None], axis=1)
    fns = [scoring.lm_loss, scoring.candidate_logliks]
    if rows == "all":
        fns += [scoring.predict, scoring.classification_loss, lambda lg, b: scoring.classification_loss(lg, b, "sum")]
    for fn in fns:
        expected = fn(full, plain)
        np.testing.assert_allclose(jax.jit(fn)(at, batch), expected, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(fn)(full, batch), expected, rtol=1e-6)
