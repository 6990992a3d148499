"""``RLModule``: the policy, the reference model, the objective and the update loop.

One training step is one rollout batch (filled into the batch by the rollout callback):

    1. log-probs that stay fixed during the update, in micro-batches without gradient:
       ``logp_old`` (skipped when ``ppo_epochs == 1`` and ``minibatches == 1``: then it equals
       the policy's own log-probs, taken from the update's forward) and ``logp_ref`` (only when
       the objective needs the reference model);
    2. group advantages from the objective, once for the whole rollout;
    3. ``ppo_epochs x minibatches`` optimizer steps, each accumulating gradients over
       micro-batches of ``micro_batch_size`` completions, then clipping and stepping.

A step is skipped (no parameter and no optimizer state changes, but counted by Lightning so
``trainer.max_steps`` still ends the run) when its loss or gradient is not finite on any rank
(``train/skipped_steps``; the run stops after ``max_nonfinite_steps`` in a row) or when its
gradient is exactly zero, i.e. the objective found no signal in the batch
(``train/zero_signal_steps``): every advantage it produced was 0 and no other term (KL, entropy)
pulls. AdamW would otherwise still move the weights on momentum and weight decay.

Log-probs are taken from logits of completion positions only (``logits_to_keep``), one
micro-batch at a time, so no ``[N, L, V]`` tensor for the whole batch ever exists, and never
logits at prompt positions. Log-probs use the sampling temperature (``logits / T``), so they
describe the distribution the completions were drawn from.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_dsrl import functional as F
from lightning_dsrl import sharding
from lightning_dsrl.errors import ConfigError, TrainingError
from lightning_dsrl.logprobs import completion_logits
from lightning_dsrl.metrics import EvalReport, RolloutMetrics
from lightning_dsrl.metrics.plot import figure_to_array
from lightning_dsrl.metrics.report import format_table, sample_rows, write_eval
from lightning_dsrl.models import DEFAULT_MODEL, LoraSpec, ModelSpec, apply_lora, load_model, load_tokenizer
from lightning_dsrl.objectives import GRPO, Objective
from lightning_dsrl.resume import check_shapes, module_state, restore_module_state
from lightning_dsrl.types import PromptBatch, RolloutBatch

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
        lora: train LoRA adapters (``{r, alpha, dropout, target_modules}``) instead of every weight;
            the reference model is then the policy with adapters disabled, and checkpoints hold
            only the adapters (``None``: full fine-tuning).
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
        share_prompt_prefix: run each group's prompt once in the log-prob and training passes, with its
            completions packed behind it in one row (or sharing its KV cache), without padding between
            them (same values, less compute; :mod:`lightning_dsrl.logprobs`).
        val_bootstrap: resamples of the bootstrap confidence interval of the validation pass@k curve
            (over problems; 0: no interval).
        val_confidence: coverage of that interval.
        train_self_bleu: log Self-BLEU of every rollout's groups (``diversity/self_bleu``); it costs
            O(G^2) BLEU evaluations per group on the CPU (``timing/metrics``), so turn it off for large G.
            Validation always reports it.
        cpu_threads: torch's intra-op threads when training on the CPU (``None``: torch's default,
            one per core). A tiny model runs fastest on 1: its matrices are too small to split, and
            threads that spin-wait for each other slow down sharply on a busy machine (measured in
            the README: 256 CountDown rollouts took 2 s on one thread, 37 s on two, on 2 busy cores).
        tis_cap: truncated importance sampling for the engine/trainer mismatch (vLLM): the policy-gradient
            term of each token is weighted by ``min(pi_old / pi_sampler, tis_cap)``, from the engine's own
            log-probs (``null``: off; needs an engine that reports them). ``rollout/logprob_diff`` logs the
            mismatch whenever the engine reports log-probs.
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
        if ppo_epochs < 1 or minibatches < 1 or micro_batch_size < 1:
            raise ConfigError("model.ppo_epochs, model.minibatches and model.micro_batch_size must be >= 1")
        if max_nonfinite_steps < 1:
            raise ConfigError(f"model.max_nonfinite_steps={max_nonfinite_steps} must be >= 1")
        if learning_rate <= 0:
            raise ConfigError(f"model.learning_rate={learning_rate} must be > 0")
        if lr_schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"model.lr_schedule={lr_schedule!r}: use constant, linear or cosine")
        if tis_cap is not None and not tis_cap >= 1.0:
            raise ConfigError(f"model.tis_cap={tis_cap}: the importance-weight cap must be >= 1 (e.g. 2.0), or null")
        if val_bootstrap < 0 or not 0 < val_confidence < 1:
            raise ConfigError(f"model.val_bootstrap={val_bootstrap} must be >= 0 and model.val_confidence="
                              f"{val_confidence} in (0, 1), e.g. 1000 and 0.95")
        if cpu_threads is not None and cpu_threads < 1:
            raise ConfigError(f"model.cpu_threads={cpu_threads} must be >= 1, or null for torch's default")
        self.cpu_threads = cpu_threads
        self.spec = ModelSpec(name_or_path, gguf_file, torch_dtype, attn_implementation,
                              gradient_checkpointing, trust_remote_code)
        self.lora = lora
        self.objective = objective if objective is not None else GRPO()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.adam_betas = tuple(adam_betas)
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_schedule = lr_schedule
        self.ppo_epochs = ppo_epochs
        self.minibatches = minibatches
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.max_nonfinite_steps = max_nonfinite_steps
        self.log_samples_every_n_steps = log_samples_every_n_steps
        self.share_prompt_prefix = share_prompt_prefix
        self.tis_cap = tis_cap
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen reference model
        self.policy = None
        self.reference = None
        self.tokenizer = None
        # training: one rollout at a time (updated, read and reset every step); validation: the whole set
        self.train_metrics = RolloutMetrics(self_bleu=train_self_bleu)
        self.val_metrics = RolloutMetrics(bootstrap=val_bootstrap, confidence=val_confidence)
        self._val_rows: list[dict[str, Any]] = []
        self._val_sums: dict[str, float] = defaultdict(float)  # this rank's reward and correct sums, sample count
        self._nonfinite_in_a_row = 0
        self._skipped_steps = 0
        self._zero_signal_steps = 0
        self._rollouts_seen = 0
        self._shuffle = torch.Generator().manual_seed(0)
        self._logprob_diff: list[float] = [0.0, 0.0]  # sum of |logp_old - sampler_logp| over tokens, token count

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
        self._shard_models()

    def _shard_models(self) -> None:
        """FSDP2 (``FSDP2Strategy``/``ModelParallelStrategy``) or FSDP1 (``FSDPStrategy``): shard the policy
        and the reference here, as Lightning expects (see :mod:`lightning_dsrl.sharding`); DDP needs nothing."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        models = [m for m in (self.policy, self.reference) if m is not None]
        if isinstance(strategy, ModelParallelStrategy):
            if strategy.device_mesh["tensor_parallel"].size() != 1:
                raise ConfigError("trainer.strategy: tensor parallelism of the policy is not supported; use "
                                  "FSDP2Strategy (data_parallel over every device, tensor_parallel_size 1)")
            for model in models:
                sharding.shard_fsdp2(model, strategy.device_mesh["data_parallel"])
        elif isinstance(strategy, FSDPStrategy):
            self.policy = sharding.wrap_fsdp1(self.policy, strategy)
            if self.reference is not None:
                self.reference = sharding.wrap_fsdp1(self.reference, strategy)

    def setup(self, stage: str) -> None:
        from lightning_dsrl.rollout.callback import (
            RolloutCallback,  # the callback imports this module's types
        )

        callbacks = [cb for cb in self.trainer.callbacks if isinstance(cb, RolloutCallback)]
        if not callbacks:
            raise ConfigError("no RolloutCallback in the trainer: run through `python -m lightning_dsrl` (which adds "
                              "it from the `rollout:` section) or add one to trainer.callbacks")
        self.objective.check(callbacks[0].num_generations)
        if self.cpu_threads is not None and self.trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(self.cpu_threads)

    def on_fit_start(self) -> None:
        self._require_reference()  # the models exist now: fail before the first rollout, not in it

    def _require_reference(self) -> None:
        if self.objective.needs_reference and self.reference is None and self.lora is None:
            raise ConfigError(f"model.objective: {type(self.objective).__name__} needs the reference model but none "
                              "was loaded; build the module with this objective (configure_model loads the reference "
                              "when objective.needs_reference is true) or set beta: 0 / smoothing_model: old")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the reference model is the frozen base model: rebuilt from name_or_path, never saved
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self.lora is not None:  # the base weights are rebuilt from name_or_path too: keep the adapters only
            trainable = {f"policy.{n}" for n, p in self.policy.named_parameters() if p.requires_grad}
            for key in [k for k in state if k.startswith("policy.") and k not in trainable]:
                del state[key]
        # what scripts/export_merged.py needs to rebuild the model (plain types only)
        checkpoint["model_spec"] = dataclasses.asdict(self.spec)
        checkpoint["lora"] = dataclasses.asdict(self.lora) if self.lora is not None else None
        checkpoint["resume_state"] = module_state(self)  # RNG states of every rank, counters (exact resume)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        restore_module_state(self, checkpoint.get("resume_state"))

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``ConfigError`` for a checkpoint of another model (FSDP2Strategy calls it before it loads the weights)."""
        # loading is not strict (the reference, and with LoRA the base weights, are absent), so a
        # LoRA checkpoint into a full model or the reverse would load nothing: refuse it instead
        if "model_spec" in checkpoint and (checkpoint.get("lora") is None) != (self.lora is None):
            trained = "with" if checkpoint.get("lora") is not None else "without"
            raise ConfigError(f"the checkpoint was trained {trained} LoRA but model.lora is "
                              f"{'set' if self.lora is not None else 'null'}; use the run's own config "
                              "(its config.yaml) with --ckpt_path")
        check_shapes(self, checkpoint.get("state_dict", {}))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay,
                                      betas=self.adam_betas)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def _lr_factor(self, step: int) -> float:
        if step < self.lr_warmup_steps:
            return (step + 1) / (self.lr_warmup_steps + 1)
        if self.lr_schedule == "constant":
            return 1.0
        total = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if total is None or total <= self.lr_warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.lr_warmup_steps) / (total - self.lr_warmup_steps))
        return 1.0 - progress if self.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------ log-probs
    def completion_logprobs(self, model, batch: RolloutBatch, entropy: Literal["none", "detached", "grad"] = "none"
                            ) -> tuple[Tensor, Tensor | None]:
        """Log-probs ``[n, L]`` of the completion tokens under ``model``, and the token entropy
        ``[n, L]`` of its full distribution when asked (with or without gradient).

        Logits exist for completion positions only, one micro-batch at a time, and the prompt
        of a group runs once (see :mod:`lightning_dsrl.logprobs`). Padded positions are zero.
        """
        logits = completion_logits(model, batch, self.share_prompt_prefix)  # [n, L, V], one micro-batch only
        # float32 before the temperature: dividing bf16 logits rounds them to 8 bits of mantissa
        logits = logits.float()
        if batch.temperature != 1.0:
            logits = logits / batch.temperature
        mask = batch.completion_mask
        logp = F.token_logprobs(logits, batch.completion_ids).masked_fill(~mask, 0.0)  # [n, L] fp32
        if entropy == "none":
            return logp, None
        with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
            token_entropy = F.entropy_from_logits(logits).masked_fill(~mask, 0.0)
        return logp, token_entropy

    def _micro_indices(self, num_samples: int) -> list[tuple[Tensor, bool]]:
        """Index ranges of consecutive micro-batches, each with whether it is real; padded with repeats of
        the last range (``False``: run and discard) so every rank runs as many passes as the longest rank
        (a sharded forward is a collective, see :mod:`lightning_dsrl.sharding`)."""
        ranges = [(torch.arange(s, min(s + self.micro_batch_size, num_samples)), True)
                  for s in range(0, num_samples, self.micro_batch_size)]
        extra = sharding.passes_on_all_ranks(len(ranges), self.device) - len(ranges)
        return ranges + [(ranges[-1][0], False)] * extra

    @torch.no_grad()
    def _fixed_logprobs(self, model, rollout: RolloutBatch) -> Tensor:
        """``[N, L]`` log-probs without gradient, micro-batch by micro-batch."""
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        for index, real in self._micro_indices(rollout.num_samples):
            micro = rollout.select(index).trim()
            logp, _ = self.completion_logprobs(model, micro)
            if real:
                out[index.to(out.device), : logp.shape[1]] = logp
        return out

    def reference_logprobs(self, rollout: RolloutBatch) -> Tensor:
        """``[N, L]`` log-probs of the reference model: the frozen copy, or with LoRA the policy
        itself with its adapters disabled (in eval mode, like the copy)."""
        if self.lora is not None:
            was_training = self.policy.training
            self.policy.eval()
            try:
                with self.policy.disable_adapter():
                    return self._fixed_logprobs(self.policy, rollout)
            finally:
                self.policy.train(was_training)
        self._require_reference()
        return self._fixed_logprobs(self.reference, rollout)

    def prepare_rollout(self, rollout: RolloutBatch) -> RolloutBatch:
        """Fill ``logp_old`` (when it cannot be reused), ``logp_ref`` and ``advantages``."""
        if self.ppo_epochs > 1 or self.minibatches > 1:
            was_training = self.policy.training
            self.policy.eval()
            rollout.logp_old = self._fixed_logprobs(self.policy, rollout)
            self.policy.train(was_training)
        if self.objective.needs_reference:
            rollout.logp_ref = self.reference_logprobs(rollout)
        rollout.advantages = self.objective.group_advantages(rollout)
        return rollout

    # ------------------------------------------------------------------ training
    def _rollout_of(self, batch: PromptBatch) -> RolloutBatch:
        rollout = getattr(batch, "rollout", None)
        if rollout is None:
            raise RuntimeError("the batch has no rollout: RolloutCallback must run before the step "
                               "(use `python -m lightning_dsrl`, which adds it)")
        return rollout

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self._rollout_of(batch)
        start = time.perf_counter()
        rollout = self.prepare_rollout(rollout)
        t_logprobs = time.perf_counter() - start
        start = time.perf_counter()
        metrics = self.update(rollout)
        t_update = time.perf_counter() - start
        self._rollouts_seen += 1
        timings = {"timing/logprobs": t_logprobs, "timing/update": t_update, "timing/optimizer": self._t_optimizer,
                   **self._update_throughput(rollout, t_update)}
        self._log_rollout(rollout, metrics, timings)
        if self.log_samples_every_n_steps and (self._rollouts_seen - 1) % self.log_samples_every_n_steps == 0:
            self._log_samples(rollout)

    def _update_throughput(self, rollout: RolloutBatch, seconds: float) -> dict[str, float]:
        """Trained tokens per second of the update and its model FLOP/s: 6 x parameters per token (4 with LoRA,
        whose frozen weights get no weight gradient) over the completion tokens and each group's prompt once,
        per pass (``ppo_epochs``); MFU against the device's peak from Lightning's table of accelerators
        (``get_available_flops``: GPUs and TPUs it knows, never a CPU). This rank's share."""
        if not hasattr(self, "_flops_per_token"):
            params = sum(p.numel() for p in self.policy.parameters())
            self._flops_per_token = (4 if self.lora is not None else 6) * params
            dtype = next(self.policy.parameters()).dtype
            self._peak_flops = get_available_flops(self.device, dtype) if self.device.type != "cpu" else None
        _, inverse, counts = torch.unique(rollout.group_ids, return_inverse=True, return_counts=True)
        prompt_tokens = float((rollout.prompt_mask.sum(-1) / counts[inverse]).sum())
        completion_tokens = float(rollout.completion_mask.sum())
        seconds = max(seconds, 1e-9)
        flops = self._flops_per_token * (prompt_tokens + completion_tokens) * self.ppo_epochs / seconds
        out = {"timing/trained_tokens_per_s": completion_tokens * self.ppo_epochs / seconds,
               "timing/update_tflops_per_s": flops / 1e12}
        if self._peak_flops:
            out["timing/update_mfu"] = flops / self._peak_flops
        return out

    def update(self, rollout: RolloutBatch) -> dict[str, float]:
        """``ppo_epochs x minibatches`` optimizer steps on one rollout; returns averaged metrics."""
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        sums: dict[str, float] = defaultdict(float)
        weights: dict[str, float] = defaultdict(float)
        generator = self._shuffle if self.minibatches > 1 else None
        trained: list[tuple[Tensor, Tensor]] = []  # (group ids [n], advantages [n]) of each micro-batch, first epoch
        self._logprob_diff = [0.0, 0.0]
        self._t_optimizer = 0.0  # clipping, the optimizer and scheduler steps (the rest of the update: forward/backward)
        for epoch in range(self.ppo_epochs):
            for minibatch in rollout.minibatches(self.minibatches, generator):
                finite = True
                # with more than one process: the sizes of the minibatch over all ranks (exact data parallelism)
                minibatch.totals = sharding.global_totals(minibatch._own_totals(), self.device)
                micros = minibatch.micro_batches(self.micro_batch_size)
                extra = sharding.passes_on_all_ranks(len(micros), self.device) - len(micros)
                for position, micro in enumerate(micros + micros[-1:] * extra):
                    real = position < len(micros)  # False: a pass that only keeps the ranks' collectives in step
                    micro = micro.trim()
                    mode = "grad" if self.objective.needs_entropy else "detached"
                    logp, entropy = self.completion_logprobs(self.policy, micro, mode)
                    if micro.logp_old is None:
                        micro.logp_old = logp.detach()  # rho == 1 in value, the gradient of logp remains
                    self._sampler_correction(micro, count=real and epoch == 0)
                    out = self.objective(micro, logp, entropy)
                    # backward even on a non-finite loss: under DDP every rank must run the same
                    # collectives; the step is dropped below
                    self.manual_backward(out.loss if real else out.loss * 0.0)
                    if not real:
                        continue
                    if not torch.isfinite(out.loss):
                        finite = False
                        continue
                    weight = float(micro.num_samples)
                    sums["loss"] += float(out.loss.detach())  # micro shares add up to the minibatch's value
                    if "policy_loss" in out.metrics:
                        sums["policy_loss"] += float(out.metrics.pop("policy_loss"))
                    for name, value in out.metrics.items():
                        sums[name] += float(value) * weight
                        weights[name] += weight
                    if epoch == 0:  # the policy's entropy on its samples, each sample counted once
                        self.train_metrics.entropy.update(entropy.detach(), micro.completion_mask, micro.correct)
                        if out.advantages is not None:
                            trained.append((micro.group_ids, out.advantages))
                start = time.perf_counter()
                grad_norm = self._clip_gradients()
                if not self._on_all_ranks(finite and math.isfinite(grad_norm)):
                    self._skip_step(optimizer, nonfinite=True)
                else:
                    sums["grad_norm"] += grad_norm
                    weights["grad_norm"] += 1
                    self._nonfinite_in_a_row = 0
                    if grad_norm == 0.0:
                        self._skip_step(optimizer, nonfinite=False)
                    else:
                        optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                self._t_optimizer += time.perf_counter() - start
        if trained:  # groups whose advantages, as trained on, are all 0 (over every rank's groups)
            groups, advantages = (torch.cat(parts) for parts in zip(*trained))
            sums["zero_signal_groups"], weights["zero_signal_groups"] = F.groups_all_zero(advantages, groups)
        # rank r's minibatch loss is W S_r / T (see sharding.global_totals): over ranks they add up to W times the loss
        weights.update(dict.fromkeys(_LOSS_SHARES, float(self.ppo_epochs * self.minibatches)))
        # sample-weighted means over every rank's micro-batches (the loss: the global minibatch loss)
        sums, weights = sharding.sum_over_ranks(sums, self.device), sharding.sum_over_ranks(weights, self.device)
        return {name: sums[name] / weights[name] for name in sums if weights.get(name, 0) > 0}

    def _sampler_correction(self, micro: RolloutBatch, count: bool) -> None:
        """With engine log-probs (``sampler_logp``): accumulate ``rollout/logprob_diff`` and, with
        ``tis_cap``, set the truncated importance weights the objective applies."""
        if micro.sampler_logp is None:
            return
        mask = micro.completion_mask
        if count:
            self._logprob_diff[0] += float(((micro.logp_old - micro.sampler_logp).abs() * mask).sum())
            self._logprob_diff[1] += float(mask.sum())
        if self.tis_cap is not None:
            micro.is_weights = F.truncated_is_weights(micro.logp_old, micro.sampler_logp, self.tis_cap) * mask

    def _clip_gradients(self) -> float:
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        if sharding.is_fsdp1(self.policy):
            return sharding.clip_grad_norm_fsdp1(self.policy, max_norm)  # FSDP1: its own collective clip
        params = [p for p in self.policy.parameters() if p.grad is not None]
        return sharding.clip_grad_norm(params, max_norm)  # plain, DDP or FSDP2 (DTensor) gradients

    def _on_all_ranks(self, ok: bool) -> bool:
        """``ok`` and-reduced over ranks, so that every rank steps or skips together."""
        return ok if self._trainer is None else bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _skip_step(self, optimizer, nonfinite: bool) -> None:
        """Drop this step's gradients and step with none: AdamW leaves a parameter without a gradient
        (and its state) alone, while Lightning counts the step, so ``trainer.max_steps`` still ends the run."""
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        if not nonfinite:
            self._zero_signal_steps += 1
            return
        self._skipped_steps += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise TrainingError(
                f"{self._nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient; "
                "stopping. Lower model.learning_rate, check the reward scale, or use float32 "
                f"(model.max_nonfinite_steps={self.max_nonfinite_steps})"
            )

    # ------------------------------------------------------------------ logging
    def _log_rollout(self, rollout: RolloutBatch, update: dict[str, float], timings: dict[str, float]) -> None:
        start = time.perf_counter()
        self.train_metrics.update(rollout)  # the token entropy was added during the update
        report = self.train_metrics.compute()
        self.train_metrics.reset()
        # per-completion values of every rank's rollout, so that the statistics are over all ranks' samples
        rows = torch.stack([rollout.rewards.float(), rollout.correct.float(), rollout.completion_mask.sum(-1).float(),
                            rollout.truncated.float()], dim=1).tolist()  # [N, 4]
        rewards, correct, lengths, truncated = torch.tensor(sum(sharding.all_gather_objects(rows), [])).reshape(-1, 4).T
        correct_rate = float(correct.mean())
        values = {
            "train/reward_mean": float(rewards.mean()),
            "train/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "train/correct_rate": correct_rate,
            "train/completion_length": float(lengths.mean()),
            "train/truncated_fraction": float(truncated.mean()),
            "train/lr": float(self.optimizers().param_groups[0]["lr"]),
            "train/skipped_steps": float(self._skipped_steps),
            "train/zero_signal_steps": float(self._zero_signal_steps),
        }
        values.update({f"passk/pass@{k}": v for k, v in zip(report.passk["k"], report.passk["value"])})
        for name, value in report.values.items():  # undefined ones (None) are left out of this step
            if value is not None and not name.startswith("mean@"):  # mean@G is train/correct_rate
                values[f"train/{name}" if name.startswith("entropy") else f"diversity/{name}"] = value
        values.update({f"reward/{k}": float(v.mean()) for k, v in rollout.reward_parts.items()})
        values.update({f"train/{k}": v for k, v in update.items()})
        if self._logprob_diff[1] > 0:  # mean |trainer - engine| log-prob of the sampled tokens
            values["rollout/logprob_diff"] = self._logprob_diff[0] / self._logprob_diff[1]
        values.update(timings)
        values["timing/metrics"] = time.perf_counter() - start
        values = _mean_over_ranks(values)  # the rest: every rank holds the value already, or a rank mean
        kw = {"on_step": True, "on_epoch": False, "batch_size": rollout.num_groups}
        self.log_dict(values, **kw)
        self.log("reward", values["train/reward_mean"], prog_bar=True, logger=False, **kw)
        self.log("pass@1", correct_rate, prog_bar=True, logger=False, **kw)

    def _log_samples(self, rollout: RolloutBatch, count: int = 4) -> None:
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or self.global_rank != 0:
            return
        rows = ["| prompt | completion | reward | correct |", "|---|---|---|---|"]

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", "<br>")[:400]

        for i in range(min(count, rollout.num_samples)):
            rows.append(f"| {cell(rollout.prompts[i])} | {cell(rollout.completions[i])} | "
                        f"{float(rollout.rewards[i]):.3f} | {bool(rollout.correct[i])} |")
        logger.experiment.add_text("samples", "\n".join(rows), global_step=self.global_step)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def sample_entropy(self, rollout: RolloutBatch) -> Tensor:
        """``[N, L]`` entropy of the policy's full next-token distribution (at the sampling
        temperature) at every completion position, micro-batch by micro-batch, without gradient."""
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        for index, real in self._micro_indices(rollout.num_samples):
            micro = rollout.select(index).trim()
            _, entropy = self.completion_logprobs(self.policy, micro, entropy="detached")
            if real:
                out[index.to(out.device), : entropy.shape[1]] = entropy
        return out

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self._rollout_of(batch)
        greedy = getattr(batch, "greedy", None)
        entropy = self.sample_entropy(rollout)  # of every row: with a sharded policy each rank runs the same passes
        if batch.counted is not None and not all(batch.counted):  # drop the problems this rank only repeats
            counted = torch.tensor(batch.counted, device=rollout.group_ids.device)
            keep = counted[rollout.group_ids]  # [N]
            rollout, entropy = rollout.select(keep), entropy[keep]
            greedy = greedy.select(counted[greedy.group_ids]) if greedy is not None else None
        # one greedy completion per group, put in the sorted group order the metrics use
        greedy_correct = greedy.correct[torch.argsort(greedy.group_ids)] if greedy is not None else None
        self.val_metrics.update(rollout, entropy=entropy, greedy_correct=greedy_correct)
        self._val_rows.extend(sample_rows(rollout, greedy))
        self._val_sums["reward"] += float(rollout.rewards.sum())
        self._val_sums["correct"] += float(rollout.correct.sum())
        self._val_sums["samples"] += rollout.num_samples

    def on_validation_epoch_end(self) -> None:
        report = self.val_metrics.compute()  # synced across processes
        self.val_metrics.reset()
        rows = self._gather_rows()
        sums, self._val_sums = sharding.sum_over_ranks(self._val_sums, self.device), defaultdict(float)
        values = {f"val/{name}": value for name, value in report.scalars().items()}
        if sums.get("samples"):  # over every rank's problems, each once: the same value on every rank
            values["val/reward_mean"] = sums["reward"] / sums["samples"]
            values["val/correct_rate"] = sums["correct"] / sums["samples"]
        for name, value in values.items():  # equal on every rank; sync_dist only spares Lightning's warning
            self.log(name, value, prog_bar=name == "val/pass@1", sync_dist=True)
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is a broadcast: every rank
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        self._write_eval(report, rows, run_dir)

    def _gather_rows(self) -> list[dict[str, Any]]:
        """The sample rows of every process in the order of the problems: rank ``r``'s ``j``-th problem is
        problem ``r + j * world_size`` of the set (``EvalSampler``). Texts travel as Python objects."""
        rows, self._val_rows = self._val_rows, []
        parts = sharding.all_gather_objects(rows)
        return [part[j] for j in range(max(map(len, parts))) for part in parts if j < len(part)]

    def _eval_settings(self) -> dict[str, Any]:
        from lightning_dsrl.rollout.callback import RolloutCallback

        callback = next((cb for cb in self.trainer.callbacks if isinstance(cb, RolloutCallback)), None)
        sampling = callback.val_sampling if callback is not None else None
        return {
            "stage": str(self.trainer.state.fn.value) if self.trainer.state.fn else None,
            "model": self.spec.name_or_path,
            "ckpt_path": str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None,
            "global_step": int(self.global_step),
            "split": getattr(self.trainer.datamodule, "eval_split", None),  # None: a dataloader without one
            "samples_per_problem": sampling.n if sampling else None,
            "temperature": sampling.temperature if sampling else None,
            "top_p": sampling.top_p if sampling else None,
            "top_k": sampling.top_k if sampling else None,
            "max_new_tokens": sampling.max_new_tokens if sampling else None,
            "greedy": bool(callback is not None and callback.val_greedy),
            "bootstrap": self.val_metrics.passk.bootstrap,
        }

    def _write_eval(self, report: EvalReport, rows: list[dict[str, Any]], run_dir: Path) -> None:
        """``eval/`` files in the run directory, the curve as a TensorBoard image, and (in
        ``validate``/``test``) the table on the console."""
        label = f"{run_dir.parent.name}/{run_dir.name}"
        paths, figure = write_eval(run_dir / "eval", report, rows, self._eval_settings(), label=label)
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_image("val/passk_curve", figure_to_array(figure), self.global_step,
                                             dataformats="HWC")
        if self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            print(f"\n{format_table(report)}\n\nwritten: {paths['metrics.json'].parent}/"
                  "{metrics.json,samples.jsonl,passk.png}", flush=True)

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()


# values normalised by the minibatch totals (Objective.aggregate): logged as the sum over micro-batches, the
# minibatch loss, averaged over minibatches and epochs; every other objective metric is a sample-weighted mean
_LOSS_SHARES = ("loss", "policy_loss")


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each scalar averaged over the ranks that report it (one object all-gather per step; ranks may
    report different keys, e.g. DS-GRPO's term on correct completions when a rank has none). Equal-sized
    rank batches make the mean of rank means the mean over all samples; the pass@k and diversity values
    come from torchmetrics states already reduced over ranks, so every rank holds the same value."""
    gathered = sharding.all_gather_objects(values)
    if len(gathered) == 1:
        return values
    keys = dict.fromkeys(k for part in gathered for k in part)  # first-seen order
    return {k: sum(p[k] for p in gathered if k in p) / sum(1 for p in gathered if k in p) for k in keys}
