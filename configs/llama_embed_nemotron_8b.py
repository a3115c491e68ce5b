"""llama-embed-nemotron-8b: Llama-3.1-8B, bidirectional, mean pooling over all non-pad tokens
(instruction included), InfoNCE tau 0.02 with mined hard negatives only (hn_only), AdamW
wd 0.01, 100 warmup steps then linear decay, lengths 512/512. The final model is the uniform
average of 6 checkpoints.

    jaxembed train --config configs/llama_embed_nemotron_8b.py:stage1 --workdir runs/s1 \
        --config.model.hf_path=/models/Llama-3.1-8B --config.data.train_files=...
"""

from jaxembed.config import bidirectional_llm_config, select_variant

STAGES = {
    # stage 1: large batch, 1 hard negative
    "stage1": dict(global_batch_size=2048, num_negatives=1, learning_rate=1e-5),
    # stage 2: small batch, 4 hard negatives
    "stage2": dict(global_batch_size=128, num_negatives=4, learning_rate=2e-6),
}


def get_config(arg=None):
    stage = select_variant(STAGES, arg, "stage1")
    c = bidirectional_llm_config()
    c.model.exclude_instruction = False
    c.loss.variant = "hn_only"
    c.loss.temperature = 0.02
    c.optimizer.learning_rate = stage["learning_rate"]
    c.optimizer.decay = "linear"
    c.optimizer.weight_decay = 0.01
    c.data.global_batch_size = stage["global_batch_size"]
    c.data.num_negatives = stage["num_negatives"]
    c.data.query_max_length = 512
    c.data.passage_max_length = 512
    c.gradcache.enabled = True
    c.gradcache.chunk_size = 64
    c.train.steps = 1000
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 6
    return c
