"""Orbax checkpoints of a run: ``checkpoints/<step>`` ({params, opt_state} + JSON metadata)
and ``best/<step>`` (the best-dev params, when no checkpoint of that step holds them).

Saving is idempotent: a step that already holds a checkpoint (left by a run that was killed
and redid the step) is replaced, never a dead end. Orbax writes each step to a temporary
folder and renames it when complete, so a kill inside a save leaves the earlier steps
intact.
"""

from __future__ import annotations

from pathlib import Path

import jax


class Checkpoints:
    """The orbax checkpoints of one folder (which steps to keep: :meth:`keep_only`)."""

    def __init__(self, directory: Path):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        options = ocp.CheckpointManagerOptions(cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        if step in self.steps():
            self.delete(step)
        args = self.ocp.args.Composite(state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def keep_only(self, steps) -> None:
        """Delete every step not in ``steps``."""
        for s in set(self.steps()) - set(steps):
            self.delete(s)

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore())).meta

    def restore(self, step: int, like: dict) -> tuple[dict, dict]:
        """The state at ``step`` with the structure, dtypes and shardings of ``like``, and its
        metadata."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        args = self.ocp.args.Composite(state=self.ocp.args.StandardRestore(abstract), meta=self.ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out.state, out.meta


def holding(step: int, ckpt: Checkpoints, best: Checkpoints) -> Checkpoints | None:
    """Which of a run's two folders holds ``step``'s params: its checkpoint, else best/."""
    return ckpt if step in ckpt.steps() else best if step in best.steps() else None
