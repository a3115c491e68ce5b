"""Hugging Face checkpoints ⇄ jaxembed params (import half).

A local HF directory (config.json, safetensors weights, tokenizer files) of model_type
llama, mistral or qwen2 becomes a `LlamaConfig`, of model_type bert a `BertConfig`, and a
params pytree. Each parameter is built with `jax.make_array_from_callback`, so every device
reads only its own shard from the memory-mapped files: no device (and no host buffer) ever
holds a full extra copy. `architecture(config)` is the one place that knows which module,
param shapes and weight map go with each config type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxembed.errors import UserInputError
from jaxembed.models import bert, llama
from jaxembed.models.bert import BertConfig, BertModel
from jaxembed.models.llama import LlamaConfig, LlamaModel
from jaxembed.safetensors_io import SafetensorsCheckpoint
from jaxembed.sharding import param_shardings

LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_MODEL_TYPES = LLAMA_MODEL_TYPES + ("bert",)
ModelConfig = LlamaConfig | BertConfig
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"{directory}: model directory does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise UserInputError(f"{path}: missing (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: invalid JSON ({e})") from e


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


def llama_config_from_hf(
    hf: dict[str, Any], source: str = "config.json", **overrides: Any
) -> LlamaConfig:
    """Translate a HF config dict; unsupported features are errors, never silently ignored."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_MODEL_TYPES:
        raise UserInputError(
            f"{source}: model_type {model_type!r} is not a Llama-family model "
            f"(supported: {', '.join(LLAMA_MODEL_TYPES)})"
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
    try:
        settings = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        )
    except KeyError as e:
        raise UserInputError(f"{source}: missing key {e.args[0]!r}") from e
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


def bert_config_from_hf(
    hf: dict[str, Any], source: str = "config.json", **overrides: Any
) -> BertConfig:
    """Translate a HF BERT config; optional keys default as in transformers' `BertConfig`."""
    if hf.get("model_type") != "bert":
        raise UserInputError(f"{source}: model_type {hf.get('model_type')!r} is not 'bert'")
    act = hf.get("hidden_act", "gelu")
    if act not in bert.ACTIVATIONS:
        raise UserInputError(
            f"{source}: hidden_act {act!r} is not supported ({', '.join(bert.ACTIVATIONS)})"
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
    try:
        settings = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
        )
    except KeyError as e:
        raise UserInputError(f"{source}: missing key {e.args[0]!r}") from e
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


def config_from_hf(
    hf: dict[str, Any], source: str = "config.json", **overrides: Any
) -> ModelConfig:
    """The config of whichever supported architecture `model_type` names."""
    model_type = hf.get("model_type")
    if model_type == "bert":
        return bert_config_from_hf(hf, source, **overrides)
    if model_type in LLAMA_MODEL_TYPES:
        return llama_config_from_hf(hf, source, **overrides)
    raise UserInputError(
        f"{source}: model_type {model_type!r} is not supported "
        f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


# --- weight mapping ---------------------------------------------------------------------


@dataclass(frozen=True)
class WeightMap:
    """One jaxembed param ⇄ one HF tensor (one per layer when `per_layer`)."""

    path: tuple[str, ...]
    hf_name: str  # with "{i}" for the layer index
    per_layer: bool
    to_ours: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _t(w: np.ndarray) -> np.ndarray:
    return w.T


def llama_weight_maps(config: LlamaConfig) -> list[WeightMap]:
    """HF Linear weights are [out, in]; ours are [in, out] with heads split out."""
    h, d = config.hidden_size, config.resolved_head_dim
    nq, nkv, inter = config.num_heads, config.num_kv_heads, config.intermediate_size
    layer = "model.layers.{i}."
    maps = [
        WeightMap(("embed_tokens", "embedding"), "model.embed_tokens.weight", False, _same,
                  (config.vocab_size, h)),
        WeightMap(("norm", "scale"), "model.norm.weight", False, _same, (h,)),
        WeightMap(("layers", "self_attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight",
                  True, lambda w: w.T.reshape(nq, d, h), (h, nq * d)),
    ]  # fmt: skip
    for norm in ("input_layernorm", "post_attention_layernorm"):
        maps.append(
            WeightMap(("layers", norm, "scale"), f"{layer}{norm}.weight", True, _same, (h,))
        )
    for name, shape in (
        ("gate_proj", (inter, h)),
        ("up_proj", (inter, h)),
        ("down_proj", (h, inter)),
    ):
        maps.append(
            WeightMap(
                ("layers", "mlp", name, "kernel"), f"{layer}mlp.{name}.weight", True, _t, shape
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
            WeightMap(("lm_head", "kernel"), "lm_head.weight", False, _t, (config.vocab_size, h))
        )
    return maps


def bert_weight_maps(config: BertConfig) -> list[WeightMap]:
    """HF Linear weights are [out, in]; ours are [in, out] with heads split out. The pooler
    and `embeddings.position_ids` in some checkpoints are not part of the backbone."""
    h, m = config.hidden_size, config.intermediate_size
    n, d = config.num_heads, config.resolved_head_dim
    emb, layer = "bert.embeddings.", "bert.encoder.layer.{i}."
    maps = [
        WeightMap(("word_embeddings", "embedding"), emb + "word_embeddings.weight", False, _same,
                  (config.vocab_size, h)),
        WeightMap(("position_embeddings", "embedding"), emb + "position_embeddings.weight",
                  False, _same, (config.max_position_embeddings, h)),
        WeightMap(("token_type_embeddings", "embedding"), emb + "token_type_embeddings.weight",
                  False, _same, (config.type_vocab_size, h)),
        WeightMap(("layers", "attention", "output", "kernel"),
                  layer + "attention.output.dense.weight", True,
                  lambda w: w.T.reshape(n, d, h), (h, h)),
        WeightMap(("layers", "attention", "output", "bias"),
                  layer + "attention.output.dense.bias", True, _same, (h,)),
        WeightMap(("layers", "intermediate", "kernel"), layer + "intermediate.dense.weight",
                  True, _t, (m, h)),
        WeightMap(("layers", "intermediate", "bias"), layer + "intermediate.dense.bias",
                  True, _same, (m,)),
        WeightMap(("layers", "output", "kernel"), layer + "output.dense.weight", True, _t, (h, m)),
        WeightMap(("layers", "output", "bias"), layer + "output.dense.bias", True, _same, (h,)),
    ]  # fmt: skip
    for ours, theirs, per_layer in (
        (("embeddings_norm",), emb + "LayerNorm.", False),
        (("layers", "attention_norm"), layer + "attention.output.LayerNorm.", True),
        (("layers", "output_norm"), layer + "output.LayerNorm.", True),
    ):
        for param, suffix in (("scale", "weight"), ("bias", "bias")):
            maps.append(WeightMap(ours + (param,), theirs + suffix, per_layer, _same, (h,)))
    for name in ("query", "key", "value"):
        attn = ("layers", "attention", name)
        maps += [
            WeightMap(attn + ("kernel",), f"{layer}attention.self.{name}.weight", True,
                      lambda w: w.T.reshape(h, n, d), (h, h)),
            WeightMap(attn + ("bias",), f"{layer}attention.self.{name}.bias", True,
                      lambda w: w.reshape(n, d), (h,)),
        ]  # fmt: skip
    return maps


@dataclass(frozen=True)
class Architecture:
    """What goes with one config type: its module, param shapes and HF weight names.

    Weight maps name tensors as the task-head checkpoints do (`base_prefix` first, e.g.
    "model." of LlamaForCausalLM); a bare-model checkpoint has no prefix, which `probe` (a
    tensor every checkpoint of the architecture holds, unprefixed) tells apart.
    """

    module: type[nn.Module]
    param_shapes: Callable[[Any], Any]
    weight_maps: Callable[[Any], list[WeightMap]]
    base_prefix: str
    probe: str


ARCHITECTURES: dict[type, Architecture] = {
    LlamaConfig: Architecture(
        LlamaModel, llama.param_shapes, llama_weight_maps, "model.", "embed_tokens.weight"
    ),
    BertConfig: Architecture(
        BertModel,
        bert.param_shapes,
        bert_weight_maps,
        "bert.",
        "embeddings.word_embeddings.weight",
    ),
}


def architecture(config: ModelConfig) -> Architecture:
    try:
        return ARCHITECTURES[type(config)]
    except KeyError:
        raise TypeError(f"no architecture for config type {type(config).__name__}") from None


def weight_maps(config: ModelConfig) -> list[WeightMap]:
    return architecture(config).weight_maps(config)


def _resolve_prefix(checkpoint: SafetensorsCheckpoint, arch: Architecture) -> str:
    """Checkpoints of a bare model have no prefix; task-head ones ("model.", "bert.") do."""
    for prefix in (arch.base_prefix, ""):
        if prefix + arch.probe in checkpoint:
            return prefix
    raise UserInputError(
        f"{checkpoint.directory}: no {arch.probe} or {arch.base_prefix}{arch.probe} tensor"
    )


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_params(
    directory: str | Path,
    config: ModelConfig,
    mesh: Mesh | None = None,
    shardings: Any = None,
) -> dict[str, Any]:
    """Read HF safetensors into the params pytree, each array built shard by shard."""
    directory = Path(directory)
    checkpoint = SafetensorsCheckpoint(directory)
    arch = architecture(config)
    prefix = _resolve_prefix(checkpoint, arch)
    abstract = arch.param_shapes(config)
    if shardings is None:
        if mesh is None:
            device = jax.devices()[0]
            shardings = jax.tree_util.tree_map(
                lambda _: jax.sharding.SingleDeviceSharding(device),
                abstract,
                is_leaf=lambda x: isinstance(x, nn.Partitioned),
            )
        else:
            shardings = param_shardings(abstract, mesh)
    unboxed = nn.meta.unbox(abstract)
    dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
    params: dict[str, Any] = {}
    for wmap in arch.weight_maps(config):
        names = _hf_names(wmap, arch.base_prefix, prefix, config.num_layers)
        expected = wmap.hf_shape
        for name in names:
            if name not in checkpoint:
                raise UserInputError(f"{directory}: weight {name!r} is missing from the checkpoint")
            if checkpoint.shape(name) != expected:
                raise UserInputError(
                    f"{checkpoint.location(name)}: weight {name!r} has shape "
                    f"{checkpoint.shape(name)}, expected {expected} from config.json"
                )
        target = _lookup(unboxed, wmap.path)
        sharding = _lookup(shardings, wmap.path)
        _set_path(
            params,
            wmap.path,
            _build_array(checkpoint, names, wmap, target.shape, dtype, sharding),
        )
    return params


def _hf_names(wmap: WeightMap, base_prefix: str, prefix: str, num_layers: int) -> list[str]:
    name = wmap.hf_name
    if name.startswith(base_prefix):
        name = prefix + name[len(base_prefix) :]
    if wmap.per_layer:
        return [name.format(i=i) for i in range(num_layers)]
    return [name]


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _build_array(
    checkpoint: SafetensorsCheckpoint,
    names: list[str],
    wmap: WeightMap,
    shape: tuple[int, ...],
    dtype: np.dtype,
    sharding: NamedSharding,
) -> jax.Array:
    def read(index: tuple[slice, ...]) -> np.ndarray:
        if wmap.per_layer:
            layers = range(len(names))[index[0]]
            return np.stack(
                [np.asarray(wmap.to_ours(checkpoint.get(names[i])))[index[1:]] for i in layers]
            ).astype(dtype)
        return np.asarray(wmap.to_ours(checkpoint.get(names[0]))[index]).astype(dtype)

    return jax.make_array_from_callback(shape, sharding, read)


def find_tokenizer_files(directory: Path) -> list[str]:
    return [name for name in TOKENIZER_FILES if (Path(directory) / name).is_file()]


def load_tokenizer(directory: str | Path) -> Any:
    """The directory's HF fast tokenizer, offline."""
    directory = Path(directory)
    if not find_tokenizer_files(directory):
        raise UserInputError(
            f"{directory}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # tokenizer.json is the exact pipeline; AutoTokenizer may rebuild a model-specific one
    # from vocab/merges instead (transformers v5 does for qwen2), so read the file as it is.
    loader = PreTrainedTokenizerFast if (directory / "tokenizer.json").is_file() else AutoTokenizer
    try:
        return loader.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{directory}: cannot load tokenizer ({e})") from e
