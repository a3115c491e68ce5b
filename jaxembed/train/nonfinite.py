"""The non-finite policy: which steps went non-finite, read without stalling every step.

The train step never applies a non-finite update (it reports `nonfinite=1` and keeps the
state). This module decides what the run does about such steps:

  halt  (default) stop at the next log or checkpoint step without saving, naming the first
        non-finite step and the last good checkpoint;
  skip  go on (the updates were not applied), counting skipped steps in metrics.jsonl; halt
        once `max_consecutive` steps in a row were non-finite.

The per-step flags are folded into a few device scalars by a tiny jitted update that is
dispatched asynchronously like the step itself; the host reads them only at log and
checkpoint steps, so a healthy run never waits on the device for them. Checkpoints are saved
only after such a read found nothing to halt for, so no checkpoint follows a halting step.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxembed.errors import UserInputError
from jaxembed.sharding import replicated

POLICIES = ("halt", "skip")


@dataclass(frozen=True)
class NonFiniteEvent:
    """Why the run must halt: `first` is the first non-finite step (1-based), `streak` the
    longest run of consecutive non-finite steps seen, ending at `streak_end`."""

    policy: str
    first: int
    streak: int
    streak_end: int
    max_consecutive: int

    def describe(self) -> str:
        if self.policy == "halt":
            return (
                f"step {self.first}: the loss or gradient became non-finite, so its update "
                "was not applied (train.nonfinite=halt)"
            )
        start = self.streak_end - self.streak + 1
        return (
            f"steps {start}-{self.streak_end}: {self.streak} non-finite steps in a row "
            f"(train.max_consecutive_nonfinite={self.max_consecutive}), all skipped"
        )


def check_settings(policy: str, max_consecutive: int) -> None:
    if policy not in POLICIES:
        raise UserInputError(f"train.nonfinite={policy!r}: expected one of {POLICIES}")
    if max_consecutive < 1:
        raise UserInputError(f"train.max_consecutive_nonfinite={max_consecutive}: must be >= 1")


@jax.jit
def _fold(counters: dict[str, jax.Array], nonfinite: jax.Array, step: jax.Array):
    bad = nonfinite > 0
    streak = jnp.where(bad, counters["streak"] + 1, 0)
    longer = streak > counters["max_streak"]
    return {
        "skipped": counters["skipped"] + bad.astype(jnp.int32),
        "first": jnp.where(bad & (counters["first"] == 0), step, counters["first"]),
        "streak": streak,
        "max_streak": jnp.where(longer, streak, counters["max_streak"]),
        "max_streak_end": jnp.where(longer, step, counters["max_streak_end"]),
    }


class NonFiniteGuard:
    """Counts non-finite steps on device; `check()` reads the counts and says whether to
    halt. `skipped` carries over from the checkpoint a run resumed from."""

    def __init__(self, policy: str, max_consecutive: int, mesh: Mesh, skipped: int = 0):
        check_settings(policy, max_consecutive)
        self.policy, self.max_consecutive = policy, max_consecutive
        names = ("skipped", "first", "streak", "max_streak", "max_streak_end")
        initial = dict.fromkeys(names, 0) | {"skipped": skipped}
        # Replicated over the mesh, like the step's metrics, so multi-process runs fold alike.
        self._counters = jax.jit(
            lambda: {k: jnp.asarray(v, jnp.int32) for k, v in initial.items()},
            out_shardings=replicated(mesh),
        )()
        self.skipped = skipped

    def update(self, metrics: dict[str, jax.Array], step: int) -> None:
        """Fold in the flag of step `step` (1-based); asynchronous, reads nothing."""
        self._counters = _fold(self._counters, metrics["nonfinite"], np.int32(step))

    def check(self) -> NonFiniteEvent | None:
        """Read the counters (waits for the steps dispatched so far); an event means halt."""
        values = {k: int(v) for k, v in jax.device_get(self._counters).items()}
        self.skipped = values["skipped"]
        event = NonFiniteEvent(
            self.policy,
            values["first"],
            values["max_streak"],
            values["max_streak_end"],
            self.max_consecutive,
        )
        if self.policy == "halt" and event.first:
            return event
        if self.policy == "skip" and event.streak >= self.max_consecutive:
            return event
        return None
