"""Rollouts: the engine interface, the transformers and vLLM engines, the sampler and the rollout callback.

    engine.py    RolloutEngine (generate, sync_weights, logprobs), Generation, EngineOwner
    hf.py        HFEngine: our KV-cache sampling loop over a transformers model (runs everywhere)
    vllm.py      VLLMEngine: vLLM colocated on the training GPUs (the [vllm] extra, imported lazily)
    sampler.py   Sampler: prompt records -> a scored Rollout (tokenise, generate, decode, score)
    dynamic.py   refill: DAPO's dynamic sampling over the sampler
    sync.py      the weight-sync probe of engines with their own weights
    settings.py  the rollout.* options, grouped and validated
    callback.py  RolloutCallback: the sampler in Lightning's hooks
"""

from lightning_dsrl.rollout.callback import RolloutCallback
from lightning_dsrl.rollout.engine import EngineOwner, Generation, RolloutEngine, SamplingParams
from lightning_dsrl.rollout.hf import HFEngine
from lightning_dsrl.rollout.sampler import Sampler
from lightning_dsrl.rollout.vllm import VLLMEngine  # imports vLLM only when an engine is bound

__all__ = ["EngineOwner", "Generation", "HFEngine", "RolloutCallback", "RolloutEngine", "Sampler", "SamplingParams",
           "VLLMEngine"]
