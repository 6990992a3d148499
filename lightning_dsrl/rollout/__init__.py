"""Rollouts: the engine interface, the transformers engine and the rollout callback."""

from lightning_dsrl.rollout.callback import RolloutCallback
from lightning_dsrl.rollout.engine import Generation, RolloutEngine, SamplingParams
from lightning_dsrl.rollout.hf import HFEngine

__all__ = ["Generation", "HFEngine", "RolloutCallback", "RolloutEngine", "SamplingParams"]
