"""What the training loop does around each step, as hooks: logging (with held-out
evaluation), checkpointing, preemption, and the non-finite guard they all consult.

The loop (train/loop.py) runs the step and then each hook in order on a `StepContext`; a
hook may set `ctx.stop`. Every save and every log read is preceded by the guard's check, so
no checkpoint holds a state past a non-finite step (see "What a run never loses" in the
README).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax

from jaxembed.checkpoint import Checkpointer, CheckpointSaveError, describe_last_complete
from jaxembed.errors import RunStopped
from jaxembed.train.metrics_log import MetricsLog
from jaxembed.train.nonfinite import NonFiniteGuard
from jaxembed.train.state import TrainState, checkpointed

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """The loop's state after a step, as the hooks see it."""

    done: int  # steps completed
    total: int
    state: TrainState
    metrics: dict[str, jax.Array] = field(default_factory=dict)
    stop: bool = False
    preempted: bool = False

    @property
    def last(self) -> bool:
        return self.done == self.total


def due(every: int, ctx: StepContext) -> bool:
    return every > 0 and ctx.done % every == 0


def save_failed(checkpointer: Checkpointer, error: CheckpointSaveError) -> RunStopped:
    """A failed save (full disk, lost storage) as one line; Orbax wrote into a temporary
    directory, so the complete checkpoints before it are untouched."""
    return RunStopped(
        f"saving checkpoint step {error.step} to {checkpointer.directory} failed "
        f"({error.cause}); the last complete checkpoint is "
        f"{describe_last_complete(checkpointer.directory)}"
    )


def close_checkpointer(checkpointer: Checkpointer) -> None:
    """Wait for the save in flight (a background save's error surfaces here)."""
    try:
        checkpointer.close()
    except CheckpointSaveError as e:
        raise save_failed(checkpointer, e) from None


class FiniteCheck:
    """Feeds every step's flags to the guard (on device, no sync); `check` reads them and
    halts the run, saving nothing more, when the policy says so."""

    def __init__(self, guard: NonFiniteGuard, checkpointer: Checkpointer) -> None:
        self.guard = guard
        self.checkpointer = checkpointer

    def __call__(self, ctx: StepContext) -> None:
        self.guard.update(ctx.metrics, ctx.done)

    def check(self) -> None:
        event = self.guard.check()
        if event is not None:
            close_checkpointer(self.checkpointer)
            raise RunStopped(
                f"{event.describe()}; the run stopped and saved nothing after it; the last "
                f"good checkpoint is {describe_last_complete(self.checkpointer.directory)}; "
                "lower optimizer.learning_rate (or set train.nonfinite=skip) and restart"
            )


class MetricsHook:
    """Every `every` steps (and at the last, and whenever it evaluates): the step's metrics,
    tokens/s over the window since the last record, MFU, held-out scores every
    `eval_every` steps; to metrics.jsonl, the history and the progress bar."""

    def __init__(
        self,
        every: int,
        finite: FiniteCheck,
        metrics_log: MetricsLog,
        progress: Any,
        *,
        flops_per_token: float,
        peak_flops: float,
        evaluate: Callable[[TrainState], dict[str, float]] | None = None,
        eval_every: int = 0,
    ) -> None:
        self.every, self.finite, self.metrics_log, self.progress = (
            every,
            finite,
            metrics_log,
            progress,
        )
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.evaluate, self.eval_every = evaluate, eval_every
        self.history: list[dict[str, float]] = []
        self._window_start, self._window_tokens = time.perf_counter(), 0.0

    def __call__(self, ctx: StepContext) -> None:
        # Summed on device: reading metrics every step would stall async dispatch.
        self._window_tokens = self._window_tokens + ctx.metrics["tokens"]
        evaluate_now = self.evaluate is not None and due(self.eval_every, ctx)
        if not (due(self.every, ctx) or ctx.last or evaluate_now):
            self.progress.update(1)
            return
        self.finite.check()
        values = {k: float(v) for k, v in jax.device_get(ctx.metrics).items()}
        values["skipped_steps"] = self.finite.guard.skipped
        elapsed = time.perf_counter() - self._window_start
        record: dict[str, Any] = {"step": ctx.done, **values}
        record["tokens_per_second"] = float(self._window_tokens) / max(elapsed, 1e-9)
        if self.peak_flops > 0:
            achieved = record["tokens_per_second"] * self.flops_per_token
            record["mfu"] = achieved / (self.peak_flops * jax.device_count())
        if evaluate_now:
            record.update(self.evaluate(ctx.state))
        record = _clean_record(record)
        self.history.append(record)
        self.metrics_log.write(record)
        loss = values["loss"]
        self.progress.set_postfix(
            loss=f"{loss:.4f}" if math.isfinite(loss) else "nan",
            tok_s=f"{record['tokens_per_second']:.0f}",
            refresh=False,
        )
        self.progress.update(1)
        self._window_start, self._window_tokens = time.perf_counter(), 0.0


def _clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a skipped step's non-finite loss is logged as null."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }


class CheckpointHook:
    """Every `every` steps and at the last: the state (what `checkpointed` keeps), the data
    iterator's position and the skip count, after the guard's check."""

    def __init__(
        self, every: int, checkpointer: Checkpointer, finite: FiniteCheck, iterator: Any
    ) -> None:
        self.every, self.checkpointer, self.finite, self.iterator = (
            every,
            checkpointer,
            finite,
            iterator,
        )

    def __call__(self, ctx: StepContext) -> None:
        if due(self.every, ctx) or ctx.last:
            self.save(ctx)

    def save(self, ctx: StepContext, force: bool = False) -> None:
        self.finite.check()
        try:
            self.checkpointer.save(
                ctx.done,
                checkpointed(ctx.state),
                self.iterator.state.to_dict(),
                meta={"skipped_steps": self.finite.guard.skipped},
                force=force,
            )
        except CheckpointSaveError as e:
            raise save_failed(self.checkpointer, e) from None


class PreemptionHook:
    """SIGTERM (a preempted VM, `scancel`) becomes a flag; at the next step boundary the
    run saves a checkpoint and stops. Installed only on the main thread."""

    def __init__(self, checkpoint: CheckpointHook) -> None:
        self.checkpoint = checkpoint
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> PreemptionHook:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __call__(self, ctx: StepContext) -> None:
        if self.requested:
            self.checkpoint.save(ctx, force=True)
            ctx.stop = ctx.preempted = True
            log.warning("SIGTERM: saved step %d and stopping", ctx.done)
