"""The CountDown verifier on good, wrong and hostile inputs; its normal form."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest

from lightning_dsrl.rewards.countdown import CountdownReward, check, extract_answer, normalize_expression
from lightning_dsrl.types import PromptRecord

NUMS, TARGET = [3, 7, 12], 15


@contextmanager
def hang_guard(seconds: int = 10):
    """Fail instead of hanging forever if a call never returns (not a speed assertion)."""

    def boom(signum, frame):
        raise AssertionError(f"call did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("answer", ["(12 - 7) * 3", "3*(12-7)", " ( 12-7 ) *3 ", "(12-7)*3"])
def test_correct_answers(answer):
    assert check(f"think...<answer>{answer}</answer>", NUMS, TARGET)


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>12 - 7 * 3</answer>",  # wrong value
        "<answer>(12 - 7) * 3 * 1</answer>",  # 1 is not a given number
        "<answer>(12 - 7) * 3 + 0</answer>",
        "<answer>(12 - 7) * 3</answer><answer>12+7-3</answer>",  # the LAST answer counts (16)
        "<answer>12 + 3</answer>",  # 7 unused
        "<answer>(7 - 7) * 3 + 12</answer>",  # 7 used twice, 12 once: multiset differs
        "(12 - 7) * 3",  # no tags
        "<answer>(12 - 7) * 3",  # unclosed
        "<answer></answer>",
        "<answer>-(7 - 12) * 3</answer>",  # unary minus
        "<answer>+(12 - 7) * 3</answer>",  # unary plus
        "<answer>(12 - 7) ** 3</answer>",
        "<answer>(12 // 7) * 3</answer>",
        "<answer>(12.0 - 7) * 3</answer>",  # decimals
        "<answer>(12 - 7) * 3 == 15</answer>",
        "<answer>x = (12 - 7) * 3</answer>",
        "<answer>abs(12 - 7) * 3</answer>",
        "<answer>__import__('os').system('echo hi')</answer>",
        "<answer>(lambda: 15)()</answer>",
        "<answer>(12).real</answer>",
        "<answer>(１２ - 7) * 3</answer>",  # full-width unicode digits
        "<answer>(12 - 7) * 3 / 0</answer>",
        "<answer>012 - 7</answer>",
    ],
)
def test_wrong_and_hostile_answers(completion):
    assert not check(completion, NUMS, TARGET)


def test_division_exact_and_by_zero():
    assert check("<answer>12 / (7 - 3)</answer>", [3, 7, 12], 3)  # 12/4 = 3 exactly
    assert not check("<answer>12 / (7 - 7)</answer>", [7, 7, 12], 0)
    assert check("<answer>(3 + 3 / 7) * 7</answer>", [3, 3, 7, 7], 24)  # needs exact fractions


def test_huge_and_deep_inputs_are_answered_without_hanging():
    with hang_guard():
        assert not check("<answer>" + "(" * 100_000 + "1" + ")" * 100_000 + "</answer>", [1], 1)
        assert not check("<answer>" + "9" * 1_000_000 + "</answer>", [9], 9)
        assert not check("x" * 1_000_000, NUMS, TARGET)
        assert not check("<answer>" * 200_000, NUMS, TARGET)
        assert not check("</answer>" * 200_000, NUMS, TARGET)
        assert not check("<answer>" + "1+" * 500_000 + "1</answer>", [1], 1)
        assert extract_answer("<answer>" * 100_000 + "x</answer>") == "x"


def test_normal_form_identifies_reorderings_only():
    same = ["3 + (12 - 7)", "12 + 3 - 7", "(3 + 12) - 7", "12 - (7 - 3)", "3 - 7 + 12"]
    assert len({normalize_expression(e) for e in same}) == 1
    assert normalize_expression("(12 - 7) * 3") == normalize_expression("3 * (12 - 7)") == "(12-7)*3"
    assert normalize_expression("12 / (3 * 2)") == normalize_expression("12 / 3 / 2")
    assert normalize_expression("(12 - 7) * 3") != normalize_expression("12 * 3 - 7 * 3")
    assert normalize_expression("not an expression") is None


def test_countdown_reward_keeps_verdict_and_answer_apart():
    record = PromptRecord("p", meta={"numbers": NUMS, "target": TARGET})
    reward = CountdownReward()
    ok = reward(record, "<answer>3*(12-7)</answer>")
    assert (ok.reward, ok.correct, ok.answer) == (1.0, True, "(12-7)*3")
    wrong = reward(record, "<answer>12+7-3</answer>")
    assert (wrong.reward, wrong.correct, wrong.answer) == (0.0, False, "12+7-3")
    garbage = reward(record, "no answer")
    assert (garbage.reward, garbage.correct, garbage.answer) == (0.0, False, None)
