"""Orbax training checkpoints → Hugging Face directories (the export half of `jaxembed.hf`).

`jaxembed export --workdir DIR [--step N|latest] --output HF_DIR` writes a directory that
transformers (`AutoModel.from_pretrained(dir, trust_remote_code=True)`), sentence-transformers
(`SentenceTransformer(dir, trust_remote_code=True)`) and `jaxembed encode` all load as the same
bidirectional encoder:

- `config.json` of the source architecture (llama / mistral / qwen2), with an "auto_map" to
  the bidirectional modeling file copied beside it and a "jaxembed" section (pooling, prompt);
- safetensors weights, one sharded index above `max_shard_size`, each tensor produced from the
  checkpoint and written straight to disk: the names, layouts and shard plan come from
  `hf.weight_maps` (inverted here), so nothing holds a second full copy of the model;
- tokenizer files, sentence-transformers modules (pooling, normalize, query prompt) and a
  model card with the training config and metrics.

Everything is written into a temporary directory that is renamed over the output at the end.
The same writer serves `jaxembed.merge`, through the `TensorSource` interface.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections
import ml_dtypes
import numpy as np

from jaxembed import hf
from jaxembed.checkpoint_integrity import CorruptCheckpoint, check_array, saved_checksums
from jaxembed.config import RUN_CONFIG_NAME
from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_directory
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig, WeightMap
from jaxembed.models.architectures.llama import MODELING_FILE
from jaxembed.models.encoder import PoolingSettings
from jaxembed.models.lora import ADAPTER_A, ADAPTER_B, AdapterPair, low_rank_update
from jaxembed.progress import progress_bar
from jaxembed.prompts import format_query
from jaxembed.safetensors_io import INDEX_NAME, SINGLE_NAME

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_SAFETENSORS_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
}
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' "5GB"
TOKENIZER_COPY = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
)


# --- architecture -----------------------------------------------------------------------

# Settings that do not change what the weights mean: equal architectures may differ in them.
_NOT_ARCHITECTURE = {
    "dtype": "float32",
    "param_dtype": "float32",
    "remat_policy": "none",
    "scan_layers": True,
    "attention_impl": None,
    "with_lm_head": False,  # encoders never use (or export) an LM head
    "lora": None,  # adapters are merged into the weights they adapt
}


def canonical(config: ModelConfig) -> ModelConfig:
    """`config` with the non-architecture settings normalized: equal iff compatible."""
    names = {field.name for field in dataclasses.fields(config)}
    changes: dict[str, Any] = {k: v for k, v in _NOT_ARCHITECTURE.items() if k in names}
    if "head_dim" in names:
        changes["head_dim"] = config.resolved_head_dim
    return dataclasses.replace(config, **changes)


def architecture_difference(a: ModelConfig, b: ModelConfig) -> str | None:
    """The first field where two architectures differ, as `name: a vs b`; None if equal."""
    if type(a) is not type(b):
        return f"architecture: {type(a).__name__} vs {type(b).__name__}"
    a, b = canonical(a), canonical(b)
    for field in dataclasses.fields(a):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if va != vb:
            return f"{field.name}: {va!r} vs {vb!r}"
    return None


# --- tensors: names, layout, safetensors ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One tensor of the exported bare model (no "model." prefix, as `LlamaModel` saves)."""

    name: str
    wmap: WeightMap
    layer: int | None  # index into our stacked [layers, ...] param; None if not per layer


def hf_tensors(config: ModelConfig) -> list[HFTensor]:
    """Every backbone tensor, in `hf.weight_maps` order (map-major, then layer), named as
    the bare model (`LlamaModel`, `BertModel`) saves it: without the task-head prefix."""
    base_prefix = architectures.for_config(config).base_prefix
    out = []
    for wmap in hf.weight_maps(canonical(config)):
        name = wmap.hf_name.removeprefix(base_prefix)
        if wmap.per_layer:
            out += [HFTensor(name.format(i=i), wmap, i) for i in range(config.num_layers)]
        else:
            out.append(HFTensor(name, wmap, None))
    return out


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def our_shape(wmap: WeightMap, num_layers: int) -> tuple[int, ...]:
    """Our param's shape for `wmap` (stacked over layers when per layer), read off the map
    applied to an unwritten array: no pages touched, no JAX needed."""
    shape = wmap.to_ours(np.empty(wmap.hf_shape, np.uint8)).shape
    return ((num_layers,) if wmap.per_layer else ()) + tuple(shape)


def to_hf_layout(wmap: WeightMap, ours: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Invert `wmap.to_ours` without a second table of layouts: every map is a transpose or
    reshape, i.e. a view, so `to_ours(hf_array)` is a window onto `hf_array` that we fill."""
    out = np.empty(wmap.hf_shape, dtype)
    view = wmap.to_ours(out)
    if not isinstance(view, np.ndarray) or _root(view) is not out:
        raise TypeError(f"weight map of {wmap.hf_name} is not a view; cannot invert it")
    if view.shape != ours.shape:
        raise ValueError(f"{wmap.hf_name}: param shape {ours.shape}, expected {view.shape}")
    view[...] = ours  # casts (f32 → bf16 rounds to nearest even, as torch does)
    return out


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def parse_size(text: str | int) -> int:
    """`5GB`, `500MB`, `64KB` (decimal units, as transformers' max_shard_size) or bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserInputError(f"max shard size {text!r}: expected e.g. 5GB, 500MB or a byte count")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20}
    units["gib"] = 2**30
    size = int(float(match.group(1)) * units[(match.group(2) or "b").lower()])
    if size < 1:
        raise UserInputError(f"max shard size {text!r} must be positive")
    return size


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors per file, each file at most `max_shard_bytes` (a bigger tensor gets
    a file of its own), as transformers' `save_pretrained` splits."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(specs: Sequence[TensorSpec]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.name] = {
            "dtype": _SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment


def write_safetensors(
    directory: Path,
    specs: Sequence[TensorSpec],
    arrays: Iterable[np.ndarray],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_SIZE,
    desc: str = "write",
) -> list[str]:
    """Write `arrays` (produced lazily, in `specs` order) as `model.safetensors` or sharded
    files plus `model.safetensors.index.json`; each array is written and dropped in turn.
    Returns the file names."""
    shards = plan_shards(specs, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    produced: Iterator[np.ndarray] = iter(arrays)
    bar = progress_bar(total=len(specs), desc=desc, unit="tensor")
    for name, shard in zip(names, shards, strict=True):
        header = _header(shard)
        with open(directory / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for spec in shard:
                array = next(produced)
                if array.shape != spec.shape or array.dtype != spec.dtype:
                    raise ValueError(
                        f"{spec.name}: got {array.shape} {array.dtype}, "
                        f"planned {spec.shape} {spec.dtype}"
                    )
                f.write(np.ascontiguousarray(array).view(np.uint8).data)
                bar.update(1)
    bar.close()
    if next(produced, None) is not None:
        raise ValueError("more arrays than planned tensors")
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {
                s.name: n for n, shard in zip(names, shards, strict=True) for s in shard
            },
        }
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


# --- sources: where the tensors and the metadata come from --------------------------------


class TensorSource(Protocol):
    """A checkpoint read one HF tensor at a time (export: Orbax; merge: Orbax or HF)."""

    label: str  # for messages: the path the user gave
    model_type: str
    config: ModelConfig

    def check(self) -> None:
        """Every tensor present with the shape `config` implies; UserInputError otherwise."""

    def dtype(self) -> np.dtype:
        """The stored dtype of the weights."""

    def read(self, tensor: HFTensor) -> np.ndarray:
        """The tensor in HF layout; may be a read-only view of a mapping that lives as long as
        the returned array (drop it to release the file)."""

    def write_metadata(self, directory: Path, dtype: str, card_note: str = "") -> None:
        """config.json, modeling code, tokenizer, sentence-transformers files, model card."""


def checkpoint_steps(workdir: Path) -> list[int]:
    """Complete steps of a training workdir (Orbax renames a step directory into place only
    once it is whole, so digit-named directories are complete)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()
    )


def resolve_step(workdir: str | Path, step: str | int = "latest") -> tuple[Path, int]:
    """`WORKDIR/checkpoints/N` for `step` (a number or "latest"), or a clear error."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserInputError(f"{workdir}: workdir does not exist")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UserInputError(f"{workdir}: no complete checkpoints under {workdir / 'checkpoints'}")
    if str(step) == "latest":
        chosen = steps[-1]
    else:
        try:
            chosen = int(step)
        except ValueError:
            raise UserInputError(f"--step {step!r}: expected a number or 'latest'") from None
        if chosen not in steps:
            raise UserInputError(
                f"{workdir}: no checkpoint for step {chosen} (available: "
                f"{', '.join(map(str, steps))})"
            )
    return workdir / "checkpoints" / str(chosen), chosen


def open_run_step(
    workdir: Path,
    output: Path,
    step: str | int,
    overwrite: bool,
    config_spec: str | None,
    overrides: Sequence[str],
) -> tuple[Path, int, ml_collections.ConfigDict]:
    """What every export of a training step starts with: the output not in the way, the
    step's directory and number, and the run's config."""
    if output.exists() and not overwrite:
        raise UserInputError(f"{output}: already exists (pass --overwrite to replace it)")
    step_dir, chosen = resolve_step(workdir, step)
    return step_dir, chosen, load_run_config(workdir, config_spec, overrides)


def load_run_config(
    workdir: str | Path, config_spec: str | None = None, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """The training config of a workdir: `--config`/`--config.KEY=VALUE` as given to
    `jaxembed train`, else `WORKDIR/config.json`."""
    from jaxembed.config import apply_overrides, check_schema, default_config, load_config

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserInputError(f"{workdir}: workdir does not exist")
    saved = workdir / RUN_CONFIG_NAME
    if config_spec or overrides:
        config = load_config(config_spec) if config_spec else default_config()
    elif saved.is_file():
        try:
            loaded = ml_collections.ConfigDict(json.loads(saved.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise UserInputError(f"{saved}: not a JSON training config ({e})") from e
        check_schema(loaded, default_config(), str(saved))
        config = default_config()
        _update(config, loaded)
    else:
        raise UserInputError(
            f"{workdir}: no {RUN_CONFIG_NAME}; pass the training run's --config and "
            "--config.KEY=VALUE flags"
        )
    apply_overrides(config, overrides)
    return config


def _update(config: ml_collections.ConfigDict, values: ml_collections.ConfigDict) -> None:
    with config.ignore_type():
        for key, value in values.items():
            if isinstance(value, ml_collections.ConfigDict):
                _update(config[key], value)
            else:
                config[key] = tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass
class RunMetadata:
    """What an exported directory says besides the weights, from a training config."""

    model_type: str
    config: ModelConfig
    base_hf_config: dict[str, Any]  # the initial HF model's config.json ({} if random init)
    tokenizer_dir: Path
    pooling: PoolingSettings
    instruction: str
    max_seq_length: int
    run_config: ml_collections.ConfigDict
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: str = ""  # e.g. "workdir W, step N"

    @classmethod
    def from_run_config(cls, run_config: ml_collections.ConfigDict) -> RunMetadata:
        from jaxembed.models.build import model_config, pooling_mode

        m, d = run_config.model, run_config.data
        if m.init == "hf":
            base = hf.read_hf_config(m.hf_path)
            config = architectures.config_from_hf(base, str(Path(m.hf_path) / "config.json"))
            model_type = base["model_type"]
            tokenizer_dir = Path(m.hf_path)
        else:
            config = model_config(run_config)
            base, model_type = {}, architectures.for_config(config).export_model_type(config)
            if not d.tokenizer:
                raise UserInputError("data.tokenizer is empty: the export needs the tokenizer")
            tokenizer_dir = Path(d.tokenizer)
        if not hf.find_tokenizer_files(tokenizer_dir):
            raise UserInputError(f"{tokenizer_dir}: no tokenizer files to export")
        return cls(
            model_type=model_type,
            config=config,
            base_hf_config=base,
            tokenizer_dir=tokenizer_dir,
            pooling=PoolingSettings(pooling_mode(run_config), True, m.exclude_instruction),
            instruction=d.instruction,
            max_seq_length=max(d.query_max_length, d.passage_max_length),
            run_config=run_config,
        )

    def write(self, directory: Path, dtype: str, card_note: str = "") -> None:
        tokenizer = write_tokenizer(self.tokenizer_dir, directory)
        hf_config = hf_config_dict(
            self.model_type, self.config, self.base_hf_config, dtype, self.pooling, tokenizer
        )
        hf_config["jaxembed"]["query_prompt"] = self.query_prompt()
        (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if architectures.for_config(self.config).export_classes(self.model_type).auto_map:
            copy_modeling_file(directory)
        write_sentence_transformers(
            directory, self.config.hidden_size, self.pooling, self.query_prompt(),
            self.max_seq_length,
        )  # fmt: skip
        write_model_card(directory, self, dtype, card_note)

    def query_prompt(self) -> str:
        """The instruction prefix of queries ("" without an instruction)."""
        text, prefix_chars = format_query("", self.instruction or None)
        if text != text[:prefix_chars]:
            raise UserInputError(
                "the query template puts text after the query; sentence-transformers prompts "
                "are prefixes only"
            )
        return text[:prefix_chars]


class _NoStepMetadataWarning(logging.Filter):
    """Orbax warns that the item directory (`step/state`) lacks the step's metadata file,
    which lives one level up by design: not worth a warning on every export."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


class OrbaxSource:
    """Params of one training step, restored leaf by leaf (our stacked layout) as numpy."""

    def __init__(self, step_dir: Path, metadata: RunMetadata, label: str | None = None) -> None:
        import orbax.checkpoint as ocp

        self.step_dir = Path(step_dir)
        self.label = label or str(step_dir)
        self.meta = metadata
        self.model_type = metadata.model_type
        self.config = metadata.config
        self._path = (self.step_dir / "state").absolute()
        absl_log = logging.getLogger("absl")
        if not any(isinstance(f, _NoStepMetadataWarning) for f in absl_log.filters):
            absl_log.addFilter(_NoStepMetadataWarning())
        self._checkpointer = ocp.PyTreeCheckpointer()
        tree = checkpoint_tree(self._checkpointer, self._path)
        self._param_sources = param_sources(self.step_dir, tree)
        self._adapters = adapter_settings(tree, metadata.run_config, self._path)
        self._cached: tuple[tuple[str, ...], np.ndarray] | None = None
        self._checksums = saved_checksums(self.step_dir)

    def _find(self, path: tuple[str, ...], root: str = "params") -> tuple[Path, Any]:
        """(Orbax directory holding the leaf, its metadata), the metadata None if absent."""
        sources = self._param_sources if root == "params" else [(self._path, self._adapters[0])]
        for directory, tree in sources:
            node = _walk(tree, path)
            if node is not None:
                return directory, node
        return self._path, None

    def _leaf_metadata(self, path: tuple[str, ...], root: str = "params") -> Any:
        return self._find(path, root)[1]

    def check(self) -> None:
        for wmap in hf.weight_maps(canonical(self.config)):
            leaf = self._leaf_metadata(wmap.path)
            want = our_shape(wmap, self.config.num_layers)
            name = ".".join(wmap.path)
            if leaf is None:
                raise UserInputError(f"{self._path}: param {name} is missing from the checkpoint")
            if tuple(leaf.shape) != want:
                raise UserInputError(
                    f"{self._path}: param {name} has shape {tuple(leaf.shape)}, but the training "
                    f"config gives {want} (is this the run's config?)"
                )

    def dtype(self) -> np.dtype:
        first = hf.weight_maps(canonical(self.config))[0]
        return np.dtype(self._leaf_metadata(first.path).dtype)

    def _restore(self, path: tuple[str, ...], root: str = "params") -> np.ndarray:
        import orbax.checkpoint as ocp

        directory, leaf = self._find(path, root)
        item: dict[str, Any] = {}
        node = item
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
        args = ocp.args.PyTreeRestore(
            item={root: item},
            restore_args={root: _map_leaves(item, ocp.RestoreArgs(restore_type=np.ndarray))},
            partial_restore=True,
        )
        value = lookup(self._checkpointer.restore(directory, args=args)[root], path)
        if directory == self._path:  # the step's own arrays carry checksums; the base does not
            try:
                check_array(value, self._checksums, ".".join((root, *path)))
            except CorruptCheckpoint as e:
                raise UserInputError(
                    f"{self.label}: corrupt checkpoint, {e}; export another step (--step)"
                ) from None
        return value

    def _leaf(self, path: tuple[str, ...]) -> np.ndarray:
        """One param leaf, with its LoRA update merged in when the run trained adapters."""
        if self._cached is None or self._cached[0] != path:
            self._cached = None  # drop the previous leaf before reading the next
            leaf = self._restore(path)
            if self._adapters is not None and path[-1] == "kernel":
                leaf = self._merge_adapter(path, leaf)
            self._cached = (path, leaf)
        return self._cached[1]

    def _merge_adapter(self, path: tuple[str, ...], kernel: np.ndarray) -> np.ndarray:
        scale = self._adapters[1]
        owner = path[:-2]
        names = (path[-2] + ADAPTER_A, path[-2] + ADAPTER_B)
        if self._leaf_metadata((*owner, names[0]), "adapters") is None:
            return kernel
        a, b = (self._restore((*owner, name), "adapters") for name in names)
        update = low_rank_update(AdapterPair(path, a, b), scale)
        return (kernel.astype(np.float32) + update).astype(kernel.dtype)

    def read(self, tensor: HFTensor) -> np.ndarray:
        leaf = self._leaf(tensor.wmap.path)
        ours = leaf if tensor.layer is None else leaf[tensor.layer]
        return to_hf_layout(tensor.wmap, ours, leaf.dtype)

    def write_metadata(self, directory: Path, dtype: str, card_note: str = "") -> None:
        self.meta.write(directory, dtype, card_note)

    def close(self) -> None:
        self._cached = None
        self._checkpointer.close()


def checkpoint_tree(checkpointer: Any, path: Path) -> dict[str, Any]:
    """The metadata tree of the Orbax train state at `path`."""
    try:
        tree = checkpointer.metadata(path).item_metadata.tree
    except (FileNotFoundError, ValueError, OSError) as e:
        raise UserInputError(f"{path}: not a readable Orbax checkpoint ({e})") from e
    if "params" not in tree and "adapters" not in tree:
        raise UserInputError(f"{path}: Orbax checkpoint has no 'params'")
    return tree


def param_sources(step_dir: Path, tree: dict[str, Any]) -> list[tuple[Path, Any]]:
    """Where the params of training step `step_dir` live, in lookup order, as (Orbax
    directory, metadata tree): the step itself, then for a LoRA run the frozen base saved once
    in `WORKDIR/frozen_params` (see `jaxembed.checkpoint`)."""
    import orbax.checkpoint as ocp

    from jaxembed.checkpoint import FROZEN_DIR

    state = (step_dir / "state").absolute()
    sources = []
    if isinstance(tree.get("params"), dict) and tree["params"]:
        sources.append((state, tree["params"]))
    frozen = (step_dir.parent.parent / FROZEN_DIR).absolute()
    if tree.get("adapters") and frozen.is_dir():
        with ocp.PyTreeCheckpointer() as checkpointer:
            sources.append((frozen, checkpoint_tree(checkpointer, frozen)["params"]))
    if not sources:
        raise UserInputError(
            f"{state}: the checkpoint holds no base model params"
            + (f" and {frozen} is missing" if tree.get("adapters") else "")
        )
    return sources


def adapter_settings(
    tree: dict[str, Any], run_config: ml_collections.ConfigDict, label: Path
) -> tuple[Any, float] | None:
    """The checkpoint's LoRA adapter tree (metadata) and the run's scale alpha/rank, or None
    for a full fine-tuning run."""
    adapters = tree.get("adapters")
    if not adapters:
        return None
    lora = run_config.lora
    if lora.rank < 1:
        raise UserInputError(
            f"{label}: the checkpoint has LoRA adapters but the run config has lora.rank="
            f"{lora.rank} (is this the run's config?)"
        )
    return adapters, lora.alpha / lora.rank


def restore_numpy(
    step_dir: Path, run_config: ml_collections.ConfigDict, *, with_params: bool
) -> tuple[dict[str, Any], float]:
    """Whole trees of an Orbax training step as numpy: "params" (if `with_params`) and
    "adapters" (if the run trained LoRA adapters), with the adapters' scale (0 if none)."""
    import orbax.checkpoint as ocp

    path = (step_dir / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree = checkpoint_tree(checkpointer, path)
        adapters = adapter_settings(tree, run_config, path)
        restored: dict[str, Any] = {}
        if with_params:
            # Later sources fill in what earlier ones lack (a LoRA step's frozen base).
            params: dict[str, Any] = {}
            for directory, meta in reversed(param_sources(step_dir, tree)):
                params.update(_restore_roots(checkpointer, directory, {"params": meta})["params"])
            restored["params"] = params
        if adapters is not None:
            restored.update(_restore_roots(checkpointer, path, {"adapters": adapters[0]}))
        return restored, (adapters[1] if adapters else 0.0)
    finally:
        checkpointer.close()


def _restore_roots(checkpointer: Any, path: Path, roots: dict[str, Any]) -> dict[str, Any]:
    """The subtrees `roots` (metadata trees) of the Orbax pytree at `path`, as numpy."""
    import orbax.checkpoint as ocp

    args = ocp.args.PyTreeRestore(
        item=roots,
        restore_args={
            k: _map_leaves(v, ocp.RestoreArgs(restore_type=np.ndarray)) for k, v in roots.items()
        },
        partial_restore=True,
    )
    return checkpointer.restore(path, args=args)


def _walk(tree: Any, path: tuple[str, ...]) -> Any:
    """The node at `path` of a nested dict, or None where the path leaves it."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _map_leaves(tree: dict[str, Any], value: Any) -> dict[str, Any]:
    return {k: _map_leaves(v, value) if isinstance(v, dict) else value for k, v in tree.items()}


# --- metadata files ---------------------------------------------------------------------


def hf_config_dict(
    model_type: str,
    config: ModelConfig,
    base: dict[str, Any],
    dtype: str,
    pooling: PoolingSettings,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """config.json of `model_type` for `config`, built by transformers' own config class (so
    the installed transformers loads it). Llama-family models point AutoModel at the shipped
    bidirectional class; BERT is bidirectional as it is (plain `BertModel`)."""
    from transformers import AutoConfig

    arch = architectures.for_config(config)
    if model_type not in arch.model_types:
        raise UserInputError(f"model_type {model_type!r} cannot be exported as {arch.name}")
    if base:
        fields = {k: v for k, v in base.items() if k not in ("model_type", "auto_map")}
    else:
        fields = arch.hf_config_fields(config, model_type)
        if tokenizer is not None:
            for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
                fields[key] = getattr(tokenizer, key, None)
    out = AutoConfig.for_model(model_type, **fields).to_dict()
    out.pop("torch_dtype", None)
    out.pop("auto_map", None)
    classes = arch.export_classes(model_type)
    out.update(architectures=list(classes.architectures))
    if classes.auto_map:
        out.update(auto_map=dict(classes.auto_map))
    out.update(
        dtype=dtype,
        use_cache=False,
        jaxembed={"pooling": dataclasses.asdict(pooling), "attention": "bidirectional"},
    )
    # The importer must read back exactly the architecture we wrote.
    difference = architecture_difference(architectures.config_from_hf(out), config)
    if difference:
        raise AssertionError(f"config.json does not round-trip: {difference}")
    return out


def copy_modeling_file(directory: Path) -> None:
    shutil.copyfile(
        Path(__file__).parent / "hf_modeling" / MODELING_FILE, directory / MODELING_FILE
    )


def write_tokenizer(source: Path, directory: Path) -> Any:
    """Copy the tokenizer files. tokenizer.json is pinned as the tokenizer (transformers v5
    would otherwise rebuild some model-specific tokenizers from vocab files, tokenizing
    differently from what training saw), and a missing pad token is set to EOS so
    sentence-transformers can pad (padding is masked out, so its id never matters)."""
    for name in TOKENIZER_COPY:
        if (source / name).is_file():
            shutil.copyfile(source / name, directory / name)
    tokenizer = hf.load_tokenizer(source)
    config_path = directory / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if (directory / "tokenizer.json").is_file():
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserInputError(f"{source}: tokenizer has no pad, eos or unk token to pad with")
        tok_config["pad_token"] = fallback
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
    return tokenizer


def write_sentence_transformers(
    directory: Path, hidden_size: int, pooling: PoolingSettings, query_prompt: str, max_len: int
) -> None:
    """modules.json (Transformer → Pooling → Normalize) in the module names that every
    sentence-transformers since 2.x resolves, the pooling config and the query prompt."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")]
    if pooling.normalize:
        kinds.append(("2_Normalize", "Normalize"))
        (directory / "2_Normalize").mkdir()
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / "1_Pooling").mkdir()
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling.mode == "first",
        "pooling_mode_mean_tokens": pooling.mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling.mode == "last",
        # ST drops the prompt's tokens by count; jaxembed by character offset (same result
        # unless the tokenizer merges across the prompt boundary).
        "include_prompt": not pooling.exclude_instruction,
    }
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling_config, indent=2) + "\n"
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_len, "do_lower_case": False}, indent=2) + "\n"
    )
    st_config: dict[str, Any] = {"similarity_fn_name": "cosine", "default_prompt_name": None}
    st_config["prompts"] = {"query": query_prompt, "document": ""} if query_prompt else {}
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps(st_config, indent=2) + "\n"
    )


def read_metrics(workdir: Path, step: int) -> dict[str, Any]:
    """The last training record at or before `step`, with the last held-out evaluation."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return {}
    train: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the card is informative only
        if not isinstance(record, dict) or record.get("step", step + 1) > step:
            continue
        train = record
        if any(k.startswith("eval_") for k in record):
            evaluation = {k: v for k, v in record.items() if k.startswith("eval_")}
            evaluation["eval_step"] = record["step"]
    return {**{k: v for k, v in train.items() if not k.startswith("eval_")}, **evaluation}


def write_model_card(directory: Path, meta: RunMetadata, dtype: str, note: str = "") -> None:
    base = meta.base_hf_config.get("_name_or_path") or (
        meta.run_config.model.hf_path if meta.run_config.model.init == "hf" else ""
    )
    prompt = meta.query_prompt()
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, jaxembed]",
        "---",
        "",
        f"# Bidirectional {meta.model_type} text encoder (jaxembed)",
        "",
        f"A bidirectional {meta.model_type} text encoder trained with jaxembed"
        + (f" ({meta.origin})" if meta.origin else "")
        + f", exported in {dtype}. Pooling: {meta.pooling.mode}"
        + (", instruction excluded" if meta.pooling.exclude_instruction else "")
        + (", L2-normalized." if meta.pooling.normalize else "."),
        "",
    ]
    if base:
        lines += [f"Initialized from `{base}`.", ""]
    if note:
        lines += [note, ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("PATH", trust_remote_code=True)',
        'queries = model.encode(["..."], prompt_name="query")' if prompt else "",
        'documents = model.encode(["..."])',
        "```",
        "",
        "`transformers.AutoModel.from_pretrained(PATH, trust_remote_code=True)` gives the "
        "bidirectional backbone (the modeling file is in this directory); "
        "`jaxembed encode --model PATH` reads it too.",
    ]
    if prompt:
        lines += ["", f"Queries are prefixed with `{json.dumps(prompt)}`; documents are not."]
    if meta.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in meta.metrics.items()]  # fmt: skip
    lines += ["", "## Training config", "", "```json", meta.run_config.to_json(indent=2), "```", ""]
    (directory / "README.md").write_text("\n".join(lines))


# --- the whole directory ----------------------------------------------------------------


def write_hf_directory(
    output: str | Path,
    metadata_source: TensorSource,
    tensors: Sequence[HFTensor],
    produce: Callable[[HFTensor], np.ndarray],
    dtype: str,
    *,
    overwrite: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    card_note: str = "",
    desc: str = "export",
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Metadata from `metadata_source`, then each tensor from `produce` cast to `dtype`, into
    a temporary directory renamed to `output` only when everything (including
    `before_commit`, e.g. a second output) succeeded."""
    if dtype not in EXPORT_DTYPES:
        raise UserInputError(f"--dtype {dtype!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    np_dtype = EXPORT_DTYPES[dtype]
    max_shard_bytes = parse_size(max_shard_size)
    specs = [TensorSpec(t.name, t.wmap.hf_shape, np_dtype) for t in tensors]
    output = Path(output)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        metadata_source.write_metadata(tmp, dtype, card_note)
        arrays = (np.asarray(produce(t)).astype(np_dtype, copy=False) for t in tensors)
        write_safetensors(tmp, specs, arrays, max_shard_bytes, desc=desc)
        if before_commit is not None:
            before_commit()
    return output


def export(
    workdir: str | Path,
    output: str | Path,
    *,
    step: str | int = "latest",
    dtype: str = "float32",
    overwrite: bool = False,
    config_spec: str | None = None,
    overrides: Sequence[str] = (),
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Export one training step of `workdir` as a Hugging Face directory at `output`."""
    workdir = Path(workdir)
    output = Path(output)
    if dtype not in EXPORT_DTYPES:
        raise UserInputError(f"--dtype {dtype!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    step_dir, chosen, run_config = open_run_step(
        workdir, output, step, overwrite, config_spec, overrides
    )
    meta = RunMetadata.from_run_config(run_config)
    meta.metrics = read_metrics(workdir, chosen)
    meta.origin = f"step {chosen} of {workdir.name}"
    source = OrbaxSource(step_dir, meta)
    try:
        source.check()
        write_hf_directory(
            output,
            source,
            hf_tensors(meta.config),
            source.read,
            dtype,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
        )
    finally:
        source.close()
    return output
