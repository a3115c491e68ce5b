"""NV-Retriever-v1: Mistral-7B, bidirectional, mean pooling with the instruction tokens
masked out, query/passage lengths 192/512; stage 1 in-batch negatives + 1 mined hard
negative, stage 2 5 hard negatives; negatives mined with TopK-PercPos 95% (`jaxembed mine`).
LoRA r16/alpha32 arrives with the scale issue; until then this config fine-tunes all weights.
"""

from jaxembed.config import bidirectional_llm_config, select_variant

STAGES = {
    "stage1": dict(variant="in_batch", num_negatives=1),
    "stage2": dict(variant="hn_only", num_negatives=5),
}


def get_config(arg=None):
    stage = select_variant(STAGES, arg, "stage1")
    c = bidirectional_llm_config()
    c.model.exclude_instruction = True
    c.loss.variant = stage["variant"]
    c.loss.temperature = 0.02
    c.data.num_negatives = stage["num_negatives"]
    c.data.query_max_length = 192
    c.data.passage_max_length = 512
    c.data.global_batch_size = 128
    c.optimizer.learning_rate = 1e-5
    return c
