"""``RolloutCallback``: the rollout stage in Lightning's hooks.

    setup                      the engine can run here; the objective can work with G samples per prompt
    on_train_batch_start       B prompts -> Sampler (G each, scored) -> batch.rollout
                               (dynamic_sampling: groups with all-equal verdicts replaced, rollout/dynamic.py)
    on_train_batch_end         engine.sync_weights(module)   (no-op for an engine sharing the policy)
                               + the sync probe, engine vs trainer (engines owning weights, rollout/sync.py)
    on_validation_batch_start  B prompts -> val_num_generations samples each -> batch.rollout
                               (+ one greedy completion each -> batch.greedy, for Potential@k)

Lightning means callbacks for non-essential code; the rollout is essential, so this class only
connects the :class:`~lightning_dsrl.rollout.sampler.Sampler` to the hooks and logs what it did, and
the module refuses a batch without a rollout. The CLI adds it to every run from the ``rollout:``
section of the config.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from lightning import Callback, LightningModule, Trainer

from lightning_dsrl import sharding
from lightning_dsrl.errors import ConfigError, TrainingError
from lightning_dsrl.rewards.base import CompositeReward, Reward
from lightning_dsrl.rollout.dynamic import refill
from lightning_dsrl.rollout.engine import RolloutEngine
from lightning_dsrl.rollout.hf import HFEngine
from lightning_dsrl.rollout.sampler import Sampler
from lightning_dsrl.rollout.settings import DynamicSampling, SamplingSettings, SyncCheck
from lightning_dsrl.rollout.sync import sync_difference
from lightning_dsrl.types import PromptBatch, PromptRecord, Rollout, SamplingParams

__all__ = ["RolloutCallback", "training_records"]

log = logging.getLogger(__name__)


def training_records(trainer: Trainer) -> list[PromptRecord]:
    """This process's share of the training dataset's records (where dynamic sampling draws fresh
    prompts): every ``world_size``-th record from position ``global_rank``, so that ranks refill from
    disjoint prompts instead of all drawing the same ones."""
    records = getattr(getattr(trainer.train_dataloader, "dataset", None), "records", None)
    if not records:
        raise ConfigError("rollout.dynamic_sampling draws fresh prompts from the training dataset, but the train "
                          "dataloader has no `dataset.records`; use PromptDataModule or set dynamic_sampling: false")
    return list(records)[trainer.global_rank :: trainer.world_size]


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
        rewards: list[Reward] | None = None,
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
        self.sampling = SamplingSettings(num_generations, temperature, top_p, top_k, max_new_tokens, list(stop or []),
                                         val_num_generations, val_temperature, val_top_p, val_top_k, val_greedy)
        self.dynamic = DynamicSampling(dynamic_sampling, max_resample_rounds)
        reward = CompositeReward(rewards or [], timeout_s=reward_timeout_s)
        self.sampler = Sampler(engine if engine is not None else HFEngine(), reward, max_prompt_tokens)
        self.sync = SyncCheck(sync_check, sync_tolerance)
        self.train_sampling = self.sampling.train()
        self.val_sampling = self.sampling.validation()
        self.greedy_sampling = self.sampling.greedy()

    @property
    def engine(self) -> RolloutEngine:
        return self.sampler.engine

    @property
    def num_generations(self) -> int:
        return self.sampling.num_generations

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.engine.check()  # e.g. VLLMEngine without vLLM or without a GPU: before the model loads
        objective = getattr(pl_module, "objective", None)
        if objective is not None:
            objective.check(self.num_generations)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        policy = getattr(pl_module, "policy", None)
        if self.dynamic.enabled and trainer.world_size > 1 and policy is not None and sharding.is_sharded(policy):
            # refill rounds differ between ranks, and with a sharded policy every generation is a collective
            raise ConfigError(f"rollout.dynamic_sampling=true with a sharded policy over {trainer.world_size} processes "
                              "(trainer.strategy FSDP) would hang: use trainer.strategy: ddp, or dynamic_sampling: false")
        objective = getattr(pl_module, "objective", None)
        signal = getattr(objective, "uniform_group_signal", None)
        if self.dynamic.enabled and signal:
            log.warning("rollout.dynamic_sampling drops every group whose completions are all correct or all wrong "
                        "(DAPO's accuracy filter), but %s learns from such groups too (%s): that signal is dropped "
                        "with them; counted in rollout/dynamic_dropped_groups (all correct: "
                        "rollout/dynamic_dropped_all_correct)", type(objective).__name__, signal)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        rollout = self.rollout(pl_module, batch, self.train_sampling, log_prefix="train")
        if self.dynamic.enabled:
            start = time.perf_counter()
            rollout, stats = refill(self.sampler, pl_module, rollout, training_records(trainer), self.train_sampling,
                                    trainer.global_step, self.dynamic.max_resample_rounds)
            stats["timing/resample"] = time.perf_counter() - start
            pl_module.log_dict(stats, on_step=True, on_epoch=False, batch_size=len(batch))
        batch.rollout = rollout

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        start = time.perf_counter()
        self.engine.sync_weights(pl_module)  # type: ignore[arg-type]
        pl_module.log("timing/weight_sync", time.perf_counter() - start, on_step=True, on_epoch=False)
        rollout = getattr(batch, "rollout", None)
        if self.engine.owns_weights and self.sync.mode != "off" and rollout is not None and rollout.num_samples:
            self.verify_sync(pl_module, rollout)

    def verify_sync(self, pl_module: LightningModule, rollout: Rollout) -> float:
        """The probe's largest |engine - trainer| log-prob, logged as ``rollout/sync_logprob_diff``; beyond
        ``sync_tolerance`` a ``TrainingError`` (``sync_check: raise``, on every rank) or a warning."""
        diff = sync_difference(self.engine, pl_module, rollout)  # type: ignore[arg-type]
        if pl_module._trainer is not None:
            pl_module.log("rollout/sync_logprob_diff", diff, on_step=True, on_epoch=False)
        if not diff <= self.sync.tolerance:  # NaN fails too
            message = (f"weight sync: the engine's log-probs of a probe differ from the trainer's by up to {diff:.3g} "
                       f"nats (rollout.sync_tolerance={self.sync.tolerance}): the engine is not generating from the "
                       "policy being trained (stale or corrupted weights, or a precision mismatch; raise "
                       "rollout.sync_tolerance for the latter, or set rollout.sync_check: warn)")
            if self.sync.mode == "raise":
                raise TrainingError(message)
            log.warning(message)
        return diff

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        batch.rollout = self.rollout(pl_module, batch, self.val_sampling, log_prefix=None)
        if self.sampling.val_greedy:
            batch.greedy = self.rollout(pl_module, batch, self.greedy_sampling, log_prefix=None)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)

    # ------------------------------------------------------------------ the sampler, logged
    def rollout(self, pl_module: LightningModule, batch: PromptBatch, sampling: SamplingParams,
                log_prefix: str | None = "train") -> Rollout:
        """``sampling.n`` completions for each prompt of ``batch``, scored; with ``log_prefix``, the timings
        and reward failures logged."""
        rollout, stats = self.sampler.sample(pl_module, batch.records, sampling)  # type: ignore[arg-type]
        if log_prefix is not None:
            kw = {"on_step": True, "on_epoch": False, "batch_size": len(batch.records)}
            pl_module.log("timing/generate", stats.generate_seconds, **kw)
            pl_module.log("timing/score", stats.score_seconds, **kw)
            pl_module.log("reward/errors", float(stats.reward_errors), **kw)
            pl_module.log("reward/timeouts", float(stats.reward_timeouts), **kw)
            pl_module.log("rollout/prompts_truncated", float(stats.prompts_truncated), **kw)
            pl_module.log("timing/generated_tokens_per_s",
                          float(stats.generated_tokens) / max(stats.generate_seconds, 1e-9), **kw)
        return rollout

