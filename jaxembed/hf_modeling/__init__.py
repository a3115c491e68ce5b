"""Modeling code shipped verbatim into exported Hugging Face directories (never imported by
jaxembed itself: it needs torch, which jaxembed does not depend on)."""
