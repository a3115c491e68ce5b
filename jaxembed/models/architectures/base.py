"""What an architecture family is to the rest of jaxembed: one `Architecture` record.

Training, `plan`, export, merge, PEFT and mining reach a family only through this record
(found by `jaxembed.models.architectures.for_config` / `for_model_type`), so adding a family
is its own module plus one line in the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.models.lora import COLLECTION as LORA_COLLECTION


@dataclass(frozen=True)
class WeightMap:
    """One jaxembed param ⇄ one HF tensor (one per layer when `per_layer`); the export
    inverts `to_ours` from the same record, so import and export cannot drift apart."""

    path: tuple[str, ...]
    hf_name: str  # with "{i}" for the layer index
    per_layer: bool
    to_ours: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def same(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def hf_dimensions(hf: dict[str, Any], source: str) -> dict[str, int]:
    """The sizes every family's HF config names alike; a missing one names its key."""
    try:
        return dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
        )
    except KeyError as e:
        raise UserInputError(f"{source}: missing key {e.args[0]!r}") from e


# The modeling code shipped into exported directories (jaxembed/hf_modeling/), which
# config.json's "auto_map" entries name.
MODELING_FILE = "modeling_bidirectional.py"


@dataclass(frozen=True)
class HFExportClasses:
    """How an exported directory names its model for transformers."""

    architectures: tuple[str, ...]
    # AutoModel class in the shipped modeling file (None: a stock transformers class).
    auto_map: dict[str, str] | None = None


@dataclass(frozen=True)
class Architecture:
    """Everything jaxembed knows about one family of backbones.

    Weight maps name tensors as the task-head checkpoints do (`base_prefix` first, e.g.
    "model." of LlamaForCausalLM); a bare-model checkpoint has no prefix, which `probe` (a
    tensor every checkpoint of the family holds, unprefixed) tells apart.
    """

    name: str
    config_type: type
    model_types: tuple[str, ...]  # HF `model_type`s it reads
    module: type[nn.Module]
    config_from_hf: Callable[..., Any]  # (hf dict, source, **overrides) -> config
    weight_maps: Callable[[Any], list[WeightMap]]
    base_prefix: str
    probe: str
    export_model_type: Callable[[Any], str]  # the HF model_type that expresses a config
    hf_config_fields: Callable[[Any, str], dict[str, Any]]  # transformers config kwargs
    export_classes: Callable[[str], HFExportClasses]  # per model_type, for the embedder
    # Per model_type, for a reranker (backbone + mean pooling + linear head); None: the
    # family has no HF class for jaxembed's reranker head yet.
    reranker_export_classes: Callable[[str], HFExportClasses | None]
    # Module paths of every LoRA-adaptable projection, and the default target regex.
    lora_projections: tuple[str, ...]
    lora_default_targets: str
    max_length: Callable[[Any], int | None]  # longest input the model can take (None: any)
    # HF config -> the `hidden_dropout` / `attention_dropout` it trains with (BERT's own
    # dropout); None: the family has no dropout of its own (the Llama family: LoRA's only).
    checkpoint_dropout: Callable[[dict[str, Any]], dict[str, float]] | None = None

    # --- parameters -----------------------------------------------------------------

    def _variable_shapes(self, config: Any) -> Any:
        ids = jax.numpy.zeros((1, 1), jax.numpy.int32)
        module = self.module(config)
        return jax.eval_shape(
            lambda: module.init(jax.random.PRNGKey(0), ids, method=module.init_all)
        )

    def param_shapes(self, config: Any) -> Any:
        """The params pytree as ShapeDtypeStructs (logical-axis boxes kept), no allocation."""
        return self._variable_shapes(without_lora(config))["params"]

    def adapter_shapes(self, config: Any) -> Any:
        """The LoRA adapter tree of `config.lora` as boxed ShapeDtypeStructs."""
        if config.lora is None:
            raise ValueError("the model config has no LoRA settings")
        return self._variable_shapes(config).get(LORA_COLLECTION, {})

    def init_params(self, config: Any, rng: jax.Array) -> Any:
        """Randomly initialized params (boxes removed); the same with or without LoRA."""
        module = self.module(without_lora(config))
        ids = jax.numpy.zeros((1, 1), jax.numpy.int32)
        return nn.meta.unbox(module.init(rng, ids, method=module.init_all)["params"])

    def init_adapters(self, config: Any, rng: jax.Array) -> Any:
        """Fresh LoRA adapters for `config.lora` (B = 0: the adapted model equals the base)."""
        if config.lora is None:
            raise ValueError("the model config has no LoRA settings")
        module = self.module(config)
        ids = jax.numpy.zeros((1, 1), jax.numpy.int32)
        variables = module.init(rng, ids, method=module.init_all)
        return nn.meta.unbox(variables.get(LORA_COLLECTION, {}))

    # --- FLOPs ----------------------------------------------------------------------

    # Configs count their own parameters: `layer_params()` (one layer) and
    # `outer_params()` (neither a layer nor an embedding table, e.g. final norms).

    def layer_flops_per_token(self, config: Any, seq_len: int, lora: bool = False) -> float:
        """Training FLOPs of one layer per token: 6 x its params (4 x with LoRA, whose frozen
        weights get no weight gradient; adapters are negligible) + the attention scores."""
        attention = 12 * config.num_heads * config.resolved_head_dim * seq_len
        return (4 if lora else 6) * config.layer_params() + attention

    def flops_per_token(self, config: Any, seq_len: int) -> float:
        """Training FLOPs per token of the whole backbone (PaLM's count, no recomputation;
        the embedding gather is free)."""
        lora = config.lora is not None
        outer = (4 if lora else 6) * config.outer_params()
        return outer + config.num_layers * self.layer_flops_per_token(config, seq_len, lora)

    # --- LoRA -----------------------------------------------------------------------

    def lora_matches(self, targets: str) -> list[str]:
        """The projections a target regex adapts (by module path)."""
        return [p for p in self.lora_projections if re.search(targets, p)]


def without_lora(config: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, lora=None) if config.lora is not None else config
