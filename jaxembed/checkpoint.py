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
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxembed.checkpoint_integrity import check_compatible, fingerprint, verify
from jaxembed.errors import UserInputError, first_line

log = logging.getLogger(__name__)
TMP_MARKER = ".orbax-checkpoint-tmp"
FROZEN_DIR = "frozen_params"  # under the workdir, beside checkpoints/


class CheckpointSaveError(Exception):
    """Saving `step` failed (in the background or at once): `cause` says why in one line.
    Orbax wrote into a temporary directory, so complete checkpoints are untouched."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.cause = step, describe_io_error(error)
        super().__init__(f"saving checkpoint step {step} failed ({self.cause})")


def describe_io_error(error: BaseException) -> str:
    """One line for a storage error: the OS's words when TensorStore quotes an errno (its
    messages are long paths into the OCDBT database), else the error's first line."""
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return os.strerror(int(code.group(1)))
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error)


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self._keep, self._async = keep, async_save
        self._in_flight: int | None = None  # the step an asynchronous save is writing
        self._warn_about_partial_saves()
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, enable_async_checkpointing=self._async, create=True
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
        self,
        step: int,
        state: Any,
        data_state: dict[str, Any] | None,
        meta: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Start an asynchronous save of `state`; its per-array checksums go beside it (see
        `checkpoint_integrity`), so a restore can tell corrupt data from good."""
        self._finish_in_flight()
        checksums, _ = fingerprint(state)
        args = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave({**(meta or {}), "checksums": checksums}),
        }
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._in_flight = step
        try:
            self._manager.save(step, args=ocp.args.Composite(**args), force=force)
        except Exception as e:
            raise CheckpointSaveError(step, e) from e

    def _finish_in_flight(self) -> None:
        """Wait for the save in flight; its error, if any, is that step's (Orbax would
        otherwise raise it from the next save, naming no step)."""
        step, self._in_flight = self._in_flight, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(step if step is not None else -1, e) from e

    def restore(
        self, step: int, abstract_state: Any
    ) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
        """State with the shardings of `abstract_state` (ShapeDtypeStructs or arrays), the
        data iterator's state and the run metadata saved with it.

        Raises CheckpointMismatch (a config error) when the step holds another model, and
        CorruptCheckpoint (or whatever Orbax raises) when it cannot be read back intact."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state
        )
        step_dir = self.directory / str(step)
        check_compatible(saved_tree(step_dir / "state"), target, step)
        items = [name for name in ("data", "meta") if (step_dir / name).is_dir()]
        args = {"state": ocp.args.StandardRestore(target)}
        args.update({name: ocp.args.JsonRestore() for name in items})
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        meta = restored["meta"] if "meta" in items else {}
        verify(restored["state"], meta.get("checksums"), step)
        return restored["state"], (restored["data"] if "data" in items else None), meta

    def set_aside(self, step: int, destination: Path) -> None:
        """Move step `step` out of the checkpoint directory (process 0 moves, every process
        reopens), so that it is neither resumed from nor counted by retention, and newer
        saves are not refused for being older than it."""
        if jax.process_index() == 0:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxembed set aside step {step}")
        self._manager.close()
        self._manager = self._open()

    def saved_param_keys(self, step: int) -> set[str]:
        """Top-level keys of the params stored in `step` (a LoRA step of the current format
        stores at most a reranker's "score"; a full fine-tuning step, or a LoRA step written
        before the base moved out, all of them)."""
        tree = saved_tree(self.directory / str(step) / "state")
        params = tree.get("params")
        return set(params) if isinstance(params, dict) else set()

    def wait(self) -> None:
        self._finish_in_flight()

    def close(self) -> None:
        """Wait for saves in flight and release the manager; a second call does nothing."""
        if self._manager is None:
            return
        try:
            self._finish_in_flight()
        finally:
            manager, self._manager = self._manager, None
            manager.close()


def describe_last_complete(directory: Path) -> str:
    """'step 20 (DIR/20)' for the newest complete step on disk, as a restart would find it
    (read from the directory: after a failed save a manager's own view may be stale)."""
    directory = Path(directory).absolute()
    steps = [int(p.name) for p in directory.glob("*") if p.name.isdigit()]
    if not steps:
        return "none yet (a restart begins at step 0)"
    return f"step {max(steps)} ({directory / str(max(steps))})"


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
