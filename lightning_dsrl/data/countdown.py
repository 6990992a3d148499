"""CountDown problems from a seeded generator (the task of the DS paper, popularised by TinyZero).

Given ``num_numbers`` numbers and a target, write an expression with ``+ - * /`` and parentheses
that uses each number exactly once and equals the target. Problems are generated, never
downloaded: numbers uniform in ``[min_number, max_number]``, and a target drawn uniformly among
the integers in ``[min_target, max_target]`` that the numbers reach in at least
``min_solutions`` distinct ways (distinct up to commutativity and regrouping, see
:func:`~lightning_dsrl.rewards.countdown.normalize_expression`). The pool of distinct problems is
shuffled with the seed and cut in order into train, val and test, so no two splits share a
problem, and a split's problems do not depend on the sizes of the splits after it (adding a
test split leaves train and val as they were).
"""

from __future__ import annotations

import ast
import itertools
import math
import random
from fractions import Fraction
from functools import lru_cache

from lightning_dsrl.data.base import Split, Task
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.countdown import normalize_expression
from lightning_dsrl.types import PromptRecord

__all__ = ["CountdownTask", "solve", "TEMPLATES"]

TEMPLATES = {
    # what the embedded character-level model was pretrained on: short, so rollouts are cheap
    "compact": "Numbers: {numbers}\nTarget: {target}\n",
    # TinyZero's instruction, for pretrained LLMs
    "tinyzero": (
        "Using the numbers {numbers_list}, create an equation that equals {target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
        "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
        "<answer> (1 + 2) / 3 </answer>."
    ),
}

_OPS = (ast.Add(), ast.Sub(), ast.Mult(), ast.Div())
_ENUMERATE_UP_TO = 5000  # number multisets; beyond this, sample problems instead


@lru_cache(maxsize=4096)
def _expressions(numbers: tuple[int, ...]) -> tuple[tuple[Fraction, ast.expr], ...]:
    """Every expression tree over ``numbers`` (each used once) with its exact value."""
    if len(numbers) == 1:
        return ((Fraction(numbers[0]), ast.Constant(numbers[0])),)
    out = []
    n = len(numbers)
    for size in range(1, n):
        for left_idx in itertools.combinations(range(n), size):
            left = tuple(numbers[i] for i in left_idx)
            right = tuple(numbers[i] for i in range(n) if i not in left_idx)
            for lv, le in _expressions(left):
                for rv, re in _expressions(right):
                    for op in _OPS:
                        if isinstance(op, ast.Add):
                            value = lv + rv
                        elif isinstance(op, ast.Sub):
                            value = lv - rv
                        elif isinstance(op, ast.Mult):
                            value = lv * rv
                        elif rv != 0:
                            value = lv / rv
                        else:
                            continue
                        out.append((value, ast.BinOp(le, op, re)))
    return tuple(out)


@lru_cache(maxsize=65536)
def solve(numbers: tuple[int, ...], min_target: int = 1, max_target: int = 100) -> dict[int, tuple[str, ...]]:
    """All targets in ``[min_target, max_target]`` reachable from ``numbers``, each with its
    distinct solutions in normal form (sorted).

    >>> solve((2, 3), 1, 10)[6]
    ('2*3',)
    """
    found: dict[int, set[str]] = {}
    for value, tree in _expressions(tuple(sorted(numbers))):
        if value.denominator == 1 and min_target <= value <= max_target:
            found.setdefault(int(value), set()).add(normalize_expression(tree))
    return {t: tuple(sorted(s)) for t, s in sorted(found.items())}


class CountdownTask(Task):
    """Seeded CountDown problems.

    Args:
        num_numbers: how many numbers each problem gives.
        min_number: smallest number (inclusive).
        max_number: largest number (inclusive).
        min_target: smallest target (inclusive).
        max_target: largest target (inclusive).
        min_solutions: keep only targets reachable in at least this many distinct ways.
        num_train: training problems.
        num_val: held-out problems (disjoint from training): in-run validation, and the split to
            tune hyper-parameters on.
        num_test: a second held-out split, after val: the problems a study reports (0: none).
        seed: generator seed; the same seed gives the same problems on every machine.
        template: ``compact``, ``tinyzero``, or a format string with ``{numbers}`` (space
            separated), ``{numbers_list}`` (``[3, 7, 12]``) and ``{target}``.
        chat: send the prompt through the tokenizer's chat template.
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        num_numbers: int = 3,
        min_number: int = 1,
        max_number: int = 20,
        min_target: int = 1,
        max_target: int = 100,
        min_solutions: int = 2,
        num_train: int = 1900,
        num_val: int = 200,
        num_test: int = 0,
        seed: int = 0,
        template: str = "compact",
        chat: bool = False,
    ) -> None:
        super().__init__()
        if not 2 <= num_numbers <= 5:
            raise ConfigError(f"data.task.num_numbers={num_numbers}: use 2 to 5 numbers")
        if not 0 <= min_number <= max_number:
            raise ConfigError(f"data.task: need 0 <= min_number <= max_number, got {min_number}, {max_number}")
        if min_target > max_target:
            raise ConfigError(f"data.task: min_target={min_target} > max_target={max_target}")
        if min(num_train, num_val, num_test) < 0:
            raise ConfigError("data.task.num_train, num_val and num_test must be >= 0")
        self.num_numbers, self.min_number, self.max_number = num_numbers, min_number, max_number
        self.min_target, self.max_target, self.min_solutions = min_target, max_target, max(1, min_solutions)
        self.num_train, self.num_val, self.num_test, self.seed, self.chat = num_train, num_val, num_test, seed, chat
        self.template = TEMPLATES.get(template, template)
        self._pool: list[tuple[tuple[int, ...], int, tuple[str, ...]]] | None = None
        try:
            self.template.format(numbers="1 2", numbers_list="[1, 2]", target=3)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"data.task.template: {err!r}; use one of {sorted(TEMPLATES)} or a format string with "
                "{numbers}, {numbers_list} and {target}"
            ) from None

    def problems(self) -> list[tuple[tuple[int, ...], int, tuple[str, ...]]]:
        """The pool of ``num_train + num_val + num_test`` distinct ``(numbers, target, solutions)``, seeded
        (fewer when the space holds fewer: :meth:`build` says which split does not fit)."""
        if self._pool is None:
            self._pool = self._generate()
        return self._pool

    def _generate(self) -> list[tuple[tuple[int, ...], int, tuple[str, ...]]]:
        rng = random.Random(self.seed)
        wanted = self.num_train + self.num_val + self.num_test
        span = self.max_number - self.min_number + 1
        if math.comb(span + self.num_numbers - 1, self.num_numbers) <= _ENUMERATE_UP_TO:
            pool = self._enumerate(rng)
        else:
            pool = self._sample(rng, wanted)
        return pool[:wanted]

    def _split_range(self, split: Split) -> tuple[int, int]:
        """Where ``split`` lies in the pool; the pool must reach past train and val for every
        split (both are always built), and past test for the test split."""
        pool, needed = self.problems(), self.num_train + self.num_val
        start, stop = {"train": (0, self.num_train), "val": (self.num_train, needed),
                       "test": (needed, needed + self.num_test)}[split]
        space = (f"only {len(pool)} distinct CountDown problems exist (or were found) with {self.num_numbers} "
                 f"numbers in [{self.min_number}, {self.max_number}], targets in [{self.min_target}, "
                 f"{self.max_target}] and >= {self.min_solutions} distinct solutions")
        if len(pool) < needed:
            raise ConfigError(f"data.task: {space}, but num_train + num_val = {needed}; widen the ranges, "
                              "lower min_solutions or ask for fewer")
        if len(pool) < stop:
            raise ConfigError(f"data.task.num_test={self.num_test}: {space}, {len(pool) - needed} of them after "
                              f"num_train + num_val = {needed}; lower num_test or widen the ranges")
        return start, stop

    def _valid(self, numbers: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
        solutions = solve(tuple(sorted(numbers)), self.min_target, self.max_target)
        return {t: s for t, s in solutions.items() if len(s) >= self.min_solutions}

    def _enumerate(self, rng: random.Random) -> list[tuple[tuple[int, ...], int, tuple[str, ...]]]:
        """Every valid problem of a small space, in a seeded random order."""
        pool = []
        numbers_range = range(self.min_number, self.max_number + 1)
        for numbers in itertools.combinations_with_replacement(numbers_range, self.num_numbers):
            for target, solutions in self._valid(numbers).items():
                pool.append((numbers, target, solutions))
        rng.shuffle(pool)
        # show the numbers in a random order, not sorted
        return [(tuple(rng.sample(numbers, len(numbers))), t, s) for numbers, t, s in pool]

    def _sample(self, rng: random.Random, wanted: int) -> list[tuple[tuple[int, ...], int, tuple[str, ...]]]:
        """Rejection sampling for spaces too large to enumerate."""
        seen: set[tuple[tuple[int, ...], int]] = set()
        pool = []
        for _ in range(50 * wanted + 1000):
            if len(pool) == wanted:
                break
            numbers = tuple(rng.randint(self.min_number, self.max_number) for _ in range(self.num_numbers))
            valid = self._valid(numbers)
            if not valid:
                continue
            target = rng.choice(sorted(valid))
            key = (tuple(sorted(numbers)), target)
            if key not in seen:
                seen.add(key)
                pool.append((numbers, target, valid[target]))
        return pool

    def render(self, numbers: tuple[int, ...], target: int) -> str:
        return self.template.format(
            numbers=" ".join(map(str, numbers)), numbers_list=str(list(numbers)), target=target
        )

    def build(self, split: Split) -> list[PromptRecord]:
        start, stop = self._split_range(split)
        chosen = self.problems()[start:stop]
        return [
            PromptRecord(
                prompt=self.render(numbers, target),
                answer=solutions[0],
                meta={"numbers": list(numbers), "target": target, "num_solutions": len(solutions)},
                chat=self.chat,
            )
            for numbers, target, solutions in chosen
        ]
