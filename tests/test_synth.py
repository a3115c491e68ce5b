"""`jaxembed synth` against a scripted OpenAI-compatible server on 127.0.0.1 (the real
`openai` client, real HTTP): records, rejects, retries, faults, resume, endpoint weights."""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jaxembed.cli import main
from jaxembed.data.formats import read_training_jsonl

from data_helpers.fake_llm import FakeLLM

TOPICS = [
    "mitochondria produce ATP through oxidative phosphorylation in the inner membrane",
    "statins lower LDL cholesterol by inhibiting HMG-CoA reductase in the liver",
    "vitamin D supplements reduce hip fractures among elderly women in trials",
    "T cell receptors bind peptides presented on MHC class I molecules",
    "CRISPR Cas9 cuts DNA at sites chosen by a guide RNA sequence",
    "insulin resistance precedes type 2 diabetes by several years in cohorts",
    "the gut microbiome shapes immune responses to oral vaccines in infants",
    "amyloid beta plaques accumulate in the brains of Alzheimer patients",
    "aspirin taken daily lowers the risk of a second heart attack",
    "measles vaccination programs cut childhood mortality in many countries",
    "telomeres shorten with each cell division until senescence begins",
    "antibiotic overuse selects for resistant strains of Staphylococcus aureus",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(TOPICS):
            f.write(json.dumps({"_id": f"d{i}", "title": f"Study {i}", "text": text}) + "\n")
    return path


def document_of(prompt: str) -> str:
    return re.search(r'"""\n(.*?)\n"""', prompt, re.S).group(1)


def good_query(prompt: str, n: int = 0) -> str:
    words = document_of(prompt).split("\n")[-1].split()
    return json.dumps({"query": "what is known about " + " ".join(words[:6])})


def synth(*args: str) -> int:
    return main(["synth", "--quiet", "--backoff", "0.01", *args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_seed_corpus_records_train_and_carry_provenance(corpus, tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    with FakeLLM(good_query) as llm:
        code = synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "8",
                     "--output", str(out), "--instruction", "find the study")  # fmt: skip
    assert code == 0
    records = read_jsonl(out)
    assert len(records) == 8 and len(llm.prompts) == 8
    parsed = list(read_training_jsonl(out))  # what `jaxembed train` reads
    for record, rec in zip(records, parsed, strict=True):
        doc_id = record["positives"][0]["id"]
        assert TOPICS[int(doc_id[1:])].startswith(rec.query.removeprefix("what is known about "))
        assert rec.instruction == "find the study"
        p = record["provenance"]
        assert (p["strategy"], p["model"], p["prompt"]) == ("seed_corpus", "fake-model",
                                                             "seed_corpus.v1")  # fmt: skip
        assert p["item"] == f"doc:{doc_id}#0" and p["endpoint"] == llm.url
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["totals"]["kept"] == 8 and report["totals"]["requests"] == 8
    assert report["per_model"]["fake-model"]["kept"] == 8
    assert "8 records kept" in capsys.readouterr().out


def test_same_seed_asks_for_the_same_items(corpus, tmp_path):
    asked = []
    for run in range(2):
        with FakeLLM(good_query) as llm:
            out = tmp_path / f"run{run}.jsonl"
            assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "5",
                         "--output", str(out), "--seed", "3") == 0  # fmt: skip
            asked.append(sorted(llm.prompts))
    assert asked[0] == asked[1]


def test_corpus_may_be_the_beir_dataset_directory(corpus, tmp_path, capsys):
    with FakeLLM(good_query) as llm:
        out = tmp_path / "synth.jsonl"
        assert synth("--endpoint", llm.url, "--corpus", str(corpus.parent), "--count", "3",
                     "--output", str(out)) == 0  # fmt: skip
        assert len(read_jsonl(out)) == 3
        empty = tmp_path / "no-corpus-here"
        empty.mkdir()
        assert synth("--endpoint", llm.url, "--corpus", str(empty), "--count", "3",
                     "--output", str(tmp_path / "other.jsonl")) == 2  # fmt: skip
    assert f"{empty}: is a directory, not a file" in capsys.readouterr().err
    assert not (tmp_path / "other.jsonl").exists()


@pytest.mark.parametrize(
    ("changed", "key"),
    [(["--queries-per-doc", "2"], "queries_per_doc"), (["--instruction", "other"], "instruction")],
)
def test_resuming_with_settings_that_change_the_items_is_refused(
    corpus, tmp_path, capsys, changed, key
):
    out = tmp_path / "synth.jsonl"
    args = ["--corpus", str(corpus), "--count", "4", "--output", str(out)]
    with FakeLLM(good_query) as llm:
        assert synth("--endpoint", llm.url, *args) == 0
        before = out.read_bytes()
        assert synth("--endpoint", llm.url, *args, *changed) == 2
    assert f"differs in {key}" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_malformed_answers_are_retried_then_rejected_with_the_raw_text(corpus, tmp_path):
    def respond(prompt, n):
        if "mitochondria" in prompt:
            return "Sure! Here is a query: mitochondria energy"  # never JSON
        if "statins" in prompt:
            return '{"query": '  # cut off
        return good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "12",
                     "--output", str(out), "--parse-retries", "2") == 0  # fmt: skip
    assert len(read_jsonl(out)) == 10
    rejects = {r["id"]: r for r in read_jsonl(Path(str(out) + ".rejects.jsonl"))}
    assert set(rejects) == {"doc:d0#0", "doc:d1#0"}
    assert rejects["doc:d0#0"]["reason"] == "no JSON object"
    assert rejects["doc:d0#0"]["raw"].startswith("Sure!")
    assert rejects["doc:d1#0"]["reason"] == "malformed JSON"
    assert sum("mitochondria" in p for p in llm.prompts) == 3  # asked, then 2 retries
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["rejects_by_reason"] == {"no JSON object": 1, "malformed JSON": 1}
    assert report["totals"]["parse_retries"] == 4


def test_http_errors_and_timeouts_are_retried(corpus, tmp_path):
    def respond(prompt, n):
        if n < 2:
            return 500
        if n == 2:
            return 429
        if n == 3:
            return ("sleep", 3.0, good_query(prompt))  # past --timeout
        return good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert (
            synth(
                "--endpoint",
                llm.url,
                "--corpus",
                str(corpus),
                "--count",
                "4",
                "--output",
                str(out),
                "--concurrency",
                "1",
                "--timeout",
                "1",
            )
            == 0
        )
    assert len(read_jsonl(out)) == 4
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["totals"]["retries"] == 4


def test_a_request_the_server_refuses_is_a_reject_not_a_stop(corpus, tmp_path):
    def respond(prompt, n):
        return 400 if "statins" in prompt else good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "12",
                     "--output", str(out)) == 0  # fmt: skip
    (reject,) = read_jsonl(Path(str(out) + ".rejects.jsonl"))
    assert reject["reason"].startswith("request failed: HTTP 400")


def test_a_server_refusing_json_mode_is_asked_again_without_it(corpus, tmp_path):
    out = tmp_path / "synth.jsonl"
    # every request in the first round carries response_format and is refused at once
    with FakeLLM(good_query, refuse_json_mode=True) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "12",
                     "--output", str(out), "--concurrency", "8") == 0  # fmt: skip
    assert len(read_jsonl(out)) == 12
    assert read_jsonl(Path(str(out) + ".rejects.jsonl")) == []


@pytest.mark.parametrize("status", [401, 404])
def test_a_bad_key_or_model_stops_the_run_rather_than_rejecting_every_item(
    corpus, tmp_path, capsys, status
):
    out = tmp_path / "synth.jsonl"
    with FakeLLM(lambda prompt, n: status) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "6",
                     "--output", str(out)) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"endpoint {llm.url} stopped answering (HTTP {status}" in err
    assert "\n" not in err.strip()
    assert read_jsonl(Path(str(out) + ".rejects.jsonl")) == []  # nothing given up for good
    with FakeLLM(good_query, port=int(llm.url.rsplit(":", 1)[1].split("/")[0])) as fixed:
        assert synth("--endpoint", fixed.url, "--corpus", str(corpus), "--count", "6",
                     "--output", str(out)) == 0  # fmt: skip
    assert len(read_jsonl(out)) == 6


def test_a_reply_that_is_not_a_chat_completion_is_retried(corpus, tmp_path):
    def respond(prompt, n):
        return ("raw", "<html>upstream maintenance</html>") if n < 2 else good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "4",
                     "--output", str(out), "--concurrency", "1") == 0  # fmt: skip
    assert len(read_jsonl(out)) == 4
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["totals"]["retries"] == 2


def test_an_answer_cut_off_at_max_tokens_says_so(corpus, tmp_path):
    def respond(prompt, n):
        return ("cut", '{"query": "what is kno') if "statins" in prompt else good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "12",
                     "--output", str(out), "--parse-retries", "0") == 0  # fmt: skip
    (reject,) = read_jsonl(Path(str(out) + ".rejects.jsonl"))
    assert reject["reason"] == "cut off at --max-tokens (malformed JSON)"
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["rejects_by_reason"] == {"cut off at --max-tokens": 1}


def test_a_server_without_a_models_list_needs_the_model_named(corpus, tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    with FakeLLM(good_query, lists_models=False) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "3",
                     "--output", str(out)) == 2  # fmt: skip
        assert f"--endpoint {llm.url}: no model list (HTTP 404" in capsys.readouterr().err
        assert synth("--endpoint", f"{llm.url},model=my-model", "--corpus", str(corpus),
                     "--count", "3", "--output", str(out)) == 0  # fmt: skip
    records = read_jsonl(out)
    assert len(records) == 3 and records[0]["provenance"]["model"] == "my-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_at_start_is_one_line_naming_the_url(corpus, tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    out = tmp_path / "synth.jsonl"
    assert synth("--endpoint", url, "--corpus", str(corpus), "--count", "2",
                 "--output", str(out), "--retries", "1") == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jaxembed synth: error: --endpoint {url}: unreachable")
    assert "\n" not in err and not out.exists()


def test_server_dying_mid_run_stops_cleanly_and_the_rerun_completes(corpus, tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    args = ["--corpus", str(corpus), "--count", "12", "--output", str(out),
            "--concurrency", "1", "--batch", "2", "--retries", "2"]  # fmt: skip
    llm = FakeLLM(good_query).__enter__()
    url = llm.url

    def respond(prompt, n):
        if n == 5:
            threading_stop(llm)
        return good_query(prompt)

    llm.respond = respond
    assert synth("--endpoint", url, *args) == 1
    err = capsys.readouterr().err
    assert f"endpoint {url} stopped answering" in err and "rerun the same command" in err
    first = read_jsonl(out)
    assert 4 <= len(first) <= 6  # what finished before the server went, committed
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with FakeLLM(good_query, port=port) as again:
        assert synth("--endpoint", again.url, *args) == 0
    records = read_jsonl(out)
    items = [r["provenance"]["item"] for r in records]
    assert len(items) == len(set(items)) == 12
    assert records[: len(first)] == first
    assert len(again.prompts) == 12 - len(first)


def threading_stop(llm: FakeLLM) -> None:
    import threading

    threading.Thread(target=llm.stop, daemon=True).start()
    time.sleep(0.5)


def test_kill_9_mid_run_then_restart_gives_every_item_once(corpus, tmp_path):
    from jaxembed.data.formats import read_beir_corpus
    from jaxembed.synth.strategies import SeedCorpus

    # The first item asked is a reject, so one is committed early.
    first = SeedCorpus(read_beir_corpus(corpus)).items([], 12, 0)[0]
    rejected_doc = TOPICS[int(first.context["doc_id"][1:])]

    def respond(prompt, n):
        if rejected_doc in prompt:
            return "not json"
        return ("sleep", 0.15, good_query(prompt))

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        command = [sys.executable, "-m", "jaxembed", "synth", "--quiet", "--endpoint", llm.url,
                   "--corpus", str(corpus), "--count", "12", "--output", str(out),
                   "--concurrency", "2", "--batch", "2", "--parse-retries", "0"]  # fmt: skip
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        progress = Path(str(out) + ".progress.json")
        deadline = time.time() + 60
        while time.time() < deadline:
            sizes = json.loads(progress.read_text())["sizes"] if progress.exists() else {}
            if sizes.get("records") and sizes.get("rejects") and len(llm.prompts) >= 6:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(llm.prompts) < 12, "the run finished before it was killed"
        sizes = json.loads(progress.read_text())["sizes"]
        done = Path(str(out) + ".done.jsonl").read_bytes()[: sizes["done"]].decode()
        committed = {json.loads(line)["id"] for line in done.splitlines()}
        assert first.id in committed
        llm.prompts.clear()
        assert subprocess.run(command, capture_output=True).returncode == 0
    records = read_jsonl(out)
    items = [r["provenance"]["item"] for r in records]
    assert len(items) == len(set(items)) == 11  # every item once; one is the reject
    assert [r["id"] for r in read_jsonl(Path(str(out) + ".rejects.jsonl"))] == [first.id]
    # The restart asked for exactly what was not committed, each once: the reject and
    # every committed record never again, what was in flight at the kill again.
    asked = Counter(document_of(p) for p in llm.prompts)
    assert all(n == 1 for n in asked.values()) and len(asked) == 12 - len(committed)
    assert rejected_doc not in "".join(asked)


def test_two_endpoints_share_items_by_weight(tmp_path):
    answers = itertools.count()  # unique texts across both servers

    def respond(prompt, n):
        if "Brainstorm" in prompt:
            return json.dumps({"tasks": ["t1", "t2"]})
        return _classification(prompt, next(answers))

    heavy = FakeLLM(respond, model="heavy")
    light = FakeLLM(heavy.respond, model="light")
    out = tmp_path / "cls.jsonl"
    with heavy, light:
        assert synth("--strategy", "classification", "--endpoint", f"{heavy.url},weight=3",
                     "--endpoint", f"{light.url},weight=1", "--count", "200",
                     "--output", str(out), "--num-tasks", "2", "--tasks-per-request", "2",
                     "--near-duplicate", "0", "--concurrency", "16",
                     "--batch", "50") == 0  # fmt: skip
    models = Counter(r["provenance"]["model"] for r in read_jsonl(out))
    assert sum(models.values()) == 200
    # Binomial(200, 0.25): mean 50, sd 6.1; 4 sd either side.
    assert 25 <= models["light"] <= 75 and models["heavy"] == 200 - models["light"]


def test_step_one_from_one_endpoint_step_two_from_another(tmp_path):
    """Cross-model SDG's other shape: `--task-endpoint` brainstorms the tasks, `--endpoint`
    writes the examples; neither server is asked the other's step."""
    planner = FakeLLM(lambda prompt, n: json.dumps({"tasks": ["t1", "t2"]}), model="planner")
    writer = FakeLLM(lambda prompt, n: _classification(prompt, n), model="writer")
    out = tmp_path / "cls.jsonl"
    with planner, writer:
        assert synth("--strategy", "classification", "--task-endpoint", planner.url,
                     "--endpoint", writer.url, "--count", "8", "--output", str(out),
                     "--num-tasks", "2", "--tasks-per-request", "2",
                     "--near-duplicate", "0") == 0  # fmt: skip
    assert planner.prompts and all("Brainstorm" in p for p in planner.prompts)
    assert len(writer.prompts) == 8 and not any("Brainstorm" in p for p in writer.prompts)
    records = read_jsonl(out)
    assert len(records) == 8 and {r["provenance"]["model"] for r in records} == {"writer"}


def test_task_endpoint_needs_a_two_step_strategy(corpus, tmp_path, capsys):
    code = synth("--strategy", "seed_corpus", "--corpus", str(corpus), "--endpoint",
                 "http://127.0.0.1:9/v1", "--task-endpoint", "http://127.0.0.1:9/v1",
                 "--count", "2", "--output", str(tmp_path / "o.jsonl"))  # fmt: skip
    assert code == 2
    assert "--task-endpoint: the seed_corpus strategy has no step 1" in capsys.readouterr().err


def _classification(prompt: str, n: int) -> str:
    task = re.search(r"task: (.*)\n", prompt).group(1)
    return json.dumps({"text": f"example number {n} for {task}", "label": "yes",
                       "misleading_labels": ["no", "maybe"]})  # fmt: skip


def test_two_step_strategies_make_instructed_records(tmp_path):
    def respond(prompt, n):
        if "Brainstorm" in prompt:
            return json.dumps({"tasks": ["Given a claim, retrieve evidence.",
                                         "Given a symptom, find a diagnosis."]})  # fmt: skip
        task = re.search(r"task: (.*)\n", prompt).group(1)
        return json.dumps({"query": f"query {n} for {task}", "positive": f"answer {n}",
                           "hard_negative": f"near miss {n}"})  # fmt: skip

    out = tmp_path / "fs.jsonl"
    with FakeLLM(respond) as llm:
        assert (
            synth(
                "--strategy",
                "from_scratch",
                "--endpoint",
                llm.url,
                "--count",
                "6",
                "--output",
                str(out),
                "--num-tasks",
                "2",
                "--near-duplicate",
                "0",
            )
            == 0
        )
    records = list(read_training_jsonl(out))
    assert len(records) == 6
    assert Counter(r.instruction for r in records) == {
        "Given a claim, retrieve evidence.": 3, "Given a symptom, find a diagnosis.": 3,
    }  # fmt: skip
    assert all(r.negatives[0].text.startswith("near miss") for r in records)
    tasks = json.loads(Path(str(out) + ".tasks.json").read_text())["tasks"]
    assert len(tasks) == 2


def test_a_step_one_that_yields_no_task_stops_with_its_rejects_counted(tmp_path, capsys):
    out = tmp_path / "fs.jsonl"
    args = ["--strategy", "from_scratch", "--count", "4", "--output", str(out),
            "--num-tasks", "2", "--parse-retries", "0"]  # fmt: skip
    with FakeLLM(lambda prompt, n: "I cannot think of any tasks.") as llm:
        assert synth("--endpoint", llm.url, *args) == 1
    assert "step 1 (from_scratch_tasks) produced no task: no JSON object" in capsys.readouterr().err
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["rejects_by_reason"] == {"no JSON object": 1}
    assert report["totals"]["step1_rejected"] == 1
    (reject,) = read_jsonl(Path(str(out) + ".rejects.jsonl"))
    assert reject["raw"] == "I cannot think of any tasks."


def test_bad_prompt_template_names_the_file_and_the_placeholder(corpus, tmp_path, capsys):
    template = tmp_path / "mine.txt"
    template.write_text("Write a {query_type} query for: {document}\n")
    code = synth("--endpoint", "http://127.0.0.1:9/v1", "--corpus", str(corpus), "--count",
                 "1", "--output", str(tmp_path / "o.jsonl"),
                 "--prompt", f"seed_corpus={template}")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{template}: missing placeholder {{difficulty}}, {{length}}" in err


def test_round_trip_keeps_queries_the_teacher_finds_their_document_for(
    corpus, tmp_path, minilm_dir
):
    """Gecko's filter with the real all-MiniLM-L6-v2: a query about another document's
    topic does not find its seed document first, and is dropped."""

    def respond(prompt, n):
        if "telomeres" in document_of(prompt):  # a query about the aspirin study instead
            return json.dumps({"query": "does daily aspirin prevent a second heart attack"})
        return good_query(prompt)

    out = tmp_path / "synth.jsonl"
    with FakeLLM(respond) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "12",
                     "--output", str(out), "--teacher", str(minilm_dir),
                     "--teacher-top-k", "1") == 0  # fmt: skip
    records = read_jsonl(out)
    assert len(records) == 11
    assert all(r["provenance"]["teacher_rank"] == 0 for r in records)
    done = read_jsonl(Path(str(out) + ".done.jsonl"))
    assert [d["id"] for d in done if d["outcome"] == "filtered: round trip"] == ["doc:d10#0"]
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["filtered_by_rule"] == {"round trip": 1}
    assert report["totals"]["kept"] == 11 and report["totals"]["round_trip_checked"] == 12


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('{"query": "statins and LDL"}', {"query": "statins and LDL"}),
        ('Sure!\n```json\n{"query": "statins and LDL",\n}\n```', {"query": "statins and LDL"}),
        # max_tokens ran out inside a later field: the closed ones are kept
        ('{\n "query": "statins and LDL",\n "data": {"type": "js', {"query": "statins and LDL"}),
    ],
)
def test_almost_json_is_mended(answer, expected):
    from jaxembed.synth.answers import parse_object

    assert {k: v for k, v in parse_object(answer).items() if v} == expected


@pytest.mark.parametrize(
    "answer, reason",
    [("no braces at all", "no JSON object"), ('{"query": "cut off in the mid', "malformed JSON"),
     ('{"query": ', "malformed JSON"), ("[1, 2]", "no JSON object"),
     # degenerate outputs that make json.loads raise more than JSONDecodeError
     ('{"n": ' + "9" * 5000 + "}", "JSON"), ("{" + "[" * 20000 + "}", "JSON")],
)  # fmt: skip
def test_answers_that_cannot_be_mended_are_bad(answer, reason):
    from jaxembed.synth.answers import BadAnswer, parse_object

    with pytest.raises(BadAnswer, match=reason):
        parse_object(answer)


def test_step_one_tasks_may_come_as_objects():
    from jaxembed.synth.strategies import parse_tasks

    answer = {"tasks": [{"id": 1, "description": "Find trials of a drug."}, "Find reviews.",
                        {"name": "x", "task": "Find guidelines."}, {"id": 3}]}  # fmt: skip
    assert parse_tasks(answer) == ["Find trials of a drug.", "Find reviews.", "Find guidelines."]
    # SmolLM2's own answer to the classification step 1 (labels as a list beside the name).
    answer = {"tasks": [{"type": "SentimentAnalysis", "labels": ["Positive", "Negative"]}]}
    assert parse_tasks(answer) == ["Sentiment Analysis: Positive, Negative"]


def test_the_rate_cap_spaces_request_starts(corpus, tmp_path):
    """--rate 10 with 4 requests in flight: starts at least ~0.1 s apart (a client-side
    spacing, so the server sees them no closer than that, less scheduling jitter)."""
    with FakeLLM(good_query) as llm:
        assert synth("--endpoint", llm.url, "--corpus", str(corpus), "--count", "6",
                     "--output", str(tmp_path / "o.jsonl"), "--concurrency", "4",
                     "--rate", "10") == 0  # fmt: skip
    gaps = [b - a for a, b in zip(llm.arrivals, llm.arrivals[1:], strict=False)]
    assert len(gaps) == 5 and min(gaps) > 0.07


def test_classification_answers_need_label_names():
    """Wrong labels: each once, never the right one, as many as asked; a "label" that is a
    sentence (SmolLM2 echoes its text as misleading labels) rejects the answer."""
    from jaxembed.synth.answers import BadAnswer
    from jaxembed.synth.strategies import Classification, Item

    strategy = Classification(num_misleading=2)
    item = Item("task0#0", "classification", {}, {"task": "Sentiment: positive, negative"})
    answer = {
        "text": "Great food.",
        "label": "positive",
        "misleading_labels": ["Positive", "negative", "negative", "neutral", "mixed"],
    }
    assert strategy.record(item, answer)["negatives"] == ["negative", "neutral"]
    echo = "The new employee is a skilled and talented individual who is very helpful."
    with pytest.raises(BadAnswer, match="a label of 13 words"):
        strategy.record(item, {"text": echo, "label": "positive", "misleading_labels": [echo]})


def test_a_task_file_replaces_step_one(tmp_path, capsys):
    """`--tasks FILE`: no brainstorm is asked for, the file's tasks are the instructions;
    resuming with another list is refused rather than mixing two runs in one output."""
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# ours\nClassify a review by sentiment\n\nClassify an email as spam\n")
    out = tmp_path / "cls.jsonl"
    args = ["--strategy", "classification", "--count", "4", "--output", str(out),
            "--tasks", str(tasks), "--near-duplicate", "0"]  # fmt: skip
    with FakeLLM(lambda prompt, n: _classification(prompt, n)) as llm:
        assert synth("--endpoint", llm.url, *args) == 0
        assert len(llm.prompts) == 4 and not any("Brainstorm" in p for p in llm.prompts)
        records = list(read_training_jsonl(out))
        assert Counter(r.instruction for r in records) == {
            "Classify a review by sentiment": 2, "Classify an email as spam": 2,
        }  # fmt: skip
        tasks.write_text("Classify a headline by topic\n")
        capsys.readouterr()
        assert synth("--endpoint", llm.url, *args) == 2
    assert "differs in tasks_file" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 4


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.txt", "Classify a review by sentiment\nSentiment\n", "t.txt:2: task 'Sentiment'"),
        ("t.json", '{"tasks": ["Classify a review by sentiment", 3]}', "tasks[1] is int"),
        ("t.json", '{"tasks": [', "t.json:1: not JSON"),
        ("t.txt", "# nothing\n\n", "no tasks"),
    ],
)
def test_a_bad_task_file_is_one_line_naming_the_file(tmp_path, capsys, name, text, message):
    tasks = tmp_path / name
    tasks.write_text(text)
    code = synth("--strategy", "from_scratch", "--endpoint", "http://127.0.0.1:9/v1",
                 "--count", "2", "--output", str(tmp_path / "o.jsonl"),
                 "--tasks", str(tasks))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_task_file_needs_a_two_step_strategy_and_no_task_endpoint(corpus, tmp_path, capsys):
    tasks = tmp_path / "t.txt"
    tasks.write_text("Classify a review by sentiment\n")
    common = ["--endpoint", "http://127.0.0.1:9/v1", "--count", "2", "--tasks", str(tasks),
              "--output", str(tmp_path / "o.jsonl")]  # fmt: skip
    assert synth("--strategy", "seed_corpus", "--corpus", str(corpus), *common) == 2
    assert "--tasks: the seed_corpus strategy has no step 1" in capsys.readouterr().err
    assert synth("--strategy", "classification", "--task-endpoint", "http://127.0.0.1:9/v1",
                 *common) == 2  # fmt: skip
    assert "--tasks replaces step 1: drop --task-endpoint" in capsys.readouterr().err


def test_a_kill_during_the_first_commit_leaves_an_output_that_resumes(tmp_path):
    from jaxembed.synth.store import SynthStore

    out = tmp_path / "synth.jsonl"
    SynthStore(out, {"run": 1}).open()
    with out.open("a") as f:  # the first batch half appended, then kill -9
        f.write('{"query": "half a rec')
    progress = SynthStore(out, {"run": 1}).open()
    assert progress.done == set() and out.read_text() == ""


def test_a_commit_that_failed_half_way_can_be_made_again_without_duplicates(tmp_path, monkeypatch):
    import os

    from jaxembed.synth import store as store_module

    out = tmp_path / "synth.jsonl"
    store = store_module.SynthStore(out, {"run": 1})
    progress = store.open()
    records = [{"query": f"q{i}"} for i in range(3)]
    done = [{"id": f"i{i}", "outcome": "kept"} for i in range(3)]
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):  # the records reach the disk, the done list does not
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.commit(progress, records, [], done)
    assert progress.sizes["records"] == 0 and progress.done == set()  # nothing recorded
    store.commit(progress, records, [], done)
    assert read_jsonl(out) == records
    resumed = store_module.SynthStore(out, {"run": 1}).open()
    assert resumed.done == {"i0", "i1", "i2"} and read_jsonl(out) == records


def test_a_forgotten_record_no_longer_blocks_its_duplicates():
    """What the round trip drops leaves the output, so it must not filter later queries."""
    from jaxembed.synth.filters import FilterSettings, RecordFilter

    f = RecordFilter(FilterSettings())
    dropped = {"query": "does daily aspirin prevent a second heart attack in adults"}
    f.remember(dropped)
    assert f.rule(dropped) == "duplicate"
    assert f.rule({"query": dropped["query"] + "?"}) == "near duplicate"
    f.forget(dropped)
    assert f.rule(dropped) is None and f.rule({"query": dropped["query"] + "?"}) is None
