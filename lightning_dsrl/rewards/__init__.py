"""Rewards: the ``Reward`` base class (old name ``RewardModule``), the registry and the built-in rewards (see ``base.py``)."""

from lightning_dsrl.rewards.base import (
    REWARDS,
    CompositeReward,
    Reward,
    RewardModule,
    ScoredBatch,
    get_reward_class,
)
from lightning_dsrl.rewards.countdown import CountdownReward
from lightning_dsrl.rewards.format import FormatReward
from lightning_dsrl.rewards.math import MathReward
from lightning_dsrl.rewards.numeric import NumericAnswerReward

__all__ = [
    "REWARDS",
    "CompositeReward",
    "CountdownReward",
    "FormatReward",
    "MathReward",
    "NumericAnswerReward",
    "Reward",
    "RewardModule",
    "ScoredBatch",
    "get_reward_class",
]
