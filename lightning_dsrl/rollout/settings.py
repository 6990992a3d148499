"""The ``rollout.*`` options of a config, grouped, each validated once (the YAML stays flat: LightningCLI
builds the options from ``RolloutCallback.__init__``, which hands them to these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.types import SamplingParams

__all__ = ["DynamicSampling", "SamplingSettings", "SyncCheck"]


@dataclass(frozen=True)
class SamplingSettings:
    """How training and validation sample."""

    num_generations: int = 8
    """completions per prompt (G, the group size)"""
    temperature: float = 1.0
    """sampling temperature (log-probs are computed at the same temperature)"""
    top_p: float = 1.0
    """must stay 1.0 in training: the trainer's log-probs are of the full distribution"""
    top_k: int = 0
    """must stay 0 in training (see top_p)"""
    max_new_tokens: int = 64
    """generation budget per completion"""
    stop: list[str] = field(default_factory=list)
    """strings that end a completion (kept in the text)"""
    val_num_generations: int = 16
    """samples per prompt in validation (pass@k is reported up to this k)"""
    val_temperature: float = 1.0
    """sampling temperature in validation"""
    val_top_p: float = 1.0
    """nucleus threshold in validation (1.0: off)"""
    val_top_k: int = 0
    """top-k sampling in validation (0: off)"""
    val_greedy: bool = True
    """also decode one greedy completion per validation prompt (Potential@k)"""

    def __post_init__(self) -> None:
        if self.num_generations < 1 or self.val_num_generations < 1:
            raise ConfigError("rollout.num_generations and rollout.val_num_generations must be >= 1")
        if self.temperature <= 0 or self.val_temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0 (greedy decoding is not a sampling policy)")
        if self.top_p != 1.0 or self.top_k != 0:
            option = f"rollout.top_p={self.top_p}" if self.top_p != 1.0 else f"rollout.top_k={self.top_k}"
            raise ConfigError(f"{option}: training samples from the full distribution (the trainer's log-probs "
                              "ignore truncation, so ratios and log-likelihoods would be wrong); use top_p: 1.0 and "
                              "top_k: 0, or truncate validation only with rollout.val_top_p / val_top_k")
        if not 0 < self.val_top_p <= 1:
            raise ConfigError(f"rollout.val_top_p={self.val_top_p}: must be in (0, 1]")
        if self.val_top_k < 0:
            raise ConfigError(f"rollout.val_top_k={self.val_top_k}: must be >= 0 (0: off)")
        if self.max_new_tokens < 1:
            raise ConfigError("rollout.max_new_tokens must be >= 1")

    def train(self) -> SamplingParams:
        return SamplingParams(self.num_generations, self.temperature, self.top_p, self.top_k, self.max_new_tokens,
                              list(self.stop))

    def validation(self) -> SamplingParams:
        return SamplingParams(self.val_num_generations, self.val_temperature, self.val_top_p, self.val_top_k,
                              self.max_new_tokens, list(self.stop))

    def greedy(self) -> SamplingParams:
        return SamplingParams(1, 1.0, 1.0, 0, self.max_new_tokens, list(self.stop), greedy=True)


@dataclass(frozen=True)
class DynamicSampling:
    """DAPO's dynamic sampling (:mod:`lightning_dsrl.rollout.dynamic`)."""

    enabled: bool = False
    """replace groups whose completions are all correct or all wrong by groups for fresh prompts"""
    max_resample_rounds: int = 3
    """at most this many extra generation rounds of ``data.batch_size`` fresh prompts each"""

    def __post_init__(self) -> None:
        if self.max_resample_rounds < 0:
            raise ConfigError(f"rollout.max_resample_rounds={self.max_resample_rounds}: must be >= 0")


@dataclass(frozen=True)
class SyncCheck:
    """The probe of an engine with its own weights after each weight sync (:mod:`lightning_dsrl.rollout.sync`)."""

    mode: str = "raise"
    """``raise`` (stop the run), ``warn`` or ``off`` when the engine's log-probs differ from the trainer's"""
    tolerance: float = 1e-3
    """the largest accepted |engine - trainer| log-prob of a probe token (nats)"""

    def __post_init__(self) -> None:
        if self.mode not in ("raise", "warn", "off"):
            raise ConfigError(f"rollout.sync_check={self.mode!r}: use raise, warn or off")
        if not self.tolerance > 0:
            raise ConfigError(f"rollout.sync_tolerance={self.tolerance}: give a log-prob difference > 0, e.g. 1e-3")
