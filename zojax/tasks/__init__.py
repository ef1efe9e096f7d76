"""Tasks of the MeZO paper: data, prompts, token batches and scoring.

Pipeline::

    from zojax.tasks import batches, collate, decode_answers, encode, load_task, metrics, scoring

    data = load_task("rte", data_dir="data")       # data_dir=None: the Hugging Face hub
    train = encode(data.train, tokenizer)           # token ids per example and candidate
    for batch in batches(train, batch_size=16, seed=0):
        logits = apply(params, batch.input_ids, batch.attention_mask)   # [N, T, V]; or [N, K, V] with
        # at=scoring.logit_positions(batch) for a zojax model: the LM head on the scored positions only
        loss = scoring.classification_loss(logits, batch)                # or scoring.lm_loss
        accuracy = scoring.accuracy(scoring.predict(logits, batch), batch.gold)

    # generation tasks (SQuAD, DROP): greedy answers from the prompts, scored by F1
    prompts = collate(encode(data.test, tokenizer), rows="context")
    answers = decode_answers(tokenizer, generate(params, prompts.input_ids, prompts.attention_mask, 50))
    f1 = [metrics.f1(a, ex.answers) for a, ex in zip(answers, data.test)]

* :func:`load_task` samples a task by the MeZO protocol (1,000 train and 500 dev
  examples from the training split, 1,000 test examples from the validation split,
  seeded) into a :class:`TaskData` of :class:`Example` lists plus ``notes``.
* :func:`read_file` reads one local file in its original format.
* :mod:`~zojax.tasks.templates` holds every prompt template;
  :func:`with_demonstrations` builds in-context prompts.
* :func:`encode` tokenises; :func:`collate` / :func:`batches` build padded numpy
  :class:`Batch` es with one row per candidate (or per gold candidate, or per prompt);
  :func:`scoring_rows` says when one row per example scores all its candidates,
  :func:`most_targets` the width of a split's target positions.
* :mod:`~zojax.tasks.scoring` turns logits into candidate log-likelihoods, losses
  and predictions; :mod:`~zojax.tasks.metrics` scores generated answers (F1 / exact
  match, and ``negative_f1`` as a loss).

Task names (case-insensitive): sst2, rte, cb, boolq, wsc, wic, multirc, copa,
record, squad, drop and tiny_sentiment (bundled: 360 short sentiment sentences with
the SST-2 template, no files or network needed).
"""

from zojax.tasks import metrics, scoring, templates
from zojax.tasks.encoding import (
    Batch,
    Encoded,
    batches,
    collate,
    decode_answers,
    encode,
    most_targets,
    padded_length,
    scoring_rows,
)
from zojax.tasks.loading import DataFormatError, HubUnreachableError, TaskData, load_task, read_file
from zojax.tasks.registry import TASKS, Task, get_task
from zojax.tasks.templates import Example, with_demonstrations

__all__ = [
    "TASKS",
    "Batch",
    "DataFormatError",
    "Encoded",
    "Example",
    "HubUnreachableError",
    "Task",
    "TaskData",
    "batches",
    "collate",
    "decode_answers",
    "encode",
    "get_task",
    "load_task",
    "metrics",
    "most_targets",
    "padded_length",
    "read_file",
    "scoring",
    "scoring_rows",
    "templates",
    "with_demonstrations",
]
