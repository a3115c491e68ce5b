"""Config files, command-line overrides and the recipe configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxembed.config import apply_overrides, default_config, load_config
from jaxembed.errors import UserInputError

CONFIGS = Path(__file__).parents[1] / "configs"


def test_overrides_are_typed_by_the_value_they_replace():
    config = default_config()
    apply_overrides(
        config,
        [
            "data.global_batch_size=64",
            "optimizer.learning_rate=3e-4",
            "optimizer.warmup_steps=5",
            "model.exclude_instruction=true",
            "loss.variant=qwen3",
            "data.train_files=a.jsonl,b.jsonl",
            "optimizer.learning_rate=1",
        ],
    )
    assert config.data.global_batch_size == 64
    assert config.optimizer.learning_rate == 1.0 and isinstance(
        config.optimizer.learning_rate, float
    )
    assert config.model.exclude_instruction is True
    assert config.loss.variant == "qwen3"
    assert config.data.train_files == ("a.jsonl", "b.jsonl")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.nope=1", "unknown config key 'model.nope'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("data.global_batch_size=big", "expected int, got str"),
        ("model.exclude_instruction=maybe", "expected true or false"),
        ("data.global_batch_size", "expected --config.KEY=VALUE"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserInputError, match=message):
        apply_overrides(default_config(), [override])


def test_recipe_configs_match_the_papers():
    s1 = load_config(f"{CONFIGS / 'llama_embed_nemotron_8b.py'}:stage1")
    s2 = load_config(f"{CONFIGS / 'llama_embed_nemotron_8b.py'}:stage2")
    assert (s1.data.global_batch_size, s1.data.num_negatives, s1.optimizer.learning_rate) == (
        2048,
        1,
        1e-5,
    )
    assert (s2.data.global_batch_size, s2.data.num_negatives, s2.optimizer.learning_rate) == (
        128,
        4,
        2e-6,
    )
    for c in (s1, s2):
        assert c.loss.variant == "hn_only" and c.loss.temperature == 0.02
        assert (c.data.query_max_length, c.data.passage_max_length) == (512, 512)
        assert c.optimizer.warmup_steps == 100 and c.optimizer.weight_decay == 0.01
        assert c.model.pooling == "mean" and not c.model.exclude_instruction
    r1 = load_config(f"{CONFIGS / 'nv_retriever_v1.py'}:stage1")
    r2 = load_config(f"{CONFIGS / 'nv_retriever_v1.py'}:stage2")
    assert (r1.loss.variant, r1.data.num_negatives) == ("in_batch", 1)
    assert (r2.loss.variant, r2.data.num_negatives) == ("hn_only", 5)
    assert (r1.data.query_max_length, r1.data.passage_max_length) == (192, 512)
    assert r1.model.exclude_instruction
    for c in (r1, r2):
        assert (c.lora.rank, c.lora.alpha) == (16, 32.0)
        assert (c.model.num_layers, c.model.hidden_size) == (32, 4096)  # Mistral-7B
    reranker = load_config(str(CONFIGS / "nv_rerankqa_mistral_4b.py"))
    assert reranker.model.prune_layers == 16 and reranker.model.num_layers == 32
    assert reranker.lora.rank == 0  # the whole pruned model is trained


def test_config_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="config file not found"):
        load_config(str(tmp_path / "missing.py"))
    with pytest.raises(UserInputError, match="unknown variant .stage3."):
        load_config(f"{CONFIGS / 'llama_embed_nemotron_8b.py'}:stage3")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from jaxembed.config import default_config\n"
        "def get_config(arg=None):\n"
        "    c = default_config()\n"
        "    c.model.hidden = 3\n"
        "    return c\n"
    )
    with pytest.raises(UserInputError, match="unknown config key 'model.hidden'"):
        load_config(str(bad))


def test_attention_impl_is_settable_and_checked():
    from jaxembed.models.build import model_config
    from jaxembed.train.validate import validate_model

    config = default_config()
    assert model_config(config).attention_impl is None  # jaxembed's softmax attention
    apply_overrides(config, ["model.attention_impl=xla"])
    assert model_config(config).attention_impl == "xla"
    apply_overrides(config, ["model.attention_impl=flash"])
    with pytest.raises(UserInputError, match="model.attention_impl='flash': expected one of"):
        validate_model(config)


def test_sentence_transformers_config_is_mnrl():
    """configs/sentence_transformers.py: MultipleNegativesRankingLoss's defaults (scale 20)
    and the HF Trainer's (lr 2e-5 in ST's examples, no weight decay, clipping at 1)."""
    c = load_config(str(Path(__file__).parents[1] / "configs" / "sentence_transformers.py"))
    assert (c.model.init, c.model.pooling, c.loss.variant) == ("hf", "auto", "in_batch")
    assert c.loss.temperature == 1 / 20
    assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (2e-5, 0.0)
    assert c.optimizer.max_grad_norm == 1.0


def test_dropout_is_the_checkpoints_own_unless_set(minilm_dir):
    """BERT trains with its checkpoint's dropout (as sentence-transformers does) unless
    `model.dropout` / `model.attention_dropout` say otherwise; the Llama family has none."""
    from jaxembed.models.build import model_config

    config = default_config()
    assert not model_config(config).has_dropout  # a Llama model: no dropout of its own
    apply_overrides(config, ["model.dropout=0.1"])
    with pytest.raises(UserInputError, match="llama models train without dropout"):
        model_config(config)
    apply_overrides(config, ["model.init=hf", f"model.hf_path={minilm_dir}", "model.dropout=-1"])
    model = model_config(config)
    assert (model.hidden_dropout, model.attention_dropout) == (0.1, 0.1)  # its config.json
    apply_overrides(config, ["model.dropout=0.2", "model.attention_dropout=0"])
    model = model_config(config)
    assert (model.hidden_dropout, model.attention_dropout, model.has_dropout) == (0.2, 0.0, True)
    apply_overrides(config, ["model.dropout=0", "model.attention_impl=xla"])
    assert not model_config(config).has_dropout


def test_run_settings_are_typed_once_at_the_boundary(tmp_path, capsys):
    """A config file is Python: a value of the wrong type (here a section written as a plain
    dict, which ConfigDict's type locking does not see) stops `jaxembed train` with one line
    naming the key, before anything is built or written."""
    from jaxembed.cli import main
    from jaxembed.train.settings import OptimizerSettings, run_settings

    data = tmp_path / "train.jsonl"
    data.write_text('{"query": "q", "positives": ["p"]}\n')
    config = default_config()
    apply_overrides(config, [f"data.train_files={data}", f"data.tokenizer={tmp_path}"])
    settings = run_settings(config, 8)
    assert isinstance(settings.optimizer, OptimizerSettings)
    assert settings.mesh == (8, 1, 1) and settings.pooling == "mean"  # "auto", resolved
    assert settings.data.train_files == (str(data),) and settings.train.steps == 100
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from jaxembed.config import default_config\n"
        "def get_config():\n"
        "    c = default_config()\n"
        f"    c.data.train_files = ({str(data)!r},)\n"
        f"    c.data.tokenizer = {str(tmp_path)!r}\n"
        "    c.train = {**c.train.to_dict(), 'steps': '100'}\n"
        "    return c\n"
    )
    workdir = tmp_path / "run"
    assert main(["train", "--config", str(bad), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "train.steps='100': expected int" in err
    assert "Traceback" not in err and not workdir.exists()
