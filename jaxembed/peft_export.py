"""LoRA adapters of a training run → a PEFT adapter directory (`adapter_config.json` +
`adapter_model.safetensors`) that `peft.PeftModel.from_pretrained(base, directory)` loads
onto the base model.

PEFT's `lora_A.weight` is [rank, in] and `lora_B.weight` [out, rank] in the HF layout of the
adapted `nn.Linear`; ours are [layers, *in, rank] and [layers, rank, *out] in our layout.
Every projection's map from our kernel to the HF weight is "flatten in and out, transpose"
(`hf.llama_weight_maps`), so the factors map the same way and `B_hf @ A_hf` is exactly the
transposed `A @ B`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxembed import hf
from jaxembed.errors import UserInputError
from jaxembed.hf_directory import canonical
from jaxembed.io_utils import atomic_directory
from jaxembed.models import architectures
from jaxembed.models.architectures import ModelConfig
from jaxembed.models.lora import AdapterPair, adapter_pairs
from jaxembed.run_steps import open_run_step, restore_numpy

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def peft_tensors(adapters: Any, config: ModelConfig) -> tuple[dict[str, np.ndarray], list[str]]:
    """PEFT tensor name → array for every layer of every adapter, and the adapted module
    names (PEFT's `target_modules`)."""
    wmaps = {w.path: w for w in hf.weight_maps(canonical(config))}
    base_prefix = architectures.for_config(config).base_prefix
    tensors: dict[str, np.ndarray] = {}
    modules: set[str] = set()
    for pair in adapter_pairs(adapters):
        wmap = wmaps.get(pair.kernel_path)
        if wmap is None or not wmap.per_layer:
            raise UserInputError(f"adapter on {'/'.join(pair.kernel_path)}: not a layer weight")
        module = wmap.hf_name.removeprefix(base_prefix).removesuffix(".weight")
        modules.add(module.rsplit(".", 1)[-1])
        for layer in range(config.num_layers):
            a_hf, b_hf = _hf_factors(pair, layer)
            name = PEFT_PREFIX + module.format(i=layer)
            tensors[f"{name}.lora_A.weight"] = a_hf
            tensors[f"{name}.lora_B.weight"] = b_hf
    return tensors, sorted(modules)


def _hf_factors(pair: AdapterPair, layer: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pair.a[layer], np.float32)
    b = np.asarray(pair.b[layer], np.float32)
    rank = a.shape[-1]
    return np.ascontiguousarray(a.reshape(-1, rank).T), np.ascontiguousarray(b.reshape(rank, -1).T)


def adapter_config(run_config: Any, target_modules: list[str]) -> dict[str, Any]:
    lora, model = run_config.lora, run_config.model
    return {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": model.hf_path if model.init == "hf" else None,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_adapter(
    workdir: str | Path,
    output: str | Path,
    *,
    step: str | int = "latest",
    overwrite: bool = False,
    config_spec: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> Path:
    """Write the LoRA adapters of one step of `workdir` as a PEFT adapter at `output`."""
    from safetensors.numpy import save_file

    from jaxembed.models.build import model_config

    workdir, output = Path(workdir), Path(output)
    step_dir, _, run_config = open_run_step(
        workdir, output, step, overwrite, config_spec, overrides
    )
    if run_config.lora.rank < 1:
        raise UserInputError(f"{workdir}: not a LoRA run (lora.rank=0); export the full model")
    if run_config.model.task != "embedding":
        raise UserInputError(
            f"{workdir}: --adapter is for embedding runs; a reranker's trained head is not an "
            "adapter, so export the merged model instead"
        )
    restored, _ = restore_numpy(step_dir, run_config, with_params=False)
    if "adapters" not in restored:
        raise UserInputError(f"{step_dir}: the checkpoint holds no LoRA adapters")
    tensors, modules = peft_tensors(restored["adapters"], model_config(run_config))
    with atomic_directory(output, overwrite=overwrite) as tmp:
        config = adapter_config(run_config, modules)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return output
