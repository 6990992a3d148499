"""``RLModule``: the policy, the reference model and the objective, driven by Lightning's hooks.

A training step, on the rollout the callback put into the batch (``batch.rollout``):

    train_batch(rollout) -> TrainBatch   fixed log-probs without gradient (scoring.py): logp_old only with
                                         several passes (with one it is the update's own forward), logp_ref
                                         only if the objective needs it; group advantages; and, with
                                         logp_old known, the final (shaped) advantages, once per rollout
    update(batch)        -> UpdateStats  ppo_epochs x minibatches optimizer steps (update.py)
    _log_step                            the step's scalars and sample table (training_log.py)

Validation reports pass@k, diversity and entropy of the held-out problems (evaluation.py).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_dsrl import sharding
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.evaluation import Evaluation
from lightning_dsrl.metrics import RolloutMetrics
from lightning_dsrl.models import DEFAULT_MODEL, LoraSpec, ModelSpec, apply_lora, load_model, load_tokenizer
from lightning_dsrl.objectives import GRPO, Objective
from lightning_dsrl.resume import check_checkpoint, restore_module_state, save_checkpoint_state
from lightning_dsrl.scoring import Scorer
from lightning_dsrl.settings import ComputeSettings, LoggingSettings, OptimizerSettings, UpdateSettings
from lightning_dsrl.training_log import model_flops, samples_table, step_scalars, throughput
from lightning_dsrl.types import PromptBatch, Rollout, TrainBatch
from lightning_dsrl.update import StepCounters, UpdateStats
from lightning_dsrl.update import update as run_update

__all__ = ["RLModule"]


class RLModule(LightningModule):
    """RL fine-tuning of a causal LM with a pluggable objective.

    Args:
        name_or_path: hub id, local directory, or ``pkg://package/path`` of the policy.
        gguf_file: a GGUF file inside ``name_or_path`` to load (de-quantised to float weights).
        torch_dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        attn_implementation: transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        gradient_checkpointing: recompute activations in backward to save memory.
        trust_remote_code: allow model code from the hub (off unless you trust the repository).
        lora: train LoRA adapters (``{r, alpha, dropout, target_modules}``) instead of every weight; the reference
            is then the policy with adapters disabled, and checkpoints hold only the adapters (``None``: all weights).
        objective: the loss (``GRPO``, ``DSGRPO``, ...), with its options (default: ``GRPO()``).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        lr_warmup_steps: optimizer steps of linear warm-up from 0 to ``learning_rate``.
        lr_schedule: after warm-up, keep the rate (``constant``) or decay it to 0 at
            ``trainer.max_steps`` (``linear``, ``cosine``).
        ppo_epochs: passes over each rollout batch.
        minibatches: optimizer steps per pass (the rollout is split into this many parts).
        micro_batch_size: completions per forward/backward (gradient accumulation inside a minibatch).
        max_grad_norm: clip the gradient norm to this (``None``: no clipping, norm still logged).
        max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient
            (each such step is skipped, not applied).
        log_samples_every_n_steps: write a table of prompts, completions and rewards to TensorBoard
            every this many rollouts (0: never).
        share_prompt_prefix: in the log-prob and training forwards (generation has the engine's own), run
            each group's prompt once, its completions packed behind it in one row or, where packing does not
            apply, reading its KV cache (same values, less compute; :mod:`lightning_dsrl.logprobs`).
        val_bootstrap: resamples of the bootstrap confidence interval of the validation pass@k curve
            (over problems; 0: no interval).
        val_confidence: coverage of that interval.
        train_self_bleu: log Self-BLEU of every rollout's groups (``diversity/self_bleu``): O(G^2) BLEU evaluations
            per group on the CPU (``timing/metrics``), so turn it off for large G. Validation always reports it.
        cpu_threads: torch's intra-op threads when training on the CPU (``None``: torch's default, one per core).
            A tiny model runs fastest on 1: its matrices are too small to split, and spin-waiting threads slow
            down sharply on a busy machine.
        tis_cap: truncated importance sampling for the engine/trainer mismatch (vLLM): each token's policy-gradient
            term is weighted by ``min(pi_old / pi_sampler, tis_cap)`` from the engine's own log-probs (``null``: off).
            ``rollout/logprob_diff`` logs the mismatch whenever the engine reports log-probs.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_MODEL,
        gguf_file: str | None = None,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        lora: LoraSpec | None = None,
        objective: Objective | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        lr_warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        ppo_epochs: int = 1,
        minibatches: int = 1,
        micro_batch_size: int = 16,
        max_grad_norm: float | None = 1.0,
        max_nonfinite_steps: int = 5,
        log_samples_every_n_steps: int = 25,
        share_prompt_prefix: bool = True,
        val_bootstrap: int = 1000,
        val_confidence: float = 0.95,
        train_self_bleu: bool = True,
        cpu_threads: int | None = None,
        tis_cap: float | None = None,
    ) -> None:
        super().__init__()
        self.update_settings = UpdateSettings(ppo_epochs, minibatches, micro_batch_size, max_grad_norm,
                                              max_nonfinite_steps, tis_cap)
        self.optimizer_settings = OptimizerSettings(learning_rate, weight_decay, adam_betas, lr_warmup_steps,
                                                    lr_schedule)
        self.log_settings = LoggingSettings(log_samples_every_n_steps, train_self_bleu, val_bootstrap, val_confidence)
        self.compute_settings = ComputeSettings(share_prompt_prefix, cpu_threads)
        self.spec = ModelSpec(name_or_path, gguf_file, torch_dtype, attn_implementation,
                              gradient_checkpointing, trust_remote_code)
        self.lora = lora
        self.objective = objective if objective is not None else GRPO()
        self.scorer = Scorer(micro_batch_size, share_prompt_prefix)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen reference model
        self.policy = None
        self.reference = None
        self.tokenizer = None
        # training: one rollout at a time (updated, read and reset every step); validation: the whole set
        self.train_metrics = RolloutMetrics(self_bleu=train_self_bleu)
        self.evaluation = Evaluation(bootstrap=val_bootstrap, confidence=val_confidence)
        self.counters = StepCounters()  # skipped and zero-signal steps (saved in checkpoints)
        self.rollouts_seen = 0
        self.shuffle = torch.Generator().manual_seed(0)  # the minibatch order (saved in checkpoints)

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        if self.policy is not None:  # idempotent: Lightning may call it more than once
            return
        self.tokenizer = load_tokenizer(self.spec)
        self.policy = load_model(self.spec)
        if self.lora is not None:
            self.policy = apply_lora(self.policy, self.lora)  # the reference: the same model, adapters off
        elif self.objective.needs_reference:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        strategy = self._trainer.strategy if self._trainer is not None else None
        self.policy, self.reference = sharding.shard_models(strategy, self.policy, self.reference)

    def setup(self, stage: str) -> None:
        threads = self.compute_settings.cpu_threads
        if threads is not None and self.trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(threads)

    def on_fit_start(self) -> None:
        self._require_reference()  # the models exist now: fail before the first rollout, not in it

    def _require_reference(self) -> None:
        if self.objective.needs_reference and self.reference is None and self.lora is None:
            raise ConfigError(f"model.objective: {type(self.objective).__name__} needs the reference model but none "
                              "was loaded; build the module with this objective (configure_model loads the reference "
                              "when objective.needs_reference is true) or set beta: 0 / smoothing_model: old")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_checkpoint_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        restore_module_state(self, checkpoint.get("resume_state"))

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``ConfigError`` for a checkpoint of another model (FSDP2Strategy calls it before it loads the weights)."""
        check_checkpoint(self, checkpoint)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters")
        settings = self.optimizer_settings
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                      betas=settings.adam_betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def _lr_factor(self, step: int) -> float:
        max_steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        return self.optimizer_settings.lr_factor(step, max_steps)

    # ------------------------------------------------------------------ one training step
    def reference_logprobs(self, rollout: Rollout) -> Tensor:
        """``[N, L]`` log-probs of the reference model: the frozen copy, or with LoRA the policy
        itself with its adapters disabled (in eval mode, like the copy)."""
        if self.lora is not None:
            was_training = self.policy.training
            self.policy.eval()
            try:
                with self.policy.disable_adapter():
                    return self.scorer.per_token(self.policy, rollout, self.device)
            finally:
                self.policy.train(was_training)
        self._require_reference()
        return self.scorer.per_token(self.reference, rollout, self.device)

    def train_batch(self, rollout: Rollout) -> tuple[TrainBatch, dict[str, Tensor]]:
        """The training batch of ``rollout``, and the objective's metrics of the whole batch."""
        logp_old = None
        if not self.update_settings.one_pass:  # several passes: pi_old is the policy before the first of them
            was_training = self.policy.training
            self.policy.eval()
            logp_old = self.scorer.per_token(self.policy, rollout, self.device)
            self.policy.train(was_training)
        logp_ref = self.reference_logprobs(rollout) if self.objective.needs_reference else None
        group_advantages, metrics = self.objective.rollout_advantages(rollout)
        batch = TrainBatch.of(rollout, logp_old=logp_old, logp_ref=logp_ref, group_advantages=group_advantages)
        if logp_old is not None:  # the shaping is a constant of the rollout: once here, not per micro-batch
            advantages, shaping = self.objective.shaped_advantages(batch)
            batch, metrics = batch.replace(advantages=advantages), {**metrics, **shaping}
        return batch, metrics

    def update(self, batch: TrainBatch, batch_metrics: dict[str, Tensor] | None = None) -> UpdateStats:
        """``ppo_epochs x minibatches`` optimizer steps on ``batch`` with this module's optimizer."""
        return run_update(batch, objective=self.objective, policy=self.policy, scorer=self.scorer,
                          settings=self.update_settings, optimizer=self.optimizers(), scheduler=self.lr_schedulers(),
                          backward=self.manual_backward, on_all_ranks=self._on_all_ranks, counters=self.counters,
                          shuffle=self.shuffle, device=self.device, batch_metrics=batch_metrics,
                          entropy_metric=self.train_metrics.entropy)

    def _on_all_ranks(self, ok: bool) -> bool:
        """``ok`` and-reduced over ranks, so that every rank steps or skips together."""
        return ok if self._trainer is None else bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _rollout_of(self, batch: PromptBatch) -> Rollout:
        if getattr(batch, "rollout", None) is None:
            raise ConfigError("the batch has no rollout: no RolloutCallback in the trainer; run through `python -m "
                              "lightning_dsrl` (which adds it from the `rollout:` section) or add one to trainer.callbacks")
        return batch.rollout

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self._rollout_of(batch)
        start = time.perf_counter()
        train_batch, batch_metrics = self.train_batch(rollout)
        t_logprobs = time.perf_counter() - start
        start = time.perf_counter()
        stats = self.update(train_batch, batch_metrics)
        t_update = time.perf_counter() - start
        self.rollouts_seen += 1
        flops_per_token, peak = model_flops(self.policy, self.lora is not None, self.device, self.trainer.precision)
        timings = {"timing/logprobs": t_logprobs, "timing/update": t_update,
                   "timing/optimizer": stats.optimizer_seconds,
                   **throughput(rollout, t_update, flops_per_token, self.update_settings.ppo_epochs, peak)}
        self._log_step(rollout, stats, timings)
        every = self.log_settings.log_samples_every_n_steps
        if every and (self.rollouts_seen - 1) % every == 0 and self.global_rank == 0 and isinstance(
                self.logger, TensorBoardLogger):
            self.logger.experiment.add_text("samples", samples_table(rollout), global_step=self.global_step)

    def _log_step(self, rollout: Rollout, stats: UpdateStats, timings: dict[str, float]) -> None:
        lr = float(self.optimizers().param_groups[0]["lr"])
        values = step_scalars(rollout, self.train_metrics, stats, self.counters, lr, timings)
        kw = {"on_step": True, "on_epoch": False, "batch_size": rollout.num_groups}
        self.log_dict(values, **kw)
        self.log("reward", values["train/reward_mean"], prog_bar=True, logger=False, **kw)
        self.log("pass@1", values["train/correct_rate"], prog_bar=True, logger=False, **kw)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self._rollout_of(batch)
        # of every row: with a sharded policy each rank runs the same passes
        entropy = self.scorer.per_token(self.policy, rollout, self.device, "entropy")
        self.evaluation.add(rollout, entropy, getattr(batch, "greedy", None), batch.counted)

    def on_validation_epoch_end(self) -> None:
        result = self.evaluation.finish(self.device)
        for name, value in result.values.items():  # equal on every rank; sync_dist only spares Lightning's warning
            self.log(name, value, prog_bar=name == "val/pass@1", sync_dist=True)
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is a broadcast: every rank
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        run = {"stage": str(self.trainer.state.fn.value) if self.trainer.state.fn else None,
               "model": self.spec.name_or_path,
               "ckpt_path": str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None,
               "global_step": int(self.global_step),
               "split": getattr(self.trainer.datamodule, "eval_split", None)}  # None: a dataloader without one
        experiment = self.logger.experiment if isinstance(self.logger, TensorBoardLogger) else None
        self.evaluation.write(result, run_dir, run, experiment,
                              print_table=self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING))

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()
