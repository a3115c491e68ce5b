"""A jaxembed encoder as an MTEB model: `mteb.evaluate(MTEBModel(encoder), tasks)`.

Implements mteb's `EncoderProtocol` (mteb >= 2: `encode(DataLoader, *, task_metadata,
hf_split, hf_subset, prompt_type)`) and still accepts the mteb 1.x call shape
(`encode(sentences, task_name=..., prompt_type=...)`). Queries get the task's instruction
through the encoder's template; documents get none, as in the NVIDIA recipes. mteb itself is
optional: it is imported only for `mteb_model_meta`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxembed.models.encoder import Encoder
from jaxembed.prompts import TASK_INSTRUCTIONS


def _prompt_type_name(prompt_type: Any) -> str | None:
    # mteb's PromptType is a str enum ("query" / "document"); 1.x passed plain strings.
    return None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))


def _texts(inputs: Any) -> list[str]:
    """Sentences from a list of strings or from mteb's DataLoader of {"text": [...]} batches."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, Iterable):
        items = list(inputs)
        if all(isinstance(x, str) for x in items):
            return items
        texts: list[str] = []
        for batch in items:
            if not isinstance(batch, Mapping) or "text" not in batch:
                raise TypeError(f"expected batches with a 'text' column, got {type(batch)}")
            texts.extend(batch["text"])
        return texts
    raise TypeError(f"cannot encode {type(inputs).__name__}")


class MTEBModel:
    """Wraps an `Encoder`; `instructions` maps MTEB task names to query instructions
    (default: the built-in table for common retrieval tasks; None = never an instruction)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        name: str = "jaxembed/local",
        instructions: Mapping[str, str] | None = TASK_INSTRUCTIONS,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool = False,
    ) -> None:
        self.encoder = encoder
        self.name = name
        self.instructions = dict(instructions or {})
        self.batch_size = batch_size
        self.max_length = encoder.max_length if max_length is None else max_length
        self.show_progress = show_progress

    def instruction_for(self, task_name: str | None, prompt_type: Any) -> str | None:
        if _prompt_type_name(prompt_type) != "query" or task_name is None:
            return None
        return self.instructions.get(task_name)

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        task_name: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """[n, dim] float32 L2-normalized embeddings, in input order."""
        name = task_name or getattr(task_metadata, "name", None)
        return self.encoder.encode(
            _texts(inputs),
            instruction=self.instruction_for(name, prompt_type),
            batch_size=kwargs.get("batch_size", self.batch_size),
            max_length=self.max_length,
            show_progress=self.show_progress,
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity matrix [n1, n2] (embeddings are normalized by the encoder)."""
        a, b = (np.atleast_2d(np.asarray(e, np.float32)) for e in (embeddings1, embeddings2))
        return _unit(a) @ _unit(b).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        a, b = (np.atleast_2d(np.asarray(e, np.float32)) for e in (embeddings1, embeddings2))
        return np.sum(_unit(a) * _unit(b), axis=1)

    @property
    def mteb_model_meta(self) -> Any:
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.create_empty(
            {
                "name": self.name,
                "revision": "local",
                "embed_dim": self.encoder.config.hidden_size,
                "max_tokens": self.max_length,
                "similarity_fn_name": "cosine",
                "use_instructions": bool(self.instructions),
                "framework": ["JAX"],
            }
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
