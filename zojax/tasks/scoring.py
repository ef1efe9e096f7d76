"""Candidate scoring, losses and predictions from model logits (JAX, jit-able).

``logits`` are float [N, T, V] for the N rows of a :class:`~zojax.tasks.encoding.Batch`
(position t predicts token t + 1), from any model. A candidate's log-likelihood is
summed over the positions of ``batch.target_mask``. The scores read only the K positions
of :func:`logit_positions`, so a model may return the logits of those alone, [N, K, V]::

    logits = model.apply(params, batch.input_ids, batch.attention_mask, at=logit_positions(batch))
    loss = classification_loss(logits, batch)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zojax.tasks.encoding import Batch


def logit_positions(batch: Batch) -> jax.Array | None:
    """[N, K]: the positions whose logits the scores read, ``batch.target_positions``
    (padding included); None for rows without targets (rows="context")."""
    return batch.target_positions if batch.target_positions.shape[1] else None


def target_logits(logits: jax.Array, batch: Batch) -> jax.Array:
    """[N, K, V]: the logits at ``batch.target_positions``; ``logits`` as they are when
    they have K positions already (a model given ``at=logit_positions(batch)``)."""
    if logits.shape[1] == batch.target_positions.shape[1]:
        return logits
    return jnp.take_along_axis(logits, jnp.asarray(batch.target_positions)[..., None], axis=1)


def target_logprobs(logits: jax.Array, batch: Batch) -> jax.Array:
    """[N, K]: log-probability of each row's target tokens (the token after each target
    position), 0 on padding."""
    logits = target_logits(logits, batch).astype(jnp.float32)
    positions = jnp.asarray(batch.target_positions)
    tokens = jnp.take_along_axis(jnp.asarray(batch.input_ids), positions + 1, axis=1)
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    real = jnp.arange(positions.shape[1]) < jnp.asarray(batch.target_mask).sum(-1, keepdims=True)
    return jnp.where(real, picked, 0.0)


def candidate_logliks(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Sum and mean of each row's candidate-token log-likelihoods: two [N] arrays."""
    total = target_logprobs(logits, batch).sum(-1)
    return total, total / jnp.maximum(batch.target_mask.sum(-1), 1)


def candidate_scores(row_scores: jax.Array, batch: Batch) -> jax.Array:
    """[N] row scores laid out as [E, C] per example; -inf where a candidate has no row."""
    scores = jnp.full(batch.candidate_mask.shape, -jnp.inf, row_scores.dtype)
    return scores.at[batch.example_index, batch.candidate_index].set(row_scores)


def example_scores(logits: jax.Array, batch: Batch, score: str = "mean") -> jax.Array:
    """[E, C]: the ``"mean"`` or ``"sum"`` of each candidate's token log-likelihoods, -inf
    where an example has fewer candidates. With rows="shared" each row is a context and
    its last position's logits score every single-token candidate (mean = sum)."""
    if batch.candidate_ids.shape[1]:
        last = target_logits(logits, batch)[:, 0].astype(jnp.float32)
        picked = jnp.take_along_axis(last, batch.candidate_ids, axis=1) - jax.nn.logsumexp(last, -1, keepdims=True)
        return jnp.where(batch.candidate_mask, picked, -jnp.inf)
    total, mean = candidate_logliks(logits, batch)
    return candidate_scores({"mean": mean, "sum": total}[score], batch)


def classification_loss(logits: jax.Array, batch: Batch, score: str = "mean") -> jax.Array:
    """Cross-entropy of the gold candidate among each example's candidates, mean over examples.

    A candidate's score (logit) is the ``"mean"`` of its token log-likelihoods, as in
    MeZO's classification-style training and the prediction rule, or their ``"sum"``.
    ``score`` must be static under ``jit``; every example must have a gold candidate.
    """
    scores = example_scores(logits, batch, score)
    logp = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.take_along_axis(logp, batch.gold[:, None], axis=-1).mean()


def lm_loss(logits: jax.Array, batch: Batch) -> jax.Array:
    """Mean negative log-likelihood of the gold candidates' tokens (averaged over all of them)."""
    if batch.candidate_ids.shape[1]:
        raise ValueError("lm_loss needs rows holding the candidate tokens (collate rows='gold'), got rows='shared'")
    is_gold = batch.candidate_index == batch.gold[batch.example_index]
    logprobs = jnp.where(is_gold[:, None], target_logprobs(logits, batch), 0.0)
    return -logprobs.sum() / jnp.maximum((batch.target_mask & is_gold[:, None]).sum(), 1)


def predict(logits: jax.Array, batch: Batch) -> jax.Array:
    """[E]: the candidate with the highest mean token log-likelihood, per example."""
    return jnp.argmax(example_scores(logits, batch), axis=-1)


def accuracy(predictions: jax.Array, gold: jax.Array) -> jax.Array:
    """Fraction of predictions equal to the gold index."""
    return jnp.mean(predictions == gold)
