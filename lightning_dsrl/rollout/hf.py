"""``HFEngine``: rollouts with transformers ``generate`` on the policy itself (any device, no copy).

Prompts are expanded ``n`` times and generated in chunks of ``generation_batch_size`` sequences
with the KV cache; each chunk is left-padded to its own longest prompt only (on CPU a long
padded prompt slows every decode step), and each prompt is prefilled once, its cache copied to
its ``n`` samples. Sampling uses a fresh ``GenerationConfig`` so that no
setting shipped with a hub model (repetition penalty, a default top-k of 50, ...) silently
changes the distribution the objective assumes it sampled from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from transformers import DynamicCache, GenerationConfig

from lightning_dsrl import sharding
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import load_model
from lightning_dsrl.rollout.engine import Generation, RolloutEngine, SamplingParams

if TYPE_CHECKING:
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.types import RolloutBatch

__all__ = ["HFEngine"]


def eos_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config declares (e.g. chat end tokens)."""
    ids = {tokenizer.eos_token_id}
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(declared, int):
        ids.add(declared)
    elif declared:
        ids.update(declared)
    return sorted(i for i in ids if i is not None)


class HFEngine(RolloutEngine):
    """Generate with ``policy.generate``.

    Args:
        weights: ``shared``: generate with the policy itself (no copy, nothing to sync); ``copy``: generate
            with a separate, unsharded copy of the policy that receives the new weights after every
            optimizer step, like a vLLM engine (a sharded policy then gathers its weights once per step
            instead of once per decode step; the weight sync and its verification run on any device).
        generation_batch_size: sequences per ``generate`` call (prompts x samples); lower it to
            save memory, raise it on a GPU.
        share_prompt_prefix: prefill each prompt once and copy its KV cache to its ``n`` samples
            instead of prefilling every copy (same samples, less compute).
    """

    def __init__(self, generation_batch_size: int = 64, share_prompt_prefix: bool = True,
                 weights: Literal["shared", "copy"] = "shared") -> None:
        if generation_batch_size < 1:
            raise ValueError("rollout.engine.generation_batch_size must be >= 1")
        if weights not in ("shared", "copy"):
            raise ConfigError(f"rollout.engine.init_args.weights={weights!r}: use shared or copy")
        self.generation_batch_size = generation_batch_size
        self.share_prompt_prefix = share_prompt_prefix
        self.owns_weights = weights == "copy"
        self.module: RLModule | None = None
        self.model = None  # the copy (weights: copy)

    def bind(self, module: RLModule) -> None:
        self.module = module
        if self.owns_weights:
            self.model = load_model(module.spec).to(module.device).eval().requires_grad_(False)
            self.sync_weights(module)

    @torch.no_grad()
    def sync_weights(self, module: RLModule) -> None:
        """Copy the policy's weights into the engine's model, tensor by tensor (gathered from the shards on
        every rank when the policy is sharded)."""
        if not self.owns_weights or self.model is None:
            return
        own = self.model.state_dict()
        seen = set()
        for name, tensor in sharding.full_weights(module.policy):
            if name not in own or own[name].shape != tensor.shape:
                raise RuntimeError(f"weight sync: the policy's {name} {list(tensor.shape)} has no counterpart of that "
                                   "shape in the engine's model")
            own[name].copy_(tensor)
            seen.add(name)
        if missing := sorted(set(own) - seen):
            raise RuntimeError(f"weight sync: the policy sent no value for the engine's {missing[:3]}")

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch) -> Tensor:
        if self.model is None:
            raise RuntimeError("HFEngine(weights='copy').logprobs called before bind(module)")
        logp, _ = self.module.completion_logprobs(self.model, batch)
        return logp

    def _config(self, params: SamplingParams, eos: list[int], pad: int) -> GenerationConfig:
        if params.greedy:
            sampling = {"do_sample": False}
        else:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p,
                        "top_k": params.top_k}
        return GenerationConfig(max_new_tokens=params.max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                stop_strings=params.stop or None, use_cache=True, **sampling)

    def _chunks(self, num_prompts: int, n: int) -> list[list[tuple[int, int]]]:
        """Split ``num_prompts x n`` sequences into calls of at most ``generation_batch_size``
        sequences, as ``(prompt index, copies)`` lists that keep a prompt's copies together."""
        chunks: list[list[tuple[int, int]]] = [[]]
        used = 0
        for prompt in range(num_prompts):
            left = n
            while left:
                if used == self.generation_batch_size:
                    chunks.append([])
                    used = 0
                take = min(left, self.generation_batch_size - used)
                chunks[-1].append((prompt, take))
                used += take
                left -= take
        return chunks

    def _prefill(self, model, input_ids: Tensor, attention: Tensor, copies: Tensor) -> DynamicCache | None:
        """KV cache of every prompt but its last token, computed once and expanded to its copies."""
        if not self.share_prompt_prefix or input_ids.shape[1] < 2 or int(copies.max()) < 2:
            return None
        cache = DynamicCache()
        mask = attention[:, :-1]
        model(input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.reorder_cache(torch.arange(len(copies), device=input_ids.device).repeat_interleave(copies))
        return cache

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Generation:
        if self.module is None:
            raise RuntimeError("HFEngine.generate called before bind(module)")
        model, tokenizer = self.model if self.owns_weights else self.module.policy, self.module.tokenizer
        eos = eos_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        config = self._config(params, eos, pad)
        device = next(model.parameters()).device
        synced = sharding.is_sharded(model) and sharding.world_size() > 1
        was_training = model.training
        model.eval()
        token_ids: list[list[int]] = []
        finished: list[bool] = []
        try:
            for chunk in self._chunks(len(prompt_ids), params.n):
                prompts = [prompt_ids[i] for i, _ in chunk]
                copies = torch.tensor([c for _, c in chunk], device=device)
                width = max(len(ids) for ids in prompts)
                input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
                attention = torch.zeros((len(prompts), width), dtype=torch.long)
                for row, ids in enumerate(prompts):
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention[row, width - len(ids) :] = 1
                input_ids, attention = input_ids.to(device), attention.to(device)
                cache = self._prefill(model, input_ids, attention, copies)
                out = model.generate(
                    input_ids=input_ids.repeat_interleave(copies, dim=0),
                    attention_mask=attention.repeat_interleave(copies, dim=0),
                    past_key_values=cache,
                    generation_config=config,
                    tokenizer=tokenizer if params.stop else None,
                    # sharded policy: every decode step is a collective, so all ranks step until the last is done
                    synced_gpus=synced,
                )
                expanded = [ids for ids, (_, c) in zip(prompts, chunk) for _ in range(c)]
                for prompt, row in zip(expanded, out[:, width:].tolist()):
                    ids, done = self._cut(row, prompt, set(eos), pad, params, tokenizer)
                    token_ids.append(ids)
                    finished.append(done)
        finally:
            model.train(was_training)
        return Generation(token_ids=token_ids, finished=finished)

    @staticmethod
    def _cut(row: list[int], prompt: list[int], eos: set[int], pad: int, params: SamplingParams,
             tokenizer) -> tuple[list[int], bool]:
        """The generated tokens of one row without the padding ``generate`` appends after a
        sequence stops, and whether it stopped (EOS or stop string) rather than ran out of budget.

        ``generate`` matches stop strings against prompt + completion, so the check does too.
        """

        def stopped(ids: list[int]) -> bool:
            text = tokenizer.decode(prompt + ids, skip_special_tokens=True)
            return any(text.endswith(s) for s in params.stop)

        for i, token in enumerate(row):
            if token in eos:
                # with pad == eos, an "EOS" right after a stop string is padding, not a generated token
                if pad in eos and params.stop and stopped(row[:i]):
                    return row[:i], True
                return row[: i + 1], True
        if params.stop:
            end = len(row)
            while end > 0 and row[end - 1] == pad:
                end -= 1
            if stopped(row[:end]):
                return row[:end], True
        return row, False
