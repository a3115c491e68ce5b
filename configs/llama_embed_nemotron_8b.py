"""llama-embed-nemotron-8b: Llama-3.1-8B, bidirectional, mean pooling over all non-pad tokens
(instruction included), InfoNCE tau 0.02 with mined hard negatives only (hn_only), AdamW
wd 0.01, 100 warmup steps then linear decay, lengths 512/512. The final model is the uniform
average of 6 checkpoints.

    jaxembed train --config configs/llama_embed_nemotron_8b.py:stage1 --workdir runs/s1 \
        --config.model.hf_path=/models/Llama-3.1-8B --config.data.train_files=...
    jaxembed train --config configs/llama_embed_nemotron_8b.py:stage2 --workdir runs/s2 \
        --config.model.hf_path=runs/s1-export --config.data.manifest=mix.yaml

Stage 2's multi-task mix (retrieval, STS, classification, bitext with per-dataset
instructions and weights) is a dataset manifest (README: "A fine-tuning mix").

Fit (`jaxembed plan --config configs/llama_embed_nemotron_8b.py:stage1 --topology v5p-8`):
both stages fit a v5p-8 (4 chips) with FSDP over every chip, full remat and GradCache; the
README records the per-chip HBM. Bigger slices take the same config (the chunk sizes are
multiples of the chip count up to 64 chips; beyond that raise them with the slice).
"""

from jaxembed.config import bidirectional_llm_config, select_variant

# Llama-3.1-8B's architecture, for `jaxembed plan` without the weights; training reads the
# HF directory's config.json instead.
LLAMA_3_1_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rope_theta=500000.0,
    max_position_embeddings=131072,
)

STAGES = {
    # stage 1: large batch, 1 hard negative
    "stage1": dict(
        global_batch_size=2048, num_negatives=1, learning_rate=1e-5, chunk=256, passage_chunk=256
    ),
    # stage 2: small batch, 4 hard negatives
    "stage2": dict(
        global_batch_size=128, num_negatives=4, learning_rate=2e-6, chunk=64, passage_chunk=64
    ),
}


def get_config(arg=None):
    stage = select_variant(STAGES, arg, "stage1")
    c = bidirectional_llm_config()
    c.model.update(LLAMA_3_1_8B)
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
    # Exact in-batch gradients with activations bounded by one chunk (rows over all chips).
    c.gradcache.enabled = True
    c.gradcache.chunk_size = stage["chunk"]
    c.gradcache.passage_chunk_size = stage["passage_chunk"]
    c.train.steps = 1000
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 6
    return c
