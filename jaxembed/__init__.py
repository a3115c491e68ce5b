"""jaxembed: JAX/Flax training stack for text embedding models and rerankers."""

__version__ = "0.1.0"
