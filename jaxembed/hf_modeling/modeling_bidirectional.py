"""Bidirectional Llama / Mistral / Qwen2 encoders for Hugging Face transformers.

Written into the model directory by `jaxembed export` (config.json "auto_map" points here),
as NVIDIA's own bidirectional embedding releases ship their modeling code, so that

    AutoModel.from_pretrained(directory, trust_remote_code=True)
    SentenceTransformer(directory, trust_remote_code=True)

run the encoder exactly as jaxembed trained it:
- every token attends to every real (non-padding) token: no causal mask;
- Mistral keeps its sliding window, symmetric around the query (|q - k| < window);
- position ids count real tokens only, so left- and right-padded batches embed alike.
The output is the final-norm hidden states; pooling and normalization are the
sentence-transformers modules beside this file (or yours).
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel
from transformers.models.mistral.modeling_mistral import MistralModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model


def bidirectional_mask(
    attention_mask: torch.Tensor, dtype: torch.dtype, sliding_window: int | None
) -> torch.Tensor:
    """Additive [B, 1, T, T] mask: 0 where the key is a real token (within the window)."""
    keep = attention_mask.bool()[:, None, None, :]
    t = attention_mask.shape[1]
    if sliding_window:
        idx = torch.arange(t, device=attention_mask.device)
        keep = keep & ((idx[:, None] - idx[None, :]).abs() < sliding_window)
    else:
        keep = keep.expand(-1, -1, t, -1)
    mask = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


class _BidirectionalMixin:
    """Overrides the causal base model's forward; weights and submodules are unchanged."""

    sliding_window_attr: str | None = None

    def _make_bidirectional(self) -> None:
        for layer in self.layers:
            layer.self_attn.is_causal = False  # read by the sdpa and flash-attention paths

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(
                batch, length, dtype=torch.long, device=inputs_embeds.device
            )
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        window = (
            getattr(self.config, self.sliding_window_attr) if self.sliding_window_attr else None
        )
        mask = bidirectional_mask(attention_mask, inputs_embeds.dtype, window)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers[: self.config.num_hidden_layers]:
            out = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
            hidden = out[0] if isinstance(out, tuple) else out
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class BidirectionalLlamaModel(_BidirectionalMixin, LlamaModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._make_bidirectional()


class BidirectionalMistralModel(_BidirectionalMixin, MistralModel):
    sliding_window_attr = "sliding_window"

    def __init__(self, config) -> None:
        super().__init__(config)
        self._make_bidirectional()


class BidirectionalQwen2Model(_BidirectionalMixin, Qwen2Model):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._make_bidirectional()
