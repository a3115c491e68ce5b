"""Every check of a training config that can fail before anything compiles or reads
weights, in one place: `validate` for `jaxembed train`, and its model and layout halves for
`jaxembed plan` (which has no data and may have no weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections

from jaxembed import hf, tasks
from jaxembed.data.manifest import read_manifest
from jaxembed.data.packing import PACKING_MODES
from jaxembed.errors import UserInputError
from jaxembed.losses import CONTRASTIVE_VARIANTS
from jaxembed.models.attention import ATTENTION_IMPLS
from jaxembed.models.build import check_lengths, lora_config, model_config
from jaxembed.models.pooling import POOLING_MODES
from jaxembed.sharding import resolve_mesh_shape
from jaxembed.train.nonfinite import check_settings as check_nonfinite_settings

log = logging.getLogger(__name__)

POOLING_SETTINGS = POOLING_MODES + ("auto",)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Model, layout and data checks of a training run."""
    validate_model(config)
    check_layout(config, num_devices)
    _validate_data_and_schedule(config)


def validate_model(config: ml_collections.ConfigDict, *, weights_needed: bool = True) -> None:
    """The model, loss and task settings. With `weights_needed=False` (`plan`), an HF init
    without `model.hf_path` is allowed: the dimensions come from `config.model`."""
    m, loss = config.model, config.loss
    if m.init not in ("random", "hf"):
        raise UserInputError(f"model.init={m.init!r}: expected 'random' or 'hf'")
    if m.init == "hf" and (m.hf_path or weights_needed):
        if not m.hf_path:
            raise UserInputError(
                "model.hf_path is empty: model.init='hf' needs a local HF directory"
            )
        try:
            hf.read_hf_config(m.hf_path)
        except UserInputError as e:
            raise UserInputError(f"model.hf_path: {e}") from e
    task = tasks.get(m.task)
    if m.prune_layers < 0:
        raise UserInputError(f"model.prune_layers={m.prune_layers}: must be >= 0")
    if m.prune_layers and m.init != "hf":
        raise UserInputError("model.prune_layers needs model.init='hf' (set num_layers instead)")
    if m.pooling not in POOLING_SETTINGS:
        raise UserInputError(f"model.pooling={m.pooling!r}: expected one of {POOLING_SETTINGS}")
    if m.attention_impl not in ATTENTION_IMPLS:
        raise UserInputError(
            f"model.attention_impl={m.attention_impl!r}: expected one of {ATTENTION_IMPLS}"
        )
    if loss.variant not in CONTRASTIVE_VARIANTS:
        raise UserInputError(
            f"loss.variant={loss.variant!r}: expected one of {CONTRASTIVE_VARIANTS}"
        )
    if not loss.temperature > 0:
        raise UserInputError(f"loss.temperature={loss.temperature}: must be > 0")
    task.validate(config)
    if m.init == "hf" and not m.hf_path:
        return  # plan without a checkpoint: the model is config.model's dimensions
    check_lengths(config, model_config(config))
    if lora_config(config) is not None and m.init != "hf":
        log.warning("LoRA on a randomly initialized model trains adapters on random weights")


def check_layout(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Mesh, batch and GradCache chunking against the device count; returns the resolved
    mesh shape."""
    m, d, gc = config.mesh, config.data, config.gradcache
    shape = resolve_mesh_shape((m.data, m.fsdp, m.tensor), num_devices)
    dp = shape[0] * shape[1]
    if d.global_batch_size % dp:
        raise UserInputError(
            f"data.global_batch_size={d.global_batch_size} is not divisible by the data-parallel "
            f"size {dp} (mesh.data x mesh.fsdp)"
        )
    if gc.enabled:
        passages = d.global_batch_size * (1 + d.num_negatives)
        rows = {
            "gradcache.chunk_size": (gc.chunk_size, d.global_batch_size),
            "gradcache.passage_chunk_size": (gc.passage_chunk_size or gc.chunk_size, passages),
        }
        for key, (chunk, total) in rows.items():
            if chunk < 1 or total % chunk or chunk % dp:
                raise UserInputError(
                    f"{key}={chunk}: must divide {total} rows and be a multiple of the "
                    f"data-parallel size {dp}"
                )
    return shape


def _validate_data_and_schedule(config: ml_collections.ConfigDict) -> None:
    d, t = config.data, config.train
    if d.manifest:
        if d.train_files or d.weights or d.instruction:
            raise UserInputError(
                "data.manifest lists the datasets: leave data.train_files, data.weights and "
                "data.instruction empty (give paths, weights and instructions in the manifest)"
            )
        read_manifest(d.manifest)
    elif not d.train_files:
        raise UserInputError(
            "data.train_files is empty: give one or more training JSONL files (or data.manifest)"
        )
    for path in d.train_files:
        if not Path(path).is_file():
            raise UserInputError(f"data.train_files: {path} not found")
    if config.model.init == "random" and not d.tokenizer:
        raise UserInputError("data.tokenizer is empty: a random model needs a tokenizer directory")
    if t.eval_every:
        if not d.eval_dir:
            raise UserInputError("train.eval_every is set but data.eval_dir is empty")
        if jax.process_count() > 1:
            raise UserInputError("train.eval_every is single-process only for now; set it to 0")
    if t.steps < 1:
        raise UserInputError(f"train.steps={t.steps}: must be >= 1")
    if d.packing not in PACKING_MODES:
        raise UserInputError(f"data.packing={d.packing!r}: expected one of {PACKING_MODES}")
    if d.pack_max_segments < 1:
        raise UserInputError(f"data.pack_max_segments={d.pack_max_segments}: must be >= 1")
    check_nonfinite_settings(t.nonfinite, t.max_consecutive_nonfinite)
