"""A training config as typed settings: the ConfigDict is checked and translated once, at
the boundary (`jaxembed train`, `jaxembed plan`, the demo), and the machinery below takes
only the section it uses.

`run_settings` runs every check of `train/validate.py`, resolves what "auto" and -1 stand
for (pooling, dropout), checks every value's type against the section's dataclass (a config
file is Python, so `learning_rate="1e-4"` would otherwise reach optax) and builds the model
config, the step and pipeline settings and the optimizer. The ConfigDict itself travels only
to be saved beside the run (`config.json`: export and resume read it).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import ml_collections
import optax

from jaxembed import tasks
from jaxembed.data import PipelineConfig
from jaxembed.errors import UserInputError
from jaxembed.models.architectures import ModelConfig
from jaxembed.models.build import model_config, pooling_mode
from jaxembed.tasks.base import Task
from jaxembed.train.state import learning_rate_schedule, make_optimizer
from jaxembed.train.step import StepSettings
from jaxembed.train.validate import check_layout, validate

PIPELINE_KEYS = (
    "global_batch_size",
    "num_negatives",
    "query_max_length",
    "passage_max_length",
    "more_negatives",
    "fewer_negatives",
    "homogeneous",
    "no_duplicates",
    "prefetch",
    "packing",
    "pack_max_segments",
)


@dataclass(frozen=True)
class OptimizerSettings:
    """`config.optimizer`: AdamW (decoupled decay on matrices) after global-norm clipping."""

    learning_rate: float
    warmup_steps: int
    decay: str
    end_factor: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    max_grad_norm: float
    accumulation_steps: int

    def build(self, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
        schedule = learning_rate_schedule(
            self.learning_rate, total_steps, self.warmup_steps, self.decay, self.end_factor
        )
        optimizer = make_optimizer(
            schedule,
            weight_decay=self.weight_decay,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            max_grad_norm=self.max_grad_norm,
            accumulation_steps=self.accumulation_steps,
        )
        return optimizer, schedule


@dataclass(frozen=True)
class TrainSettings:
    """`config.train`: how long, and what happens around the steps."""

    steps: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    nonfinite: str
    max_consecutive_nonfinite: int
    eval_every: int
    peak_flops: float


@dataclass(frozen=True)
class DataSettings:
    """`config.data` as the loop reads it (the batching half is `PipelineConfig`)."""

    train_files: tuple[str, ...]
    weights: tuple[float, ...]
    manifest: str
    format: str
    instruction: str
    eval_dir: str
    eval_split: str
    tokenizer: str
    query_max_length: int
    passage_max_length: int

    @property
    def max_length(self) -> int:
        return max(self.query_max_length, self.passage_max_length)


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run needs, checked."""

    config: ml_collections.ConfigDict  # as saved with the run ("auto" pooling resolved)
    model: ModelConfig
    task: Task
    pooling: str
    exclude_instruction: bool
    tokenizer_path: str  # the HF checkpoint's, or data.tokenizer for a random model
    hf_path: str | None  # None: a randomly initialized model
    step: StepSettings
    pipeline: PipelineConfig
    optimizer: OptimizerSettings
    train: TrainSettings
    data: DataSettings
    mesh: tuple[int, ...]  # resolved (data, fsdp, tensor)
    seed: int

    def build_optimizer(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
        return self.optimizer.build(self.train.steps)


def run_settings(config: ml_collections.ConfigDict, num_devices: int) -> RunSettings:
    """The checked, typed settings of a training run on `num_devices` devices."""
    # Types first: the checks below compare values (a config file that builds a section as a
    # plain dict escapes ConfigDict's own type locking).
    sections = {
        name: typed_section(config[name], cls, name)
        for name, cls in (
            ("optimizer", OptimizerSettings),
            ("train", TrainSettings),
            ("data", DataSettings),
        )
    }
    validate(config, num_devices)
    config = copy.deepcopy(config)
    config.model.pooling = pooling_mode(config)  # saved with the run: export reads it
    task = tasks.get(config.model.task)
    m, d = config.model, config.data
    hf_path = m.hf_path if m.init == "hf" else None
    return RunSettings(
        config=config,
        model=model_config(config),
        task=task,
        pooling=m.pooling,
        exclude_instruction=m.exclude_instruction,
        tokenizer_path=hf_path or d.tokenizer,
        hf_path=hf_path,
        step=step_settings(config),
        pipeline=PipelineConfig.from_mapping(
            {k: d[k] for k in PIPELINE_KEYS}
            | {"seed": config.seed}
            | packed_row_multiples(config)
            | task.pipeline_options(config)
        ),
        optimizer=sections["optimizer"],
        train=sections["train"],
        data=sections["data"],
        mesh=check_layout(config, num_devices),
        seed=int(config.seed),
    )


def packed_row_multiples(config: ml_collections.ConfigDict) -> dict[str, int]:
    """With GradCache on packed batches, each side's row count must split into its chunks
    (which then count packed rows)."""
    gc = config.gradcache
    if not gc.enabled:
        return {}
    return {
        "query_row_multiple": gc.chunk_size,
        "passage_row_multiple": gc.passage_chunk_size or gc.chunk_size,
    }


def step_settings(config: ml_collections.ConfigDict) -> StepSettings:
    """The loss and pooling settings of the train step (also what `plan` compiles)."""
    gc, loss = config.gradcache, config.loss
    return StepSettings(
        pooling=pooling_mode(config),
        exclude_instruction=config.model.exclude_instruction,
        loss_variant=loss.variant,
        temperature=loss.temperature,
        false_negative_margin=loss.false_negative_margin if loss.variant == "qwen3" else None,
        mask_duplicates=loss.mask_duplicates,
        gradcache_chunk=gc.chunk_size if gc.enabled else 0,
        gradcache_passage_chunk=gc.passage_chunk_size if gc.enabled else 0,
        task=config.model.task,
        ranking=loss.ranking,
        ranking_temperature=loss.ranking_temperature,
        pack_max_segments=config.data.pack_max_segments,
    )


def optimizer_settings(config: ml_collections.ConfigDict) -> OptimizerSettings:
    return typed_section(config.optimizer, OptimizerSettings, "optimizer")


def typed_section(node: ml_collections.ConfigDict, cls: type, name: str) -> Any:
    """`cls` from the section's keys of the same names; a value of the wrong type is an
    error naming its key (ints are taken for floats, lists for tuples)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = node[field.name]
        values[field.name] = _typed(value, hints[field.name], f"{name}.{field.name}")
    return cls(**values)


def _typed(value: Any, hint: Any, key: str) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _typed(value, option, key)
                except UserInputError:
                    pass
        raise UserInputError(f"{key}={value!r}: expected {hint}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (tuple, list)):
            raise UserInputError(f"{key}={value!r}: expected a list")
        (item, _) = typing.get_args(hint)
        return tuple(_typed(v, item, key) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserInputError(f"{key}={value!r}: expected {hint.__name__}")
    return value
