"""Time of the training losses and of evaluation on real task batches, by batch layout.

Losses, each with the LM head on every position and on the scored positions alone
(`at=scoring.logit_positions(batch)`, what `zojax.finetune` does), with compiled scratch memory:
the classification loss with one row per candidate (collate rows="all"), and with one row per
example (rows="shared", used whenever every candidate is a single token: its context's last
position scores them all); the LM loss of the gold candidates (rows="gold", objective "lm"; the
only loss of generation tasks). Evaluation of classification tasks: batches in the split's
order against batches of length-sorted examples (what `zojax.finetune.evaluate` does).
SmolLM2-135M, float32, the task's test examples from `--data-dir` (default: the bundled
`tiny_sentiment`), interleaved rounds, medians.

    python benchmarks/scoring.py [--task copa] [--data-dir ../shared/data] [--batch 16] [--runs 5]
"""

import argparse

import jax
import numpy as np

import zojax.models
from common import Memory, environment, interleaved_medians, mb
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
    rng = np.random.default_rng(0)
    chosen = [encoded[i] for i in rng.choice(len(encoded), args.batch, replace=False)]
    evaluated = [encoded[i] for i in rng.permutation(len(encoded))[: args.eval_examples]]
    print(f"{environment()}; {args.task}: {len(encoded)} test examples, batch {args.batch}, max_length {args.max_length}")

    params = model.params  # an argument of the jitted functions, not a constant XLA could fold
    apply = lambda p, b: model.apply(p, b.input_ids, b.attention_mask)
    apply_at = lambda p, b: model.apply(p, b.input_ids, b.attention_mask, at=scoring.logit_positions(b))
    generation = tasks.get_task(args.task).kind == "generation"  # trained with the LM loss, evaluated by generating
    losses = {"gold": scoring.lm_loss} if generation else {"all": scoring.classification_loss, "gold": scoring.lm_loss}
    if not generation and tasks.scoring_rows(encoded) == "shared":
        losses["shared"] = scoring.classification_loss
    batches = {rows: tasks.collate(chosen, rows=rows, max_length=args.max_length, targets=tasks.most_targets(encoded, rows))
               for rows in losses}
    timed = {}
    for rows, b in batches.items():
        every = jax.jit(lambda p, b, f=losses[rows]: f(apply(p, b), b))
        scored = jax.jit(lambda p, b, f=losses[rows]: f(apply_at(p, b), b))
        temp = lambda f: mb(Memory.of(f.lower(params, b).compile()).temp)
        print(f"  rows={rows} ({losses[rows].__name__}): {b.input_ids.shape[0]} rows x {b.input_ids.shape[1]} tokens, "
              f"{b.target_positions.shape[1]} scored positions per row; loss {float(every(params, b)):.6f} (head on "
              f"every position) vs {float(scored(params, b)):.6f} (scored positions); scratch {temp(every)} vs "
              f"{temp(scored)}")
        timed[f"rows={rows}, head on every position"] = lambda f=every, b=b: f(params, b).block_until_ready()
        timed[f"rows={rows}, head on scored positions"] = lambda f=scored, b=b: f(params, b).block_until_ready()
    predict = jax.jit(lambda p, b: scoring.predict(apply_at(p, b), b))
    rows = tasks.scoring_rows(encoded)
    targets = tasks.most_targets(evaluated, rows)

    def evaluation(order):
        parts = [[evaluated[i] for i in order[s : s + args.eval_batch]] for s in range(0, len(order), args.eval_batch)]
        eval_batches = [tasks.collate(p, rows=rows, max_length=args.max_length, targets=targets)
                        for p in parts]
        return eval_batches, lambda: [np.asarray(predict(params, b)) for b in eval_batches]

    if not generation:
        in_order, run_in_order = evaluation(list(range(len(evaluated))))
        by_length, run_by_length = evaluation(sorted(range(len(evaluated)), key=lambda i: evaluated[i].length))
        for name, bs in (("split order", in_order), ("sorted by length", by_length)):
            print(f"  evaluation, {name}: {sum(b.input_ids.size for b in bs)} padded tokens")
        timed["evaluation, split order"] = run_in_order
        timed["evaluation, sorted by length"] = run_by_length
    times = interleaved_medians(timed, args.runs)
    for name, t in times.items():
        print(f"{name:44s} {t:7.3f} s")
    for layout in batches:
        ratio = times[f"rows={layout}, head on scored positions"] / times[f"rows={layout}, head on every position"]
        print(f"rows={layout}: head on the scored positions / on every position: {ratio:.2f}")
    if "shared" in batches:
        ratio = times["rows=shared, head on scored positions"] / times["rows=all, head on scored positions"]
        print(f"row per example / row per candidate (scored positions): {ratio:.2f}")
    if not generation:
        print(f"sorted / split order: {times['evaluation, sorted by length'] / times['evaluation, split order']:.2f}")


if __name__ == "__main__":
    main()
