"""Orbax checkpoints of the train state and the data iterator state.

Saves are asynchronous (training goes on while arrays are written) and atomic: Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves a
`*.orbax-checkpoint-tmp*` directory that is never restored; we warn about it and resume from
the last complete step. Every process joins each save and restore (each writes its shards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
TMP_MARKER = ".orbax-checkpoint-tmp"


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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
