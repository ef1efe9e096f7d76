"""Evaluation: accuracy of the highest-scoring candidate, or token F1 of greedy answers for
generation tasks (SQuAD, DROP); per-example predictions; content-free calibration; the
mean training loss of a held-out set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zojax import sharding, tasks
from zojax.finetune.config import loss_rows, pad_lengths
from zojax.tasks import scoring

# Zhao et al. 2021 ("Calibrate Before Use"), section 5: the content-free inputs averaged.
CONTENT_FREE = ("N/A", "", "[MASK]")


def metric_name(task: str) -> str:
    """What :func:`evaluate` reports for ``task``: "F1" for generation tasks, else "accuracy"."""
    return "F1" if tasks.get_task(task).kind == "generation" else "accuracy"


def scored_logits(trainable, base, params, batch):
    """The logits the batch's scores read (:func:`zojax.tasks.scoring.logit_positions`)."""
    return trainable.apply(base, params, batch.input_ids, batch.attention_mask, at=scoring.logit_positions(batch))


def make_scores(trainable):
    """jit(scores)(base, params, batch) -> [E, C] candidate scores (mean token log-likelihood)."""
    return jax.jit(lambda base, p, b: scoring.example_scores(scored_logits(trainable, base, p, b), b))


def make_predict(trainable, log_prior=None):
    """jit(predict)(base, params, batch) -> each example's highest-scoring candidate; with
    ``log_prior`` ([C], from :func:`content_free_prior`) the calibrated rule
    argmax_y p(y|x) / p_cf(y), i.e. argmax of score − log_prior."""
    prior = None if log_prior is None else jnp.asarray(log_prior, jnp.float32)

    def predict(base, p, b):
        scores = scoring.example_scores(scored_logits(trainable, base, p, b), b)
        return jnp.argmax(scores if prior is None else scores - prior, axis=-1)

    return jax.jit(predict)


def content_free_examples(task: str, example, texts=CONTENT_FREE) -> list:
    """``example``'s template applied with every text field replaced by each content-free text."""
    template = tasks.get_task(task).template
    return [template({k: (t if isinstance(v, str) else v) for k, v in example.fields.items()}) for t in texts]


def content_free_prior(cfg, model, trainable, params, example, texts=CONTENT_FREE) -> np.ndarray:
    """Content-free calibration (Zhao et al. 2021): log p_cf(y), p_cf the mean over the
    content-free inputs of each candidate's probability exp(score) (the score of the
    prediction rule). Normalising p_cf does not change the calibrated argmax."""
    free = content_free_examples(cfg.task, example, texts)
    if len({ex.candidates for ex in free} | {example.candidates}) != 1:
        raise ValueError(f"content-free calibration needs the same candidates for every input; task {cfg.task!r} varies them")
    encoded = tasks.encode(free, model.tokenizer, cfg.max_length)
    batch = tasks.collate(encoded, rows=tasks.scoring_rows(encoded), bucket=pad_lengths(cfg), max_length=cfg.max_length)
    scores = np.asarray(sharding.to_host(make_scores(trainable)(trainable.base, params, batch)), np.float64)
    return np.logaddexp.reduce(scores, axis=0) - np.log(len(texts))


def predictions(cfg, model, trainable, params, split, predict_fn, mesh=None) -> list[dict]:
    """One record per example of ``split``, in its order: ``{"index", "predicted", "gold",
    "score"}``; score is 1/0 (correct) or, for generation tasks, the token F1 of the greedy
    answer (predicted: its text, gold: the accepted answers)."""
    put = (lambda b: b) if mesh is None else (lambda b: sharding.shard_rows(b, mesh))
    out: list[dict | None] = [None] * len(split.encoded)
    # Batches of similar lengths pad less (benchmarks/scoring.py: 0.71x RTE's evaluation time).
    order = sorted(range(len(split.encoded)), key=lambda i: split.encoded[i].length)
    rows = tasks.scoring_rows(split.encoded)
    generation = model.tokenizer is not None and tasks.get_task(cfg.task).kind == "generation"
    bucket, targets = pad_lengths(cfg), tasks.most_targets(split.encoded, rows)
    for start in range(0, len(order), cfg.eval_batch_size):
        indices = order[start : start + cfg.eval_batch_size]
        chunk = [split.encoded[i] for i in indices]
        if generation:
            batch = tasks.collate(chunk, rows="context", bucket=bucket, max_length=cfg.max_length)
            full = trainable.view(trainable.base, params)
            ids, mask = put((batch.input_ids, batch.attention_mask))
            tokens = sharding.to_host(model.generate(full, ids, mask, cfg.max_new_tokens, model.tokenizer.eos_token_id))
            for i, text in zip(indices, tasks.decode_answers(model.tokenizer, tokens)):
                answers = list(split.examples[i].answers)
                out[i] = {"index": i, "predicted": text, "gold": answers, "score": tasks.metrics.f1(text, answers)}
        else:
            batch = tasks.collate(chunk, rows=rows, bucket=bucket, max_length=cfg.max_length, targets=targets)
            predicted = np.asarray(sharding.to_host(predict_fn(trainable.base, params, put(batch))))
            for i, p, g in zip(indices, predicted.tolist(), batch.gold.tolist()):
                out[i] = {"index": i, "predicted": p, "gold": g, "score": float(p == g)}
    return out


def evaluate(cfg, model, trainable, params, split, predict_fn, mesh=None) -> float:
    """Accuracy of the highest mean log-likelihood candidate (``predict_fn``'s choice), or
    for generation tasks the mean token F1 of greedy answers, over ``split`` (batches split
    over ``mesh`` if given); NaN for an empty split."""
    return mean_score(predictions(cfg, model, trainable, params, split, predict_fn, mesh))


def mean_score(records: list[dict]) -> float:
    """The mean ``score`` of :func:`predictions`' records (accuracy or F1); NaN for none."""
    return float(np.mean([r["score"] for r in records])) if records else float("nan")


def make_heldout_loss(loss):
    """jit(f)(params, base, batch) -> the training objective ``loss`` (setup.make_loss), unperturbed."""
    return jax.jit(lambda p, base, b: loss(p, base, b, None))


def heldout_loss(cfg, loss_fn, params, base, split, mesh=None) -> float:
    """The training objective's mean over ``split`` (``loss_fn`` from :func:`make_heldout_loss`):
    the classification loss averaged over examples, the LM loss over gold tokens, as one
    batch of all of them would give; NaN for an empty split."""
    if not split.encoded:
        return float("nan")
    rows = loss_rows(cfg, split.encoded)  # the training batches' rows (f1 has no held-out loss: validate)
    order = sorted(range(len(split.encoded)), key=lambda i: split.encoded[i].length)
    bucket, targets = pad_lengths(cfg), tasks.most_targets(split.encoded, rows)
    total = weight = 0.0
    for start in range(0, len(order), cfg.eval_batch_size):
        batch = tasks.collate([split.encoded[i] for i in order[start : start + cfg.eval_batch_size]], rows=rows,
                              bucket=bucket, max_length=cfg.max_length, targets=targets)
        if cfg.objective == "lm":
            gold = batch.candidate_index == batch.gold[batch.example_index]
            w = float(np.maximum((batch.target_mask & gold[:, None]).sum(), 1))
        else:
            w = float(len(batch.gold))
        value = loss_fn(params, base, batch if mesh is None else sharding.shard_rows(batch, mesh))
        total += w * float(sharding.to_host(value))
        weight += w
    return total / weight
