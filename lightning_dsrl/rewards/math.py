"""Math answers: extraction (GSM8K ``#### 42``, MATH ``\\boxed{}``, last number) and the
``MathReward`` verifier built on math-verify.

Extraction is plain string scanning, linear in the text and never executed. Equivalence is
decided by math-verify (``1/2 == 0.5 == \\frac{1}{2}``, ``x = 2`` against ``2``, units and
``\\%`` stripped), which runs sympy. Sympy can take unbounded time on a hostile expression
(``\\boxed{9^{9^{9^{9}}}}``) inside C code that no signal can interrupt, so the check runs in a
worker process (``math_worker.py``) that is killed and restarted when one answer takes longer
than ``timeout`` seconds; that completion scores 0. It also keeps working when rewards are
scored in a thread, where math-verify's own ``signal.alarm`` timeout refuses to run.

What this does not guard against: a verdict that math-verify gets wrong; completions are
never executed, so there is nothing else to guard.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.base import RewardModule
from lightning_dsrl.rewards.countdown import extract_answer
from lightning_dsrl.rewards.numeric import parse_number
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["MathReward", "MathVerifier", "last_boxed", "gsm8k_answer", "last_number", "final_answer"]

log = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?")
_WORDS = re.compile(r"[A-Za-z]{2,}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")
STARTUP_TIMEOUT = 120.0  # seconds for the worker's imports (sympy, math-verify) on a busy machine


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


class MathVerifier:
    """math-verify in a worker process, with a per-call timeout.

    ``check(gold, pred)`` returns ``(correct, normalised answer)``. The worker starts on first
    use and is restarted after a timeout or a crash; the object can be pickled (the worker is
    not carried along).
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.timeouts = 0
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue | None = None
        self._registered = False

    def __getstate__(self) -> dict:
        return {"timeout": self.timeout, "timeouts": self.timeouts, "_process": None, "_lines": None,
                "_registered": False}

    def _start(self) -> None:
        source = Path(__file__).with_name("math_worker.py").read_text()
        # the worker must import math_verify from site-packages, never a file in the working directory
        prelude = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
        self._process = subprocess.Popen(
            [sys.executable, "-c", prelude + source], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1,
        )
        self._lines = queue.Queue()
        threading.Thread(target=_pump, args=(self._process.stdout, self._lines), daemon=True).start()
        try:  # the worker says "ready" once its imports are done; they do not count against the timeout
            ready = self._lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            ready = ""
        if ready.strip() != "ready":
            code = self._process.poll()
            self.close()
            why = f"exited with code {code}" if code is not None else f"did not start in {STARTUP_TIMEOUT:.0f} s"
            raise RuntimeError(f"the math-verify worker ({sys.executable} -c math_worker.py) {why}; "
                               "see its error above")
        if not self._registered:
            atexit.register(self.close)
            self._registered = True

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def check(self, gold: str, pred: str) -> tuple[bool, str | None]:
        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            self._process.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            self._process.stdin.flush()
            line = self._lines.get(timeout=self.timeout)
        except (queue.Empty, BrokenPipeError, OSError):
            line = None
        if not line:  # late or dead: restart on the next call
            self.timeouts += 1
            log.warning("math-verify gave no answer within %.1f s for %r; scoring it incorrect "
                        "(rewards.MathReward.timeout)", self.timeout, pred[:200])
            self.close()
            return False, None
        reply = json.loads(line)
        return bool(reply["correct"]), reply["answer"]


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")  # end of stream: the worker died


class MathReward(RewardModule):
    """1.0 when the completion's final answer equals ``record.answer`` under math-verify, else 0.0.

    A verifier: ``correct`` is the verdict, ``answer`` the normalised extracted answer (equal for
    ``0.5`` and ``\\frac{1}{2}``), used by the diversity metrics. The reference answer is a
    LaTeX string such as ``42`` or ``\\frac{\\sqrt{3}}{2}`` (what ``MathTask`` puts in
    ``record.answer``).

    Args:
        weight: factor in the composite sum.
        timeout: seconds one answer may take to verify before it counts as incorrect.
        max_answer_chars: longer extracted answers are incorrect without being parsed.
    """

    name = "math"
    is_verifier = True

    def __init__(self, weight: float = 1.0, timeout: float = 5.0, max_answer_chars: int = 1000) -> None:
        super().__init__(weight)
        if timeout <= 0:
            raise ConfigError(f"rollout.rewards: MathReward timeout={timeout} must be > 0 seconds")
        if importlib.util.find_spec("math_verify") is None:
            raise ConfigError("rollout.rewards: MathReward needs math-verify; pip install 'math-verify>=0.7'")
        self.max_answer_chars = max_answer_chars
        self.verifier = MathVerifier(timeout)

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        pred = final_answer(completion)
        if pred is None or len(pred) > self.max_answer_chars:
            return RewardResult(0.0, correct=False, answer=None)
        # plain numbers compare exactly here: no worker round trip, and "1,000" stays one number
        # (math-verify reads "+1,000.0" as the set {1, 0.0})
        value, gold = parse_number(pred), parse_number(str(record.answer))
        if value is not None and gold is not None:
            correct = value == gold
            return RewardResult(1.0 if correct else 0.0, correct=correct, answer=str(value))
        correct, answer = self.verifier.check(str(record.answer), pred)
        return RewardResult(1.0 if correct else 0.0, correct=correct, answer=answer)
