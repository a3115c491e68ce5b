"""Tiny random Hugging Face checkpoints (made with transformers/PyTorch) for parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(90)]


def save_word_tokenizer(directory: Path) -> None:
    """A word-level fast tokenizer over WORDS with pad/unk/bos/eos tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    fast.save_pretrained(str(directory))


def make_hf_model(kind: str, directory: Path, seed: int = 0, **overrides):
    """Save a small random `kind` (llama/mistral/qwen2) model and tokenizer; return the model."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaModel,
        MistralConfig,
        MistralModel,
        Qwen2Config,
        Qwen2Model,
    )

    common = dict(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        pad_token_id=0,
    )
    common.update(overrides)
    classes = {
        "llama": (LlamaConfig, LlamaModel),
        "mistral": (MistralConfig, MistralModel),
        "qwen2": (Qwen2Config, Qwen2Model),
    }
    config_cls, model_cls = classes[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**common)).eval()
    # Default init leaves norms at 1 and biases at 0; randomize them so they are really tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(str(directory))
    save_word_tokenizer(directory)
    return model


def random_batch(rng: np.random.Generator, batch: int, length: int, vocab: int, padding: str):
    """Token ids and a padding mask with varied lengths (row 0 full-length)."""
    ids = rng.integers(4, vocab, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(max(1, length // 3), length + 1, size=batch)
    lengths[0] = length
    mask = np.zeros((batch, length), np.int32)
    for b, n in enumerate(lengths):
        if padding == "right":
            mask[b, :n] = 1
        else:
            mask[b, length - n :] = 1
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    return ids, mask
