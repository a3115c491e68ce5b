"""A hand-written task list (`--tasks FILE`) in place of step 1's brainstorm: the tasks a team
already knows it wants, or ones a stronger model wrote earlier."""

from __future__ import annotations

import json
from pathlib import Path

from jaxembed.errors import UserInputError
from jaxembed.synth.filters import normalized


def read_task_list(path: str | Path) -> list[str]:
    """Tasks from a JSON file (`{"tasks": [...]}` or a list of strings, as step 1 saves them)
    or a text file with one task a line (blank lines and `#` comments skipped); duplicates
    dropped, order kept."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"--tasks {path}: cannot read ({e})") from None
    if path.suffix == ".json":
        tasks = _json_tasks(path, text)
    else:
        tasks = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
        tasks = [(n, t) for n, t in tasks if t and not t.startswith("#")]
    unique, seen = [], set()
    for where, task in tasks:
        task = " ".join(task.split())
        if len(task.split()) < 2:
            raise UserInputError(
                f"{path}:{where}: task {task!r} is too short to be an instruction "
                "(write it as one, e.g. 'Given a claim, retrieve evidence for it')"
            )
        if normalized(task) not in seen:
            seen.add(normalized(task))
            unique.append(task)
    if not unique:
        raise UserInputError(f"--tasks {path}: no tasks")
    return unique


def _json_tasks(path: Path, text: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if isinstance(data, dict):
        data = data.get("tasks")
    if not isinstance(data, list):
        raise UserInputError(f'{path}: expected {{"tasks": [...]}} or a list of strings')
    for i, task in enumerate(data):
        if not isinstance(task, str):
            raise UserInputError(f"{path}: tasks[{i}] is {type(task).__name__}, not a string")
    return [(f"tasks[{i}]", task) for i, task in enumerate(data)]
