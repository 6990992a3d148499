"""The weight-sync probe: does an engine with its own weights (vLLM, ``HFEngine(weights: copy)``) generate
from the policy being trained?

After each sync the engine and the trainer score the same completion (the step's first); the largest
difference of their log-probs over its tokens and over the ranks is the check. A stale or corrupted
copy, or a precision mismatch, shows up here before it silently trains on samples of another policy.
"""

from __future__ import annotations

import torch

from lightning_dsrl.distributed import max_over_ranks
from lightning_dsrl.rollout.engine import EngineOwner, RolloutEngine
from lightning_dsrl.types import Rollout

__all__ = ["sync_difference"]


def sync_difference(engine: RolloutEngine, owner: EngineOwner, rollout: Rollout) -> float:
    """The largest |engine - trainer| log-prob over the tokens of a probe (the rollout's first completion)
    and over ranks (NaN if either side is NaN)."""
    probe = rollout.select([0]).trim()
    policy = owner.policy
    was_training = policy.training
    policy.eval()  # the engine samples without dropout (LoRA's included): compare the same function
    try:
        with torch.no_grad():
            trainer_logp, _ = owner.scorer.logprobs(policy, probe)  # [1, L]
    finally:
        policy.train(was_training)
    engine_logp = engine.logprobs(probe).to(trainer_logp.device)  # [1, L]
    diff = float(((trainer_logp - engine_logp).abs() * probe.completion_mask).max())
    return max_over_ranks(diff, owner.device)
