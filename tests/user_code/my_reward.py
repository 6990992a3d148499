"""Rewards a user might write, some of them badly; the reliability tests load them by ``class_path``
(``my_reward.SlowReward``) with this folder on ``sys.path``, as a user's working directory would be."""

from __future__ import annotations

import time

from lightning_dsrl.rewards import RewardModule
from lightning_dsrl.types import PromptRecord, RewardResult


class RaisingReward(RewardModule):
    """A verifier with a bug: raises on completions whose length is a multiple of ``every`` (1: all)."""

    name = "raising"
    is_verifier = True

    def __init__(self, weight: float = 1.0, every: int = 1) -> None:
        super().__init__(weight)
        self.every = every

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        if len(completion) % self.every == 0:
            raise ZeroDivisionError("a bug in a user's reward")
        return RewardResult(1.0, correct=True)


class SlowReward(RewardModule):
    """Sleeps ``delay_s`` seconds on every completion; with ``swallow`` it also catches every
    ``Exception`` around the sleep, as careless code does."""

    name = "slow"

    def __init__(self, weight: float = 1.0, delay_s: float = 60.0, swallow: bool = False) -> None:
        super().__init__(weight)
        self.delay_s = delay_s
        self.swallow = swallow

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        try:
            time.sleep(self.delay_s)
        except Exception:  # noqa: BLE001 - the careless code this reward stands for
            if not self.swallow:
                raise
        return RewardResult(1.0)


class ConstantReward(RewardModule):
    """A verifier that calls every completion wrong: every group has equal rewards."""

    name = "constant"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        return RewardResult(0.0, correct=False)


class SpreadReward(RewardModule):
    """A scripted verifier for tests, with a known spread on any model, trained or random: a completion
    is correct when its first character has an even code point, except that every completion for a
    CountDown target divisible by 3 is wrong (those groups are all wrong: DAPO's filter drops them)."""

    name = "spread"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        ok = bool(completion) and ord(completion[0]) % 2 == 0 and record.meta.get("target", 1) % 3 != 0
        return RewardResult(float(ok), correct=ok)
