"""A wall-clock budget for one reward call, so that a verifier that hangs cannot stall a run.

    result, seconds = call_with_budget(reward, budget_s, record, completion)

How: in the main thread on Unix (where Lightning runs the rollout callback) a one-shot
``SIGALRM`` timer (``signal.setitimer``) interrupts the call after ``budget_s`` seconds by raising
:class:`RewardTimeout` inside it. ``RewardTimeout`` derives from ``BaseException`` so that a
reward's own ``except Exception`` cannot swallow it. Whatever happens, the caller also compares
the measured time with the budget, so a call that returns late still counts as a time-out.

What this does not guard against:
  - C code that does not return to the interpreter (a huge ``int`` power, a catastrophic
    ``re`` match, an extension that blocks without checking for signals): the exception is raised
    only when control comes back to Python, so the call ends late (or, if it never comes back, never);
  - a reward that sets its own ``SIGALRM`` timer (``math-verify`` does): that replaces ours for
    the rest of the call; the late-return check still scores it as a time-out;
  - a reward that catches ``BaseException``: same, the late-return check still applies;
  - calls off the main thread or on platforms without ``setitimer`` (Windows): no interruption
    at all, only the late-return check (warned once). A call that never returns then hangs the run.
A reward that must be safe against all of these should run its checker in a subprocess.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RewardTimeout", "call_with_budget", "can_interrupt"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_warned_no_interrupt = False


class RewardTimeout(BaseException):
    """Raised inside a reward call that ran past its time budget."""


def can_interrupt() -> bool:
    """Whether a call made from here can be interrupted by ``SIGALRM`` (Unix main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def call_with_budget(fn: Callable[..., T], budget_s: float | None, *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and its duration in seconds, interrupted with :class:`RewardTimeout` after
    ``budget_s`` seconds where that is possible (``None``: no budget).

    A timer that was already armed (a test's hang guard, say) is re-armed afterwards with what is
    left of it.
    """
    global _warned_no_interrupt
    start = time.perf_counter()
    if budget_s is None:
        return fn(*args), time.perf_counter() - start
    if not can_interrupt():
        if not _warned_no_interrupt:
            _warned_no_interrupt = True
            log.warning("rewards are scored off the main thread (or without setitimer): a reward that runs past "
                        "rollout.reward_timeout_s is scored 0 when it returns, but cannot be interrupted")
        return fn(*args), time.perf_counter() - start

    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise RewardTimeout(f"reward call ran past its budget of {budget_s} s")

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        return fn(*args), time.perf_counter() - start
    finally:
        armed[0] = False  # from here on a late alarm is ignored, never raised mid-restore
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous_handler)
            if outer_delay > 0:
                left = max(outer_delay - (time.perf_counter() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, outer_interval)
