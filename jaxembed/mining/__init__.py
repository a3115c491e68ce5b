"""Positive-aware hard-negative mining (NV-Retriever) with faiss.

`methods` holds the selection rules (pure numpy), `search` the streamed faiss search,
`sources` the embedding readers, `miner` the loop on embeddings, and `inputs`, `teacher` and
`pipeline` the files around it (`jaxembed mine`). Nothing is imported here, so the CLI can
build its parser without loading faiss.
"""
