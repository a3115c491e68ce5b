"""Orbax checkpoints of the train state and the data iterator state.

Saves are asynchronous (training goes on while arrays are written) and atomic: Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves a
`*.orbax-checkpoint-tmp*` directory that is never restored; we warn about it and resume from
the last complete step. Every process joins each save and restore (each writes its shards).

A LoRA run's frozen base is not part of its step checkpoints: `save_frozen_params` writes it
once, to `WORKDIR/frozen_params`, when the run starts, and readers (resume, export, merge)
take the base from there. A step of an 8B base with rank-16 adapters on every projection is
then ~0.5 GB (adapters and their AdamW moments in f32) instead of the whole model again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxembed.errors import UserInputError

log = logging.getLogger(__name__)
TMP_MARKER = ".orbax-checkpoint-tmp"
FROZEN_DIR = "frozen_params"  # under the workdir, beside checkpoints/


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self._warn_about_partial_saves()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def _warn_about_partial_saves(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            if TMP_MARKER in path.name:
                log.warning(
                    "ignoring incomplete checkpoint %s (a save was interrupted); "
                    "resuming from the last complete one",
                    path,
                )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state: Any, data_state: dict[str, Any] | None, force: bool = False
    ) -> None:
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any] | None]:
        """State with the shardings of `abstract_state` (ShapeDtypeStructs or arrays)."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state
        )
        args = {"state": ocp.args.StandardRestore(target)}
        has_data = (self.directory / str(step) / "data").is_dir()
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"], (restored["data"] if has_data else None)

    def saved_param_keys(self, step: int) -> set[str]:
        """Top-level keys of the params stored in `step` (a LoRA step of the current format
        stores at most a reranker's "score"; a full fine-tuning step, or a LoRA step written
        before the base moved out, all of them)."""
        tree = saved_tree(self.directory / str(step) / "state")
        params = tree.get("params")
        return set(params) if isinstance(params, dict) else set()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def saved_tree(path: Path) -> dict[str, Any]:
    """The metadata tree of the Orbax pytree saved at `path` (no arrays are read)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.metadata(Path(path).absolute()).item_metadata.tree


def has_frozen_params(workdir: Path) -> bool:
    return (Path(workdir) / FROZEN_DIR).is_dir()


def save_frozen_params(workdir: Path, params: Any) -> None:
    """The frozen base of a LoRA run, once, synchronously; atomic (Orbax writes a temporary
    directory and renames it into place), replacing any copy a run that never reached its
    first checkpoint left."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((Path(workdir) / FROZEN_DIR).absolute(), {"params": params}, force=True)
        checkpointer.wait_until_finished()


def restore_frozen_params(workdir: Path, abstract_params: Any) -> Any:
    """The frozen base saved by `save_frozen_params`, with the shardings of
    `abstract_params`."""
    path = (Path(workdir) / FROZEN_DIR).absolute()
    if not has_frozen_params(workdir):
        raise UserInputError(
            f"{path}: missing; this LoRA run's checkpoints hold only what was trained, and the "
            "frozen base they build on was saved there when the run started"
        )
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_params
    )
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, {"params": target})["params"]
