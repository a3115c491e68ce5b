"""Cross-encoder inputs: a query and a passage joined by a template into one sequence.

NV-RerankQA joins them as `"question:{query} \\n \\n passage:{passage}"`. The joined string
is tokenized whole (exactly what a Hugging Face user of the exported model does), and
truncation keeps the query: the template must put the query first, so cutting the sequence
at `max_length` only ever shortens the passage, and a query longer than `query_max_length`
tokens is cut (at a token boundary of its own tokenization) before joining.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from jaxembed.errors import UserInputError

DEFAULT_PAIR_TEMPLATE = "question:{query} \n \n passage:{passage}"


def check_pair_template(template: str) -> str:
    for field in ("{query}", "{passage}"):
        if template.count(field) != 1:
            raise UserInputError(f"pair template {template!r} needs exactly one {field}")
    if template.index("{query}") > template.index("{passage}"):
        raise UserInputError(
            f"pair template {template!r} puts the passage first: truncation would cut the query"
        )
    return template


def truncate_queries(
    tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], query_max_length: int
) -> list[str]:
    """Each query cut to its first `query_max_length` tokens (as text, so it can be joined)."""
    enc = tokenizer(
        list(queries), add_special_tokens=False, return_offsets_mapping=True, truncation=False
    )
    out = []
    for query, offsets in zip(queries, enc["offset_mapping"], strict=True):
        if len(offsets) <= query_max_length:
            out.append(query)
        else:
            out.append(query[: offsets[query_max_length - 1][1]])
    return out


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    passages: Sequence[str],
    *,
    template: str = DEFAULT_PAIR_TEMPLATE,
    max_length: int = 512,
    query_max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each joined (query, passage) pair, truncated to `max_length`."""
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
    check_pair_template(template)
    if query_max_length is not None:
        queries = truncate_queries(tokenizer, queries, query_max_length)
    texts = [template.format(query=q, passage=p) for q, p in zip(queries, passages, strict=True)]
    enc = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return enc["input_ids"]
