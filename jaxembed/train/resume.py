"""Which checkpoint a restarted run resumes from: the newest one that reads back intact.

A step that cannot be restored (corrupt data, a missing file, unreadable metadata, values
that are not finite) is reported with a warning naming the step and the cause, moved to
`WORKDIR/unreadable_checkpoints/STEP` (kept for inspection, never deleted), and the next
older step is tried. Only when none is readable does the run stop. A step written by a
different model (shapes or dtypes that do not match the config) is a config error naming the
array and the config keys that differ from the run that wrote it: older steps would not
match either, and moving them aside would hide the user's mistake.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxembed.checkpoint import Checkpointer
from jaxembed.checkpoint_integrity import CheckpointMismatch
from jaxembed.config import RUN_CONFIG_NAME
from jaxembed.errors import RunStopped, UserInputError, first_line

log = logging.getLogger(__name__)
UNREADABLE_DIR = "unreadable_checkpoints"
# The config sections that decide the shapes and dtypes of what a checkpoint holds.
MODEL_SECTIONS = ("model", "lora")

Restored = tuple[Any, dict[str, Any] | None, dict[str, Any]]


def resume_latest(
    checkpointer: Checkpointer,
    workdir: Path,
    restore: Callable[[int], Restored],
    config: Any,
) -> tuple[int, Restored] | None:
    """(step, restore(step)) for the newest readable step, or None when there is none yet."""
    failures = []
    for step in sorted(checkpointer.all_steps(), reverse=True):
        try:
            restored, error = restore(step), None
        except CheckpointMismatch as e:
            raise CheckpointMismatch(f"{e}{_config_difference(workdir, config)}") from None
        except UserInputError:  # e.g. a LoRA run's frozen base is missing: every step needs it
            raise
        except Exception as e:  # corrupt, truncated or missing data: try the next older step
            restored, error = None, e
        if not _everywhere(error is None):
            cause = first_line(error) if error else "another process could not read it"
            aside = workdir / UNREADABLE_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            checkpointer.set_aside(step, aside)
            failures.append(f"step {step} ({cause})")
            log.warning(
                "checkpoint step %d is unreadable (%s); moved it to %s and trying the next "
                "older step",
                step,
                cause,
                aside,
            )
            continue
        if failures:
            log.warning("resumed from step %d instead of the unreadable %s", step, failures[0])
        return step, restored
    if failures:
        raise RunStopped(
            f"no readable checkpoint in {checkpointer.directory}: {'; '.join(failures)}; they "
            f"were moved to {workdir / UNREADABLE_DIR}; use a new workdir to start over"
        )
    return None


def _everywhere(ok: bool) -> bool:
    """True when every process restored its part (a corrupt shard may fail on one only)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _config_difference(workdir: Path, config: Any) -> str:
    """'; the run that wrote it had model.hidden_size=64 (now 32)', from the config the
    earlier run saved beside its checkpoints ('' when that is missing or the same)."""
    try:
        saved = json.loads((Path(workdir) / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    now = json.loads(config.to_json())
    changed = []
    for section in MODEL_SECTIONS:
        before, after = saved.get(section, {}), now.get(section, {})
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changed.append(f"{section}.{key}={before.get(key)!r} (now {after.get(key)!r})")
    if not changed:
        return ""
    return "; the run that wrote it had " + ", ".join(changed) + ": use its config or a new workdir"
