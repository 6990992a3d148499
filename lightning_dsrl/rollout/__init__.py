"""Rollouts: the engine interface, the transformers and vLLM engines and the rollout callback."""

from lightning_dsrl.rollout.callback import RolloutCallback
from lightning_dsrl.rollout.engine import Generation, RolloutEngine, SamplingParams
from lightning_dsrl.rollout.hf import HFEngine
from lightning_dsrl.rollout.vllm import VLLMEngine  # imports vLLM only when an engine is bound

__all__ = ["Generation", "HFEngine", "RolloutCallback", "RolloutEngine", "SamplingParams", "VLLMEngine"]
