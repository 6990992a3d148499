"""Rewards: the ``RewardModule`` base, the registry of built-ins and the weighted composite.

A reward turns ``(prompt record, completion text)`` into a :class:`RewardResult`. Verifier
rewards (``is_verifier = True``) also give the verdict ``correct``; bonuses such as the format
reward do not. The rollout callback scores every completion with a :class:`CompositeReward`:

    reward_i  = sum_k weight_k * reward_k(i)
    correct_i = AND of the verdicts of the verifier rewards

Subclasses register themselves under their ``name`` when their module is imported, so a
reward written in a user's own file is found by ``class_path`` like the built-ins.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["RewardModule", "CompositeReward", "REWARDS", "get_reward_class", "ScoredBatch"]

log = logging.getLogger(__name__)

REWARDS: dict[str, type[RewardModule]] = {}


class RewardModule:
    """Base class of rewards. Override :meth:`score`; set ``name`` and, for a verifier, ``is_verifier``.

    Args:
        weight: factor of this reward in the composite sum.
    """

    name: ClassVar[str] = ""
    is_verifier: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            REWARDS[cls.name] = cls

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        raise NotImplementedError(f"{type(self).__name__} must implement score(record, completion)")

    def __call__(self, record: PromptRecord, completion: str) -> RewardResult:
        return self.score(record, completion)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


def get_reward_class(name: str) -> type[RewardModule]:
    """The registered reward class called ``name``; the error lists the valid names."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}") from None


class ScoredBatch:
    """Scores of ``N`` completions: totals, verdicts, extracted answers and each part's rewards."""

    def __init__(self, rewards: torch.Tensor, correct: torch.Tensor, answers: list[str | None],
                 parts: dict[str, torch.Tensor], errors: int) -> None:
        self.rewards = rewards  # [N] float32 weighted total
        self.correct = correct  # [N] bool
        self.answers = answers  # [N]
        self.parts = parts  # name -> [N] unweighted
        self.errors = errors  # number of reward calls that raised


class CompositeReward(RewardModule):
    """Weighted sum of rewards, with the AND of the verifiers' verdicts as ``correct``.

    A reward that raises on a completion scores 0 with ``correct = False`` for it; the error is
    counted and logged once per reward, so one bad string cannot end a run.
    """

    name = "composite"

    def __init__(self, rewards: list[RewardModule]) -> None:
        super().__init__(weight=1.0)
        if not rewards:
            raise ValueError("rollout.rewards is empty: give at least one reward, e.g. CountdownReward")
        names = [_part_name(r) for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique in rollout.rewards, got {names}")
        self.rewards = list(rewards)
        self.names = names
        if not any(r.is_verifier for r in rewards):
            log.warning("no verifier among the rewards %s: every completion counts as incorrect", names)
        self._reported: set[str] = set()

    def _safe_score(self, name: str, reward: RewardModule, record: PromptRecord, completion: str):
        try:
            return reward(record, completion), False
        except Exception as err:  # noqa: BLE001 - a reward must never end the run
            if name not in self._reported:
                self._reported.add(name)
                log.error("reward %r raised %r on completion %r; scoring it 0 (reported once)",
                          name, err, completion[:200])
            return RewardResult(0.0, correct=False), True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        batch = self.score_batch([record], [completion])
        return RewardResult(float(batch.rewards[0]), bool(batch.correct[0]), batch.answers[0],
                            {k: float(v[0]) for k, v in batch.parts.items()})

    def score_batch(self, records: list[PromptRecord], completions: list[str]) -> ScoredBatch:
        n = len(completions)
        totals = torch.zeros(n)
        # with no verifier among the rewards nothing can be correct (warned at construction)
        correct = torch.full((n,), any(r.is_verifier for r in self.rewards), dtype=torch.bool)
        answers: list[str | None] = [None] * n
        parts = {name: torch.zeros(n) for name in self.names}
        errors = 0
        for name, reward in zip(self.names, self.rewards):
            for i, (record, completion) in enumerate(zip(records, completions)):
                result, failed = self._safe_score(name, reward, record, completion)
                errors += failed
                parts[name][i] = result.reward
                totals[i] += reward.weight * result.reward
                if reward.is_verifier:
                    correct[i] &= bool(result.correct)
                if answers[i] is None and result.answer is not None:
                    answers[i] = result.answer
        return ScoredBatch(totals, correct, answers, parts, errors)


def _part_name(reward: RewardModule) -> str:
    return reward.name or type(reward).__name__
