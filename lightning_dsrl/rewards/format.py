"""Format reward: a bonus for ending with a well-formed ``<answer>...</answer>``.

Not a verifier: it says nothing about correctness, so DS-GRPO and the metrics ignore it. In
the CountDown configs it carries weight 0.1, giving the classic TinyZero reward (1.1 correct,
0.1 well-formed but wrong, 0 otherwise).
"""

from __future__ import annotations

from lightning_dsrl.rewards.base import Reward
from lightning_dsrl.rewards.countdown import CLOSE, extract_answer
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["FormatReward"]


class FormatReward(Reward):
    """1.0 when the completion has a non-empty final ``<answer>...</answer>``, else 0.0.

    Args:
        weight: factor in the composite sum.
        require_end: also require that nothing but white space follows the closing tag.
    """

    name = "format"

    def __init__(self, weight: float = 1.0, require_end: bool = True) -> None:
        super().__init__(weight)
        self.require_end = require_end

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        answer = extract_answer(completion)
        ok = bool(answer)
        if ok and self.require_end:
            ok = not completion[completion.rfind(CLOSE) + len(CLOSE) :].strip()
        return RewardResult(1.0 if ok else 0.0)
