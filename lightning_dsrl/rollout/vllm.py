"""``VLLMEngine``: rollouts with vLLM, colocated with training on the same GPUs (``[vllm]`` extra).

Each training process holds one vLLM ``LLM`` on its own GPU (in a multi-process run through vLLM's
``external_launcher``). One instance over several GPUs (``tensor_parallel_size`` > 1) is refused:
its processes would have to generate for the same prompts with the same seed, which is not
implemented. Memory is shared with training by time:

    generate   wake_up() -> llm.generate(prompts, n samples, sampler log-probs) -> sleep(level=1)
    update     (vLLM asleep: weights offloaded to CPU, KV cache freed)
    sync       wake_up(["weights"]) -> load the policy's full weights, tensor by tensor
    next step  wake_up(["kv_cache"]) -> generate ...

The engine reports its sampler's log-probs of the sampled tokens (after temperature, as the
trainer computes them), which the module compares with its own (``rollout/logprob_diff``) and can
correct for (``model.tis_cap``). vLLM is imported only when the engine is built, so the package
runs without it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_dsrl import distributed, sharding
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import local_path, merged_weights
from lightning_dsrl.rollout.engine import EngineOwner, Generation, RolloutEngine, SamplingParams
from lightning_dsrl.types import Rollout

__all__ = ["VLLMEngine", "require_vllm"]

INSTALL = 'python -m pip install "lightning_dsrl[vllm]"'


def require_vllm() -> None:
    """``ConfigError`` (one line, with the install command) unless vLLM is importable and CUDA is there."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"rollout.engine: VLLMEngine needs vLLM, which is not installed; install it with {INSTALL} "
                          "(CUDA GPUs only), or use rollout.engine.class_path: HFEngine")
    if not torch.cuda.is_available():
        raise ConfigError("rollout.engine: VLLMEngine needs a CUDA GPU and none is visible; use rollout.engine."
                          "class_path: HFEngine on this machine (drop the configs/vllm.yaml overlay)")


class VLLMEngine(RolloutEngine):
    """Generate with vLLM on the training GPUs.

    Args:
        gpu_memory_utilization: share of each GPU's memory vLLM may take for weights and KV cache;
            training gets the rest (while vLLM sleeps it gives back the KV cache and offloads weights).
        tensor_parallel_size: GPUs one vLLM instance spans; only 1 (one instance per training process) for now.
        sleep: free vLLM's GPU memory between rollouts (``enable_sleep_mode``); off: faster, but
            training must fit beside vLLM's memory.
        dtype: vLLM's weight dtype (``auto``: the model's); the trainer's float32 vs vLLM's bf16 is
            the main source of ``rollout/logprob_diff``.
        max_model_len: longest prompt + completion (``None``: the model's context).
        enforce_eager: no CUDA graphs (slower decoding, faster start and less memory).
        seed: base seed of vLLM's sampler (each rank adds its rank).
    """

    owns_weights = True

    def __init__(self, gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1, sleep: bool = True,
                 dtype: str = "auto", max_model_len: int | None = None, enforce_eager: bool = False,
                 seed: int = 0) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.engine.init_args.gpu_memory_utilization={gpu_memory_utilization}: give a share "
                              "in (0, 1], e.g. 0.3 (training uses the rest)")
        if tensor_parallel_size != 1:
            raise ConfigError(f"rollout.engine.init_args.tensor_parallel_size={tensor_parallel_size}: only 1 is supported "
                              "(one vLLM instance per training process); splitting an instance over GPUs would need the "
                              "prompts gathered and the seeds shared within each group, which is not implemented")
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.sleep = sleep
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.llm: Any = None
        self._state = "awake"  # awake | weights (only the weights are back) | asleep

    # ------------------------------------------------------------------ life cycle
    def check(self) -> None:
        require_vllm()

    def bind(self, owner: EngineOwner) -> None:
        require_vllm()
        # the engine in this process, so that weights load by reference (no copy through a pipe)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM  # here, not at the top: vLLM is an optional extra, imported only when used

        world = distributed.world_size()
        rank = torch.distributed.get_rank() if world > 1 else 0
        self.llm = LLM(
            model=local_path(owner.spec), tokenizer=local_path(owner.spec),
            tensor_parallel_size=self.tensor_parallel_size, gpu_memory_utilization=self.gpu_memory_utilization,
            enable_sleep_mode=self.sleep, dtype=self.dtype, max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager, seed=self.seed + rank, trust_remote_code=owner.spec.trust_remote_code,
            logprobs_mode="processed_logprobs",  # after temperature, as the trainer's log-probs
            distributed_executor_backend="external_launcher" if world > 1 else None,
        )
        self.sync_weights(owner)

    def _wake(self, weights_only: bool = False) -> None:
        """Bring back what vLLM freed while asleep: its weights (to load new ones), or everything (to generate)."""
        if self._state == "asleep":
            self.llm.wake_up(tags=["weights"]) if weights_only else self.llm.wake_up()
            self._state = "weights" if weights_only else "awake"
        elif self._state == "weights" and not weights_only:
            self.llm.wake_up(tags=["kv_cache"])
            self._state = "awake"

    def _sleep(self) -> None:
        """Free vLLM's GPU memory for the update (``sleep``): weights to CPU, KV cache dropped."""
        if self.sleep and self._state != "asleep":
            self.llm.sleep(level=1)
            self._state = "asleep"

    # ------------------------------------------------------------------ work
    def _sampling(self, params: SamplingParams, **kw):
        from vllm import SamplingParams as VSamplingParams  # the optional extra, as in bind

        common = {"max_tokens": params.max_new_tokens, "stop": params.stop or None, "include_stop_str_in_output": True}
        if params.greedy:
            return VSamplingParams(n=params.n, temperature=0.0, **common, **kw)
        return VSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                               top_k=params.top_k if params.top_k > 0 else -1, **common, **kw)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Generation:
        self._wake()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                                    self._sampling(params, logprobs=0), use_tqdm=False)
        token_ids, finished, logprobs = [], [], []
        for out in outputs:  # in prompt order, n completions each
            for completion in out.outputs:
                ids = list(completion.token_ids)
                token_ids.append(ids)
                finished.append(completion.finish_reason == "stop")
                logprobs.append([float(step[token].logprob) for step, token in zip(completion.logprobs, ids)])
        self._sleep()
        return Generation(token_ids=token_ids, finished=finished, logprobs=logprobs)

    @torch.no_grad()
    def sync_weights(self, owner: EngineOwner) -> None:
        """Load the policy's full weights into vLLM's model (gathered from the shards on every rank; with LoRA,
        merged into the base weights under the base model's names)."""
        self._wake(weights_only=True)
        load_weights(self.llm, merged_weights(owner.policy, sharding.full_weights(owner.policy)))

    def logprobs(self, batch: Rollout) -> Tensor:
        """vLLM's prompt log-probs of prompt + completion, at the batch's temperature (one token generated)."""
        from vllm import SamplingParams as VSamplingParams  # the optional extra, as in bind

        self._wake()
        prompts, lengths = [], []
        for row in range(batch.num_samples):
            prompt = batch.prompt_ids[row][batch.prompt_mask[row]].tolist()
            completion = batch.completion_ids[row][batch.completion_mask[row]].tolist()
            prompts.append({"prompt_token_ids": prompt + completion})
            lengths.append((len(prompt), len(completion)))
        params = VSamplingParams(max_tokens=1, temperature=batch.temperature, prompt_logprobs=0)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for row, (result, (p, c)) in enumerate(zip(outputs, lengths)):
            ids = prompts[row]["prompt_token_ids"]
            for t in range(c):
                out[row, t] = float(result.prompt_logprobs[p + t][ids[p + t]].logprob)
        return out


def load_weights(llm, weights: Iterable[tuple[str, Tensor]]) -> None:
    """Hand ``(name, tensor)`` pairs to the model inside vLLM's (in-process) worker, as its ``load_weights``
    expects them (the transformers names; vLLM fuses q/k/v and gate/up itself)."""
    weights = list(weights)

    def load(worker) -> None:
        worker.model_runner.model.load_weights(weights=[(n, t.to(worker.device)) for n, t in weights])

    llm.collective_rpc(load)
