"""A synth run: step 1 (tasks, for the two-step strategies), then every item not yet done,
asked concurrently, parsed, checked, filtered and committed in batches (store.py).

An answer that does not parse or lacks a field is asked again (`parse_retries` times), then
written to the rejects file. An endpoint that fails through all its retries stops the run
(`RunStopped`) after what finished is committed; rerunning the same command resumes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxembed.data.formats import parse_training_record
from jaxembed.errors import RunStopped
from jaxembed.progress import progress_bar
from jaxembed.synth.answers import BadAnswer, parse_object
from jaxembed.synth.client import ChatClient, ClientSettings, EndpointFailed, RequestFailed
from jaxembed.synth.endpoints import Endpoint, draw
from jaxembed.synth.filters import FilterSettings, RecordFilter, normalized
from jaxembed.synth.store import SynthStore
from jaxembed.synth.strategies import Item, Strategy, digest, item_rng, parse_tasks
from jaxembed.synth.templates import Template


@dataclass(frozen=True)
class RunOptions:
    count: int  # items (records asked for)
    num_tasks: int = 20  # step 1: tasks to brainstorm
    seed: int = 0
    batch: int = 16  # items per commit
    parse_retries: int = 2
    quiet: bool = False
    tasks: tuple[str, ...] | None = None  # given (--tasks): step 1 is skipped


@dataclass
class _Outcome:
    item: Item
    endpoint: Endpoint
    model: str = ""
    record: dict[str, Any] | None = None
    reject: dict[str, Any] | None = None


def run_synth(
    strategy: Strategy,
    templates: dict[str, Template],
    endpoints: list[Endpoint],
    client_settings: ClientSettings,
    api_key: str,
    output: str | Path,
    options: RunOptions,
    filter_settings: FilterSettings | None = None,
    round_trip: Any = None,
    task_endpoints: list[Endpoint] | None = None,
) -> dict[str, Any]:
    """Generate into `output` (resuming what is there); returns the report. Two-step
    strategies ask step 1 of `task_endpoints` (default: `endpoints`)."""
    run_key = {
        "strategy": strategy.name,
        "seed": options.seed,
        "num_tasks": options.num_tasks,
        "prompts": {name: t.version for name, t in sorted(templates.items())},
        **strategy.settings(),
    }
    if options.tasks is not None:
        run_key["tasks_file"] = digest(list(options.tasks))
    store = SynthStore(output, run_key)
    return asyncio.run(
        _Run(strategy, templates, endpoints, client_settings, api_key, store, options,
             filter_settings or FilterSettings(), round_trip, task_endpoints or endpoints).main()
    )  # fmt: skip


class _Run:
    def __init__(self, strategy, templates, endpoints, client_settings, api_key, store,
                 options: RunOptions, filter_settings, round_trip,
                 task_endpoints) -> None:  # fmt: skip
        self.strategy, self.templates, self.endpoints = strategy, templates, endpoints
        self.task_endpoints = task_endpoints
        self.client_settings, self.api_key = client_settings, api_key
        self.store, self.options = store, options
        self.filter_settings = filter_settings
        self.round_trip = round_trip  # a RoundTrip (round_trip.py), or None
        # For the "copied from the prompt" check, once rather than per item.
        self.normalized_templates = {k: normalized(t.text) for k, t in templates.items()}

    def _resume(self) -> None:
        """The output's progress (files cut back to it), the filter refilled with the kept
        records, the report's totals carried on."""
        self.progress = progress = self.store.open()
        self.filter = RecordFilter(self.filter_settings)
        for record in self.store.kept_records():
            self.filter.remember(record)
        counts = progress.counts
        self.totals = Counter(counts.get("totals", {}))
        self.rejects_by_reason = Counter(counts.get("rejects_by_reason", {}))
        self.filtered_by_rule = Counter(counts.get("filtered_by_rule", {}))
        self.per_model = {k: Counter(v) for k, v in counts.get("per_model", {}).items()}

    async def main(self) -> dict[str, Any]:
        used = list(self.endpoints)
        if self.strategy.task_step is not None:
            used += [e for e in self.task_endpoints if e not in used]
        self.client = ChatClient(used, self.client_settings, self.api_key)
        try:
            await self.client.check(used)  # before any file is touched
            self._resume()
            try:
                tasks = await self._tasks()
            except EndpointFailed as e:
                raise RunStopped(f"step 1: endpoint {e.endpoint.url} stopped answering "
                                 f"({e.reason})") from None  # fmt: skip
            items = self.strategy.items(tasks, self.options.count, self.options.seed)
            await self._generate(items)
        finally:
            await self.client.close()
        return self._report(len(items))

    # --- step 1 ---------------------------------------------------------------------

    async def _tasks(self) -> list[str]:
        if self.strategy.task_step is None:
            return []
        if self.options.tasks is not None:
            tasks = list(self.options.tasks)
            self.store.save_tasks(tasks)  # beside the output, as step 1's would be
            return tasks
        tasks = self.store.load_tasks()
        if tasks is not None:
            return tasks
        requests = self.strategy.task_requests(self.options.num_tasks, self.options.seed)
        answers = await asyncio.gather(*(self._ask(item, parse_tasks) for item in requests))
        tasks, seen = [], set()
        for outcome in answers:
            for task in outcome.record or []:
                if normalized(task) not in seen:
                    seen.add(normalized(task))
                    tasks.append(task)
        rejects = [o.reject for o in answers if o.reject]
        if rejects:  # with their raw text, as any reject, and in the report's counts
            for reject in rejects:
                self.rejects_by_reason[_reason_key(reject["reason"])] += 1
            self.totals["step1_rejected"] += len(rejects)
            self.progress.counts = self._counts()
            self.store.commit(self.progress, [], rejects, [])
        if not tasks:
            self._report(None)
            reasons = "; ".join(sorted({r["reason"] for r in rejects}))
            raise RunStopped(f"step 1 ({self.strategy.task_step}) produced no task: {reasons}")
        tasks = tasks[: self.options.num_tasks]
        self.store.save_tasks(tasks)
        return tasks

    # --- step 2 ---------------------------------------------------------------------

    async def _ask(self, item: Item, parse) -> _Outcome:
        """One item asked until its answer parses (or the retries run out)."""
        pool = self.task_endpoints if item.step == self.strategy.task_step else self.endpoints
        endpoint = draw(pool, item_rng(self.options.seed, "endpoint:" + item.id))
        prompt = self.templates[item.step].render(**item.values)
        outcome = _Outcome(item, endpoint)
        reason, raw = "", ""
        for attempt in range(self.options.parse_retries + 1):
            try:
                completion = await self.client.complete(endpoint, prompt)
            except RequestFailed as e:
                reason, raw = f"request failed: {e}", ""
                break
            self.totals.update(
                requests=1,
                retries=completion.retries,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                parse_retries=1 if attempt else 0,
            )
            outcome.model = completion.model
            try:
                outcome.record = parse(parse_object(completion.text))
                return outcome
            except BadAnswer as e:
                reason, raw = str(e), completion.text
                if completion.finish_reason == "length":  # the why, for --max-tokens
                    reason = f"cut off at --max-tokens ({reason})"
        outcome.reject = {"id": item.id, "step": item.step, "endpoint": endpoint.url,
                          "reason": reason, "raw": raw}  # fmt: skip
        return outcome

    def _parse_record(self, item: Item):
        template = self.normalized_templates[item.step]

        def parse(answer: dict[str, Any]) -> dict[str, Any]:
            record = self.strategy.record(item, answer)
            # Small models echo the prompt's example instead of writing their own.
            if normalized(record["query"]) in template:
                raise BadAnswer("copied from the prompt")
            try:  # what `jaxembed train` will read: the same checks
                parse_training_record(record, "jsonl")
            except ValueError as e:  # DataFormatError's record check
                raise BadAnswer(f"invalid record ({e})") from None
            return record

        return parse

    async def _generate(self, items: list[Item]) -> None:
        pending = [item for item in items if item.id not in self.progress.done]
        bar = progress_bar(
            total=len(items), initial=len(items) - len(pending), desc="synth", unit="item",
            disable=self.options.quiet,
        )  # fmt: skip
        batch: dict[str, list] = {"records": [], "rejects": [], "done": []}
        window = max(2 * self.client_settings.concurrency, self.options.batch)
        queue = iter(pending)
        running: set[asyncio.Task] = set()
        stop: EndpointFailed | None = None
        try:
            while True:
                while stop is None and len(running) < window:
                    item = next(queue, None)
                    if item is None:
                        break
                    running.add(asyncio.ensure_future(self._ask(item, self._parse_record(item))))
                if not running:
                    break
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    try:
                        self._settle(task.result(), batch)
                    except EndpointFailed as e:
                        stop = stop or e
                    bar.update(1)
                bar.set_postfix(kept=self.totals["kept"], rejected=self.totals["rejected"])
                if len(batch["done"]) >= self.options.batch or (stop and not running):
                    self._commit(batch)
                if stop is not None and not running:
                    break
        except BaseException:
            for task in running:
                task.cancel()
            self._commit(batch)  # what finished is kept (Ctrl-C included)
            raise
        finally:
            bar.close()
        self._commit(batch)
        if stop is not None:
            raise RunStopped(
                f"endpoint {stop.endpoint.url} stopped answering ({stop.reason}); "
                f"{self.totals['kept']} records are in {self.store.output}: rerun the same "
                "command to resume"
            )

    def _settle(self, outcome: _Outcome, batch: dict[str, list]) -> None:
        item, model = outcome.item, outcome.model or outcome.endpoint.name
        per_model = self.per_model.setdefault(model, Counter())
        if outcome.reject is not None:
            batch["rejects"].append(outcome.reject)
            batch["done"].append({"id": item.id, "outcome": "rejected"})
            self.rejects_by_reason[_reason_key(outcome.reject["reason"])] += 1
            self.totals["rejected"] += 1
            per_model["rejected"] += 1
            return
        record = outcome.record
        rule = self.filter.rule(record)
        if rule is not None:
            batch["done"].append({"id": item.id, "outcome": f"filtered: {rule}"})
            self.filtered_by_rule[rule] += 1
            self.totals["filtered"] += 1
            per_model["filtered"] += 1
            return
        self.filter.remember(record)
        record["provenance"] = {
            "strategy": self.strategy.name,
            "endpoint": outcome.endpoint.url,
            "model": model,
            "prompt": self.templates[item.step].version,
            "item": item.id,
            "seed": self.options.seed,
        }
        batch["records"].append(record)
        batch["done"].append({"id": item.id, "outcome": "kept"})
        self.totals["kept"] += 1
        per_model["kept"] += 1

    def _commit(self, batch: dict[str, list]) -> None:
        if not batch["done"]:
            return
        if self.round_trip is not None and batch["records"]:
            self._check_round_trip(batch)
        self.progress.counts = self._counts()
        self.store.commit(self.progress, batch["records"], batch["rejects"], batch["done"])
        for rows in batch.values():
            rows.clear()
        self._report(None)

    def _check_round_trip(self, batch: dict[str, list]) -> None:
        """Drop the batch's records whose seed document the teacher ranks below top k."""
        records = batch["records"]
        # a commit made again after a failure: its records were checked already
        unchecked = [r for r in records if "teacher_rank" not in r["provenance"]]
        ranks = self.round_trip.ranks(unchecked) if unchecked else []
        failed = set()
        for record, rank in zip(unchecked, ranks, strict=True):
            record["provenance"]["teacher_rank"] = rank
            if rank >= self.round_trip.top_k:
                failed.add(record["provenance"]["item"])
                self.filter.forget(record)  # not in the output: no later query's duplicate
                per_model = self.per_model[record["provenance"]["model"]]
                per_model["kept"] -= 1
                per_model["filtered"] += 1
        self.totals["round_trip_checked"] += len(unchecked)
        if not failed:
            return
        batch["records"] = [r for r in records if r["provenance"]["item"] not in failed]
        for done in batch["done"]:
            if done["id"] in failed:
                done["outcome"] = "filtered: round trip"
        self.totals["kept"] -= len(failed)
        self.totals["filtered"] += len(failed)
        self.filtered_by_rule["round trip"] += len(failed)

    def _counts(self) -> dict[str, Any]:
        return {
            "totals": dict(self.totals),
            "rejects_by_reason": dict(self.rejects_by_reason),
            "filtered_by_rule": dict(self.filtered_by_rule),
            "per_model": {k: dict(v) for k, v in self.per_model.items()},
        }

    def _report(self, items: int | None) -> dict[str, Any]:
        report = {
            "strategy": self.strategy.name,
            "output": str(self.store.output),
            **self._counts(),
        }
        if items is not None:
            report["items"] = items
        self.store.write_report(report)
        return report


def _reason_key(reason: str) -> str:
    """Rejects grouped by kind: 'invalid record (...)' and 'request failed: HTTP 400: ...'
    by their head."""
    return reason.split(" (")[0].split(": HTTP")[0] if reason else "unknown"
