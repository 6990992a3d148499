"""Numeric answer reward: the last ``<answer>...</answer>`` must hold the reference number."""

from __future__ import annotations

import re
from fractions import Fraction

from lightning_dsrl.rewards.base import Reward
from lightning_dsrl.rewards.countdown import extract_answer
from lightning_dsrl.rewards.equations import extract_equations
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["NumericAnswerReward", "parse_number"]

_MAX_NUMBER_CHARS = 64
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def parse_number(text: str) -> Fraction | None:
    """An ASCII integer or decimal (``1,234`` and ``-3.50`` allowed) as an exact fraction.

    >>> parse_number(" 1,234 "), parse_number("-3.50"), parse_number("12abc")
    (Fraction(1234, 1), Fraction(-7, 2), None)
    """
    text = text.strip().replace(",", "")
    # no exponents: Fraction("1e999999999") would build a billion-digit integer
    if len(text) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    return Fraction(text)


class NumericAnswerReward(Reward):
    """1.0 when the answer equals ``record.answer`` as a number, else 0.0 (a verifier). Its
    ``equations`` are those the completion writes (:func:`~lightning_dsrl.rewards.equations.extract_equations`)."""

    name = "numeric"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        equations = extract_equations(completion)
        text = extract_answer(completion)
        value = parse_number(text) if text is not None else None
        if value is None:
            return RewardResult(0.0, correct=False, equations=equations)
        correct = value == parse_number(str(record.answer))
        return RewardResult(1.0 if correct else 0.0, correct=correct, answer=str(value), equations=equations)
