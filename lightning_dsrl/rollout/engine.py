"""The ``RolloutEngine`` interface: prompts in, ``n`` sampled completions per prompt out.

An engine is bound once to the owner of the policy (the ``RLModule``; anything with the attributes
of :class:`EngineOwner`), generates from token ids, and, if it keeps its own copy of the weights
(vLLM, ``HFEngine(weights="copy")``), receives the new weights after each optimizer step through
:meth:`~RolloutEngine.sync_weights` and reports its own log-probs of given completions
(:meth:`~RolloutEngine.logprobs`), which the rollout callback compares with the trainer's after every
sync (:mod:`lightning_dsrl.rollout.sync`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from lightning_dsrl.models import ModelSpec
from lightning_dsrl.scoring import Scorer
from lightning_dsrl.types import Rollout, SamplingParams

__all__ = ["EngineOwner", "Generation", "RolloutEngine", "SamplingParams"]


class EngineOwner(Protocol):
    """What an engine reads from the module it is bound to. ``policy`` and ``tokenizer`` always; an engine
    with its own weights also ``spec`` (to load its copy), ``device`` and ``scorer`` (the trainer's
    log-probs, for the weight-sync probe)."""

    policy: nn.Module
    tokenizer: object
    spec: ModelSpec
    device: torch.device
    scorer: Scorer


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

    def bind(self, owner: EngineOwner) -> None:
        """Attach to the owner's policy and tokenizer (called once the models exist)."""
        raise NotImplementedError

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Generation:
        raise NotImplementedError

    def sync_weights(self, owner: EngineOwner) -> None:
        """Receive the policy's new weights after an optimizer step (no-op for engines that share them)."""

    def logprobs(self, batch: Rollout) -> Tensor:
        """``[n, L]`` float32 log-probs of ``batch``'s completion tokens under the engine's own weights, at
        ``batch.temperature``, zero at padding (engines that own weights; used to verify a sync)."""
        raise NotImplementedError(f"{type(self).__name__} does not report log-probs of given completions")
