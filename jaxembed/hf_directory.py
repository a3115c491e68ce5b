"""Writing a Hugging Face directory from any `TensorSource` (an Orbax step, a merge): the
exported tensor names and layouts (the architecture's weight maps, inverted), config.json
through transformers' own config class, tokenizer files, sentence-transformers modules
(pooling, normalize, query prompt) and a model card; everything into a temporary directory
renamed over the output at the end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections
import ml_dtypes
import numpy as np

from jaxembed import hf
from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_directory
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig, WeightMap
from jaxembed.models.architectures.base import MODELING_FILE
from jaxembed.models.encoder import PoolingSettings
from jaxembed.prompts import format_query
from jaxembed.safetensors_io import (
    DEFAULT_MAX_SHARD_SIZE,
    TensorSpec,
    parse_size,
    write_safetensors,
)

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


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
