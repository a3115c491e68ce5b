"""Tiny bidirectional Llama on a CPU: the default for tests and the demo.

    jaxembed train --config configs/tiny.py --workdir runs/tiny \
        --config.data.train_files=train.jsonl --config.data.tokenizer=path/to/tokenizer_dir
"""

from jaxembed.config import default_config


def get_config(arg=None):
    del arg
    return default_config()
