"""Run config → model config: the one translation of `config.model` and `config.lora` into
an architecture's config (training, `plan`, export and PEFT export all build it here).

An HF directory's `model_type` picks the architecture (`jaxembed.models.architectures`); a
randomly initialized model is a Llama-family one with the dimensions in `config.model`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from jaxembed import hf
from jaxembed.errors import UserInputError
from jaxembed.models import architectures
from jaxembed.models.architectures import Architecture, ModelConfig
from jaxembed.models.llama import LlamaConfig
from jaxembed.models.lora import LoraConfig


def architecture(config: ml_collections.ConfigDict) -> Architecture:
    """The architecture a run trains (from the HF directory's model_type, else Llama)."""
    m = config.model
    if m.init != "hf":
        return architectures.LLAMA
    source = str(Path(m.hf_path) / "config.json")
    return architectures.for_model_type(hf.read_hf_config(m.hf_path).get("model_type"), source)


def lora_config(
    config: ml_collections.ConfigDict, arch: Architecture | None = None
) -> LoraConfig | None:
    """The run's LoRA settings (None: full fine-tuning); bad values name their key. Empty
    `lora.targets` means every projection of the architecture."""
    lora = config.lora
    if lora.rank == 0:
        return None
    if lora.rank < 0:
        raise UserInputError(f"lora.rank={lora.rank}: must be >= 0 (0 = no LoRA)")
    if not lora.alpha > 0:
        raise UserInputError(f"lora.alpha={lora.alpha}: must be > 0")
    arch = arch or architecture(config)
    targets = lora.targets or arch.lora_default_targets
    try:
        settings = LoraConfig(lora.rank, float(lora.alpha), float(lora.dropout), targets)
    except ValueError as e:
        raise UserInputError(f"lora: {e}") from e
    # The targets must match something: a typo would otherwise train nothing at all.
    if not arch.lora_matches(settings.targets):
        raise UserInputError(
            f"lora.targets={settings.targets!r} matches no projection of this {arch.name} "
            f"model; its projections are {', '.join(arch.lora_projections)}"
        )
    return settings


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    m = config.model
    arch = architecture(config)
    overrides = dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat_policy=m.remat_policy,
        lora=lora_config(config, arch),
        scan_layers=m.scan_layers,
        attention_impl=m.attention_impl or None,
    )
    overrides.update(_dropout(config, arch))
    if m.init == "hf":
        source = str(Path(m.hf_path) / "config.json")
        model = arch.config_from_hf(hf.read_hf_config(m.hf_path), source, **overrides)
        # Pruning at import: only the bottom N layers are ever read from the checkpoint.
        return pruned_config(model, m.prune_layers)
    return LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim or None,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        **overrides,
    )


def _dropout(config: ml_collections.ConfigDict, arch: Architecture) -> dict[str, float]:
    """`model.dropout` / `model.attention_dropout` as config overrides; a negative value
    means the checkpoint's own rate (BERT's config; none for a family without dropout)."""
    m = config.model
    rates = {"hidden_dropout": float(m.dropout), "attention_dropout": float(m.attention_dropout)}
    if arch.checkpoint_dropout is None:
        if any(rate > 0 for rate in rates.values()):
            raise UserInputError(
                f"model.dropout={m.dropout}, model.attention_dropout={m.attention_dropout}: "
                f"{arch.name} models train without dropout of their own (set lora.dropout)"
            )
        return {}
    own = arch.checkpoint_dropout(hf.read_hf_config(m.hf_path)) if m.init == "hf" else {}
    return {key: own.get(key, 0.0) if rate < 0 else rate for key, rate in rates.items()}


def pooling_mode(config: ml_collections.ConfigDict) -> str:
    """`model.pooling`, with "auto" resolved: the HF checkpoint's own pooling (its
    sentence-transformers or jaxembed files: CLS for BGE, mean for MiniLM), else mean. A
    reranker always mean-pools."""
    m = config.model
    if m.pooling != "auto":
        return m.pooling
    if m.task == "reranker" or m.init != "hf":
        return "mean"
    from jaxembed.models.encoder import read_pooling_settings

    return read_pooling_settings(m.hf_path).mode


def check_lengths(config: ml_collections.ConfigDict, model: ModelConfig) -> None:
    """The configured lengths fit the model (BERT's learned position table ends)."""
    limit = architectures.for_config(model).max_length(model)
    if limit is None:
        return
    for key in ("query_max_length", "passage_max_length"):
        value = config.data[key]
        if value > limit:
            raise UserInputError(
                f"data.{key}={value} exceeds the model's max_position_embeddings {limit}"
            )


def pruned_config(config: ModelConfig, num_layers: int | None) -> ModelConfig:
    """`config` keeping only its bottom `num_layers` layers (None or 0: all of them)."""
    if not num_layers:
        return config
    if not 1 <= num_layers <= config.num_layers:
        raise UserInputError(
            f"cannot keep {num_layers} layers of a {config.num_layers}-layer checkpoint"
        )
    return dataclasses.replace(config, num_layers=num_layers)
