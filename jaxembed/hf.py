"""Hugging Face checkpoints → jaxembed params (import half), and the tokenizer.

A local HF directory (config.json, safetensors weights, tokenizer files) of any model_type
in the architecture registry (`jaxembed.models.architectures`) becomes that family's config
and a params pytree. Each parameter is built with `jax.make_array_from_callback`, so every
device reads only its own shard from the memory-mapped files: no device (and no host buffer)
ever holds a full extra copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxembed.errors import UserInputError
from jaxembed.models.architectures import (
    Architecture,
    ModelConfig,
    WeightMap,
    for_config,
)
from jaxembed.safetensors_io import SafetensorsCheckpoint
from jaxembed.sharding import param_shardings

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


def weight_maps(config: ModelConfig) -> list[WeightMap]:
    return for_config(config).weight_maps(config)


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
    arch = for_config(config)
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
