"""Equations extracted from free-text solutions (for Div-Equ): what counts, the normal form, and
that the rewards hand them on."""

from __future__ import annotations

import pytest

from lightning_dsrl.rewards import (
    CompositeReward,
    CountdownReward,
    FormatReward,
    MathReward,
    NumericAnswerReward,
)
from lightning_dsrl.rewards.equations import MAX_RUN_CHARS, extract_equations, normalize_equation
from lightning_dsrl.types import PromptRecord


@pytest.mark.parametrize("text,expected", [
    # GSM8K: the annotation and the visible step are one equation
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", ("48/2=24",)),
    ("He earns $12/hour * 50/60 = $<<12*50/60=10>>10.", ("12*50/60=10",)),
    ("<<>> <<=>> <<1+1=2>>", ("1+1=2",)),  # annotations without both sides of "=" are not equations
    # plain text: numbers, operators, parentheses; a lone x multiplies; ends trimmed
    ("3 + 4 = 7 and 3+4 = 7 again", ("3+4=7",)),  # distinct within a solution
    ("(3 + 4) x 2 = 14.", ("(3+4)*2=14",)),
    ("(so 3 + 4 = 7)", ("3+4=7",)),
    ("-3 + 5 = 2", ("-3+5=2",)),
    ("1,000 + 250 = 1,250", ("1000+250=1250",)),
    ("$12 * 5 = $60", ("12*5=60",)),  # prices are not LaTeX math
    ("3 + 4 = 7 5 + 5 = 10", ("3+4=7", "5+5=10")),  # two operands side by side start a new equation
    ("12 × 3 = 36 and 36 ÷ 4 = 9", ("12*3=36", "36/4=9")),
    # not equations: a word in the run, no operator, an empty side, a line break
    ("Day 2 = 5", ()), ("24 = 24", ()), ("so a + b = c", ()), ("= 7", ()), ("2 + 2 == 4", ()), ("1 + 1 =\n2", ()),
    ("3x4=12", ()),
    # LaTeX math: every row with "=" and something on each side
    ("so $a + b = c$.", ("a+b=c",)),
    (r"$$3 \times 4 = 12$$", ("3*4=12",)),
    (r"\(\frac{1}{2} + \frac{1}{2} = 1\)", (r"\frac{1}{2}+\frac{1}{2}=1",)),
    (r"\[ x = 2 + 3 \\ y = 5 \]", ("x=2+3", "y=5")),
    (r"\[ \begin{aligned} x &= 2 \cdot 3 \\ &= 6 \end{aligned} \]", ("x=2*3=6",)),  # "&= 6" continues the row
    ("costs $5, so $x = 5$", ("x=5",)),
    ("$$ unclosed \\[ and $ lone", ()),
])
def test_what_counts_as_an_equation(text, expected):
    assert extract_equations(text) == expected


def test_normal_form_ignores_spacing_separators_and_multiplication_signs():
    assert normalize_equation(" 1,250 \\times 2  =  2,500 ") == normalize_equation("1250*2=2500") == "1250*2=2500"
    assert normalize_equation(r"a \cdot b \, = c \div 2") == "a*b=c/2"
    assert normalize_equation("1,25 = 1") == "1,25=1"  # not a thousands separator


def test_long_runs_and_hostile_text_give_nothing_and_do_not_raise():
    assert extract_equations("1 + " * MAX_RUN_CHARS + "1 = 2") == ()  # no solution step is that long
    for text in ["$" * 100_000, "\\[" * 100_000, "<<" * 100_000, "(" * 100_000 + "1+1=2", "=" * 100_000, ""]:
        assert isinstance(extract_equations(text), tuple)


def test_rewards_hand_on_the_equations_of_the_completion():
    record = PromptRecord("q", answer="72", meta={"numbers": [3, 7, 12], "target": 15})
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips and 48+24 = <<48+24=72>>72 in all.\n#### 72"
    assert MathReward().score(record, text).equations == ("48/2=24", "48+24=72")
    assert NumericAnswerReward().score(record, "3 + 4 = 7 <answer>7</answer>").equations == ("3+4=7",)
    # CountDown: the answer is the equation; the scratch work in <think> does not count
    countdown = CountdownReward().score(record, "<think>12 - 7 = 5, 5 * 3 = 15</think><answer>3*(12-7)</answer>")
    assert countdown.equations == (countdown.answer,) == ("(12-7)*3",)
    assert CountdownReward().score(record, "no answer").equations == ()
    assert FormatReward().score(record, text).equations is None  # not an extractor: the composite looks further
    scored = CompositeReward([FormatReward(weight=0.1), MathReward()]).score_batch([record], [text])
    assert scored.equations == [("48/2=24", "48+24=72")] and scored.answers == ["72"]
