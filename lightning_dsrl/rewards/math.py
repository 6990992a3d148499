"""``MathReward``: the verifier of math answers, built on math-verify.

The answer a completion commits to is extracted by plain string scanning, never executed
(:mod:`lightning_dsrl.rewards.math_answers`: GSM8K ``#### 42``, MATH ``\\boxed{}``, the last
number; re-exported here). Equivalence is
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
import subprocess
import sys
import threading
import time
from pathlib import Path

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.base import Reward
from lightning_dsrl.rewards.equations import extract_equations
from lightning_dsrl.rewards.math_answers import final_answer, gsm8k_answer, last_boxed, last_number
from lightning_dsrl.rewards.numeric import parse_number
from lightning_dsrl.types import PromptRecord, RewardResult

__all__ = ["MathReward", "MathVerifier", "last_boxed", "gsm8k_answer", "last_number", "final_answer"]

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 120.0  # seconds for the worker's imports (sympy, math-verify) on a busy machine


class MathVerifier:
    """math-verify in a worker process, with a per-call timeout.

    ``check(gold, pred)`` returns ``(correct, normalised answer)``. The worker starts on first
    use and is restarted after a timeout or a crash; the object can be pickled (the worker is
    not carried along).

    A call may be interrupted anywhere (the composite reward's ``rollout.reward_timeout_s``
    raises inside it). So each request carries an id, the worker echoes it, and a call reads
    replies until its own: a reply to an interrupted call, left in the pipe, is discarded rather
    than taken for the next verdict (the next call waits behind it, within its own timeout). An
    interrupted start-up goes on in the background and the next call waits for it, so a cold
    start slower than the budget costs some calls, not all of them. An interrupted write may
    leave half a request in the pipe, so that worker is killed.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.timeouts = 0
        self._worker: _Worker | None = None
        self._last_id = 0
        self._registered = False

    def __getstate__(self) -> dict:
        return {"timeout": self.timeout, "timeouts": self.timeouts, "_worker": None, "_last_id": 0,
                "_registered": False}

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()

    def check(self, gold: str, pred: str) -> tuple[bool, str | None]:
        if self._worker is None or self._worker.process.poll() is not None:
            self._worker = _Worker.start()
            if not self._registered:
                atexit.register(self.close)
                self._registered = True
        worker = self._worker
        self._last_id += 1
        request_id = self._last_id
        try:
            worker.send(json.dumps({"id": request_id, "gold": gold, "pred": pred}) + "\n")
        except OSError:  # a broken pipe: the worker died, and reply() below says how
            pass
        except BaseException:  # half a request may be in the pipe: this worker can no longer be trusted
            self.close()
            raise
        try:
            reply = worker.reply(request_id, self.timeout)
        except RuntimeError:  # it never started: the next call tries a fresh one
            self.close()
            raise
        if reply is None:  # late or dead: restart on the next call
            self.timeouts += 1
            log.warning("math-verify gave no answer within %.1f s for %r; scoring it incorrect "
                        "(rewards.MathReward.timeout)", self.timeout, pred[:200])
            self.close()
            return False, None
        return bool(reply["correct"]), reply["answer"]


class _Worker:
    """One running ``math_worker.py``: its process, the queue its stdout lines arrive on, and
    whether it has said ``ready`` (its imports do not count against the per-answer timeout)."""

    def __init__(self, process: subprocess.Popen, lines: queue.Queue) -> None:
        self.process = process
        self.lines = lines
        self.started = time.monotonic()
        self.ready = False

    @classmethod
    def start(cls) -> _Worker:
        source = Path(__file__).with_name("math_worker.py").read_text()
        # the worker must import math_verify from site-packages, never a file in the working directory
        prelude = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
        process = subprocess.Popen(
            [sys.executable, "-c", prelude + source], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1,
        )
        try:
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
            return cls(process, lines)
        except BaseException:  # interrupted before the caller holds it: nobody else would stop it
            process.kill()
            process.wait()
            raise

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def send(self, line: str) -> None:
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def reply(self, request_id: int, timeout: float) -> dict | None:
        """The reply to ``request_id``, or ``None`` when it does not come within ``timeout``
        seconds of the worker being ready, or the worker dies. Raises ``RuntimeError`` when the
        worker exits or hangs during start-up (math-verify missing or broken)."""
        deadline = None
        while True:
            if self.ready and deadline is None:
                deadline = time.monotonic() + timeout
            wait = (deadline if deadline is not None else self.started + STARTUP_TIMEOUT) - time.monotonic()
            try:
                line = self.lines.get(timeout=max(wait, 0.0))
            except queue.Empty:
                line = None
            if not line and not self.ready:
                code = self.process.poll()
                why = f"exited with code {code}" if code is not None else f"did not start in {STARTUP_TIMEOUT:.0f} s"
                raise RuntimeError(f"the math-verify worker ({sys.executable} -c math_worker.py) {why}; "
                                   "see its error above")
            if not line:
                return None
            self.ready = True  # the line is "ready", or a reply, which comes after it
            try:
                message = json.loads(line)
            except json.JSONDecodeError:  # "ready", or a library printing to stdout
                continue
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
            # else the reply to an interrupted call: discarded


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")  # end of stream: the worker died


class MathReward(Reward):
    """1.0 when the completion's final answer equals ``record.answer`` under math-verify, else 0.0.

    A verifier: ``correct`` is the verdict, ``answer`` the normalised extracted answer (equal for
    ``0.5`` and ``\\frac{1}{2}``) and ``equations`` the equations the solution writes
    (:func:`~lightning_dsrl.rewards.equations.extract_equations`), used by the diversity metrics. The reference answer is a
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
        equations = extract_equations(completion)
        pred = final_answer(completion)
        if pred is None or len(pred) > self.max_answer_chars:
            return RewardResult(0.0, correct=False, answer=None, equations=equations)
        # plain numbers compare exactly here: no worker round trip, and "1,000" stays one number
        # (math-verify reads "+1,000.0" as the set {1, 0.0})
        value, gold = parse_number(pred), parse_number(str(record.answer))
        if value is not None and gold is not None:
            correct = value == gold
            return RewardResult(1.0 if correct else 0.0, correct=correct, answer=str(value), equations=equations)
        correct, answer = self.verifier.check(str(record.answer), pred)
        return RewardResult(1.0 if correct else 0.0, correct=correct, answer=answer, equations=equations)
