"""The training loop: settings → mesh, model, data, optimizer; restore; then steps, each
followed by the hooks (train/hooks.py: non-finite guard, metrics and evaluation, preemption,
checkpoint).

Resuming is exact: the checkpoint holds params, optimizer state, step, rng and the data
iterator's position, so a restarted run sees exactly the batches the uninterrupted run
would have. SIGTERM (preemption) saves a checkpoint at the next step boundary and exits.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax

from jaxembed import hf
from jaxembed.checkpoint import (
    Checkpointer,
    has_frozen_params,
    restore_frozen_params,
    save_frozen_params,
)
from jaxembed.config import RUN_CONFIG_NAME
from jaxembed.data import BatchIterator, DatasetSpec, IteratorState
from jaxembed.data.formats import load_beir, read_training_jsonl
from jaxembed.data.manifest import ManifestEntry, read_manifest
from jaxembed.errors import UserInputError
from jaxembed.evaluate import evaluate_retrieval
from jaxembed.io_utils import atomic_file, check_writable_directory
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig, init_adapters
from jaxembed.models.encoder import Encoder, PoolingSettings
from jaxembed.models.lora import merge_adapters
from jaxembed.progress import progress_bar
from jaxembed.sharding import batch_sharding, make_mesh
from jaxembed.train.hooks import (
    CheckpointHook,
    FiniteCheck,
    MetricsHook,
    PreemptionHook,
    StepContext,
    close_checkpointer,
)
from jaxembed.train.metrics_log import MetricsLog
from jaxembed.train.nonfinite import NonFiniteGuard
from jaxembed.train.resume import resume_latest
from jaxembed.train.settings import DataSettings, RunSettings
from jaxembed.train.state import (
    TrainState,
    backbone_params,
    checkpointed,
    create_state,
    frozen_params,
    with_backbone_params,
    with_frozen_params,
)
from jaxembed.train.step import jit_train_step, make_train_step, state_shardings

log = logging.getLogger(__name__)


def merged_params(state: Any, mcfg: ModelConfig) -> Any:
    """The model the state stands for: its params, with LoRA adapters merged in."""
    if state.adapters is None:
        return state.params
    merged = _merge_on_device(backbone_params(state), state.adapters, mcfg.lora.scale)
    return with_backbone_params(state, merged)


@partial(jax.jit, static_argnums=2)
def _merge_on_device(params: Any, adapters: Any, scale: float) -> Any:
    return merge_adapters(params, adapters, scale)


@dataclass
class TrainResult:
    workdir: Path
    final_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    preempted: bool = False
    params: Any = None  # the final params (sharded as in training; LoRA merged in)


class _Evaluator:
    """Held-out retrieval metrics of the current params (one compiled encoder, reused)."""

    def __init__(self, settings: RunSettings, tokenizer, mesh):
        d = settings.data
        self.data = load_beir(d.eval_dir, d.eval_split)
        self.instruction = d.instruction or None
        self.pooling = PoolingSettings(settings.pooling, True, settings.exclude_instruction)
        self.args = (settings.model, tokenizer, mesh)
        self.max_length = d.max_length
        self.encoder: Encoder | None = None

    def __call__(self, params: Any) -> dict[str, float]:
        mcfg, tokenizer, mesh = self.args
        if self.encoder is None:
            self.encoder = Encoder(mcfg, params, tokenizer, self.pooling, mesh)
        self.encoder.params = params
        scores = evaluate_retrieval(
            self.encoder,
            self.data,
            self.instruction,
            ks=(10, 100),
            depth=100,
            max_length=self.max_length,
        )
        return {f"eval_{k}": v for k, v in scores.items()}


def load_datasets(d: DataSettings) -> list[DatasetSpec]:
    return [_dataset(entry) for entry in _entries(d)]


def _entries(d: DataSettings) -> list[ManifestEntry]:
    """The manifest's datasets, or `data.train_files` as retrieval datasets of the same shape."""
    if d.manifest:
        return read_manifest(d.manifest)
    weights = list(d.weights) if d.weights else [1.0] * len(d.train_files)
    if len(weights) != len(d.train_files):
        raise UserInputError(
            f"data.weights has {len(weights)} values for {len(d.train_files)} data.train_files"
        )
    return [
        ManifestEntry(Path(path).stem, path, d.format, "retrieval", float(w), d.instruction)
        for path, w in zip(d.train_files, weights, strict=True)
    ]


def _dataset(entry: ManifestEntry) -> DatasetSpec:
    records = list(
        read_training_jsonl(
            entry.path, format=entry.format, instruction=entry.query_instruction, dataset=entry.name
        )
    )
    if not records:
        raise UserInputError(f"{entry.path}: no training records")
    return DatasetSpec(
        entry.name, records, entry.weight, document_instruction=entry.document_instruction
    )


def _restore(
    checkpointer: Checkpointer, step: int, state: TrainState, workdir: Path
) -> tuple[TrainState, dict[str, Any] | None, dict[str, Any]]:
    """`state` (fresh, with the run's shardings) replaced by checkpoint `step`. A LoRA step
    holds only what was trained; its frozen base comes from `WORKDIR/frozen_params` (steps
    written before the base moved out still hold it and restore whole)."""
    if state.adapters is None:
        return checkpointer.restore(step, state)
    frozen = frozen_params(state)
    if set(frozen) <= checkpointer.saved_param_keys(step):
        return checkpointer.restore(step, state)
    restored, saved, meta = checkpointer.restore(step, checkpointed(state))
    return with_frozen_params(restored, restore_frozen_params(workdir, frozen)), saved, meta


def _initial_state(settings: RunSettings, optimizer: Any, shardings: Any) -> TrainState:
    """The step-0 state: params from the HF checkpoint (or random), fresh LoRA adapters."""
    task, mcfg = settings.task, settings.model
    rng = jax.random.PRNGKey(settings.seed)
    if settings.hf_path is not None:
        params = task.load_params(
            settings.hf_path, mcfg, jax.random.fold_in(rng, 2), shardings.params
        )
    else:
        params = jax.jit(lambda r: task.init_params(mcfg, r), out_shardings=shardings.params)(rng)
    adapters = None
    if mcfg.lora is not None:
        adapters = jax.jit(lambda r: init_adapters(mcfg, r), out_shardings=shardings.adapters)(
            jax.random.fold_in(rng, 3)
        )
    init_state = jax.jit(
        lambda params, rng, adapters: create_state(params, optimizer, rng, adapters, task.layout),
        out_shardings=shardings,
    )
    return init_state(params, jax.random.fold_in(rng, 1), adapters)


def train(settings: RunSettings, workdir: str | Path) -> TrainResult:
    """Run (or resume) training in `workdir` (settings from `train.settings.run_settings`);
    returns the logged history of this call."""
    workdir = Path(workdir)
    config, mcfg, task, t = settings.config, settings.model, settings.task, settings.train
    check_writable_directory(workdir, "the workdir")
    mesh = make_mesh(settings.mesh)
    tokenizer = hf.load_tokenizer(settings.tokenizer_path)
    if len(tokenizer) > mcfg.vocab_size:
        raise UserInputError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {mcfg.vocab_size}"
        )
    datasets = load_datasets(settings.data)
    optimizer, schedule = settings.build_optimizer()
    shardings = state_shardings(mcfg, optimizer, mesh, task.name)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints)
    # Looked at before any collective restore or save, so every process decides alike.
    base_saved = has_frozen_params(workdir)
    state = _initial_state(settings, optimizer, shardings)
    data_state, meta, latest = None, {}, None
    resumed = resume_latest(
        checkpointer, workdir, lambda step: _restore(checkpointer, step, state, workdir), config
    )
    if resumed is not None:
        latest, (state, saved, meta) = resumed
        data_state = IteratorState.from_dict(saved) if saved else None
        log.info("resumed from step %d", latest)
    if state.adapters is not None and (latest is None or not base_saved):
        # Once per run (or when resuming a step written before the base moved out of steps).
        save_frozen_params(workdir, frozen_params(state))
    start_step = int(state.step)

    metrics_log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    metrics_log.truncate_after(start_step)
    if jax.process_index() == 0:
        # The run's config beside its checkpoints: `jaxembed export` needs no flags.
        with atomic_file(workdir / RUN_CONFIG_NAME) as tmp:
            tmp.write_text(config.to_json(indent=2) + "\n", encoding="utf-8")
    train_step = jit_train_step(
        make_train_step(mcfg, optimizer, schedule, settings.step), shardings, mesh
    )
    iterator = BatchIterator(
        datasets, tokenizer, settings.pipeline, sharding=batch_sharding(mesh), state=data_state
    )
    guard = NonFiniteGuard(
        t.nonfinite, t.max_consecutive_nonfinite, mesh, skipped=int(meta.get("skipped_steps", 0))
    )
    finite = FiniteCheck(guard, checkpointer)
    progress = progress_bar(
        total=t.steps, initial=start_step, desc="train", unit="step",
        disable=jax.process_index() != 0,
    )  # fmt: skip
    evaluator = _Evaluator(settings, tokenizer, mesh) if t.eval_every else None
    metrics = MetricsHook(
        t.log_every,
        finite,
        metrics_log,
        progress,
        flops_per_token=architectures.for_config(mcfg).flops_per_token(
            mcfg, settings.data.max_length
        ),
        peak_flops=t.peak_flops,
        evaluate=(lambda s: evaluator(merged_params(s, mcfg))) if evaluator else None,
        eval_every=t.eval_every,
    )
    checkpoint = CheckpointHook(t.checkpoint_every, checkpointer, finite, iterator)
    ctx = StepContext(done=start_step, total=t.steps, state=state)
    try:
        with iterator, PreemptionHook(checkpoint) as preemption:
            hooks = (finite, metrics, preemption, checkpoint)
            while ctx.done < t.steps and not ctx.stop:
                batch = next(iterator)
                batch.pop("dataset_index", None)
                ctx.state, ctx.metrics = train_step(ctx.state, batch)
                ctx.done += 1
                for hook in hooks:
                    hook(ctx)
                    if ctx.stop:
                        break
        close_checkpointer(checkpointer)
    finally:
        progress.close()
        with contextlib.suppress(Exception):  # already failing: the first error is reported
            checkpointer.close()
        metrics_log.close()
    final = ctx.state
    return TrainResult(
        workdir, int(final.step), metrics.history, ctx.preempted, merged_params(final, mcfg)
    )
