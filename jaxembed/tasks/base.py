"""The Task protocol: what a training objective (bi-encoder embedding, cross-encoder
reranking) supplies to the generic machinery.

The train step (train/step.py) applies whatever gradients the task computes; `plan`
compiles the same step on the task's abstract batch; the loop builds its params, pipeline
options and export through it. Nothing outside `jaxembed.tasks` tests which task a run is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections

from jaxembed.train.state import ParamLayout, TrainState

Batch = dict[str, jax.Array]
# (state, batch) -> ((loss, metrics), gradients of `trained(state)`)
GradientFn = Callable[[TrainState, Batch], tuple[tuple[jax.Array, dict[str, jax.Array]], Any]]


class Task(Protocol):
    name: str
    layout: ParamLayout  # where the backbone sits, what trains beside LoRA adapters

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """The task's own config checks (before anything compiles)."""

    def param_shapes(self, model: Any) -> Any:
        """Boxed ShapeDtypeStructs of the whole model (backbone and any head)."""

    def init_params(self, model: Any, rng: jax.Array) -> Any:
        """Random params (a model trained from scratch)."""

    def load_params(self, directory: str | Path, model: Any, rng: jax.Array, shardings: Any) -> Any:
        """Params from an HF directory (a new head drawn from `rng` where it has none)."""

    def gradients(self, model: Any, settings: Any) -> GradientFn:
        """The loss and its gradients for one batch."""

    def batch_shapes(self, config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
        """The pipeline's batch arrays at their longest bucket (int32)."""

    def flops_per_step(self, config: ml_collections.ConfigDict, model: Any) -> float:
        """Model FLOPs of one training step (no recomputation)."""

    def pipeline_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Extra `PipelineConfig` fields the task's batches need."""

    def export(self, workdir: str | Path, output: str | Path, **options: Any) -> Path:
        """One training step of `workdir` as a Hugging Face directory at `output`."""


def dropout_rng(model: Any, state: TrainState) -> jax.Array | None:
    """This step's dropout key (None when the model draws no dropout masks)."""
    if not model.has_dropout:
        return None
    return jax.random.fold_in(state.rng, state.step)
