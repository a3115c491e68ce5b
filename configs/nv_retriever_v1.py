"""NV-Retriever-v1: Mistral-7B, bidirectional, mean pooling with the instruction tokens
masked out, query/passage lengths 192/512; stage 1 in-batch negatives + 1 mined hard
negative, stage 2 5 hard negatives; negatives mined with TopK-PercPos 95% (`jaxembed mine`).

LoRA r16/alpha32 (the paper's) arrives with the LoRA work of the scale issue; until then this
config fine-tunes all weights, and its fit below is for full fine-tuning (LoRA only shrinks
the optimizer state and the gradients).

Fit (`jaxembed plan --config configs/nv_retriever_v1.py:stage1 --topology v5p-8`): both
stages fit a v5p-8 (4 chips) with FSDP over every chip, full remat and GradCache; the README
records the per-chip HBM.
"""

from jaxembed.config import bidirectional_llm_config, select_variant

# Mistral-7B-v0.1's architecture, for `jaxembed plan` without the weights; training reads
# the HF directory's config.json instead.
MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rope_theta=10000.0,
    max_position_embeddings=32768,
)

STAGES = {
    "stage1": dict(variant="in_batch", num_negatives=1),
    "stage2": dict(variant="hn_only", num_negatives=5),
}


def get_config(arg=None):
    stage = select_variant(STAGES, arg, "stage1")
    c = bidirectional_llm_config()
    c.model.update(MISTRAL_7B)
    c.model.exclude_instruction = True
    c.loss.variant = stage["variant"]
    c.loss.temperature = 0.02
    c.data.num_negatives = stage["num_negatives"]
    c.data.query_max_length = 192
    c.data.passage_max_length = 512
    c.data.global_batch_size = 128
    c.optimizer.learning_rate = 1e-5
    c.gradcache.enabled = True
    c.gradcache.chunk_size = 64
    c.gradcache.passage_chunk_size = 64
    return c
