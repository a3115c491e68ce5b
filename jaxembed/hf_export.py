"""Orbax training checkpoints → Hugging Face directories (the export half of `jaxembed.hf`).

`jaxembed export --workdir DIR [--step N|latest] --output HF_DIR` writes a directory that
transformers (`AutoModel.from_pretrained(dir)`, with `trust_remote_code=True` for the Llama
family's shipped bidirectional class; BERT is a stock `BertModel`), sentence-transformers
(`SentenceTransformer(dir)`) and `jaxembed encode` all load as the same encoder:

- `config.json` of the source architecture, a "jaxembed" section (pooling, prompt), and for
  the Llama family an "auto_map" to the bidirectional modeling file copied beside it;
- safetensors weights, one sharded index above `max_shard_size`, each tensor produced from the
  checkpoint and written straight to disk: the names, layouts and shard plan come from the
  architecture's weight maps (inverted), so nothing holds a second full copy of the model;
- tokenizer files, sentence-transformers modules (pooling, normalize, query prompt) and a
  model card with the training config and metrics.

The pieces: `run_steps` (which step, its config, its tensors), `hf_directory` (the writer,
shared with `jaxembed.merge` through the `TensorSource` interface), `safetensors_io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxembed.errors import UserInputError
from jaxembed.hf_directory import (
    EXPORT_DTYPES,
    RunMetadata,
    hf_tensors,
    read_metrics,
    write_hf_directory,
)
from jaxembed.run_steps import OrbaxSource, open_run_step
from jaxembed.safetensors_io import DEFAULT_MAX_SHARD_SIZE


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
