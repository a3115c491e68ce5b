"""Training configs: the schema with tiny CPU defaults, loading `configs/*.py`, overrides,
and validation before anything is compiled.

A config file defines `get_config(arg=None) -> ConfigDict`; `path.py:arg` passes `arg`
(e.g. `configs/llama_embed_nemotron_8b.py:stage2`). Overrides are `key.path=value` strings,
as `--config.key.path=value` on the command line, typed by the value they replace.

Why not `ml_collections.config_flags`: it registers `--config` and every `--config.a.b` on
absl's process-wide FLAGS, parsed once by `app.run`. jaxembed's CLI is argparse
subcommands (train, export, merge and plan take a config; the rest do not), `main(argv)` is
called many times in one process by the tests and by `jaxembed.demo`, and a bad key or value
must be one line naming it (exit 2), where absl raises its own errors. The file format and
the override syntax are config_flags' own, so configs work with either.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from jaxembed.errors import UserInputError

# A training workdir keeps its run config here (read back by `jaxembed export`).
RUN_CONFIG_NAME = "config.json"


def default_config() -> ml_collections.ConfigDict:
    """Every key a training config may have, set for a tiny model on a CPU."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(
        init="random",  # "random" or "hf" (then hf_path is a local HF directory)
        hf_path="",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=0,  # 0 = hidden_size // num_heads
        max_position_embeddings=512,
        rope_theta=10000.0,
        dtype="float32",
        param_dtype="float32",
        remat_policy="none",
        # "" (jaxembed's softmax attention), "xla" or "cudnn" (jax.nn.dot_product_attention)
        attention_impl="",
        # False: the layers run in a Python loop, faster to train on a CPU; True: under
        # nn.scan, compile time independent of depth (what the big recipes use).
        scan_layers=False,
        # Training-time dropout of BERT-family backbones (HF hidden_dropout_prob and
        # attention_probs_dropout_prob). -1: the checkpoint's own, as sentence-transformers
        # trains (0.1 for MiniLM, BGE, E5). The Llama family has none: use lora.dropout.
        dropout=-1.0,
        attention_dropout=-1.0,
        # mean | last | first, or "auto": the HF checkpoint's own (its sentence-transformers
        # Pooling module: mean for all-MiniLM-L6-v2, CLS for BGE), else mean.
        pooling="auto",
        exclude_instruction=False,
        # "embedding" (bi-encoder) or "reranker" (cross-encoder: pairs joined by
        # data.pair_template, mean pooling, linear head to one score; see models/reranker.py)
        task="embedding",
        # Keep only the bottom N layers of the HF checkpoint (0 = all): NV-RerankQA keeps 16
        # of Mistral-7B's 32.
        prune_layers=0,
    )
    # LoRA (models/lora.py): rank 0 trains every weight; rank > 0 freezes the backbone and
    # trains adapters on the projections whose module path (e.g. "layers/self_attn/q_proj",
    # "layers/attention/query") the `targets` regex matches; "" = every projection.
    c.lora = dict(rank=0, alpha=32.0, dropout=0.0, targets="")
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.loss = dict(
        variant="in_batch",
        temperature=0.02,
        false_negative_margin=0.1,
        mask_duplicates=True,
        # Reranker loss over [positive, N negatives]: "listwise" (InfoNCE) or "bce"
        ranking="listwise",
        ranking_temperature=1.0,
    )
    c.gradcache = dict(enabled=False, chunk_size=8, passage_chunk_size=0)
    c.optimizer = dict(
        learning_rate=1e-3,
        warmup_steps=10,
        decay="linear",
        end_factor=0.0,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        max_grad_norm=1.0,
        accumulation_steps=1,
    )
    c.data = dict(
        train_files=(),
        weights=(),  # blending weight per train file; empty = equal
        # A JSON/YAML file listing the mix instead (per dataset: path, format, task, weight,
        # query/document instructions; see jaxembed/data/manifest.py). Excludes train_files.
        manifest="",
        format="jsonl",  # jsonl | nemo | sentence_transformers
        instruction="",  # default query instruction for records that carry none
        eval_dir="",  # BEIR-layout held-out set for train.eval_every ("" = none)
        eval_split="test",
        tokenizer="",
        global_batch_size=16,
        num_negatives=1,
        query_max_length=64,
        passage_max_length=64,  # reranker: max length of the joined query-passage pair
        # Reranker input: query (cut to query_max_length tokens) and passage joined by this
        # template, query first so truncation only shortens the passage.
        pair_template="question:{query} \n \n passage:{passage}",
        more_negatives="first",
        fewer_negatives="fill",
        homogeneous=False,
        no_duplicates=False,  # no two records sharing a text in a batch (see data/sampler.py)
        prefetch=2,
        # "rows": pack each side's texts into rows, little compute on padding (exact: the
        # same loss and gradients; 1.4-2.5x the useful tokens/s, benchmarks/packing.py);
        # "none": pad every text to a length bucket (jaxembed/data/packing.py).
        packing="rows",
        pack_max_segments=32,  # texts per packed row at most
    )
    c.train = dict(
        steps=100,
        log_every=10,
        checkpoint_every=50,
        keep_checkpoints=3,
        # A non-finite loss or gradient: "halt" stops at the next log/checkpoint step without
        # saving; "skip" drops such updates and halts after this many in a row.
        nonfinite="halt",
        max_consecutive_nonfinite=10,
        eval_every=0,  # steps between held-out retrieval evaluations (0 = never)
        peak_flops=0.0,  # per-device peak FLOP/s for the MFU estimate; 0 = don't report MFU
    )
    return ml_collections.ConfigDict(c)


# Mistral-7B-v0.1's architecture (NV-Retriever-v1's backbone, and NV-RerankQA's before
# pruning), for `jaxembed plan` without the weights; training reads the HF config.json.
MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rope_theta=10000.0,
    max_position_embeddings=32768,
)


def select_variant(variants: dict[str, Any], arg: str | None, default: str) -> Any:
    """A recipe file's `get_config(arg)` choice among named variants (e.g. stages)."""
    name = arg or default
    if name not in variants:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted(variants)}")
    return variants[name]


def bidirectional_llm_config() -> ml_collections.ConfigDict:
    """What every big-model recipe shares: a local HF checkpoint, bf16 compute over f32 params,
    full remat, mean pooling, FSDP over all devices."""
    c = default_config()
    c.model.init = "hf"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.model.scan_layers = True
    c.model.pooling = "mean"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optimizer.warmup_steps = 100
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` → the file's `get_config(arg)`."""
    path_text, _, arg = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(f"jaxembed_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report, don't crash
        raise UserInputError(f"{path}: failed to load ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise UserInputError(f"{path}: defines no get_config()")
    # ml_collections' convention is get_config(arg); a file that takes no argument is fine
    # too, unless it is given one.
    takes_arg = bool(inspect.signature(module.get_config).parameters)
    if arg and not takes_arg:
        raise UserInputError(f"{path}: get_config() takes no argument, but ':{arg}' was given")
    try:
        config = module.get_config(arg or None) if takes_arg else module.get_config()
    except Exception as e:  # user code, as above
        call = f"get_config({arg or None!r})" if takes_arg else "get_config()"
        raise UserInputError(f"{path}: {call} failed ({type(e).__name__}: {e})") from e
    check_schema(config, default_config(), str(path))
    return config


def check_schema(config: Any, schema: Any, source: str, prefix: str = "") -> None:
    """Every key of `config` must exist in the schema (typos are errors, not new keys)."""
    for key in config.keys():
        name = f"{prefix}{key}"
        if key not in schema:
            raise UserInputError(f"{source}: unknown config key {name!r}")
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise UserInputError(f"{source}: config key {name!r} must be a section")
            check_schema(config[key], schema[key], source, name + ".")


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UserInputError(f"--config.{key}={text!r}: expected true or false")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, (list, str)):
        value = tuple(value) if isinstance(value, list) else tuple(v for v in value.split(",") if v)
    if current is not None and type(value) is not type(current):
        expected, got = type(current).__name__, type(value).__name__
        raise UserInputError(f"--config.{key}={text!r}: expected {expected}, got {got}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Apply `key.path=value` strings; unknown keys are errors."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserInputError(f"--config.{item}: expected --config.KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UserInputError(f"unknown config key {'.'.join(parents[: i + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise UserInputError(f"unknown config key {key!r}")
        with node.ignore_type():
            node[leaf] = _parse_value(text, node[leaf], key)
