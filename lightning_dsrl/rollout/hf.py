"""``HFEngine``: rollouts from a transformers model on any device, by our own sampling loop over its KV cache.

Prompts are expanded ``n`` times and generated in chunks of ``generation_batch_size`` sequences;
each chunk is left-padded to its own longest prompt only (on CPU a long padded prompt slows
every decode step), and each prompt is prefilled once, its cache copied to its ``n`` samples.

Why not ``model.generate``: it steps every sequence of a batch until the longest is done, so a
batch whose completions run 10 to 64 tokens pays for 64 tokens on every row. Our loop drops
stopped rows (and their cache) from the batch. Sampling uses transformers' own temperature,
top-k and top-p warpers in ``generate``'s order, and nothing else: no setting shipped with a
hub model (repetition penalty, a default top-k of 50, ...) silently changes the distribution
the objective assumes it sampled from. Until a row is dropped the random draws are
``generate``'s, token for token (``tests/test_rollout.py``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lightning_dsrl import distributed, sharding
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import cache_kwargs, load_model, merged_weights
from lightning_dsrl.padding import pad_left
from lightning_dsrl.rollout.engine import EngineOwner, Generation, RolloutEngine, SamplingParams
from lightning_dsrl.types import Rollout

__all__ = ["HFEngine"]

# drop stopped rows from the batch once they are this fraction of it (0: at every stop; > 1: never): copying
# the cache without them is cheap next to stepping a finished row (benchmark: scripts/benchmark.py)
DROP_STOPPED_AT = 0.0


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
    """Sample completions from the policy (or its copy) with our KV-cache loop.

    Args:
        weights: ``shared``: generate with the policy itself (no copy, nothing to sync); ``copy``: generate
            with a separate, unsharded copy of the policy that receives the new weights after every
            optimizer step, like a vLLM engine (a sharded policy then gathers its weights once per step
            instead of once per decode step; the weight sync and its verification run on any device).
        generation_batch_size: sequences sampled together (prompts x samples); lower it to
            save memory, raise it on a GPU.
        share_prompt_prefix: in generation, prefill each prompt once and copy its KV cache to its ``n``
            samples instead of prefilling every copy (same samples, less compute; the training passes have
            their own ``model.share_prompt_prefix``).
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
        self.owner: EngineOwner | None = None
        self.model = None  # the copy (weights: copy)

    def bind(self, owner: EngineOwner) -> None:
        self.owner = owner
        if self.owns_weights:
            self.model = load_model(owner.spec).to(owner.device).eval().requires_grad_(False)
            self.sync_weights(owner)

    @torch.no_grad()
    def sync_weights(self, owner: EngineOwner) -> None:
        """Copy the policy's weights into the engine's model, tensor by tensor (gathered from the shards on
        every rank when the policy is sharded; with LoRA, merged into the base weights)."""
        if not self.owns_weights or self.model is None:
            return
        own = self.model.state_dict()
        seen = set()
        for name, tensor in merged_weights(owner.policy, sharding.full_weights(owner.policy)):
            if name not in own or own[name].shape != tensor.shape:
                raise RuntimeError(f"weight sync: the policy's {name} {list(tensor.shape)} has no counterpart of that "
                                   "shape in the engine's model")
            own[name].copy_(tensor)
            seen.add(name)
        if missing := sorted(set(own) - seen):
            raise RuntimeError(f"weight sync: the policy sent no value for the engine's {missing[:3]}")

    @torch.no_grad()
    def logprobs(self, batch: Rollout) -> Tensor:
        if self.model is None:
            raise RuntimeError("HFEngine(weights='copy').logprobs called before bind(owner)")
        logp, _ = self.owner.scorer.logprobs(self.model, batch)  # the trainer's code, on the engine's weights
        return logp

    @staticmethod
    def _warpers(params: SamplingParams) -> LogitsProcessorList:
        """transformers' own temperature, top-k and top-p warpers, in ``generate``'s order."""
        warpers = LogitsProcessorList()
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        return warpers

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

    def _prefill(self, model, input_ids: Tensor, attention: Tensor, copies: Tensor, synced: bool) -> DynamicCache:
        """KV cache of every row's prompt but its last token: computed once per prompt and expanded to its
        copies (``share_prompt_prefix``), or computed for every copy. One-token prompts have nothing to
        prefill; a sharded model's forward is a collective, though (``synced``), so a rank whose prompts are
        all one token still runs one forward, discarded, to meet the other ranks' prefill."""
        cache = DynamicCache()
        if input_ids.shape[1] < 2:
            if synced:
                model(input_ids=input_ids, attention_mask=attention, logits_to_keep=1)
            return cache
        if not self.share_prompt_prefix:
            input_ids, attention = input_ids.repeat_interleave(copies, 0), attention.repeat_interleave(copies, 0)
        mask = attention[:, :-1]
        model(input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              **cache_kwargs(model, cache), logits_to_keep=1)
        if self.share_prompt_prefix:
            cache.reorder_cache(torch.arange(len(copies), device=input_ids.device).repeat_interleave(copies))
        return cache

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Generation:
        if self.owner is None:
            raise RuntimeError("HFEngine.generate called before bind(owner)")
        model, tokenizer = self.model if self.owns_weights else self.owner.policy, self.owner.tokenizer
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        token_ids: list[list[int]] = []
        finished: list[bool] = []
        try:
            for chunk in self._chunks(len(prompt_ids), params.n):
                prompts = [prompt_ids[i] for i, _ in chunk]
                input_ids, attention = pad_left(prompts, tokenizer.pad_token_id)
                copies = torch.tensor([c for _, c in chunk], device=device)
                expanded = [ids for ids, (_, c) in zip(prompts, chunk) for _ in range(c)]
                ids, done = self._decode(model, input_ids.to(device), attention.long().to(device), copies, expanded,
                                         params)
                token_ids += ids
                finished += done
        finally:
            model.train(was_training)
        return Generation(token_ids=token_ids, finished=finished)

    def _decode(self, model, input_ids: Tensor, attention: Tensor, copies: Tensor, prompts: list[list[int]],
                params: SamplingParams) -> tuple[list[list[int]], list[bool]]:
        """Sample up to ``max_new_tokens`` tokens for each of the ``sum(copies)`` rows, one token per forward
        with the KV cache. A row stops at an EOS token (kept) or at a token that completes a stop string
        (kept whole); stopped rows leave the batch (with their cache, ``DROP_STOPPED_AT``), so the short completions
        of a batch do not step along with the long ones.

        A sharded model's forward is a collective: every rank then steps until the last rank is done,
        keeping at least one row to step with.
        """
        tokenizer = self.owner.tokenizer
        eos = set(eos_token_ids(tokenizer, model))
        synced = sharding.is_sharded(model) and distributed.world_size() > 1
        warpers = self._warpers(params)
        tail = max((len(s) for s in params.stop), default=0) + 1  # tokens enough to end with any stop string
        cache = self._prefill(model, input_ids, attention, copies, synced)
        with_cache = cache_kwargs(model, cache)
        mask = attention.repeat_interleave(copies, 0)  # grows by one column per step
        position = mask.sum(-1) - 1  # of the token fed next: the last prompt token first
        feed = input_ids[:, -1].repeat_interleave(copies)
        rows = len(feed)
        live = list(range(rows))  # the output row of each batch row
        stopped = [False] * rows  # per batch row
        out: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        for step in range(params.max_new_tokens):
            logits = model(input_ids=feed[:, None], attention_mask=mask, position_ids=position[:, None],
                           **with_cache).logits[:, -1].float()
            if params.greedy:
                feed = logits.argmax(-1)
            else:
                feed = torch.multinomial(torch.softmax(warpers(None, logits), -1), 1).squeeze(1)
            for b, token in enumerate(feed.tolist()):
                if stopped[b]:
                    continue
                row = live[b]
                out[row].append(token)
                if token in eos or (params.stop and self._hits_stop(prompts[row], out[row], tail, params.stop)):
                    stopped[b] = finished[row] = True
            alive = stopped.count(False)
            if step == params.max_new_tokens - 1 or (distributed.passes_on_all_ranks(alive, feed.device) if synced
                                                     else alive) == 0:
                break
            if alive and alive < len(stopped) and len(stopped) - alive >= DROP_STOPPED_AT * len(stopped):
                keep = [b for b, s in enumerate(stopped) if not s]
                index = torch.tensor(keep, device=feed.device)
                cache.reorder_cache(index)
                feed, mask, position = feed[index], mask[index], position[index]
                live, stopped = [live[b] for b in keep], [False] * len(keep)
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            position = position + 1
        return out, finished

    def _hits_stop(self, prompt: list[int], completion: list[int], tail: int, stop: list[str]) -> bool:
        """Whether a stop string occurs in the text of prompt + completion overlapping its last token, which may
        run past it (``generate``'s ``StopStringCriteria``: ``["st", "opera"]`` hits ``stop``, ``["stop", "at"]``
        does not). Only the last ``tail`` tokens are decoded (each is at least one character)."""
        ids = completion[-tail:]
        if len(ids) < tail:
            ids = prompt[len(prompt) - (tail - len(ids)) :] + ids
        decode = self.owner.tokenizer.decode
        before, text = decode(ids[:-1], skip_special_tokens=True), decode(ids, skip_special_tokens=True)
        return any((at := text.rfind(s)) >= 0 and at + len(s) > len(before) for s in stop)
