"""The BERT family (HF `BertModel`, e.g. all-MiniLM-L6-v2, BGE-small, E5-small): HF config
and weights ⇄ `BertConfig`.

BERT is bidirectional as it is, so an export is a stock `BertModel` directory (no shipped
modeling file) that `AutoModel` and `SentenceTransformer` load without trust_remote_code.
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
from jaxembed.models.bert import ACTIVATIONS, BertConfig, BertModel

# PEFT's names for the same six projections: query, key, value, dense (three of them).
ALL_PROJECTIONS = r"(query|key|value|output|intermediate)$"
LORA_PROJECTIONS = tuple(f"layers/attention/{p}" for p in ("query", "key", "value", "output")) + (
    "layers/intermediate",
    "layers/output",
)


def checkpoint_dropout(hf: dict[str, Any]) -> dict[str, float]:
    """The rates HF's BertModel trains with (transformers' defaults where unset)."""
    return dict(
        hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
    )


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides: Any) -> BertConfig:
    """Translate a HF BERT config; optional keys default as in transformers' `BertConfig`."""
    if hf.get("model_type") != "bert":
        raise UserInputError(f"{source}: model_type {hf.get('model_type')!r} is not 'bert'")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UserInputError(
            f"{source}: hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)})"
        )
    # transformers v4 also had relative_key(_query) position embeddings; v5 dropped them.
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise UserInputError(
            f"{source}: position_embedding_type {position_type!r} is not supported (absolute)"
        )
    for key in ("is_decoder", "add_cross_attention"):
        if hf.get(key):
            raise UserInputError(f"{source}: {key}=true is not supported (encoders only)")
    settings: dict[str, Any] = hf_dimensions(hf, source)
    if settings["hidden_size"] % settings["num_heads"]:
        raise UserInputError(
            f"{source}: hidden_size {settings['hidden_size']} is not a multiple of "
            f"num_attention_heads {settings['num_heads']}"
        )
    settings.update(
        max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        hidden_act=act,
    )
    settings.update(overrides)
    try:
        return BertConfig(**settings)
    except ValueError as e:
        raise UserInputError(f"{source}: {e}") from e


def weight_maps(config: BertConfig) -> list[WeightMap]:
    """HF Linear weights are [out, in]; ours are [in, out] with heads split out. The pooler
    and `embeddings.position_ids` in some checkpoints are not part of the backbone."""
    h, m = config.hidden_size, config.intermediate_size
    n, d = config.num_heads, config.resolved_head_dim
    emb, layer = "bert.embeddings.", "bert.encoder.layer.{i}."
    maps = [
        WeightMap(("word_embeddings", "embedding"), emb + "word_embeddings.weight", False, same,
                  (config.vocab_size, h)),
        WeightMap(("position_embeddings", "embedding"), emb + "position_embeddings.weight",
                  False, same, (config.max_position_embeddings, h)),
        WeightMap(("token_type_embeddings", "embedding"), emb + "token_type_embeddings.weight",
                  False, same, (config.type_vocab_size, h)),
        WeightMap(("layers", "attention", "output", "kernel"),
                  layer + "attention.output.dense.weight", True,
                  lambda w: w.T.reshape(n, d, h), (h, h)),
        WeightMap(("layers", "attention", "output", "bias"),
                  layer + "attention.output.dense.bias", True, same, (h,)),
        WeightMap(("layers", "intermediate", "kernel"), layer + "intermediate.dense.weight",
                  True, transpose, (m, h)),
        WeightMap(("layers", "intermediate", "bias"), layer + "intermediate.dense.bias",
                  True, same, (m,)),
        WeightMap(("layers", "output", "kernel"), layer + "output.dense.weight", True, transpose,
                  (h, m)),
        WeightMap(("layers", "output", "bias"), layer + "output.dense.bias", True, same, (h,)),
    ]  # fmt: skip
    for ours, theirs, per_layer in (
        (("embeddings_norm",), emb + "LayerNorm.", False),
        (("layers", "attention_norm"), layer + "attention.output.LayerNorm.", True),
        (("layers", "output_norm"), layer + "output.LayerNorm.", True),
    ):
        for param, suffix in (("scale", "weight"), ("bias", "bias")):
            maps.append(WeightMap(ours + (param,), theirs + suffix, per_layer, same, (h,)))
    for name in ("query", "key", "value"):
        attn = ("layers", "attention", name)
        maps += [
            WeightMap(attn + ("kernel",), f"{layer}attention.self.{name}.weight", True,
                      lambda w: w.T.reshape(h, n, d), (h, h)),
            WeightMap(attn + ("bias",), f"{layer}attention.self.{name}.bias", True,
                      lambda w: w.reshape(n, d), (h,)),
        ]  # fmt: skip
    return maps


def hf_config_fields(config: BertConfig, model_type: str) -> dict[str, Any]:
    """transformers config kwargs expressing `config` (a model trained from scratch)."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
    )


BERT_RERANKER_CLASS = "MeanPoolBertForSequenceClassification"

BERT = Architecture(
    name="bert",
    config_type=BertConfig,
    model_types=("bert",),
    module=BertModel,
    config_from_hf=config_from_hf,
    weight_maps=weight_maps,
    base_prefix="bert.",
    probe="embeddings.word_embeddings.weight",
    export_model_type=lambda config: "bert",
    hf_config_fields=hf_config_fields,
    export_classes=lambda model_type: HFExportClasses(("BertModel",)),
    # BertForSequenceClassification scores CLS through its pooler, not jaxembed's mean-pooled
    # head: the export ships the head's class in the modeling file.
    reranker_export_classes=lambda model_type: HFExportClasses(
        (BERT_RERANKER_CLASS,),
        {"AutoModelForSequenceClassification": f"{MODELING_FILE[:-3]}.{BERT_RERANKER_CLASS}"},
    ),
    lora_projections=LORA_PROJECTIONS,
    lora_default_targets=ALL_PROJECTIONS,
    max_length=lambda config: config.max_position_embeddings,
    checkpoint_dropout=checkpoint_dropout,
)
