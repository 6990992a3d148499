"""Property-based fuzzing of the verifiers: hostile model text never raises, hangs or acts, and
correct answers built by a generator are always accepted.

The harness takes any verifier: add a :class:`Verifier` to ``VERIFIERS`` (a reward with a fixed
record to fuzz against, and optionally a strategy of ``(record, completion)`` pairs it must
accept) and every family of hostile input below runs against it. For each call it checks:

- no exception escapes;
- the call returns (a hang guard of ``HANG_GUARD_S`` seconds, far above any sane time: it turns
  a hang into a failure, it is not a speed test);
- no side effect: the record is unchanged, and no audit event that acts on the world (exec of
  code, processes, files, sockets) fires during the call;
- a reward returns a ``RewardResult`` with a finite reward and a bool verdict.

The default suite checks the inputs counted in ``EXAMPLES`` (3,280 per verifier) and
``CORRECT_EXAMPLES`` (750 correct answers per verifier that has a generator): 11,340 inputs for
the three here (CountDown, numeric, and the format bonus, which also reads model text);
``pytest -m slow`` runs ten times as many.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_dsrl.rewards import CountdownReward, FormatReward, NumericAnswerReward
from lightning_dsrl.rewards.countdown import CLOSE, OPEN
from lightning_dsrl.types import PromptRecord, RewardResult

HANG_GUARD_S = 20
SLOW_FACTOR = 10


# ---------------------------------------------------------------------------- side-effect watch
# Audit events (PEP 578) that act on the world. ``compile`` is allowed: ast.parse raises it.
FORBIDDEN_EVENTS = frozenset({
    "exec", "open", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.truncate", "shutil.rmtree",
    "shutil.copyfile", "shutil.move", "subprocess.Popen", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "ctypes.dlopen", "urllib.Request",
})
_watch: list[set[str]] = []  # the events seen during the current call, when one is being watched


def _audit(event: str, args: tuple) -> None:
    if _watch and event in FORBIDDEN_EVENTS:
        _watch[-1].add(event)


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle unless a call is watched


@contextmanager
def hang_guard(seconds: int = HANG_GUARD_S):
    """Fail instead of hanging forever if a call never returns (not a speed assertion)."""

    def boom(signum, frame):
        raise AssertionError(f"a verifier call did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- verifiers
@dataclass
class Verifier:
    """A verifier under test.

    ``call(record, completion)`` is what the rollout calls; ``record`` the fixed problem that
    hostile text is scored against; ``correct`` a strategy of ``(record, completion)`` pairs that
    must be accepted (``None``: no generator of correct answers); ``allowed_events`` audit
    events this verifier may raise (say why in a comment when you add one).
    """

    name: str
    call: Callable[[PromptRecord, str], Any]
    record: PromptRecord
    correct: st.SearchStrategy | None = None
    allowed_events: frozenset[str] = field(default_factory=frozenset)


def check_call(verifier: Verifier, record: PromptRecord, completion: str) -> Any:
    """Call the verifier once under every guard of the module docstring; return its result."""
    before = copy.deepcopy(record)
    seen: set[str] = set()
    _watch.append(seen)
    try:
        with hang_guard():
            result = verifier.call(record, completion)
    finally:
        _watch.pop()
    assert not (seen - verifier.allowed_events), f"{verifier.name} acted on the world: {sorted(seen)}"
    assert record == before, f"{verifier.name} changed the record"
    if isinstance(result, RewardResult):
        assert math.isfinite(float(result.reward)), result
        assert result.correct in (True, False, None), result
    return result


# ---------------------------------------------------------------------------- correct answers
_OPS = "+-*/"


@st.composite
def _tree(draw, leaves: int):
    """A random binary expression tree over small non-negative integers: ``int`` or ``(op, left, right)``."""
    if leaves == 1:
        return draw(st.integers(0, 120))
    split = draw(st.integers(1, leaves - 1))
    return (draw(st.sampled_from(_OPS)), draw(_tree(split)), draw(_tree(leaves - split)))


def _value(tree) -> Fraction | None:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _value(left), _value(right)
    if a is None or b is None:
        return None
    if op == "/":
        return None if b == 0 else a / b
    return a + b if op == "+" else a - b if op == "-" else a * b


def _leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else _leaves(tree[1]) + _leaves(tree[2])


_PREC = {"+": 0, "-": 0, "*": 1, "/": 1}


def _render(tree, space: str, extra_parens: bool) -> str:
    """Text of ``tree`` with the parentheses precedence needs (or around every operation) and ``space``
    around operators and inside parentheses."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    parts = []
    for side, child in (("l", left), ("r", right)):
        text = _render(child, space, extra_parens)
        if not isinstance(child, int):
            needs = _PREC[child[0]] < _PREC[op] or (side == "r" and _PREC[child[0]] == _PREC[op] and op in "-/")
            if needs or extra_parens:
                text = f"({space}{text}{space})"
        parts.append(text)
    return f"{parts[0]}{space}{op}{space}{parts[1]}"


@st.composite
def countdown_solutions(draw):
    """A CountDown problem and a completion that solves it: the numbers are the leaves of a random
    expression and the target its value (times its denominator, which then joins the numbers)."""
    tree = draw(_tree(draw(st.integers(1, 5))))
    if _value(tree) is None:  # a division by zero somewhere: make it a sum, which is always defined
        tree = ("+", tree, 1) if isinstance(tree, int) else tree
        tree = _replace_divisions(tree)
    value = _value(tree)
    space = draw(st.sampled_from(["", " ", "  ", "\t"]))
    text = _render(tree, space, draw(st.booleans()))
    numbers = _leaves(tree)
    if value.denominator != 1:
        text = f"({text}) * {value.denominator}"
        numbers.append(value.denominator)
        value *= value.denominator
    numbers = draw(st.permutations(numbers))
    before = draw(st.text(max_size=40))
    after = draw(st.text(max_size=20).filter(lambda s: CLOSE not in s))
    record = PromptRecord("p", meta={"numbers": list(numbers), "target": int(value)})
    return record, f"{before}{OPEN}{space}{text}{space}{CLOSE}{after}"


def _replace_divisions(tree):
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    return ("+" if op == "/" else op, _replace_divisions(left), _replace_divisions(right))


@st.composite
def numeric_answers(draw):
    """A reference number and a completion that states it in another accepted spelling."""
    whole = draw(st.integers(0, 10**15))
    decimals = draw(st.text(alphabet="0123456789", max_size=6))
    negative = draw(st.booleans())
    value = Fraction(f"{'-' if negative else ''}{whole}.{decimals or '0'}")
    spelled = f"{whole:,}" if draw(st.booleans()) else str(whole)
    sign = "-" if negative else draw(st.sampled_from(["", "+"]))
    stated = f"{sign}{spelled}" + (f".{decimals}" if decimals else draw(st.sampled_from(["", ".0", ".000"])))
    # the reference in its shortest spelling, the completion in another one
    reference = str(value.numerator) if value.denominator == 1 else f"{'-' if negative else ''}{whole}.{decimals}"
    before = draw(st.text(max_size=30))
    pad = st.sampled_from(["", " ", "\n"])
    record = PromptRecord("p", answer=reference)
    return record, f"{before}{OPEN}{draw(pad)}{stated}{draw(pad)}{CLOSE}"


COUNTDOWN_RECORD = PromptRecord("p", meta={"numbers": [3, 7, 12], "target": 15})
VERIFIERS = [
    Verifier("countdown", CountdownReward(), COUNTDOWN_RECORD, countdown_solutions()),
    Verifier("numeric", NumericAnswerReward(), PromptRecord("p", answer="15"), numeric_answers()),
    Verifier("format", FormatReward(), COUNTDOWN_RECORD),
    # the math verifier (rewards/math.py) joins here once it is merged
]


# ---------------------------------------------------------------------------- hostile inputs
def _answer(inner: st.SearchStrategy) -> st.SearchStrategy:
    """``inner`` inside answer tags, sometimes with text around or the tags broken."""
    return st.tuples(st.sampled_from(["", "x ", "<answer>", "</answer>"]), inner,
                     st.sampled_from([CLOSE, CLOSE, "", "</answer", CLOSE + " tail"])).map(
        lambda t: f"{t[0]}{OPEN}{t[1]}{t[2]}")


_NAMES = st.sampled_from(["x", "os", "__import__", "eval", "exec", "open", "print", "True", "None", "Ellipsis",
                          "globals", "sys", "_", "lambda", "import", "__builtins__", "getattr", "breakpoint"])
_ATOMS = st.one_of(
    st.integers(0, 200).map(str),
    st.integers(-10**30, 10**30).map(str),
    st.text(alphabet="0123456789", min_size=100, max_size=400),  # long literals
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4),  # digits of any script
    st.sampled_from(["１２", "٣", "໗", "Ⅻ", "½", "²", "0x1F", "0b11", "0o7", "1_000", "1e999999999", "3j", "...",
                     "'15'", "b'1'", "f'{1}'", "[1]", "{}", "()", "nan", "inf", "-0"]),
    _NAMES,
)
_BINOPS = st.sampled_from(["+", "-", "*", "/", "**", "//", "%", "@", "&", "|", "^", "<<", ">>", " and ", " or ",
                           "==", "<", " if 1 else ", ",", ";", ":=", " "])
python_like = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, _BINOPS, inner).map("".join),
        inner.map(lambda e: f"({e})"),
        st.tuples(_NAMES, inner).map(lambda t: f"{t[0]}({t[1]})"),  # calls
        st.tuples(inner, _NAMES).map(lambda t: f"({t[0]}).{t[1]}"),  # attribute access
        inner.map(lambda e: f"(lambda: {e})()"),
        inner.map(lambda e: f"-{e}"),
        inner.map(lambda e: f"not {e}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        inner.map(lambda e: f"[{e} for _ in range(10**9)]"),
    ),
    max_leaves=12,
)
nested = st.tuples(st.integers(1, 200_000), st.integers(0, 200_000), st.sampled_from(["1", "1+2", "", "(", "x"]),
                   st.sampled_from(["()", "[]", "{}", "(["])).map(
    lambda t: t[3][0] * t[0] + t[2] + t[3][1] * t[1])
huge_numbers = st.one_of(
    st.integers(1, 1_000_000).map(lambda n: "9" * n),
    st.tuples(st.integers(2, 10**6), st.integers(2, 10**6)).map(lambda t: f"{t[0]}**{t[1]}"),
    st.integers(1, 60).map(lambda n: "**".join(["9"] * n)),
    st.integers(1, 2000).map(lambda n: "*".join(["999999999"] * n)),
    st.integers(1, 500).map(lambda n: "(" * n + "9" + "**9)" * n),
    st.integers(1, 10**6).map(lambda n: f"1/{'0' * (n % 300 + 1)}"),
)
unicode_digits = st.text(st.characters(categories=["Nd", "No", "Nl", "Sm", "Zs"]), min_size=1, max_size=60)
_MB = 1_000_000
megabyte = st.tuples(st.text(min_size=1, max_size=12), st.sampled_from(["plain", "inside", "open", "close", "paren"])
                     ).map(lambda t: _megabyte(*t))


def _megabyte(motif: str, where: str) -> str:
    body = motif * (_MB // len(motif))
    if where == "inside":
        return f"{OPEN}{body}{CLOSE}"
    if where == "open":
        return OPEN * (_MB // len(OPEN)) + motif + CLOSE
    if where == "close":
        return CLOSE * (_MB // len(CLOSE)) + motif
    if where == "paren":
        return f"{OPEN}{'(' * (_MB // 2)}{motif}{')' * (_MB // 2)}{CLOSE}"
    return body


tags = st.lists(st.sampled_from([OPEN, CLOSE, "<answer", "answer>", "</", "1+2", "(3*5)", "\n", " ", "<think>"]),
                max_size=40).map("".join)


# the answers that solve COUNTDOWN_RECORD, spelt a few ways
_SOLUTIONS = [f"{OPEN}{s}{CLOSE}" for s in ("(12 - 7) * 3", "3*(12-7)", "(12-7)*3", "3 * (12 - 7)", " ( 12-7 ) *3 ")]


@st.composite
def near_misses(draw):
    """A correct answer to ``COUNTDOWN_RECORD`` with one character inserted, deleted or replaced."""
    completion = draw(st.sampled_from(_SOLUTIONS))
    i = draw(st.integers(0, len(completion)))
    char = draw(st.characters())
    kind = draw(st.sampled_from(["insert", "delete", "replace"]))
    if kind == "insert":
        return completion[:i] + char + completion[i:]
    if kind == "delete":
        return completion[:i] + completion[i + 1:]
    return completion[:i] + char + completion[i + 1:]


FAMILIES: dict[str, st.SearchStrategy[str]] = {
    "random_text": st.text(),
    "random_answer": _answer(st.text()),
    "python_like": _answer(python_like),
    "nested": _answer(nested),
    "huge_numbers": _answer(huge_numbers),
    "unicode_digits": _answer(unicode_digits),
    "megabyte": megabyte,
    "tags": tags,
    "near_miss": near_misses(),
}
# (inputs per hypothesis example, examples) per verifier in the default suite. Several inputs per
# example amortise hypothesis's own cost per example (a few ms), which dominates a verifier call.
EXAMPLES = {"random_text": (10, 60), "random_answer": (10, 60), "python_like": (4, 150), "nested": (2, 50),
            "huge_numbers": (4, 40), "unicode_digits": (10, 30), "megabyte": (1, 20), "tags": (10, 40),
            "near_miss": (10, 50)}
CORRECT_EXAMPLES = (5, 150)


# ---------------------------------------------------------------------------- tests
def _run(test: Callable, examples: int) -> None:
    settings(max_examples=examples, deadline=None, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                    HealthCheck.filter_too_much])(test)()


def fuzz(verifier: Verifier, family: str, per_example: int, examples: int) -> int:
    """Run ``examples`` hypothesis examples of ``per_example`` inputs each; the number of inputs checked."""
    calls = [0]

    @given(st.lists(FAMILIES[family], min_size=per_example, max_size=per_example))
    def test(completions):
        for completion in completions:
            check_call(verifier, verifier.record, completion)
            calls[0] += 1

    _run(test, examples)
    return calls[0]


def accepts_correct(verifier: Verifier, per_example: int, examples: int) -> int:
    calls = [0]

    @given(st.lists(verifier.correct, min_size=per_example, max_size=per_example))
    def test(cases):
        for record, completion in cases:
            result = check_call(verifier, record, completion)
            accepted = result.correct if isinstance(result, RewardResult) else result
            assert accepted is True, f"{verifier.name} rejected a correct answer: {completion!r} for {record}"
            calls[0] += 1

    _run(test, examples)
    return calls[0]


_IDS = {"ids": lambda v: v.name if isinstance(v, Verifier) else str(v)}
_CORRECT = [v for v in VERIFIERS if v.correct is not None]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("verifier", VERIFIERS, **_IDS)
def test_hostile_text_never_raises_hangs_or_acts(verifier, family):
    per_example, examples = EXAMPLES[family]
    assert fuzz(verifier, family, per_example, examples) >= per_example * examples


@pytest.mark.parametrize("verifier", _CORRECT, **_IDS)
def test_generated_correct_answers_are_accepted(verifier):
    per_example, examples = CORRECT_EXAMPLES
    assert accepts_correct(verifier, per_example, examples) >= per_example * examples


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("verifier", VERIFIERS, **_IDS)
def test_hostile_text_slow(verifier, family):
    per_example, examples = EXAMPLES[family]
    assert fuzz(verifier, family, per_example, examples * SLOW_FACTOR) >= per_example * examples * SLOW_FACTOR


@pytest.mark.slow
@pytest.mark.parametrize("verifier", _CORRECT, **_IDS)
def test_generated_correct_answers_slow(verifier):
    per_example, examples = CORRECT_EXAMPLES
    assert accepts_correct(verifier, per_example, examples * SLOW_FACTOR) >= per_example * examples * SLOW_FACTOR


def test_the_watch_catches_side_effects(tmp_path):
    """The harness itself: a verifier that executes its input, or writes a file, fails the check."""
    evil = Verifier("evil", lambda record, text: eval(text), COUNTDOWN_RECORD)  # noqa: S307 - on purpose
    with pytest.raises(AssertionError, match="acted on the world"):
        check_call(evil, COUNTDOWN_RECORD, "1 + 1")
    writer = Verifier("writer", lambda record, text: (tmp_path / "x").write_text(text), COUNTDOWN_RECORD)
    with pytest.raises(AssertionError, match="acted on the world"):
        check_call(writer, COUNTDOWN_RECORD, "hi")
    mutator = Verifier("mutator", lambda record, text: record.meta.update(target=0), PromptRecord("p", meta={}))
    with pytest.raises(AssertionError, match="changed the record"):
        check_call(mutator, mutator.record, "hi")
