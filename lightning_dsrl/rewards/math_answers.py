"""Math answers out of text, by plain string scanning (linear in the text, never executed): GSM8K's
``#### 42``, MATH's ``\\boxed{}``, the last number, and the answer a completion commits to
(:func:`final_answer`), which :class:`~lightning_dsrl.rewards.math.MathReward` hands to math-verify."""

from __future__ import annotations

import re

from lightning_dsrl.rewards.countdown import extract_answer
from lightning_dsrl.rewards.numeric import parse_number

__all__ = ["last_boxed", "gsm8k_answer", "last_number", "final_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?")
_WORDS = re.compile(r"[A-Za-z]{2,}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces balanced;
    ``None`` when there is none or the last one is never closed (a truncated answer).

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed 5") , last_boxed(r"\\boxed{12") is None
    ('5', True)
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    rest = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
    if rest.startswith(" "):  # MATH's ``\boxed 5``: one token, no braces
        token = rest.strip().split("$")[0].split()
        return token[0] if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None


def gsm8k_answer(text: str) -> str | None:
    """The number after GSM8K's final ``####``, without thousands separators; ``None`` if absent
    or not a number.

    >>> gsm8k_answer("She pays 3 * 4 = <<3*4=12>>12 dollars.\\n#### 1,212")
    '1212'
    >>> gsm8k_answer("#### twelve") is None
    True
    """
    _, sep, tail = text.rpartition("####")
    if not sep:
        return None
    tail = tail.strip().rstrip(".")
    return tail.replace(",", "") if parse_number(tail) is not None else None


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``-3``, ``1,234``, ``2.5``, ``1/2``), commas removed.

    >>> last_number("3 apples and 1,250 pears cost $7.50."), last_number("half: 1/2.")
    ('7.50', '1/2')
    """
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _is_formula(text: str) -> bool:
    """True when ``text`` has no English words outside LaTeX commands (``x = \\frac{1}{2}`` yes,
    ``The answer is 4`` no)."""
    return not _WORDS.search(_LATEX_COMMAND.sub(" ", text))


def final_answer(completion: str) -> str | None:
    """The answer a completion commits to, as a LaTeX string for math-verify.

    Where: the last complete ``<answer>...</answer>`` if there is one (the R1-zero format), else
    the whole completion. What: the last ``\\boxed{}`` there; else, inside answer tags, the
    tag's content when it is a formula; else the last number.

    >>> final_answer("3 + 4 = 7, so \\\\boxed{7}. Check: 8")
    '7'
    >>> final_answer("<think>2 + 2 = 4</think> <answer> x = 4 </answer>")
    'x = 4'
    >>> final_answer("<answer>The answer is 4 apples</answer>"), final_answer("It costs 12 dollars.")
    ('4', '12')
    """
    tagged = extract_answer(completion)
    region = tagged if tagged is not None else completion
    boxed = last_boxed(region)
    if boxed:
        return boxed
    if tagged and _is_formula(tagged):
        return tagged
    return last_number(region)
