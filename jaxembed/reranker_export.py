"""Reranker params → a Hugging Face sequence-classification directory.

The directory holds the backbone under the family's prefix ("model.", "bert.") and the head
as "score.weight" [1, hidden] / "score.bias" [1], a config.json whose "auto_map" points
AutoModelForSequenceClassification (and, for the Llama family, AutoModel) at the shipped
modeling file, the tokenizer and a model card. So

    AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)
    CrossEncoder(dir, trust_remote_code=True)

score pairs as jaxembed does. The pair template cannot be expressed to either of them (they
tokenize the pair themselves), so the card and config.json ("jaxembed.reranker.template")
say how to join a query and a passage; `jaxembed rerank` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxembed import hf
from jaxembed.errors import UserInputError
from jaxembed.hf_directory import (
    EXPORT_DTYPES,
    HFTensor,
    RunMetadata,
    copy_modeling_file,
    hf_config_dict,
    hf_tensors,
    to_hf_layout,
    write_tokenizer,
)
from jaxembed.io_utils import atomic_directory
from jaxembed.models.architectures import ModelConfig, for_config
from jaxembed.models.encoder import PoolingSettings
from jaxembed.models.reranker import HEAD_BIAS, HEAD_WEIGHT
from jaxembed.run_steps import OrbaxSource, lookup, open_run_step
from jaxembed.safetensors_io import TensorSpec, write_safetensors

# CrossEncoder applies a sigmoid to one-label models unless told otherwise; the raw logit is
# what jaxembed scores with (and ranks identically).
IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"


def reranker_config_dict(
    config: ModelConfig,
    base: dict[str, Any],
    dtype: str,
    tokenizer: Any,
    *,
    template: str,
    max_length: int,
) -> dict[str, Any]:
    arch = for_config(config)
    model_type = base.get("model_type") or arch.export_model_type(config)
    classes = arch.reranker_export_classes(model_type)
    if classes is None:
        raise UserInputError(
            f"a {model_type} reranker cannot be exported yet (its HF classification head "
            "differs from jaxembed's); export a Llama-family reranker"
        )
    if base:
        base = dict(base, num_hidden_layers=config.num_layers)  # pruned at import
    out = hf_config_dict(model_type, config, base, dtype, PoolingSettings("mean", False), tokenizer)
    out.update(
        architectures=list(classes.architectures),
        auto_map=dict(classes.auto_map or {}),
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        sentence_transformers={"activation_fn": IDENTITY_ACTIVATION},
    )
    out["jaxembed"]["reranker"] = {
        "template": template,
        "pooling": "mean",
        "max_length": max_length,
    }
    return out


def _model_card(template: str, dtype: str, origin: str, run_config: Any) -> str:
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: text-ranking",
        "tags: [cross-encoder, reranker, jaxembed]",
        "---",
        "",
        "# Bidirectional cross-encoder reranker (jaxembed)",
        "",
        f"A reranker trained with jaxembed{f' ({origin})' if origin else ''}, exported in "
        f"{dtype}: bidirectional backbone, mean pooling, linear head to one score (higher is "
        "more relevant).",
        "",
        "## Usage",
        "",
        f"Join each pair as `{json.dumps(template)}` (query first, so truncation only shortens "
        "the passage).",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'model = AutoModelForSequenceClassification.from_pretrained("PATH", '
        "trust_remote_code=True)",
        "```",
        "",
        "`sentence_transformers.CrossEncoder(PATH, trust_remote_code=True)` loads it too "
        "(raw logits); `jaxembed rerank --model PATH` reranks a retrieval run with it.",
    ]
    if run_config is not None:
        lines += ["", "## Training config", "", "```json", run_config.to_json(indent=2), "```"]
    return "\n".join(lines) + "\n"


def write_reranker_directory(
    output: str | Path,
    config: ModelConfig,
    params: Any,
    tokenizer_dir: str | Path,
    **options: Any,
) -> Path:
    """Write reranker `params` (numpy or JAX arrays, our layout) as an HF directory."""

    def backbone_tensor(t: HFTensor) -> np.ndarray:
        leaf = np.asarray(lookup(params["backbone"], t.wmap.path))
        ours = leaf if t.layer is None else leaf[t.layer]
        return to_hf_layout(t.wmap, ours, ours.dtype)

    head = (np.asarray(params["score"]["kernel"]), np.asarray(params["score"]["bias"]))
    return _write(output, config, backbone_tensor, lambda: head, tokenizer_dir, **options)


def _write(
    output: str | Path,
    config: ModelConfig,
    backbone_tensor: Callable[[HFTensor], np.ndarray],
    head: Callable[[], tuple[np.ndarray, np.ndarray]],
    tokenizer_dir: str | Path,
    *,
    template: str,
    max_length: int,
    base_hf_config: dict[str, Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    origin: str = "",
    run_config: ml_collections.ConfigDict | None = None,
) -> Path:
    """The backbone's tensors one at a time from `backbone_tensor` (HF layout), then the
    head's kernel [hidden, 1] and bias [1], streamed into the safetensors files."""
    if dtype not in EXPORT_DTYPES:
        raise UserInputError(f"--dtype {dtype!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    np_dtype = EXPORT_DTYPES[dtype]
    tensors = hf_tensors(config)
    # The backbone under the family's task-head prefix ("model.", "bert."), as HF's
    # *ForSequenceClassification checkpoints hold it.
    prefix = for_config(config).base_prefix
    specs = [TensorSpec(prefix + t.name, t.wmap.hf_shape, np_dtype) for t in tensors]
    specs += [
        TensorSpec(HEAD_WEIGHT, (1, config.hidden_size), np_dtype),
        TensorSpec(HEAD_BIAS, (1,), np_dtype),
    ]

    def arrays() -> Iterator[np.ndarray]:
        for t in tensors:
            yield np.asarray(backbone_tensor(t)).astype(np_dtype, copy=False)
        kernel, bias = head()
        yield kernel.T.astype(np_dtype)
        yield bias.astype(np_dtype)

    output = Path(output)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        tokenizer = write_tokenizer(Path(tokenizer_dir), tmp)
        hf_config = reranker_config_dict(
            config,
            base_hf_config or {},
            dtype,
            tokenizer,
            template=template,
            max_length=max_length,
        )
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        copy_modeling_file(tmp)
        (tmp / "README.md").write_text(_model_card(template, dtype, origin, run_config))
        write_safetensors(tmp, specs, arrays(), desc="export")
    return output


def export_reranker_run(
    workdir: str | Path,
    output: str | Path,
    *,
    step: str | int = "latest",
    dtype: str = "float32",
    overwrite: bool = False,
    config_spec: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> Path:
    """Export one step of a reranker training workdir (`model.task="reranker"`)."""
    from jaxembed.models.build import model_config

    workdir, output = Path(workdir), Path(output)
    step_dir, chosen, run_config = open_run_step(
        workdir, output, step, overwrite, config_spec, overrides
    )
    m, d = run_config.model, run_config.data
    if m.task != "reranker":
        raise UserInputError(f"{workdir}: not a reranker run (model.task={m.task!r})")
    # The backbone streams tensor by tensor (LoRA merged kernel by kernel), as the embedding
    # export does; the config is the run's, pruned as it trained.
    meta = RunMetadata.from_run_config(run_config)
    meta.config = model_config(run_config)
    source = OrbaxSource(step_dir, meta, backbone=("backbone",))
    try:
        source.check()
        return _write(
            output,
            meta.config,
            source.read,
            lambda: (source.param(("score", "kernel")), source.param(("score", "bias"))),
            m.hf_path if m.init == "hf" else d.tokenizer,
            template=d.pair_template,
            max_length=d.passage_max_length,
            base_hf_config=hf.read_hf_config(m.hf_path) if m.init == "hf" else {},
            dtype=dtype,
            overwrite=overwrite,
            origin=f"step {chosen} of {workdir.name}",
            run_config=run_config,
        )
    finally:
        source.close()
