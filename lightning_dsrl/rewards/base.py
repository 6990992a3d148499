"""Rewards: the ``Reward`` base, the registry of built-ins and the weighted composite.

A reward turns ``(prompt record, completion text)`` into a :class:`RewardResult`. Verifier
rewards (``is_verifier = True``) also give the verdict ``correct``; bonuses such as the format
reward do not. The rollout callback scores every completion with a :class:`CompositeReward`:

    reward_i  = sum_k weight_k * reward_k(i)
    correct_i = AND of the verdicts of the verifier rewards
    answer_i  = the first extracted answer that is not None, rewards in order (likewise equations_i)

Subclasses register themselves under their ``name`` when their module is imported, so a
reward written in a user's own file is found by ``class_path`` like the built-ins.

Isolation: the composite calls each reward under a time budget (``timeout_s``, see ``guard.py``
for what it can and cannot interrupt). A call that raises, runs past the budget, or returns
something other than a ``RewardResult`` with a finite reward (and ``equations``, if any, a tuple
of strings) scores 0 with ``correct = False`` for that reward; it is counted (``errors``,
``timeouts``) and logged once per reward and kind with the offending sample, and the run goes on.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import torch

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.guard import RewardTimeout, call_with_budget
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["Reward", "RewardModule", "CompositeReward", "REWARDS", "get_reward_class", "ScoredBatch"]

log = logging.getLogger(__name__)

REWARDS: dict[str, type[Reward]] = {}


class Reward:
    """Base class of rewards. Override :meth:`score`; set ``name`` and, for a verifier, ``is_verifier``.

    (A plain callable, not an ``nn.Module``: it holds no weights. ``RewardModule`` is its old name.)

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


RewardModule = Reward  # the old name, kept for rewards written against it


def get_reward_class(name: str) -> type[Reward]:
    """The registered reward class called ``name``; the error lists the valid names."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}") from None


class ScoredBatch:
    """Scores of ``N`` completions: totals, verdicts, extracted answers and equations, and each part's rewards."""

    def __init__(self, rewards: torch.Tensor, correct: torch.Tensor, answers: list[str | None],
                 parts: dict[str, torch.Tensor], errors: int, timeouts: int = 0,
                 equations: list[tuple[str, ...] | None] | None = None) -> None:
        self.rewards = rewards  # [N] float32 weighted total
        self.correct = correct  # [N] bool
        self.answers = answers  # [N]
        self.equations = equations if equations is not None else [None] * len(answers)  # [N]
        self.parts = parts  # name -> [N] unweighted
        self.errors = errors  # number of reward calls that raised or returned an invalid result
        self.timeouts = timeouts  # number of reward calls that ran past the time budget


class CompositeReward(Reward):
    """Weighted sum of rewards, with the AND of the verifiers' verdicts as ``correct``.

    A reward that raises, runs past ``timeout_s`` seconds or returns an invalid result on a
    completion scores 0 with ``correct = False`` for it; it is counted and logged once per reward
    and kind, so one bad string cannot end a run.

    Args:
        rewards: the parts.
        timeout_s: time budget of one reward call in seconds (``None``: no limit).
    """

    name = "composite"
    internal = True  # built by the rollout callback from ``rollout.rewards``, not listed in a config

    def __init__(self, rewards: list[Reward], timeout_s: float | None = None) -> None:
        super().__init__(weight=1.0)
        if not rewards:
            raise ConfigError("rollout.rewards is empty: list at least one reward, e.g. "
                              "[{class_path: CountdownReward}, {class_path: FormatReward, init_args: {weight: 0.1}}]")
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"rollout.reward_timeout_s={timeout_s}: give seconds > 0, or null for no limit")
        self.timeout_s = timeout_s
        for reward in rewards:
            if not isinstance(getattr(reward, "weight", None), float):
                raise ValueError(f"{type(reward).__name__} has no weight: its __init__ must call "
                                 "super().__init__(weight)")
        names = [_part_name(r) for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique in rollout.rewards, got {names}")
        self.rewards = list(rewards)
        self.names = names
        if not any(r.is_verifier for r in rewards):
            log.warning("no verifier among the rewards %s: every completion counts as incorrect", names)
        self._reported: set[tuple[str, str]] = set()

    def _safe_score(self, name: str, reward: Reward, record: PromptRecord,
                    completion: str) -> tuple[RewardResult, str | None]:
        """The reward's result, or a zero result and the kind of failure (``error`` / ``timeout``)."""
        try:
            result, seconds = call_with_budget(reward, self.timeout_s, record, completion)
        except RewardTimeout:
            return self._failed(name, "timeout", f"ran past {self.timeout_s} s", record, completion)
        except Exception as err:  # noqa: BLE001 - a reward must never end the run
            return self._failed(name, "error", f"raised {err!r}", record, completion)
        if self.timeout_s is not None and seconds > self.timeout_s:  # returned, but late (not interruptible)
            return self._failed(name, "timeout", f"took {seconds:.2f} s > {self.timeout_s} s", record, completion)
        if not isinstance(result, RewardResult):
            return self._failed(name, "error", f"returned {type(result).__name__}, not a RewardResult", record,
                                completion)
        try:
            value = float(result.reward)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            return self._failed(name, "error", f"returned the reward {result.reward!r}", record, completion)
        equations = result.equations
        if equations is not None and not (isinstance(equations, (tuple, list)) and all(isinstance(e, str) for e in equations)):
            return self._failed(name, "error", f"returned equations={equations!r}, not a tuple of strings", record,
                                completion)
        return result, None

    def _failed(self, name: str, kind: str, what: str, record: PromptRecord,
                completion: str) -> tuple[RewardResult, str]:
        if (name, kind) not in self._reported:
            self._reported.add((name, kind))
            counter = "reward/timeouts" if kind == "timeout" else "reward/errors"
            log.error("reward %r %s; scored 0 with correct=False, counted in %s, reported once. prompt: %s "
                      "completion: %s", name, what, counter, _excerpt(str(getattr(record, "prompt", record))), _excerpt(completion))
        return RewardResult(0.0, correct=False), kind

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        batch = self.score_batch([record], [completion])
        return RewardResult(float(batch.rewards[0]), bool(batch.correct[0]), batch.answers[0],
                            {k: float(v[0]) for k, v in batch.parts.items()}, batch.equations[0])

    def score_batch(self, records: list[PromptRecord], completions: list[str]) -> ScoredBatch:
        n = len(completions)
        totals = torch.zeros(n)
        # with no verifier among the rewards nothing can be correct (warned at construction)
        correct = torch.full((n,), any(r.is_verifier for r in self.rewards), dtype=torch.bool)
        answers: list[str | None] = [None] * n
        equations: list[tuple[str, ...] | None] = [None] * n
        parts = {name: torch.zeros(n) for name in self.names}
        failures = {"error": 0, "timeout": 0}
        for name, reward in zip(self.names, self.rewards):
            for i, (record, completion) in enumerate(zip(records, completions)):
                result, failed = self._safe_score(name, reward, record, completion)
                if failed is not None:
                    failures[failed] += 1
                parts[name][i] = result.reward
                totals[i] += reward.weight * result.reward
                if reward.is_verifier:
                    correct[i] &= bool(result.correct)
                if answers[i] is None and result.answer is not None:
                    answers[i] = result.answer
                if equations[i] is None and result.equations is not None:
                    equations[i] = tuple(result.equations)
        return ScoredBatch(totals, correct, answers, parts, failures["error"], failures["timeout"], equations)


def _part_name(reward: Reward) -> str:
    return reward.name or type(reward).__name__


def _excerpt(text: str, limit: int = 300) -> str:
    """``repr`` of at most ``limit`` characters of ``text``, with its length when cut (a completion may be 1 MB)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
