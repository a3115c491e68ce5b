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


# Query instructions for common MTEB retrieval tasks, in the wording E5-Mistral introduced
# and the Llama/Mistral embedders (NV-Embed, NV-Retriever) reuse.
TASK_INSTRUCTIONS = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or "
    "refute the claim",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to "
    "the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the "
    "given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the "
    "question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
}
