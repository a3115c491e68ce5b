"""The recipes' query format: `"Instruct: {instruction}\nQuery: {query}"`; documents get none."""

from __future__ import annotations

DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"


def format_query(
    query: str, instruction: str | None, template: str = DEFAULT_QUERY_TEMPLATE
) -> tuple[str, int]:
    """The query text with its instruction prefix, and how many characters the prefix takes
    (so pooling can leave the instruction out, as NV-Retriever does)."""
    if not instruction:
        return query, 0
    if "{query}" not in template:
        raise ValueError(f"query template must contain '{{query}}': {template!r}")
    head, tail = template.split("{query}", 1)
    prefix = head.format(instruction=instruction)
    return prefix + query + tail.format(instruction=instruction), len(prefix)
