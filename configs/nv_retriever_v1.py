"""NV-Retriever-v1: Mistral-7B with LoRA (rank 16, alpha 32), bidirectional, mean pooling
with the instruction tokens masked out, query/passage lengths 192/512; stage 1 in-batch
negatives + 1 mined hard negative, stage 2 5 hard negatives; negatives mined with
TopK-PercPos 95% (`jaxembed mine`). Stage 2 over several datasets with their own
instructions: `--config.data.manifest=mix.yaml` (README: "A fine-tuning mix").

From the paper: the backbone, LoRA rank and alpha, pooling, lengths and negatives. Our
choices where it gives no number: LoRA dropout 0.1 on every attention and MLP projection,
batch 128, lr 1e-5. The frozen base is kept in bfloat16 (Mistral's own weights are bf16, and
nothing updates them); the adapters and their AdamW moments are float32.

Fit (`jaxembed plan --config configs/nv_retriever_v1.py:stage1 --topology v5e-4`): with FSDP
over every chip, full remat and GradCache, stage 1 fits the smallest v5e slice (4 chips, 13.5
of 16 GiB per chip) and both stages a v5p-8 (12.0 of 95 GiB); the README records the per-chip
HBM. `--config.lora.rank=0` fine-tunes every weight instead (v5p-8: 55 GiB per chip).
"""

from jaxembed.config import MISTRAL_7B, bidirectional_llm_config, select_variant

STAGES = {
    "stage1": dict(variant="in_batch", num_negatives=1),
    "stage2": dict(variant="hn_only", num_negatives=5),
}


def get_config(arg=None):
    stage = select_variant(STAGES, arg, "stage1")
    c = bidirectional_llm_config()
    c.model.update(MISTRAL_7B)
    c.model.exclude_instruction = True
    c.model.param_dtype = "bfloat16"
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.1
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
