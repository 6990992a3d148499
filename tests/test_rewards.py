"""Reward registry, weighted composite, error isolation, format and numeric rewards."""

from __future__ import annotations

import logging

import pytest

from lightning_dsrl.rewards import (
    REWARDS,
    CompositeReward,
    CountdownReward,
    FormatReward,
    NumericAnswerReward,
    RewardModule,
    get_reward_class,
)
from lightning_dsrl.types import PromptRecord, RewardResult

RECORD = PromptRecord("p", answer="15", meta={"numbers": [3, 7, 12], "target": 15})


def test_registry_lists_builtins_and_user_subclasses():
    assert get_reward_class("countdown") is CountdownReward
    assert {"countdown", "format", "numeric"} <= set(REWARDS)

    class Shouty(RewardModule):
        name = "shouty_test"

        def score(self, record, completion):
            return RewardResult(float(completion.isupper()))

    assert get_reward_class("shouty_test") is Shouty
    with pytest.raises(ValueError, match="registered rewards: .*countdown"):
        get_reward_class("countdwn")


def test_composite_weights_and_verdict():
    composite = CompositeReward([CountdownReward(), FormatReward(weight=0.1)])
    batch = composite.score_batch([RECORD] * 3, ["<answer>3*(12-7)</answer>", "<answer>1+2</answer>", "nothing"])
    assert batch.rewards.tolist() == pytest.approx([1.1, 0.1, 0.0])
    assert batch.correct.tolist() == [True, False, False]
    assert batch.answers == ["(12-7)*3", "1+2", None]
    assert batch.parts["format"].tolist() == [1.0, 1.0, 0.0]
    assert batch.errors == 0


def test_a_raising_reward_scores_zero_and_is_counted(caplog):
    class Broken(RewardModule):
        name = "broken_test"
        is_verifier = True

        def score(self, record, completion):
            raise RuntimeError("boom")

    composite = CompositeReward([Broken(), FormatReward(weight=0.5)])
    with caplog.at_level(logging.ERROR):
        batch = composite.score_batch([RECORD] * 2, ["<answer>1</answer>", "<answer>2</answer>"])
    assert batch.rewards.tolist() == [0.5, 0.5] and batch.correct.tolist() == [False, False]
    assert batch.errors == 2
    assert sum("broken_test" in r.message for r in caplog.records) == 1  # logged once


def test_composite_rejects_empty_and_duplicate_names():
    with pytest.raises(ValueError, match="empty"):
        CompositeReward([])
    with pytest.raises(ValueError, match="unique"):
        CompositeReward([FormatReward(), FormatReward()])


def test_format_reward():
    fmt = FormatReward()
    assert fmt(RECORD, "x <answer>1</answer>").reward == 1.0
    assert fmt(RECORD, "<answer>1</answer> trailing").reward == 0.0
    assert FormatReward(require_end=False)(RECORD, "<answer>1</answer> trailing").reward == 1.0
    assert fmt(RECORD, "<answer> </answer>").reward == 0.0
    assert fmt(RECORD, "<answer>1").reward == 0.0
    assert fmt(RECORD, "<answer>1</answer>").correct is None  # not a verifier


@pytest.mark.parametrize("text,ok", [("15", True), (" 15 ", True), ("15.0", True), ("1,5", True),
                                     ("16", False), ("fifteen", False), ("", False), ("1e999999999", False)])
def test_numeric_reward(text, ok):
    result = NumericAnswerReward()(RECORD, f"<answer>{text}</answer>")
    assert result.correct is ok and result.reward == float(ok)
