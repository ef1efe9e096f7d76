"""Evaluation: accuracy of the highest-scoring candidate, or token F1 of greedy answers for
generation tasks (SQuAD, DROP)."""

from __future__ import annotations

import jax
import numpy as np

from zojax import sharding, tasks
from zojax.tasks import scoring


def metric_name(task: str) -> str:
    """What :func:`evaluate` reports for ``task``: "F1" for generation tasks, else "accuracy"."""
    return "F1" if tasks.get_task(task).kind == "generation" else "accuracy"


def make_predict(trainable):
    """jit(predict)(base, params, batch) -> each example's highest-scoring candidate."""
    return jax.jit(lambda base, p, b: scoring.predict(trainable.apply(base, p, b.input_ids, b.attention_mask), b))


def evaluate(cfg, model, trainable, params, split, predict_fn, mesh=None) -> float:
    """Accuracy of the highest mean log-likelihood candidate, or for generation tasks the
    mean token F1 of greedy answers, over ``split`` (batches split over ``mesh`` if given)."""
    put = (lambda b: b) if mesh is None else (lambda b: sharding.shard_rows(b, mesh))
    if not split.encoded:
        return float("nan")
    total = 0.0
    # Batches of similar lengths pad less (benchmarks/scoring.py: 0.71x RTE's evaluation time).
    order = sorted(range(len(split.encoded)), key=lambda i: split.encoded[i].length)
    rows = tasks.scoring_rows(split.encoded)
    for start in range(0, len(order), cfg.eval_batch_size):
        indices = order[start : start + cfg.eval_batch_size]
        chunk = [split.encoded[i] for i in indices]
        if model.tokenizer is not None and tasks.get_task(cfg.task).kind == "generation":
            batch = tasks.collate(chunk, rows="context", max_length=cfg.max_length)
            full = trainable.view(trainable.base, params)
            ids, mask = put((batch.input_ids, batch.attention_mask))
            tokens = sharding.to_host(model.generate(full, ids, mask, cfg.max_new_tokens, model.tokenizer.eos_token_id))
            examples = [split.examples[i] for i in indices]
            total += sum(tasks.metrics.f1(p, ex.answers) for p, ex in zip(tasks.decode_answers(model.tokenizer, tokens), examples))
        else:
            batch = tasks.collate(chunk, rows=rows, max_length=cfg.max_length)
            total += int(np.sum(sharding.to_host(predict_fn(trainable.base, params, put(batch))) == batch.gold))
    return total / len(split.encoded)
