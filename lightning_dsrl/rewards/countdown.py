"""CountDown verifier and reward.

A completion is correct when its last complete ``<answer>...</answer>`` holds an arithmetic
expression that uses each given number exactly once (as a multiset) and evaluates to the target.

The grammar is deliberately small: ASCII integers taken from the list, binary ``+ - * /`` and
parentheses. Unary signs, ``**``, ``//``, decimals, names, calls and everything else are
rejected. The text is parsed with :mod:`ast` and checked against a whitelist of node types,
then evaluated with exact rational arithmetic (division by zero is simply wrong). Model text is
never executed. Every step is linear in the input or bounded by ``MAX_EXPRESSION_CHARS``, so a
1 MB completion is answered in milliseconds (no backtracking regex).

What this does not guard against: nothing, as far as we know, since nothing is executed; a
malformed answer is just wrong.
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction

from lightning_dsrl.rewards.base import Reward
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["check", "extract_answer", "parse_expression", "normalize_expression", "CountdownReward"]

OPEN, CLOSE = "<answer>", "</answer>"
MAX_EXPRESSION_CHARS = 256  # a 4-number expression needs < 40; bounds parse depth and time
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def extract_answer(completion: str) -> str | None:
    """Text inside the last complete ``<answer>...</answer>``, stripped; ``None`` if there is none.

    >>> extract_answer("<answer>1+2</answer> then <answer> 3*4 </answer>")
    '3*4'
    >>> extract_answer("<answer>1+2") is None
    True
    """
    end = completion.rfind(CLOSE)
    if end < 0:
        return None
    start = completion.rfind(OPEN, 0, end)
    if start < 0:
        return None
    return completion[start + len(OPEN) : end].strip()


def parse_expression(text: str) -> ast.expr | None:
    """Parse ``text`` under the CountDown grammar; ``None`` if it is not in it."""
    if not text or len(text) > MAX_EXPRESSION_CHARS or not set(text) <= _ALLOWED_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return tree.body if _well_formed(tree.body) else None


def _well_formed(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp):
        return type(node.op) in _OPS and _well_formed(node.left) and _well_formed(node.right)
    # bool is a subclass of int, but True/False cannot appear: names are not in the alphabet
    return isinstance(node, ast.Constant) and type(node.value) is int


def _numbers(node: ast.expr) -> list[int]:
    if isinstance(node, ast.BinOp):
        return _numbers(node.left) + _numbers(node.right)
    return [node.value]  # type: ignore[attr-defined]


def _evaluate(node: ast.expr) -> Fraction | None:
    """Exact value; ``None`` on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    left, right = _evaluate(node.left), _evaluate(node.right)  # type: ignore[attr-defined]
    if left is None or right is None:
        return None
    op = type(node.op)  # type: ignore[attr-defined]
    if op is ast.Add:
        return left + right
    if op is ast.Sub:
        return left - right
    if op is ast.Mult:
        return left * right
    return None if right == 0 else left / right


def _verify(tree: ast.expr, numbers: list[int], target: int) -> bool:
    if Counter(_numbers(tree)) != Counter(int(n) for n in numbers):
        return False
    value = _evaluate(tree)
    return value is not None and value == target


def check(completion: str, numbers: list[int], target: int) -> bool:
    """Whether ``completion`` solves the CountDown problem ``(numbers, target)``.

    >>> check("<answer>(12 - 7) * 3</answer>", [3, 7, 12], 15)
    True
    >>> check("<answer>12 - 7 * 3</answer>", [3, 7, 12], 15)
    False
    >>> check("<answer>(12 - 7) ** 3</answer>", [3, 7, 12], 125)
    False
    """
    text = extract_answer(completion)
    tree = parse_expression(text) if text is not None else None
    return tree is not None and _verify(tree, numbers, target)


# ---------------------------------------------------------------------------- normal form
def _chain(node: ast.expr, kind: str, sign: bool, out: list[tuple[bool, ast.expr]]) -> None:
    """Flatten an additive (``kind="add"``) or multiplicative chain into (positive?, operand) pairs."""
    ops = (ast.Add, ast.Sub) if kind == "add" else (ast.Mult, ast.Div)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ops):
        _chain(node.left, kind, sign, out)
        inverse = isinstance(node.op, (ast.Sub, ast.Div))
        _chain(node.right, kind, sign != inverse, out)
    else:
        out.append((sign, node))


def _canon(node: ast.expr) -> tuple[str, int]:
    """Canonical text and precedence (0 additive, 1 multiplicative, 2 atom) of an expression."""
    if isinstance(node, ast.Constant):
        return str(node.value), 2
    kind = "add" if isinstance(node.op, (ast.Add, ast.Sub)) else "mul"  # type: ignore[attr-defined]
    terms: list[tuple[bool, ast.expr]] = []
    _chain(node, kind, True, terms)
    level = 0 if kind == "add" else 1
    rendered = []
    for positive, operand in terms:
        text, prec = _canon(operand)
        # a flattened chain never holds its own kind, so only an additive operand of a
        # multiplicative chain needs parentheses
        rendered.append((positive, f"({text})" if prec < level else text))
    pos = sorted(t for p, t in rendered if p)
    neg = sorted(t for p, t in rendered if not p)
    plus, minus = ("+", "-") if kind == "add" else ("*", "/")
    return plus.join(pos) + "".join(minus + t for t in neg), level


def normalize_expression(tree_or_text: ast.expr | str) -> str | None:
    """Normal form of an expression, equal for expressions that differ only by the order of
    commutative operands or by regrouping an additive / multiplicative chain.

    >>> normalize_expression("3 + (12 - 7)") == normalize_expression("12 + 3 - 7")
    True
    >>> normalize_expression("(4 + 5) * 2")
    '(4+5)*2'
    """
    tree = parse_expression(tree_or_text) if isinstance(tree_or_text, str) else tree_or_text
    return None if tree is None else _canon(tree)[0]


class CountdownReward(Reward):
    """1.0 for a correct CountDown answer, 0.0 otherwise; ``correct`` is the verdict and
    ``answer`` the normal form of any well-formed expression (right or wrong). The completion's
    equation (for Div-Equ) is that answer: on CountDown the answer is the equation.

    Reads ``record.meta["numbers"]`` and ``record.meta["target"]``.
    """

    name = "countdown"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        numbers, target = record.meta["numbers"], record.meta["target"]
        text = extract_answer(completion)
        tree = parse_expression(text) if text is not None else None
        if tree is None:
            return RewardResult(0.0, correct=False, answer=None, equations=())
        correct, answer = _verify(tree, numbers, target), _canon(tree)[0]
        return RewardResult(1.0 if correct else 0.0, correct=correct, answer=answer, equations=(answer,))
