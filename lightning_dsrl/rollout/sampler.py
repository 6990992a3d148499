"""``Sampler``: prompt records in, a scored :class:`~lightning_dsrl.types.Rollout` out.

    encode    each prompt through the chat template where the record asks for it, cut to fit the context
    generate  ``sampling.n`` completions per prompt (the engine)
    decode    the completions' text
    score     the composite reward: total reward, verdict, extracted answers and equations

No Lightning here: the sampler works on any owner of a policy and tokenizer (the ``RLModule``, or a
``SimpleNamespace(policy=..., tokenizer=..., device=...)`` in a test), and returns its timings and
counts for the caller to log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.padding import pad_left, pad_right
from lightning_dsrl.rewards.base import CompositeReward
from lightning_dsrl.rollout.engine import EngineOwner, RolloutEngine
from lightning_dsrl.types import PromptRecord, Rollout, SamplingParams

__all__ = ["Sampler", "SampleStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleStats:
    """What drawing one rollout took."""

    generate_seconds: float
    score_seconds: float
    reward_errors: int  # reward calls that raised or returned an invalid result
    reward_timeouts: int  # reward calls that ran past the time budget
    prompts_truncated: int  # prompts cut to fit so far in this run
    generated_tokens: int


class Sampler:
    """Generates and scores completions of prompt records with an engine and a composite reward.

    Args:
        engine: the rollout engine.
        reward: the rewards, summed with their weights; verifiers among them decide ``correct``.
        max_prompt_tokens: prompts longer than this keep only their last tokens (counted, warned). Prompts
            are also cut to fit the model's context, ``max_position_embeddings - max_new_tokens``.
    """

    def __init__(self, engine: RolloutEngine, reward: CompositeReward, max_prompt_tokens: int | None = None) -> None:
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ConfigError(f"rollout.max_prompt_tokens={max_prompt_tokens}: give a number >= 1, or null")
        self.engine = engine
        self.reward = reward
        self.max_prompt_tokens = max_prompt_tokens
        self.prompts_truncated = 0  # over the run, logged as rollout/prompts_truncated
        self._bound_to: EngineOwner | None = None

    def bind(self, owner: EngineOwner) -> None:
        """Bind the engine to ``owner``'s policy and tokenizer (once per owner: a copy engine loads its model)."""
        if self._bound_to is not owner:
            self.engine.bind(owner)
            self._bound_to = owner

    def prompt_limit(self, owner: EngineOwner, max_new_tokens: int) -> tuple[int | None, str]:
        """The most prompt tokens a rollout may use, and which setting sets it.

        ``max_position_embeddings - max_new_tokens`` when the model declares its context (prompt and
        completion must fit together), or ``rollout.max_prompt_tokens`` if that is smaller.
        """
        context = getattr(getattr(getattr(owner, "policy", None), "config", None), "max_position_embeddings", None)
        limit, why = self.max_prompt_tokens, "rollout.max_prompt_tokens"
        if isinstance(context, int) and context > 0:
            if context - max_new_tokens < 1:
                raise ConfigError(f"rollout.max_new_tokens={max_new_tokens} leaves no room for the prompt in the "
                                  f"model's context of {context} tokens (max_position_embeddings); lower it below "
                                  f"{context}")
            if limit is None or context - max_new_tokens < limit:
                limit, why = context - max_new_tokens, f"model context {context} - rollout.max_new_tokens {max_new_tokens}"
        return limit, why

    def encode(self, owner: EngineOwner, records: list[PromptRecord], max_new_tokens: int) -> list[list[int]]:
        """Token ids of each prompt (through the chat template where the record asks for it)."""
        tokenizer = owner.tokenizer
        limit, why = self.prompt_limit(owner, max_new_tokens)
        out = []
        for record in records:
            if record.chat:
                if not tokenizer.chat_template:
                    raise ConfigError("data.task.chat=true but the tokenizer has no chat template; set chat: false")
                ids = tokenizer.apply_chat_template(
                    [*record.history, {"role": "user", "content": record.prompt}], add_generation_prompt=True,
                    tokenize=True,
                )
                if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                    ids = ids["input_ids"]
            else:
                ids = tokenizer(record.prompt, add_special_tokens=True)["input_ids"]
            if limit is not None and len(ids) > limit:
                self.prompts_truncated += 1
                if self.prompts_truncated == 1:
                    log.warning("a prompt of %d tokens was cut to its last %d (%s); counted in "
                                "rollout/prompts_truncated", len(ids), limit, why)
                ids = ids[-limit:]
            out.append(list(ids))
        return out

    def sample(self, owner: EngineOwner, records: list[PromptRecord], sampling: SamplingParams
               ) -> tuple[Rollout, SampleStats]:
        """``sampling.n`` completions for each of ``records``, scored; group ``i`` is record ``i``."""
        self.bind(owner)
        tokenizer = owner.tokenizer
        prompt_ids = self.encode(owner, records, sampling.max_new_tokens)

        start = time.perf_counter()
        generation = self.engine.generate(prompt_ids, sampling)
        t_generate = time.perf_counter() - start

        n = sampling.n
        texts = tokenizer.batch_decode(generation.token_ids, skip_special_tokens=True)
        sample_records = [r for r in records for _ in range(n)]
        start = time.perf_counter()
        scored = self.reward.score_batch(sample_records, texts)
        t_score = time.perf_counter() - start

        pad = tokenizer.pad_token_id
        p_ids, p_mask = pad_left([ids for ids in prompt_ids for _ in range(n)], pad)
        c_ids, c_mask = pad_right(generation.token_ids, pad)
        device = owner.device
        sampler_logp = None
        if generation.logprobs is not None:
            sampler_logp = pad_right(generation.logprobs, 0.0, dtype=torch.float32)[0].to(device)
        rollout = Rollout(
            prompt_ids=p_ids.to(device),
            prompt_mask=p_mask.to(device),
            completion_ids=c_ids.to(device),
            completion_mask=c_mask.to(device),
            group_ids=torch.arange(len(records), device=device).repeat_interleave(n),
            rewards=scored.rewards.to(device),
            correct=scored.correct.to(device),
            truncated=torch.tensor([not f for f in generation.finished], dtype=torch.bool, device=device),
            sampling=sampling,
            sampler_logp=sampler_logp,
            reward_parts={k: v.to(device) for k, v in scored.parts.items()},
            prompts=[r.prompt for r in sample_records],
            completions=texts,
            answers=scored.answers,
            equations=scored.equations,
            records=sample_records,
        )
        stats = SampleStats(t_generate, t_score, scored.errors, scored.timeouts, self.prompts_truncated,
                            int(c_mask.sum()))
        return rollout, stats
