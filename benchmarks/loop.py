"""The training loop's step time against the bare compiled step on the same batches.

`zojax.finetune.run` (what `zojax-train` and `python -m experiments.run` call) is timed by the
`step_time` of its metrics (batch assembly, the step, its record brought to the host, the
finiteness check, the metrics line); the bare step is the same compiled function from
`finetune.build` on the same batches, placed on the device beforehand and called back to
back. Both skip their first `--skip` steps (compilation). The bare step runs before and after
the loop and its two medians are averaged, so a drift of the machine's load shows as their
spread (printed).

    python benchmarks/loop.py [--steps 24] [--skip 4] [--optimizer lozo] [--task tiny_sentiment]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from common import environment
from zojax import finetune, sharding


def bare_step_times(s, cfg, steps: int) -> list[float]:
    """Seconds per call of the build's compiled step on the run's batches 0..steps-1."""
    batch_of = finetune.train_batches(cfg, s.data.train.encoded)
    batches = [sharding.shard_rows(batch_of(t), s.mesh) for t in range(steps)]
    params, state = jax.tree.map(lambda x: x.copy(), s.params), jax.tree.map(lambda x: x.copy(), s.opt_state)
    times = []
    for batch in batches:
        start = time.perf_counter()
        params, state, record = s.step(params, state, s.base, *batch, skip=np.bool_(False))
        jax.block_until_ready((params, record))
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=4, help="first steps left out (compilation)")
    parser.add_argument("--optimizer", default="lozo")
    parser.add_argument("--task", default="tiny_sentiment")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = finetune.default_config()
        cfg.update(dict(optimizer=args.optimizer, task=args.task, steps=args.steps, eval_every=0, checkpoint_every=0,
                        progress=False, workdir=str(Path(tmp) / "run"), compilation_cache=""))
        mesh = sharding.make_mesh(cfg.mesh)
        s = finetune.build(cfg, mesh=mesh)
        before = statistics.median(bare_step_times(s, cfg, args.steps)[args.skip :])
        del s
        finetune.run(cfg)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        loop = statistics.median([r["step_time"] for r in records if "step_time" in r][args.skip :])
        s = finetune.build(cfg, mesh=mesh)
        after = statistics.median(bare_step_times(s, cfg, args.steps)[args.skip :])
    bare = (before + after) / 2
    print(f"{cfg.model}, {args.optimizer}, {args.task}, batch {cfg.batch_size}, steps {args.skip + 1}..{args.steps} "
          f"({environment()})")
    print(f"  bare compiled step: {bare:.3f} s (before the loop {before:.3f}, after {after:.3f})")
    print(f"  training loop step: {loop:.3f} s")
    print(f"  loop / bare: {loop / bare:.3f}")


if __name__ == "__main__":
    main()
