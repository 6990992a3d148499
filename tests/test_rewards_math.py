"""Math answer extraction and the math-verify reward: equivalences, verdicts, the timeout."""

from __future__ import annotations

import pickle
import sys

import pytest

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards import CompositeReward, MathReward
from lightning_dsrl.rewards import math as math_module
from lightning_dsrl.rewards.guard import RewardTimeout
from lightning_dsrl.rewards.math import final_answer, gsm8k_answer, last_boxed, last_number
from lightning_dsrl.types import PromptRecord


@pytest.fixture(scope="module")
def reward():
    reward = MathReward(timeout=3.0)
    yield reward
    reward.verifier.close()


def record(answer: str) -> PromptRecord:
    return PromptRecord(prompt="q", answer=answer)


# ---------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### -3.5", "-3.5"),
    ("the answer is 7\n####  7 ", "7"),
    ("no marker, 12", None),
    ("#### seven", None),
    ("####", None),
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    (r"Thus $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),  # last, nested
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"$\boxed 5$", "5"),
    (r"\fbox{x^{2}}", "x^{2}"),
    (r"\boxed{12", None),  # truncated: the last box never closes
    ("no box at all", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_number_and_final_answer():
    assert last_number("I had -3 then 1,250 and finally 2.5.") == "2.5"
    assert last_number("no digits") is None and last_number("48/2 = 24") == "24"
    assert final_answer(r"3 + 4 = 7, so \boxed{7}. I double-check: 8") == "7"  # a box beats a later number
    assert final_answer("<think>it is 5</think><answer>\\frac{10}{2}</answer>") == "\\frac{10}{2}"
    assert final_answer("<answer>The answer is 12 apples</answer> 99") == "12"  # words in the tag: its last number
    assert final_answer("<answer><answer>") is None
    assert final_answer("So she has 18 apples.") == "18"


# ---------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("gold,completion", [
    ("0.5", "so it is 1/2"),
    ("0.5", r"\boxed{\frac{1}{2}}"),
    (r"\frac{1}{2}", r"\boxed{0.5}"),
    ("2", r"\boxed{x=2}"),
    ("72", r"She sold 72 clips. \boxed{72 \text{ clips}}"),
    ("1234", "The total is 1,234."),
    (r"\sqrt{2}/2", r"\boxed{\frac{1}{\sqrt{2}}}"),
    ("10", r"\boxed{10\%}"),
    ("3", "<think>1 + 2</think> <answer>3</answer>"),
])
def test_equivalent_answers_are_correct(reward, gold, completion):
    result = reward(record(gold), completion)
    assert result.correct is True and result.reward == 1.0


@pytest.mark.parametrize("gold,completion", [
    ("0.5", r"\boxed{\frac{1}{3}}"),
    ("2", r"\boxed{x=3}"),
    ("72", "I think it is 27"),
    ("72", "I do not know"),
    ("72", r"\boxed{7"),  # a box that never closes: the last number, 7
])
def test_wrong_or_missing_answers_are_incorrect(reward, gold, completion):
    result = reward(record(gold), completion)
    assert result.correct is False and result.reward == 0.0


def test_normalised_answer_is_equal_for_equal_values(reward):
    answers = {reward(record("0.5"), c).answer for c in (r"\boxed{0.5}", r"\boxed{\frac{1}{2}}", "1/2",
                                                         r"\boxed{x = \frac12}")}
    assert answers == {"1/2"}
    assert reward(record("42"), "so 42").answer == "42"
    assert reward(record("42"), "no number").answer is None


def test_a_pathological_expression_times_out_and_the_verifier_recovers():
    reward = MathReward(timeout=1.0)
    try:
        assert reward(record("3"), r"\boxed{3}").correct  # starts the worker
        # sympy would spend minutes comparing 9^(9^(9^9)) with 2; the worker is killed after 1 s
        result = reward(record("2"), r"\boxed{9^{9^{9^{9}}}}")
        assert result.correct is False and result.reward == 0.0
        assert reward.verifier.timeouts == 1
        assert reward(record("5"), r"\boxed{5}").correct  # a fresh worker answers the next call
    finally:
        reward.verifier.close()


def test_reward_inside_a_composite_and_pickled(reward):
    composite = CompositeReward([reward])
    scored = composite.score_batch([record("4"), record("4")], [r"\boxed{4}", r"\boxed{5}"])
    assert scored.correct.tolist() == [True, False] and scored.rewards.tolist() == [1.0, 0.0]
    copy = pickle.loads(pickle.dumps(reward))  # e.g. Lightning or a DataLoader worker copying the callback
    assert copy.verifier._worker is None and copy(record("4"), r"\boxed{4}").correct
    copy.verifier.close()


# ---------------------------------------------------------------------------- interrupted calls
# Right and wrong answers interleaved, all going through the worker (none is a plain number);
# after a shifted verdict, \frac{1}{5} would be judged correct or \frac{2}{4} wrong.
HALF = r"\frac{1}{2}"
SEQUENCE = [(r"\frac{1}{5}", False), (r"\frac{2}{4}", True), (r"\frac{1}{3}", False), (r"\frac{3}{6}", True),
            (r"\sqrt{2}", False), (r"\frac{\sqrt{2}}{\sqrt{8}}", True)]


def test_verdicts_stay_paired_after_the_budget_interrupts_the_workers_start_up():
    # as the rollout callback uses it: MathReward inside the composite, whose budget interrupts the call
    math = MathReward(timeout=30.0)
    composite = CompositeReward([math], timeout_s=0.05)  # far shorter than the worker's imports (sympy)
    try:
        first = composite.score_batch([record(HALF)], [r"\boxed{\frac{1}{2}}"])
        assert first.timeouts == 1 and not first.correct[0]
        composite.timeout_s = 120.0  # normal budgets from here on
        preds = [pred for pred, _ in SEQUENCE]
        scored = composite.score_batch([record(HALF)] * len(preds), [rf"\boxed{{{pred}}}" for pred in preds])
        assert scored.timeouts == 0 and scored.errors == 0
        assert scored.correct.tolist() == [ok for _, ok in SEQUENCE]
    finally:
        math.verifier.close()


class _InterruptAtLine:
    """Raises ``RewardTimeout`` at the ``k``-th line run in ``rewards/math.py``, as the composite's
    ``SIGALRM`` budget can at any line; ``fired`` says whether the call got that far."""

    def __init__(self, k: int) -> None:
        self.k, self.fired = k, False

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename != math_module.__file__:
            return None
        if event == "line":
            self.k -= 1
            if self.k == 0:
                self.fired = True
                raise RewardTimeout("injected")  # a trace function's exception propagates, and tracing stops
        return self


@pytest.mark.parametrize("start", ["warm", pytest.param("cold", marks=pytest.mark.slow)])
def test_verdicts_stay_paired_whichever_line_an_interruption_lands_on(start):
    # warm: every line of a call to a ready worker (the write, the wait for the reply, its parsing);
    # cold: also every line of the worker's start-up, a fresh worker each time (a minute or two)
    verifier = MathReward(timeout=30.0).verifier
    try:
        assert verifier.check(HALF, r"\frac{2}{4}") == (True, "1/2")
        k = 0
        while True:
            k += 1
            if start == "cold":
                verifier.close()
            interrupt = _InterruptAtLine(k)
            sys.settrace(interrupt)
            try:
                verifier.check(HALF, r"\frac{1}{3}")
            except RewardTimeout:
                pass
            finally:
                sys.settrace(None)
            if not interrupt.fired:
                break  # the call ran to its end without reaching line k
            for pred, ok in SEQUENCE[:2]:
                assert verifier.check(HALF, pred)[0] is ok, f"interrupted at line {k}: wrong verdict for {pred}"
        assert k > 10, "the injection never reached the call's lines"
    finally:
        verifier.close()


def test_a_worker_that_cannot_start_is_one_clear_error_and_the_next_call_starts_afresh(monkeypatch):
    verifier = MathReward(timeout=30.0).verifier
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys, "executable", "/bin/false")  # exits at once, like a broken math-verify install
            with pytest.raises(RuntimeError, match="exited with code 1"):
                verifier.check(HALF, r"\frac{2}{4}")
        assert verifier.check(HALF, r"\frac{2}{4}") == (True, "1/2")
    finally:
        verifier.close()


def test_bad_timeout_is_a_config_error():
    with pytest.raises(ConfigError, match="timeout"):
        MathReward(timeout=0)
