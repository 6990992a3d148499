"""``RolloutCallback``: turns each batch of prompts into a scored :class:`RolloutBatch`.

    on_train_batch_start       B prompts -> engine.generate(G each) -> rewards -> batch.rollout
                               (dynamic_sampling: groups with all-equal rewards replaced, see ``refill``)
    on_train_batch_end         engine.sync_weights(module)   (no-op for an engine sharing the policy)
                               + verify_sync: probe log-probs, engine vs trainer (engines owning weights)
    on_validation_batch_start  B prompts -> val_num_generations samples each -> batch.rollout
                               (+ one greedy completion each -> batch.greedy, for Potential@k)

Lightning means callbacks for non-essential code; the rollout is essential, so this class stays
thin (sampling settings, tokenising, tensor layout) and the module refuses a batch without a
rollout. The CLI adds it to every run from the ``rollout:`` section of the config.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_dsrl import functional as F
from lightning_dsrl.errors import ConfigError, TrainingError
from lightning_dsrl.padding import pad_left, pad_right
from lightning_dsrl.rewards.base import CompositeReward, RewardModule
from lightning_dsrl.rollout.engine import RolloutEngine, SamplingParams
from lightning_dsrl.rollout.hf import HFEngine
from lightning_dsrl.types import PromptBatch, PromptRecord, RolloutBatch

if TYPE_CHECKING:
    from lightning_dsrl.module import RLModule

__all__ = ["RolloutCallback"]

log = logging.getLogger(__name__)


def _training_records(trainer: Trainer) -> list[PromptRecord]:
    """This process's share of the training dataset's records (where dynamic sampling draws fresh
    prompts): every ``world_size``-th record from position ``global_rank``, so that ranks refill from
    disjoint prompts instead of all drawing the same ones."""
    records = getattr(getattr(trainer.train_dataloader, "dataset", None), "records", None)
    if not records:
        raise ConfigError("rollout.dynamic_sampling draws fresh prompts from the training dataset, but the train "
                          "dataloader has no `dataset.records`; use PromptDataModule or set dynamic_sampling: false")
    return list(records)[trainer.global_rank :: trainer.world_size]


def _mixed_verdicts(rollout: RolloutBatch) -> Tensor:
    """``[N]`` bool: whether the sample's group holds both correct and incorrect completions."""
    return F.group_has_spread(rollout.correct.float(), rollout.group_ids)


def _groups_all_correct(rollout: RolloutBatch, dropped: Tensor) -> int:
    """How many of the groups marked by ``dropped`` (``[N]`` bool, whole groups) are all correct."""
    return int(torch.unique(rollout.group_ids[dropped & rollout.correct.bool()]).numel())


class RolloutCallback(Callback):
    """Sample ``num_generations`` completions per prompt and score them.

    Args:
        engine: the rollout engine (default ``HFEngine()``, runs everywhere; ``VLLMEngine`` on GPUs).
        rewards: rewards summed with their weights; verifiers among them decide ``correct``.
        num_generations: completions per prompt (G, the group size).
        temperature: sampling temperature (log-probs are computed at the same temperature).
        top_p: must stay 1.0 (and ``top_k`` 0): the trainer's log-probs (old, new, reference, the engine
            probe) are of the full distribution at ``temperature``, so a truncated sampler would make the
            ratios and DS-GRPO's log-likelihoods wrong. Validation has its own ``val_top_p``/``val_top_k``.
        top_k: must stay 0 (see ``top_p``).
        max_new_tokens: generation budget per completion.
        stop: strings that end a completion (kept in the text), e.g. ``["</answer>"]``.
        max_prompt_tokens: prompts longer than this keep only their last tokens (counted, warned). Prompts
            are also cut to fit the model's context, ``max_position_embeddings - max_new_tokens``, when the
            model declares it.
        reward_timeout_s: time budget of one reward call in seconds; a call that runs past it scores 0
            and is counted in ``reward/timeouts`` (``null``: no limit).
        val_num_generations: samples per prompt in validation (pass@k is reported up to this k).
        val_temperature: sampling temperature in validation.
        val_top_p: nucleus threshold in validation (1.0: off).
        val_top_k: top-k sampling in validation (0: off).
        val_greedy: also decode one greedy completion per validation prompt (Potential@k and the
            greedy accuracy need it).
        dynamic_sampling: DAPO's dynamic sampling: drop the groups whose completions are all correct or
            all wrong (no GRPO signal; format bonuses do not count) and replace them with groups for fresh
            prompts of this process's share of the training set. Meant for GRPO-style objectives: DS-GRPO,
            the entropy objectives and R1-zero-Div still learn from such groups (a warning at the start
            says what is dropped).
        max_resample_rounds: with ``dynamic_sampling``, at most this many extra generation rounds of
            ``data.batch_size`` fresh prompts each; a batch still short after them trains on the groups
            it has (on the original batch if no group has mixed verdicts).
        sync_check: after each weight sync of an engine with its own weights (vLLM, ``HFEngine(weights:
            copy)``), compare the engine's log-probs of a probe (the step's first completion) with the
            trainer's; the largest difference over its tokens is logged as ``rollout/sync_logprob_diff``
            and, beyond ``sync_tolerance``, stops the run (``raise``) or warns (``warn``).
        sync_tolerance: the largest accepted |engine - trainer| log-prob of a probe token (nats); vLLM in
            bf16 differs from the trainer by about 1e-2, so raise it there (``configs/vllm.yaml``).
    """

    def __init__(
        self,
        engine: RolloutEngine | None = None,
        rewards: list[RewardModule] | None = None,
        num_generations: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        stop: list[str] | None = None,
        max_prompt_tokens: int | None = None,
        reward_timeout_s: float | None = 10.0,
        val_num_generations: int = 16,
        val_temperature: float = 1.0,
        val_top_p: float = 1.0,
        val_top_k: int = 0,
        val_greedy: bool = True,
        dynamic_sampling: bool = False,
        max_resample_rounds: int = 3,
        sync_check: Literal["raise", "warn", "off"] = "raise",
        sync_tolerance: float = 1e-3,
    ) -> None:
        super().__init__()
        if num_generations < 1 or val_num_generations < 1:
            raise ConfigError("rollout.num_generations and rollout.val_num_generations must be >= 1")
        if temperature <= 0 or val_temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0 (greedy decoding is not a sampling policy)")
        if top_p != 1.0 or top_k != 0:
            option = f"rollout.top_p={top_p}" if top_p != 1.0 else f"rollout.top_k={top_k}"
            raise ConfigError(f"{option}: training samples from the full distribution (the trainer's log-probs "
                              "ignore truncation, so ratios and log-likelihoods would be wrong); use top_p: 1.0 and "
                              "top_k: 0, or truncate validation only with rollout.val_top_p / val_top_k")
        if not 0 < val_top_p <= 1:
            raise ConfigError(f"rollout.val_top_p={val_top_p}: must be in (0, 1]")
        if val_top_k < 0:
            raise ConfigError(f"rollout.val_top_k={val_top_k}: must be >= 0 (0: off)")
        if max_new_tokens < 1:
            raise ConfigError("rollout.max_new_tokens must be >= 1")
        if max_resample_rounds < 0:
            raise ConfigError(f"rollout.max_resample_rounds={max_resample_rounds}: must be >= 0")
        if not rewards:
            raise ConfigError("rollout.rewards is empty: list at least one reward, e.g. "
                              "[{class_path: CountdownReward}, {class_path: FormatReward, init_args: {weight: 0.1}}]")
        if reward_timeout_s is not None and not reward_timeout_s > 0:
            raise ConfigError(f"rollout.reward_timeout_s={reward_timeout_s}: give seconds > 0, or null for no limit")
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ConfigError(f"rollout.max_prompt_tokens={max_prompt_tokens}: give a number >= 1, or null")
        self.engine = engine if engine is not None else HFEngine()
        self.reward = CompositeReward(rewards, timeout_s=reward_timeout_s)
        self.num_generations = num_generations
        self.train_sampling = SamplingParams(num_generations, temperature, top_p, top_k, max_new_tokens, list(stop or []))
        self.val_sampling = SamplingParams(val_num_generations, val_temperature, val_top_p, val_top_k, max_new_tokens,
                                           list(stop or []))
        self.val_greedy = val_greedy
        self.greedy_sampling = SamplingParams(1, 1.0, 1.0, 0, max_new_tokens, list(stop or []), greedy=True)
        self.max_prompt_tokens = max_prompt_tokens
        self.dynamic_sampling = dynamic_sampling
        self.max_resample_rounds = max_resample_rounds
        if sync_check not in ("raise", "warn", "off"):
            raise ConfigError(f"rollout.sync_check={sync_check!r}: use raise, warn or off")
        if not sync_tolerance > 0:
            raise ConfigError(f"rollout.sync_tolerance={sync_tolerance}: give a log-prob difference > 0, e.g. 1e-3")
        self.sync_check = sync_check
        self.sync_tolerance = sync_tolerance
        self._bound_to: LightningModule | None = None
        self.prompts_truncated = 0

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.engine.check()  # e.g. VLLMEngine without vLLM or without a GPU: before the model loads

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_dsrl import sharding

        policy = getattr(pl_module, "policy", None)
        if self.dynamic_sampling and trainer.world_size > 1 and policy is not None and sharding.is_sharded(policy):
            # refill rounds differ between ranks, and with a sharded policy every generation is a collective
            raise ConfigError(f"rollout.dynamic_sampling=true with a sharded policy over {trainer.world_size} processes "
                              "(trainer.strategy FSDP) would hang: use trainer.strategy: ddp, or dynamic_sampling: false")
        objective = getattr(pl_module, "objective", None)
        signal = getattr(objective, "uniform_group_signal", None)
        if self.dynamic_sampling and signal:
            log.warning("rollout.dynamic_sampling drops every group whose completions are all correct or all wrong "
                        "(DAPO's accuracy filter), but %s learns from such groups too (%s): that signal is dropped "
                        "with them; counted in rollout/dynamic_dropped_groups (all correct: "
                        "rollout/dynamic_dropped_all_correct)", type(objective).__name__, signal)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        rollout = self.rollout(pl_module, batch, self.train_sampling, log_prefix="train")
        if self.dynamic_sampling:
            start = time.perf_counter()
            rollout, stats = self.refill(pl_module, rollout, _training_records(trainer), trainer.global_step)
            stats["timing/resample"] = time.perf_counter() - start
            pl_module.log_dict(stats, on_step=True, on_epoch=False, batch_size=len(batch))
        batch.rollout = rollout

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        start = time.perf_counter()
        self.engine.sync_weights(pl_module)  # type: ignore[arg-type]
        pl_module.log("timing/weight_sync", time.perf_counter() - start, on_step=True, on_epoch=False)
        rollout = getattr(batch, "rollout", None)
        if self.engine.owns_weights and self.sync_check != "off" and rollout is not None and rollout.num_samples:
            self.verify_sync(pl_module, rollout)

    def verify_sync(self, pl_module: LightningModule, rollout: RolloutBatch) -> float:
        """The largest |engine - trainer| log-prob over the tokens of a probe (the rollout's first completion)
        and over ranks, logged as ``rollout/sync_logprob_diff``; beyond ``sync_tolerance`` a ``TrainingError``
        (``sync_check: raise``, on every rank) or a warning."""
        from lightning_dsrl import distributed

        module: RLModule = pl_module  # type: ignore[assignment]
        probe = rollout.select([0]).trim()
        was_training = module.policy.training
        module.policy.eval()  # the engine samples without dropout (LoRA's included): compare the same function
        try:
            with torch.no_grad():
                trainer_logp, _ = module.completion_logprobs(module.policy, probe)  # [1, L]
        finally:
            module.policy.train(was_training)
        engine_logp = self.engine.logprobs(probe).to(trainer_logp.device)  # [1, L]
        diff = float(((trainer_logp - engine_logp).abs() * probe.completion_mask).max())
        diff = distributed.max_over_ranks(diff, module.device)
        if module._trainer is not None:
            module.log("rollout/sync_logprob_diff", diff, on_step=True, on_epoch=False)
        if not diff <= self.sync_tolerance:  # NaN fails too
            message = (f"weight sync: the engine's log-probs of a probe differ from the trainer's by up to {diff:.3g} "
                       f"nats (rollout.sync_tolerance={self.sync_tolerance}): the engine is not generating from the "
                       "policy being trained (stale or corrupted weights, or a precision mismatch; raise "
                       "rollout.sync_tolerance for the latter, or set rollout.sync_check: warn)")
            if self.sync_check == "raise":
                raise TrainingError(message)
            log.warning(message)
        return diff

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        batch.rollout = self.rollout(pl_module, batch, self.val_sampling, log_prefix=None)
        if self.val_greedy:
            batch.greedy = self.rollout(pl_module, batch, self.greedy_sampling, log_prefix=None)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)

    # ------------------------------------------------------------------ work
    def refill(self, pl_module: LightningModule, rollout: RolloutBatch, records: list[PromptRecord], step: int
               ) -> tuple[RolloutBatch, dict[str, float]]:
        """DAPO dynamic sampling: keep the groups of ``rollout`` whose verdicts differ (DAPO filters on
        accuracy: a group all correct or all wrong is dropped, whatever its format bonuses), then fill the
        batch back to its number of groups from fresh training ``records``, drawn without replacement in an
        order seeded by ``(torch.initial_seed(), step, round)`` (reproducible, also after a resume).
        Returns the batch and what happened (``rollout/dynamic_*``: dropped groups, of which all correct)."""
        wanted = rollout.num_groups
        keep = _mixed_verdicts(rollout)  # [N]
        parts = [rollout.select(keep)] if keep.any() else []
        have = parts[0].num_groups if parts else 0
        dropped, rounds = wanted - have, 0
        dropped_correct = _groups_all_correct(rollout, ~keep)
        tried = {r.prompt for r in rollout.records}  # never draw a prompt already in this step
        while have < wanted and rounds < self.max_resample_rounds:
            rounds += 1
            seed = ((torch.initial_seed() * 1_000_003 + step) * 1_009 + rounds) % 2**63
            order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
            fresh = [records[i] for i in order if records[i].prompt not in tried][:wanted]
            if not fresh:
                break
            tried.update(r.prompt for r in fresh)
            extra = self.rollout(pl_module, PromptBatch(fresh), self.train_sampling, log_prefix=None)
            mixed = _mixed_verdicts(extra)  # [N]
            with_signal = torch.unique(extra.group_ids[mixed])
            dropped += len(fresh) - int(with_signal.numel())
            dropped_correct += _groups_all_correct(extra, ~mixed)
            labels = with_signal[: wanted - have]  # the first groups with signal, in prompt order
            if labels.numel():
                parts.append(extra.select(torch.isin(extra.group_ids, labels)))
                have += int(labels.numel())
        stats = {"rollout/dynamic_dropped_groups": float(dropped), "rollout/dynamic_rounds": float(rounds),
                 "rollout/dynamic_short": float(have < wanted), "rollout/dynamic_kept_groups": float(have),
                 "rollout/dynamic_dropped_all_correct": float(dropped_correct)}
        if not parts:  # no group with mixed verdicts anywhere: train on the original batch
            return rollout, stats
        return RolloutBatch.concat(parts, pad_id=pl_module.tokenizer.pad_token_id), stats

    def _engine(self, pl_module: LightningModule) -> RolloutEngine:
        if self._bound_to is not pl_module:
            self.engine.bind(pl_module)  # type: ignore[arg-type]
            self._bound_to = pl_module
        return self.engine

    def _prompt_limit(self, module: RLModule) -> tuple[int | None, str]:
        """The most prompt tokens a rollout may use, and which setting sets it.

        ``max_position_embeddings - max_new_tokens`` when the model declares its context (prompt and
        completion must fit together), or ``rollout.max_prompt_tokens`` if that is smaller.
        """
        budget = self.train_sampling.max_new_tokens
        context = getattr(getattr(getattr(module, "policy", None), "config", None), "max_position_embeddings", None)
        limit, why = self.max_prompt_tokens, "rollout.max_prompt_tokens"
        if isinstance(context, int) and context > 0:
            if context - budget < 1:
                raise ConfigError(f"rollout.max_new_tokens={budget} leaves no room for the prompt in the model's "
                                  f"context of {context} tokens (max_position_embeddings); lower it below {context}")
            if limit is None or context - budget < limit:
                limit, why = context - budget, f"model context {context} - rollout.max_new_tokens {budget}"
        return limit, why

    def encode_prompts(self, module: RLModule, records: list[PromptRecord]) -> list[list[int]]:
        """Token ids of each prompt (through the chat template where the record asks for it)."""
        tokenizer = module.tokenizer
        limit, why = self._prompt_limit(module)
        out = []
        for record in records:
            if record.chat:
                if not tokenizer.chat_template:
                    raise ConfigError("data.task.chat=true but the tokenizer has no chat template; set chat: false")
                ids = tokenizer.apply_chat_template(
                    [{"role": "user", "content": record.prompt}], add_generation_prompt=True, tokenize=True
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

    def rollout(self, pl_module: LightningModule, batch: PromptBatch, sampling: SamplingParams,
                log_prefix: str | None = "train") -> RolloutBatch:
        """Generate ``sampling.n`` completions for each prompt of ``batch`` and score them."""
        module: RLModule = pl_module  # type: ignore[assignment]
        records = batch.records
        engine = self._engine(module)
        tokenizer = module.tokenizer
        prompt_ids = self.encode_prompts(module, records)

        start = time.perf_counter()
        generation = engine.generate(prompt_ids, sampling)
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
        device = module.device
        sampler_logp = None
        if generation.logprobs is not None:
            sampler_logp = pad_right(generation.logprobs, 0.0, dtype=torch.float32)[0].to(device)
        rollout = RolloutBatch(
            prompt_ids=p_ids.to(device),
            prompt_mask=p_mask.to(device),
            completion_ids=c_ids.to(device),
            completion_mask=c_mask.to(device),
            group_ids=torch.arange(len(records), device=device).repeat_interleave(n),
            rewards=scored.rewards.to(device),
            correct=scored.correct.to(device),
            truncated=torch.tensor([not f for f in generation.finished], dtype=torch.bool, device=device),
            temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens,
            sampler_logp=sampler_logp,
            reward_parts={k: v.to(device) for k, v in scored.parts.items()},
            prompts=[r.prompt for r in sample_records],
            completions=texts,
            answers=scored.answers,
            equations=scored.equations,
            records=sample_records,
        )
        if log_prefix is not None:
            log_kw = {"on_step": True, "on_epoch": False, "batch_size": len(records)}
            module.log("timing/generate", t_generate, **log_kw)
            module.log("timing/score", t_score, **log_kw)
            module.log("reward/errors", float(scored.errors), **log_kw)
            module.log("reward/timeouts", float(scored.timeouts), **log_kw)
            module.log("rollout/prompts_truncated", float(self.prompts_truncated), **log_kw)
            tokens = float(c_mask.sum())
            module.log("timing/generated_tokens_per_s", tokens / max(t_generate, 1e-9), **log_kw)
        return rollout
