"""A synth run's files, written so that nothing is lost or written twice.

Beside OUTPUT (the training JSONL): OUTPUT.rejects.jsonl (unusable answers, with the raw
text and the reason), OUTPUT.done.jsonl (every finished item id and its outcome),
OUTPUT.tasks.json (step 1's tasks, for the two-step strategies) and OUTPUT.progress.json.

A batch is appended to the three JSONL files and flushed to disk, and only then does
`progress.json` (replaced atomically) record their new lengths. A run killed at any point
restarts by cutting each file back to the recorded length: a batch half written is gone
and its items are asked again; a batch recorded is never asked again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_file

FILES = ("records", "rejects", "done")


@dataclass
class Progress:
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILES, 0))
    counts: dict[str, Any] = field(default_factory=dict)  # the report's running totals
    done: set[str] = field(default_factory=set)


class SynthStore:
    def __init__(self, output: str | Path, run_key: dict[str, Any]):
        self.output = Path(output)
        base = str(self.output)
        self.paths = {
            "records": self.output,
            "rejects": Path(base + ".rejects.jsonl"),
            "done": Path(base + ".done.jsonl"),
        }
        self.progress_path = Path(base + ".progress.json")
        self.tasks_path = Path(base + ".tasks.json")
        self.report_path = Path(base + ".report.json")
        self.run_key = run_key

    def open(self) -> Progress:
        """The progress so far (empty for a new output), files cut back to it."""
        if not self.progress_path.is_file():
            for path in self.paths.values():
                if path.exists() and path.stat().st_size:
                    raise UserInputError(
                        f"{path}: exists and is not a synth run's output (no "
                        f"{self.progress_path.name}); refusing to overwrite"
                    )
            self.output.parent.mkdir(parents=True, exist_ok=True)
            for path in self.paths.values():
                path.touch()  # a run that keeps nothing still leaves its (empty) output
            progress = Progress()
            self._save(progress.sizes, progress.counts)  # a kill before the first commit
            return progress  # leaves an output that resumes
        try:
            saved = json.loads(self.progress_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserInputError(f"{self.progress_path}: unreadable ({e})") from None
        if saved.get("run") != self.run_key:
            changed = sorted(
                k for k in self.run_key if saved.get("run", {}).get(k) != self.run_key[k]
            )
            raise UserInputError(
                f"{self.output}: written by another synth run (it differs in "
                f"{', '.join(changed)}); give a new --output or the same settings"
            )
        progress = Progress(saved["sizes"], saved.get("counts", {}))
        for name, path in self.paths.items():
            size = progress.sizes[name]
            if not path.exists() and not size:
                path.touch()  # nothing was ever written to it
            if not path.exists() or path.stat().st_size < size:
                raise UserInputError(
                    f"{path}: shorter than {self.progress_path.name} records ({size} bytes): "
                    "the output was changed by hand"
                )
            with open(path, "r+b") as f:
                f.truncate(size)  # an unrecorded, possibly half-written batch
        with open(self.paths["done"], encoding="utf-8") as f:
            progress.done = {json.loads(line)["id"] for line in f if line.strip()}
        return progress

    def kept_records(self) -> list[dict[str, Any]]:
        if not self.output.exists():
            return []
        with open(self.paths["records"], encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def commit(
        self,
        progress: Progress,
        records: list[dict[str, Any]],
        rejects: list[dict[str, Any]],
        done: list[dict[str, str]],
    ) -> None:
        sizes = dict(progress.sizes)
        for name, rows in (("records", records), ("rejects", rejects), ("done", done)):
            if not rows:
                continue
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
            with open(self.paths[name], "r+b") as f:
                f.truncate(sizes[name])  # what a commit that failed half-way left
                f.seek(sizes[name])
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            sizes[name] += len(data)
        self._save(sizes, progress.counts)
        progress.sizes = sizes  # only once recorded: a failed commit can be made again
        progress.done.update(d["id"] for d in done)

    def _save(self, sizes: dict[str, int], counts: dict[str, Any]) -> None:
        state = {"run": self.run_key, "sizes": sizes, "counts": counts}
        with atomic_file(self.progress_path) as tmp:
            tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")

    def load_tasks(self) -> list[str] | None:
        if not self.tasks_path.is_file():
            return None
        return json.loads(self.tasks_path.read_text(encoding="utf-8"))["tasks"]

    def save_tasks(self, tasks: list[str]) -> None:
        with atomic_file(self.tasks_path) as tmp:
            tmp.write_text(json.dumps({"tasks": tasks}, indent=1) + "\n", encoding="utf-8")

    def write_report(self, report: dict[str, Any]) -> None:
        with atomic_file(self.report_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
