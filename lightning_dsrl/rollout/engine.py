"""The ``RolloutEngine`` interface: prompts in, ``n`` sampled completions per prompt out.

An engine is bound to the module once (it reads the policy and tokenizer from it), generates
from token ids, and, if it keeps its own copy of the weights (vLLM, ``HFEngine(weights="copy")``),
receives the new weights after each optimizer step through :meth:`sync_weights` and reports its
own log-probs of given completions (:meth:`logprobs`), which the rollout callback compares with
the trainer's after every sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from lightning_dsrl.module import RLModule
    from lightning_dsrl.types import RolloutBatch

__all__ = ["SamplingParams", "Generation", "RolloutEngine"]


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
class Generation:
    """``n`` completions per prompt, grouped: completions ``[i*n, (i+1)*n)`` belong to prompt ``i``."""

    token_ids: list[list[int]]  # [N] generated tokens, no padding; the EOS token is kept when emitted
    finished: list[bool]  # [N] stopped by EOS or a stop string (False: ran into max_new_tokens)
    logprobs: list[list[float]] | None = None  # [N] sampler log-probs per token, if the engine reports them


class RolloutEngine:
    """Base class of rollout engines (``HFEngine``, ``VLLMEngine``).

    ``owns_weights``: the engine generates from its own copy of the policy's weights, which
    :meth:`sync_weights` must refresh after every optimizer step (and :meth:`logprobs` can check).
    """

    owns_weights: bool = False

    def check(self) -> None:
        """Fail early, with a ``ConfigError``, when the engine cannot run here (called when training starts)."""

    def bind(self, module: RLModule) -> None:
        """Attach to the module's policy and tokenizer (called once the models exist)."""
        raise NotImplementedError

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Generation:
        raise NotImplementedError

    def sync_weights(self, module: RLModule) -> None:
        """Receive the policy's new weights after an optimizer step (no-op for engines that share them)."""

    def logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[n, L]`` float32 log-probs of ``batch``'s completion tokens under the engine's own weights, at
        ``batch.temperature``, zero at padding (engines that own weights; used to verify a sync)."""
        raise NotImplementedError(f"{type(self).__name__} does not report log-probs of given completions")
