"""NV-Retriever-v1: Mistral-7B, bidirectional, mean pooling with the instruction tokens
masked out, query/passage lengths 192/512; stage 1 in-batch negatives + 1 mined hard
negative, stage 2 5 hard negatives; negatives mined with TopK-PercPos 95% (`jaxembed mine`).
LoRA r16/alpha32 arrives with the scale issue; until then this config fine-tunes all weights.
"""

from jaxembed.config import default_config

STAGES = {
    "stage1": dict(variant="in_batch", num_negatives=1),
    "stage2": dict(variant="hn_only", num_negatives=5),
}


def get_config(arg=None):
    stage = arg or "stage1"
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    s = STAGES[stage]
    c = default_config()
    c.model.init = "hf"
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.model.pooling = "mean"
    c.model.exclude_instruction = True
    c.loss.variant = s["variant"]
    c.loss.temperature = 0.02
    c.data.num_negatives = s["num_negatives"]
    c.data.query_max_length = 192
    c.data.passage_max_length = 512
    c.data.global_batch_size = 128
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 100
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    return c
