"""The small records passed between the parts: a problem, how to sample it, a reward's verdict, a loss.

The batches built from them (a prompt batch, a rollout, a training batch) are in :mod:`lightning_dsrl.batches`;
:mod:`lightning_dsrl.types` gathers both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["PromptRecord", "SamplingParams", "RewardResult", "LossOutput"]


@dataclass
class PromptRecord:
    """One problem: the text shown to the model and what its verifier needs.

    ``prompt`` is plain text; when ``chat`` is true it is sent as a user message through the
    tokenizer's chat template, after the earlier turns in ``history`` (``{"role", "content"}``
    messages, e.g. a worked example as a user and an assistant turn). ``answer`` is the reference
    answer (``None`` when the verifier needs none), ``meta`` holds task data such as CountDown's
    ``numbers`` and ``target``.
    """

    prompt: str
    answer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    chat: bool = False
    uid: int = -1
    history: list[dict[str, str]] = field(default_factory=list)  # chat turns before the prompt (chat only)

    def __post_init__(self) -> None:
        if self.history and not self.chat:
            raise ValueError("PromptRecord.history holds chat turns; it needs chat=True")


@dataclass
class SamplingParams:
    """How to sample: ``n`` completions per prompt at ``temperature`` with nucleus ``top_p``."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop after any of these strings (kept in the text)
    greedy: bool = False  # argmax decoding; temperature/top_p/top_k are ignored


@dataclass
class RewardResult:
    """A reward's answer for one completion.

    ``reward`` is the scalar that trains the policy; ``correct`` is the verifier's verdict, kept
    apart from format bonuses because DS-GRPO, R1-zero-Div, pass@k and the metrics need it
    (``None`` from rewards that are not verifiers, such as a format bonus). ``answer`` is the
    normalised extracted answer (an equation, a number) used by the diversity metrics.
    ``equations`` are the distinct normalised equations written in the completion, for Div-Equ
    (``None`` from rewards that do not extract them).
    """

    reward: float
    correct: bool | None = None
    answer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    equations: tuple[str, ...] | None = None


@dataclass
class LossOutput:
    """An objective's result for one micro-batch: the loss to backpropagate and scalars to log."""

    loss: Tensor  # [] scalar, already divided by the minibatch sizes (sum over micro-batches = minibatch loss)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # name -> [] detached scalars
    advantages: Tensor | None = None  # [n] detached, the per-sample advantages the loss used (after shaping)
