"""The ``model.*`` options of a config, grouped by the stage that reads them, each validated once.

The YAML and the command line stay flat (``model.learning_rate``, ``model.ppo_epochs``): LightningCLI
builds the options and their ``--help`` from ``RLModule.__init__``'s arguments, which hands them to
these dataclasses. A bad value raises one ``ConfigError`` naming the option and the fix. Where the
policy comes from is :class:`~lightning_dsrl.models.ModelSpec` and :class:`~lightning_dsrl.models.LoraSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_dsrl.errors import ConfigError

__all__ = ["ComputeSettings", "LoggingSettings", "OptimizerSettings", "UpdateSettings"]

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = 1e-6
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    lr_warmup_steps: int = 0
    """optimizer steps of linear warm-up from 0 to ``learning_rate``"""
    lr_schedule: str = "constant"
    """after warm-up: keep the rate (``constant``) or decay it to 0 at ``trainer.max_steps`` (``linear``, ``cosine``)"""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"model.learning_rate={self.learning_rate} must be > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"model.lr_schedule={self.lr_schedule!r}: use constant, linear or cosine")
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))

    def lr_factor(self, step: int, max_steps: int | None) -> float:
        """The multiple of ``learning_rate`` at optimizer step ``step`` of a run of ``max_steps`` (-1 or
        ``None``: unknown, no decay)."""
        if step < self.lr_warmup_steps:
            return (step + 1) / (self.lr_warmup_steps + 1)
        if self.lr_schedule == "constant" or max_steps is None or max_steps <= self.lr_warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.lr_warmup_steps) / (max_steps - self.lr_warmup_steps))
        return 1.0 - progress if self.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class UpdateSettings:
    """The optimizer steps taken on each rollout (:func:`lightning_dsrl.update.update`)."""

    ppo_epochs: int = 1
    """passes over each rollout"""
    minibatches: int = 1
    """optimizer steps per pass (the rollout is split into this many parts)"""
    micro_batch_size: int = 16
    """completions per forward/backward (gradient accumulation inside a minibatch)"""
    max_grad_norm: float | None = 1.0
    """clip the gradient norm to this (``None``: no clipping, the norm is still logged)"""
    max_nonfinite_steps: int = 5
    """stop after this many consecutive steps with a non-finite loss or gradient"""
    tis_cap: float | None = None
    """cap of the truncated importance weights ``pi_old / pi_sampler`` (``None``: off)"""

    def __post_init__(self) -> None:
        if self.ppo_epochs < 1 or self.minibatches < 1 or self.micro_batch_size < 1:
            raise ConfigError("model.ppo_epochs, model.minibatches and model.micro_batch_size must be >= 1")
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"model.max_nonfinite_steps={self.max_nonfinite_steps} must be >= 1")
        if self.tis_cap is not None and not self.tis_cap >= 1.0:
            raise ConfigError(f"model.tis_cap={self.tis_cap}: the importance-weight cap must be >= 1 (e.g. 2.0), "
                              "or null")

    @property
    def one_pass(self) -> bool:
        """One optimizer step per rollout: the old log-probs are then the policy's own, taken from the
        update's forward, and need no pass of their own."""
        return self.ppo_epochs == 1 and self.minibatches == 1


@dataclass(frozen=True)
class LoggingSettings:
    """What is logged besides the scalars every step, and how validation reports."""

    log_samples_every_n_steps: int = 25
    """a table of prompts, completions and rewards every this many rollouts (0: never)"""
    train_self_bleu: bool = True
    """log Self-BLEU of every rollout's groups (O(G^2) BLEU evaluations per group)"""
    val_bootstrap: int = 1000
    """resamples of the bootstrap interval of the validation pass@k curve (0: none)"""
    val_confidence: float = 0.95
    """coverage of that interval"""

    def __post_init__(self) -> None:
        if self.val_bootstrap < 0 or not 0 < self.val_confidence < 1:
            raise ConfigError(f"model.val_bootstrap={self.val_bootstrap} must be >= 0 and model.val_confidence="
                              f"{self.val_confidence} in (0, 1), e.g. 1000 and 0.95")


@dataclass(frozen=True)
class ComputeSettings:
    """How the forward passes run."""

    share_prompt_prefix: bool = True
    """run each group's prompt once in the log-prob and training passes (packed rows or a shared KV cache)"""
    cpu_threads: int | None = None
    """torch's intra-op threads when training on the CPU (``None``: torch's default, one per core)"""

    def __post_init__(self) -> None:
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"model.cpu_threads={self.cpu_threads} must be >= 1, or null for torch's default")
