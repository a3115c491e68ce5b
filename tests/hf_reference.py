"""transformers (PyTorch) and `jaxembed encode` computations that parity tests compare: the
reference side of every encoder test, written once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding, as jaxembed computes them."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def set_causal(model, causal: bool) -> None:
    """Flip the causal flag of every attention module (HF's own switch; no mask rewriting)."""
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = causal


def bidirectional_mask(mask):
    """A [B, L] torch padding mask as the 4D boolean mask HF uses as-is (no causal part)."""
    import torch

    keys = torch.as_tensor(mask).bool()[:, None, None, :]
    return keys.expand(-1, 1, keys.shape[-1], -1)


def hf_hidden(model, ids, mask, *, bidirectional: bool) -> np.ndarray:
    """Last hidden states of a transformers Llama-family model on one padded batch."""
    import torch

    kwargs = dict(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=torch.tensor(positions(mask), dtype=torch.long),
    )
    if bidirectional:
        set_causal(model, False)
        kwargs["attention_mask"] = bidirectional_mask(mask)
    else:
        kwargs["attention_mask"] = torch.tensor(mask)
    try:
        with torch.no_grad():
            return model(**kwargs).last_hidden_state.numpy()
    finally:
        set_causal(model, True)


def torch_embed(model, tokenizer, texts, padding_side: str) -> np.ndarray:
    """transformers forward on one padded batch, mean-pooled over the attention mask."""
    import torch

    tokenizer.padding_side = padding_side
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def jaxembed_encode(model_dir: Path, texts, tmp_path: Path, instruction=None) -> np.ndarray:
    """The `jaxembed encode` command on `texts`, at the exported max_seq_length."""
    from jaxembed.cli import main

    inp = tmp_path / f"in{len(texts)}{bool(instruction)}.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    out = inp.with_suffix(".npy")
    args = ["encode", "--model", str(model_dir), "--input", str(inp), "--output", str(out)]
    args += ["--max-length", str(max_len), "--batch-size", "8", "--quiet"]
    if instruction:
        args += ["--instruction", instruction]
    assert main(args) == 0
    return np.load(out)
