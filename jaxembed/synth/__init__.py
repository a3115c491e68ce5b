"""Synthetic training data from OpenAI-compatible LLM servers (`jaxembed synth`).

endpoints.py (which servers, by weight), client.py (async requests: concurrency, rate cap,
retries), templates.py (versioned prompts), strategies.py (what is asked and how an answer
becomes a record), answers.py (JSON parsing and schema checks), filters.py (duplicates,
lengths), store.py (resumable, lossless output), runner.py (the run and its report).
"""
