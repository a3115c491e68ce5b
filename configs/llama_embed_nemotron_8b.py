"""llama-embed-nemotron-8b: Llama-3.1-8B, bidirectional, mean pooling over all non-pad tokens
(instruction included), InfoNCE tau 0.02 with mined hard negatives only (hn_only), AdamW
wd 0.01, 100 warmup steps then linear decay, lengths 512/512. The final model is the uniform
average of 6 checkpoints (see `jaxembed merge`).

    jaxembed train --config configs/llama_embed_nemotron_8b.py:stage1 --workdir runs/s1 \
        --config.model.hf_path=/models/Llama-3.1-8B --config.data.train_files=...
"""

from jaxembed.config import default_config

STAGES = {
    # stage 1: large batch, 1 hard negative
    "stage1": dict(global_batch_size=2048, num_negatives=1, learning_rate=1e-5),
    # stage 2: small batch, 4 hard negatives
    "stage2": dict(global_batch_size=128, num_negatives=4, learning_rate=2e-6),
}


def get_config(arg=None):
    stage = arg or "stage1"
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    s = STAGES[stage]
    c = default_config()
    c.model.init = "hf"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.model.pooling = "mean"
    c.model.exclude_instruction = False
    c.loss.variant = "hn_only"
    c.loss.temperature = 0.02
    c.optimizer.learning_rate = s["learning_rate"]
    c.optimizer.warmup_steps = 100
    c.optimizer.decay = "linear"
    c.optimizer.weight_decay = 0.01
    c.data.global_batch_size = s["global_batch_size"]
    c.data.num_negatives = s["num_negatives"]
    c.data.query_max_length = 512
    c.data.passage_max_length = 512
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.gradcache.enabled = True
    c.gradcache.chunk_size = 64
    c.train.steps = 1000
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 6
    return c
