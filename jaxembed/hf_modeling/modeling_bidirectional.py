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

Rerankers (cross-encoders) exported by jaxembed use the `*ForSequenceClassification` classes
(AutoModelForSequenceClassification, sentence-transformers' CrossEncoder): the same
bidirectional backbone, mean pooling over the real tokens and a linear head to one score;
a BERT-family reranker uses `MeanPoolBertForSequenceClassification` (BertModel is
bidirectional already; the class differs from BertForSequenceClassification, which scores
the CLS token through its pooler).
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel
from transformers.models.mistral.modeling_mistral import MistralModel, MistralPreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2PreTrainedModel


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


class _MeanPoolScoreMixin:
    """Bidirectional backbone -> mean over the real tokens -> Linear(hidden, num_labels)."""

    backbone_class: type = None

    def _build(self, config) -> None:
        self.num_labels = config.num_labels
        # Under the family's own name ("model", "bert"), as its checkpoints hold it.
        setattr(self, self.base_model_prefix, self.backbone_class(config))
        self.score = torch.nn.Linear(config.hidden_size, config.num_labels, bias=True)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        hidden = getattr(self, self.base_model_prefix)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        # Pool and score in float32, as jaxembed does, whatever the backbone's dtype.
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        pooled = (hidden.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = torch.nn.functional.linear(
            pooled, self.score.weight.to(torch.float32), self.score.bias.to(torch.float32)
        )
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits.squeeze(-1), labels.to(torch.float32)
                )
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class BidirectionalLlamaForSequenceClassification(_MeanPoolScoreMixin, LlamaPreTrainedModel):
    backbone_class = BidirectionalLlamaModel

    def __init__(self, config) -> None:
        super().__init__(config)
        self._build(config)


class BidirectionalMistralForSequenceClassification(_MeanPoolScoreMixin, MistralPreTrainedModel):
    backbone_class = BidirectionalMistralModel

    def __init__(self, config) -> None:
        super().__init__(config)
        self._build(config)


class BidirectionalQwen2ForSequenceClassification(_MeanPoolScoreMixin, Qwen2PreTrainedModel):
    backbone_class = BidirectionalQwen2Model

    def __init__(self, config) -> None:
        super().__init__(config)
        self._build(config)


class MeanPoolBertForSequenceClassification(_MeanPoolScoreMixin, BertPreTrainedModel):
    backbone_class = staticmethod(lambda config: BertModel(config, add_pooling_layer=False))

    def __init__(self, config) -> None:
        super().__init__(config)
        self._build(config)
