"""Fine-tuning a sentence-transformers model (all-MiniLM-L6-v2, BGE-small, E5-small, any
BERT or Llama-family checkpoint) the way its trainer does with MultipleNegativesRankingLoss:
in-batch + hard negatives InfoNCE at scale 20 (tau 0.05), AdamW lr 2e-5 without weight
decay, linear warm-up and decay, gradient clipping at 1.0, the checkpoint's own pooling.

    jaxembed train --config configs/sentence_transformers.py --workdir runs/minilm \\
        --config.model.hf_path=path/to/all-MiniLM-L6-v2 --config.data.train_files=train.jsonl \\
        --config.train.steps=1000 --config.optimizer.warmup_steps=100

`data.num_negatives` hard negatives per query come from each record (`jaxembed mine` writes
them); a record with fewer is filled with other records' positives.
"""

from jaxembed.config import default_config


def get_config(arg=None):
    del arg
    c = default_config()
    c.model.init = "hf"
    c.model.pooling = "auto"  # the checkpoint's sentence-transformers Pooling module
    c.loss.variant = "in_batch"
    c.loss.temperature = 0.05
    c.optimizer.learning_rate = 2e-5
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = 100
    c.data.global_batch_size = 16
    # The trainer's NO_DUPLICATES batches: on SciFact the trainer scored 0.007 nDCG@10 more
    # with them than on jaxembed's former shuffled batches (benchmarks/RESULTS.md).
    c.data.no_duplicates = True
    c.data.num_negatives = 1
    c.data.query_max_length = 64
    c.data.passage_max_length = 256
    c.train.steps = 1000
    c.train.checkpoint_every = 500
    return c
