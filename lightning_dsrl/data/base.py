"""The ``Task`` base: a named source of prompt records for a train split and held-out splits."""

from __future__ import annotations

from typing import Literal

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.types import PromptRecord

__all__ = ["Task", "Split"]

Split = Literal["train", "val", "test"]


class Task:
    """A source of :class:`PromptRecord` s. Subclasses implement :meth:`build`.

    ``records(split)`` caches what ``build`` returns and numbers the records (``uid``), so a task
    that generates problems does it once. Generation must be deterministic given the task's
    seed, and the splits disjoint. ``splits`` names the splits a task has: every task has
    ``train`` and ``val``; a task with a ``test`` split (held out like ``val``, for the figures a
    study reports while ``val`` is the one it tunes on) lists it too.
    """

    splits: tuple[str, ...] = ("train", "val")

    def __init__(self) -> None:
        self._cache: dict[str, list[PromptRecord]] = {}

    def build(self, split: Split) -> list[PromptRecord]:
        raise NotImplementedError(f"{type(self).__name__} must implement build(split)")

    def records(self, split: Split) -> list[PromptRecord]:
        if split not in self.splits:
            raise ConfigError(f"data.eval_split={split!r}: {type(self).__name__} has the splits {list(self.splits)}")
        if split not in self._cache:
            records = self.build(split)
            for i, record in enumerate(records):
                record.uid = i
            self._cache[split] = records
        return self._cache[split]
