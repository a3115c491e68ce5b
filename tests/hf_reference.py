"""transformers (PyTorch) and `jaxembed encode` computations that parity tests compare: the
reference side of every encoder test, written once."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax


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


def capture_gradients() -> optax.GradientTransformation:
    """An optimizer whose state is the last gradient and whose update is zero: the step's
    exact gradients, with nothing subtracted."""
    return optax.GradientTransformation(
        lambda values: jax.tree.map(jnp.zeros_like, values),
        lambda grads, state, values=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def assert_step_matches(
    loss: float,
    grad_norm: float,
    ours: dict[str, np.ndarray],
    ref_loss: float,
    ref: dict[str, np.ndarray],
) -> None:
    """Loss within 1e-5, the global gradient norm within 1e-4, and every gradient tensor
    within 1e-3 of its norm (f32 through up to 30 layers and a 1/0.02 logit scale; seen:
    < 1e-4), the whole within 1e-4. A tensor whose true gradient is zero holds only f32
    rounding noise (~1e-8) on both sides, so its relative error means nothing: BERT's key
    bias adds a per-query constant to the attention scores, a reranker's head bias and last
    LayerNorm bias a per-query constant to the listwise scores, and softmax cancels both.
    Each tensor is therefore measured against at least 1e-4 of the global norm."""
    assert abs(loss - ref_loss) < 1e-5 * max(1.0, ref_loss), (loss, ref_loss)
    ref_norm = np.sqrt(sum(np.sum(g**2) for g in ref.values()))
    assert abs(grad_norm - ref_norm) < 1e-4 * ref_norm
    assert ours.keys() == ref.keys()
    floor = 1e-4 * ref_norm
    worst = max(np.linalg.norm(ours[k] - ref[k]) / max(np.linalg.norm(ref[k]), floor) for k in ref)
    assert worst < 1e-3, worst
    total = np.sqrt(sum(np.sum((ours[k] - ref[k]) ** 2) for k in ref))
    assert total / ref_norm < 1e-4


def gradient_step(config, params, batch, settings, adapters=None):
    """(loss, grad_norm, gradients of what is trained) of one jaxembed train step."""
    from jaxembed.train.state import create_state
    from jaxembed.train.step import make_train_step

    optimizer = capture_gradients()
    step = jax.jit(make_train_step(config, optimizer, optax.constant_schedule(0.0), settings))
    state = create_state(params, optimizer, jax.random.key(0), adapters)
    new_state, metrics = step(state, batch)
    return float(metrics["loss"]), float(metrics["grad_norm"]), new_state.opt_state


def backbone_gradients(config, grads, named_parameters) -> tuple[dict, dict]:
    """jaxembed's gradient and PyTorch's of every backbone tensor, both in our layout, by HF
    tensor name (`named_parameters`: the torch backbone's, after `backward()`)."""
    return paired_tensors(
        config,
        grads,
        {n: p.grad.numpy() for n, p in named_parameters.items() if p.grad is not None},
    )


def paired_tensors(config, tree, torch_tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Every backbone tensor of a jaxembed tree (params, gradients) and of PyTorch's arrays
    by HF tensor name, both in our layout, keyed by HF name."""
    from jaxembed.hf_directory import hf_tensors
    from jaxembed.run_steps import lookup

    ours, ref = {}, {}
    for tensor in hf_tensors(config):
        g = np.asarray(lookup(tree, tensor.wmap.path))
        ours[tensor.name] = g if tensor.layer is None else g[tensor.layer]
        ref[tensor.name] = tensor.wmap.to_ours(torch_tensors[tensor.name])
    return ours, ref
