"""The architecture registry: the one place that maps HF `model_type`s and config types to
their family's `Architecture` (models/architectures/base.py).

The module-level `param_shapes`, `init_params`, `adapter_shapes` and `init_adapters` take any
registered config and dispatch on its type.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxembed.errors import UserInputError
from jaxembed.models.architectures.base import Architecture, HFExportClasses, WeightMap
from jaxembed.models.architectures.bert import BERT
from jaxembed.models.architectures.llama import LLAMA
from jaxembed.models.bert import BertConfig
from jaxembed.models.llama import LlamaConfig

ARCHITECTURES: tuple[Architecture, ...] = (LLAMA, BERT)
ModelConfig = LlamaConfig | BertConfig
SUPPORTED_MODEL_TYPES = tuple(t for a in ARCHITECTURES for t in a.model_types)

__all__ = [
    "ARCHITECTURES",
    "BERT",
    "LLAMA",
    "SUPPORTED_MODEL_TYPES",
    "Architecture",
    "HFExportClasses",
    "ModelConfig",
    "WeightMap",
    "adapter_shapes",
    "config_from_hf",
    "for_config",
    "for_model_type",
    "init_adapters",
    "init_params",
    "param_shapes",
]


def for_config(config: Any) -> Architecture:
    for arch in ARCHITECTURES:
        if type(config) is arch.config_type:
            return arch
    raise TypeError(f"no architecture for config type {type(config).__name__}")


def for_model_type(model_type: Any, source: str = "config.json") -> Architecture:
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise UserInputError(
        f"{source}: model_type {model_type!r} is not supported "
        f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides: Any) -> Any:
    """The config of whichever supported architecture `model_type` names; unsupported
    features are errors, never silently ignored."""
    arch = for_model_type(hf.get("model_type"), source)
    return arch.config_from_hf(hf, source, **overrides)


def param_shapes(config: Any) -> Any:
    return for_config(config).param_shapes(config)


def adapter_shapes(config: Any) -> Any:
    return for_config(config).adapter_shapes(config)


def init_params(config: Any, rng: jax.Array) -> Any:
    return for_config(config).init_params(config, rng)


def init_adapters(config: Any, rng: jax.Array) -> Any:
    return for_config(config).init_adapters(config, rng)
