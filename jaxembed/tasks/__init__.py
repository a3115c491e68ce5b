"""The task registry: `model.task` names one of these (see tasks/base.py for the protocol)."""

from __future__ import annotations

from jaxembed.errors import UserInputError
from jaxembed.tasks.base import Task
from jaxembed.tasks.embedding import EMBEDDING
from jaxembed.tasks.reranker import RERANKER

TASKS: dict[str, Task] = {EMBEDDING.name: EMBEDDING, RERANKER.name: RERANKER}

__all__ = ["TASKS", "Task", "get"]


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserInputError(f"model.task={name!r}: expected one of {tuple(TASKS)}") from None
