"""The MTEB wrapper, run through mteb's own retrieval evaluation (offline, local data)."""

from __future__ import annotations

import pytest

from jaxembed.data.formats import load_beir
from jaxembed.evaluate import evaluate_retrieval
from jaxembed.models.encoder import Encoder
from jaxembed.mteb_model import MTEBModel

from data_helpers.beir import write_beir
from tiny_models import make_hf_model

mteb = pytest.importorskip("mteb", reason="mteb (test extra)")

from mteb.models.models_protocols import EncoderProtocol  # noqa: E402

from data_helpers.mteb_task import local_task  # noqa: E402

INSTRUCTION = "w7 w8 w9"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb")
    make_hf_model("llama", root / "model")
    write_beir(root / "beir", seed=1)
    return Encoder.from_pretrained(root / "model"), load_beir(root / "beir", "test")


def test_implements_mteb_encoder_protocol(setup):
    encoder, _ = setup
    model = MTEBModel(encoder)
    assert isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.embed_dim == encoder.config.hidden_size


def test_mteb_scores_equal_jaxembed_eval_with_the_task_instruction(setup):
    encoder, data = setup
    model = MTEBModel(encoder, instructions={"TinyLocal": INSTRUCTION})
    result = mteb.evaluate(
        model, local_task(data), cache=None, co2_tracker=False, show_progress_bar=False
    )
    theirs = result.task_results[0].scores["test"][0]
    # Instruction on queries only: were it on documents too (or missing), scores would differ.
    ours = evaluate_retrieval(encoder, data, INSTRUCTION)
    without = evaluate_retrieval(encoder, data, None)
    assert ours["ndcg_at_10"] != pytest.approx(without["ndcg_at_10"], abs=1e-4)
    for name in ("ndcg_at_1", "ndcg_at_10", "map_at_10", "recall_at_5", "precision_at_3"):
        assert theirs[name] == pytest.approx(ours[name], abs=6e-6), name  # mteb rounds to 1e-5
    assert theirs["mrr_at_10"] == pytest.approx(ours["mrr_at_10"], abs=1e-9)


def test_mteb_1x_call_shape(setup):
    encoder, data = setup
    model = MTEBModel(encoder, instructions={"SciFact": INSTRUCTION})
    texts = list(data.queries.values())[:3]
    as_query = model.encode(texts, task_name="SciFact", prompt_type="query")
    as_doc = model.encode(texts, task_name="SciFact", prompt_type="document")
    assert as_query == pytest.approx(encoder.encode(texts, INSTRUCTION, show_progress=False))
    assert as_doc == pytest.approx(encoder.encode(texts, show_progress=False))
