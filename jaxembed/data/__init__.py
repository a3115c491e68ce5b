"""Training data: validated readers, the TFDS/ArrayRecord builder, and the batch pipeline."""

from jaxembed.data.errors import DataFormatError, Rejects
from jaxembed.data.formats import (
    BeirData,
    beir_training_records,
    load_beir,
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_training_jsonl,
)
from jaxembed.data.pipeline import BatchIterator, DatasetSpec, PipelineConfig
from jaxembed.data.records import Passage, TrainingRecord
from jaxembed.data.sampler import IteratorState, StreamState
from jaxembed.sharding import batch_sharding  # the train step's batch layout

__all__ = [
    "BatchIterator",
    "BeirData",
    "DataFormatError",
    "DatasetSpec",
    "IteratorState",
    "Passage",
    "PipelineConfig",
    "Rejects",
    "StreamState",
    "TrainingRecord",
    "batch_sharding",
    "beir_training_records",
    "load_beir",
    "read_beir_corpus",
    "read_beir_qrels",
    "read_beir_queries",
    "read_training_jsonl",
]
