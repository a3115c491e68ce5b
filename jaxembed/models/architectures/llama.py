"""The Llama family (Llama 2/3, Mistral, Qwen2): HF config and weights ⇄ `LlamaConfig`.

One `LlamaModel` serves the three model_types: Qwen2 is Llama with q/k/v biases, Mistral is
Llama with a sliding window. Exported embedders point AutoModel at the shipped bidirectional
classes (`jaxembed/hf_modeling/modeling_bidirectional.py`).
"""

from __future__ import annotations

from typing import Any

from jaxembed.errors import UserInputError
from jaxembed.models.architectures.base import (
    MODELING_FILE,
    Architecture,
    HFExportClasses,
    WeightMap,
    hf_dimensions,
    same,
    transpose,
)
from jaxembed.models.llama import LlamaConfig, LlamaModel
from jaxembed.models.lora import ALL_PROJECTIONS

MODEL_TYPES = ("llama", "mistral", "qwen2")
# The shipped file's bidirectional backbone class per model_type.
MODELING_CLASSES = {
    "llama": "BidirectionalLlamaModel",
    "mistral": "BidirectionalMistralModel",
    "qwen2": "BidirectionalQwen2Model",
}
LORA_PROJECTIONS = tuple(f"layers/self_attn/{p}_proj" for p in "qkvo") + tuple(
    f"layers/mlp/{p}_proj" for p in ("gate", "up", "down")
)


def _rope_settings(hf: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    # transformers v5 writes `rope_parameters`; v4 wrote `rope_theta` and `rope_scaling`.
    params = hf.get("rope_parameters")
    if params is not None:
        theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(hf.get("rope_theta", 10000.0))
        scaling = dict(hf.get("rope_scaling") or {})
    if scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return theta, None
    return theta, tuple(sorted(scaling.items()))


def config_from_hf(
    hf: dict[str, Any], source: str = "config.json", **overrides: Any
) -> LlamaConfig:
    """Translate a HF config dict; unsupported features are errors, never silently ignored."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserInputError(
            f"{source}: model_type {model_type!r} is not a Llama-family model "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise UserInputError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (silu)")
    if hf.get("mlp_bias"):
        raise UserInputError(f"{source}: mlp_bias=true is not supported")
    if model_type == "llama" and hf.get("attention_bias"):
        raise UserInputError(
            f"{source}: attention_bias=true on llama (o_proj bias) is not supported"
        )
    sliding_window = hf.get("sliding_window") if model_type == "mistral" else None
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise UserInputError(f"{source}: qwen2 use_sliding_window=true is not supported")
    theta, scaling = _rope_settings(hf)
    settings: dict[str, Any] = hf_dimensions(hf, source)
    settings["num_kv_heads"] = int(hf.get("num_key_value_heads") or settings["num_heads"])
    settings.update(
        head_dim=hf.get("head_dim"),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        attention_bias=model_type == "qwen2",
        sliding_window=int(sliding_window) if sliding_window else None,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def weight_maps(config: LlamaConfig) -> list[WeightMap]:
    """HF Linear weights are [out, in]; ours are [in, out] with heads split out."""
    h, d = config.hidden_size, config.resolved_head_dim
    nq, nkv, inter = config.num_heads, config.num_kv_heads, config.intermediate_size
    layer = "model.layers.{i}."
    maps = [
        WeightMap(("embed_tokens", "embedding"), "model.embed_tokens.weight", False, same,
                  (config.vocab_size, h)),
        WeightMap(("norm", "scale"), "model.norm.weight", False, same, (h,)),
        WeightMap(("layers", "self_attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight",
                  True, lambda w: w.T.reshape(nq, d, h), (h, nq * d)),
    ]  # fmt: skip
    for norm in ("input_layernorm", "post_attention_layernorm"):
        maps.append(WeightMap(("layers", norm, "scale"), f"{layer}{norm}.weight", True, same, (h,)))
    for name, shape in (
        ("gate_proj", (inter, h)),
        ("up_proj", (inter, h)),
        ("down_proj", (h, inter)),
    ):
        maps.append(
            WeightMap(
                ("layers", "mlp", name, "kernel"),
                f"{layer}mlp.{name}.weight",
                True,
                transpose,
                shape,
            )
        )
    for name, heads in (("q_proj", nq), ("k_proj", nkv), ("v_proj", nkv)):
        attn = ("layers", "self_attn", name)
        maps.append(
            WeightMap(attn + ("kernel",), f"{layer}self_attn.{name}.weight", True,
                      lambda w, n=heads: w.T.reshape(h, n, d), (heads * d, h))
        )  # fmt: skip
        if config.attention_bias:
            maps.append(
                WeightMap(attn + ("bias",), f"{layer}self_attn.{name}.bias", True,
                          lambda w, n=heads: w.reshape(n, d), (heads * d,))
            )  # fmt: skip
    if config.with_lm_head and not config.tie_word_embeddings:
        maps.append(
            WeightMap(
                ("lm_head", "kernel"), "lm_head.weight", False, transpose, (config.vocab_size, h)
            )
        )
    return maps


def export_model_type(config: LlamaConfig) -> str:
    """The HF model_type whose config expresses `config` (q/k/v bias: qwen2; window: mistral)."""
    if config.attention_bias:
        return "qwen2"
    if config.sliding_window:
        return "mistral"
    return "llama"


def hf_config_fields(config: LlamaConfig, model_type: str) -> dict[str, Any]:
    """transformers config kwargs expressing `config` (a model trained from scratch)."""
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.resolved_head_dim,
        hidden_act="silu",
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling_dict,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    if model_type == "mistral":
        fields["sliding_window"] = config.sliding_window
    return fields


def export_classes(model_type: str) -> HFExportClasses:
    cls = MODELING_CLASSES[model_type]
    return HFExportClasses((cls,), {"AutoModel": f"{MODELING_FILE[:-3]}.{cls}"})


def reranker_export_classes(model_type: str) -> HFExportClasses:
    backbone = MODELING_CLASSES[model_type]
    cls = backbone.replace("Model", "ForSequenceClassification")
    module = MODELING_FILE[:-3]
    auto_map = {
        "AutoModel": f"{module}.{backbone}",
        "AutoModelForSequenceClassification": f"{module}.{cls}",
    }
    return HFExportClasses((cls,), auto_map)


LLAMA = Architecture(
    name="llama",
    config_type=LlamaConfig,
    model_types=MODEL_TYPES,
    module=LlamaModel,
    config_from_hf=config_from_hf,
    weight_maps=weight_maps,
    base_prefix="model.",
    probe="embed_tokens.weight",
    export_model_type=export_model_type,
    hf_config_fields=hf_config_fields,
    export_classes=export_classes,
    reranker_export_classes=reranker_export_classes,
    lora_projections=LORA_PROJECTIONS,
    lora_default_targets=ALL_PROJECTIONS,
    max_length=lambda config: None,  # RoPE: no position table to run past
)
