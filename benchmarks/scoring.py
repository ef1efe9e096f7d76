"""Time of the classification loss and of evaluation on real task batches, by batch layout.

One row per candidate (collate rows="all") against one row per example (rows="shared", used
whenever every candidate is a single token: its context's last position scores them all), the
latter with the LM head on every position or on the scored one alone (`at=logit_positions`, what
`zojax.finetune` does), with each loss's compiled scratch memory; evaluation batches in the split's order against batches of length-sorted examples (what
`zojax.finetune.evaluate` does). SmolLM2-135M, float32, the task's test examples from `--data-dir`
(default: the bundled `tiny_sentiment`), interleaved rounds, medians.

    python benchmarks/scoring.py [--task rte] [--data-dir ../shared/data] [--batch 16] [--runs 5]
"""

import argparse

import jax
import numpy as np

import zojax.models
from common import environment, interleaved_medians
from zojax import tasks
from zojax.tasks import scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tiny_sentiment")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch", type=int, default=16, help="examples per loss batch")
    parser.add_argument("--eval-examples", type=int, default=128, help="examples evaluated per timing")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    model = zojax.models.load_default("float32")
    data = tasks.load_task(args.task, args.data_dir, seed=0)
    encoded = tasks.encode(data.test, model.tokenizer, args.max_length)
    if tasks.scoring_rows(encoded) != "shared":
        raise SystemExit(f"{args.task}'s candidates are not all single tokens: both layouts are a row per candidate")
    rng = np.random.default_rng(0)
    chosen = [encoded[i] for i in rng.choice(len(encoded), args.batch, replace=False)]
    evaluated = [encoded[i] for i in rng.permutation(len(encoded))[: args.eval_examples]]
    print(f"{environment()}; {args.task}: {len(encoded)} test examples, batch {args.batch}, max_length {args.max_length}")

    apply = lambda b: model.apply(model.params, b.input_ids, b.attention_mask)
    apply_at = lambda b: model.apply(model.params, b.input_ids, b.attention_mask, at=scoring.logit_positions(b))
    loss = jax.jit(lambda b: scoring.classification_loss(apply(b), b))
    loss_at = jax.jit(lambda b: scoring.classification_loss(apply_at(b), b))
    predict = jax.jit(lambda b: scoring.predict(apply_at(b), b))
    batches = {rows: tasks.collate(chosen, rows=rows, max_length=args.max_length) for rows in ("all", "shared")}
    for rows, b in batches.items():
        print(f"  loss batch rows={rows}: {b.input_ids.shape[0]} rows x {b.input_ids.shape[1]} tokens")
    values = {rows: float(loss(b)) for rows, b in batches.items()}
    at_value = float(loss_at(batches["shared"]))
    print(f"  loss: rows=all {values['all']:.6f}, rows=shared {values['shared']:.6f}, rows=shared with the head at "
          f"the scored position {at_value:.6f}")
    temp = lambda f, b: f.lower(b).compile().memory_analysis().temp_size_in_bytes / 2**20
    print(f"  compiled scratch memory (MB): rows=all {temp(loss, batches['all']):.0f}, rows=shared "
          f"{temp(loss, batches['shared']):.0f}, head at the scored position {temp(loss_at, batches['shared']):.0f}")

    def evaluation(order):
        parts = [[evaluated[i] for i in order[s : s + args.eval_batch]] for s in range(0, len(order), args.eval_batch)]
        eval_batches = [tasks.collate(p, rows="shared", max_length=args.max_length) for p in parts]
        return eval_batches, lambda: [np.asarray(predict(b)) for b in eval_batches]

    in_order, run_in_order = evaluation(list(range(len(evaluated))))
    by_length, run_by_length = evaluation(sorted(range(len(evaluated)), key=lambda i: evaluated[i].length))
    for name, bs in (("split order", in_order), ("sorted by length", by_length)):
        print(f"  evaluation, {name}: {sum(b.input_ids.size for b in bs)} padded tokens")
    times = interleaved_medians(
        {
            "loss, row per candidate": lambda: loss(batches["all"]).block_until_ready(),
            "loss, row per example": lambda: loss(batches["shared"]).block_until_ready(),
            "loss, head at scored position": lambda: loss_at(batches["shared"]).block_until_ready(),
            "evaluation, split order": run_in_order,
            "evaluation, sorted by length": run_by_length,
        },
        args.runs,
    )
    for name, t in times.items():
        print(f"{name:32s} {t:7.3f} s")
    print(f"row per example / row per candidate: {times['loss, row per example'] / times['loss, row per candidate']:.2f}")
    print(f"head at the scored position / on every position: "
          f"{times['loss, head at scored position'] / times['loss, row per example']:.2f}")
    print(f"sorted / split order: {times['evaluation, sorted by length'] / times['evaluation, split order']:.2f}")


if __name__ == "__main__":
    main()
