"""The update: ``ppo_epochs x minibatches`` optimizer steps on one training batch.

    for each epoch, for each minibatch (shuffled when there are several):
        sizes   <- the minibatch's completions, tokens and correct completions, per rank (distributed.py)
        for each micro-batch of micro_batch_size completions (every rank runs as many):
            logp, entropy <- the policy's forward (scoring.py)
            logp_old      <- logp.detach() when the batch has none (one pass: rho == 1 in value)
            is_weights    <- min(pi_old / pi_sampler, tis_cap) when the engine reports log-probs
            loss          <- objective(micro, logp, entropy); backward
        clip the gradient, then step, or skip the step

A step is skipped (no parameter and no optimizer state changes, but counted by Lightning so
``trainer.max_steps`` still ends the run) when its loss or gradient is not finite on any rank
(``train/skipped_steps``; the run stops after ``max_nonfinite_steps`` in a row) or when its
gradient is exactly zero, i.e. the objective found no signal in the batch
(``train/zero_signal_steps``): every advantage it produced was 0 and no other term (KL, entropy)
pulls. AdamW would otherwise still move the weights on momentum and weight decay.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_dsrl.distributed import per_rank_sizes, sum_over_ranks
from lightning_dsrl.errors import TrainingError
from lightning_dsrl.functional import groups_all_zero, truncated_is_weights
from lightning_dsrl.metrics import TokenEntropy
from lightning_dsrl.objectives import Objective
from lightning_dsrl.scoring import Scorer, micro_batches_on_all_ranks
from lightning_dsrl.settings import UpdateSettings
from lightning_dsrl.sharding import clip_policy_gradients
from lightning_dsrl.types import TrainBatch

__all__ = ["StepCounters", "UpdateStats", "update"]

# values normalised by the minibatch sizes (Objective.aggregate): logged as the sum over micro-batches, the
# minibatch loss, averaged over minibatches and epochs; every other objective metric is a sample-weighted mean
_LOSS_SHARES = ("loss", "policy_loss")


@dataclass
class StepCounters:
    """What the update counts across rollouts (saved in checkpoints for an exact resume)."""

    skipped_steps: int = 0  # steps with a non-finite loss or gradient, not applied
    zero_signal_steps: int = 0  # steps with an exactly-zero gradient, not applied
    nonfinite_in_a_row: int = 0  # the current run of non-finite steps (model.max_nonfinite_steps)


@dataclass(frozen=True)
class UpdateStats:
    """What one update did."""

    metrics: dict[str, float]  # loss, policy_loss, grad_norm, the objective's metrics, zero_signal_groups
    advantages: Tensor  # [N] the final advantages, as trained on (after the objective's shaping), batch row order
    trained: Tensor  # [N] bool, completions of the first pass whose micro-batch loss was finite
    optimizer_seconds: float  # clipping, the optimizer and scheduler steps (the rest: forward/backward)
    logprob_diff: float | None = None  # mean |logp_old - sampler_logp| over sampled tokens (engine log-probs)


def update(batch: TrainBatch, *, objective: Objective, policy: nn.Module, scorer: Scorer, settings: UpdateSettings,
           optimizer, scheduler, backward: Callable[[Tensor], None], on_all_ranks: Callable[[bool], bool],
           counters: StepCounters, shuffle: torch.Generator, device: torch.device,
           batch_metrics: dict[str, Tensor] | None = None, entropy_metric: TokenEntropy | None = None) -> UpdateStats:
    """``settings.ppo_epochs x settings.minibatches`` optimizer steps on ``batch``; returns what they did.

    ``backward`` is Lightning's ``manual_backward``; ``on_all_ranks`` and-reduces a decision over ranks so
    that every rank steps or skips together. ``batch_metrics`` (the objective's metrics of the whole
    batch, e.g. of its group advantages) are averaged in like a micro-batch's of the batch's size.
    ``entropy_metric`` receives the policy's token entropy on its samples, each sample once.
    """
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for name, value in (batch_metrics or {}).items():
        sums[name] += float(value) * batch.num_samples
        weights[name] += batch.num_samples
    # [N] on the CPU: the final advantages (known already, or filled in by the one pass) and which were trained on
    advantages = batch.advantages.detach().cpu().clone() if batch.advantages is not None else torch.zeros(batch.num_samples)
    trained = torch.zeros(batch.num_samples, dtype=torch.bool)
    diff = [0.0, 0.0]  # sum of |logp_old - sampler_logp| over tokens, token count
    optimizer_seconds = 0.0
    generator = shuffle if settings.minibatches > 1 else None
    for epoch in range(settings.ppo_epochs):
        for rows in batch.minibatch_indices(settings.minibatches, generator):
            minibatch = batch.select(rows)
            # with more than one process: the sizes of the minibatch over all ranks (exact data parallelism)
            minibatch = minibatch.replace(minibatch_sizes=per_rank_sizes(minibatch.own_sizes(), device))
            finite, start = True, 0
            for micro, real in micro_batches_on_all_ranks(minibatch, settings.micro_batch_size, device):
                # real == False: a pass that only keeps the ranks' collectives in step
                mode = "grad" if objective.needs_entropy else "detached"
                logp, entropy = scorer.logprobs(policy, micro, mode)
                if micro.logp_old is None:
                    micro = micro.replace(logp_old=logp.detach())  # rho == 1 in value, the gradient of logp remains
                if micro.sampler_logp is not None:
                    mask = micro.completion_mask
                    if real and epoch == 0:
                        diff[0] += float(((micro.logp_old - micro.sampler_logp).abs() * mask).sum())
                        diff[1] += float(mask.sum())
                    if settings.tis_cap is not None:
                        micro = micro.replace(is_weights=truncated_is_weights(micro.logp_old, micro.sampler_logp,
                                                                              settings.tis_cap) * mask)
                out = objective(micro, logp, entropy)
                # backward even on a non-finite loss: under DDP every rank must run the same
                # collectives; the step is dropped below
                backward(out.loss if real else out.loss * 0.0)
                if not real:
                    continue
                micro_rows = rows[start : start + micro.num_samples]
                start += micro.num_samples
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
                if epoch == 0:  # each sample counted once
                    if entropy_metric is not None:  # the policy's entropy on its samples
                        entropy_metric.update(entropy.detach(), micro.completion_mask, micro.correct)
                    if out.advantages is not None:  # None: an objective whose forward does not report them
                        advantages[micro_rows] = out.advantages.cpu()
                        trained[micro_rows] = True
            start_step = time.perf_counter()
            grad_norm = clip_policy_gradients(policy, settings.max_grad_norm)
            if not on_all_ranks(finite and math.isfinite(grad_norm)):
                _skip_step(optimizer, counters, settings, nonfinite=True)
            else:
                sums["grad_norm"] += grad_norm
                weights["grad_norm"] += 1
                counters.nonfinite_in_a_row = 0
                if grad_norm == 0.0:
                    _skip_step(optimizer, counters, settings, nonfinite=False)
                else:
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            optimizer_seconds += time.perf_counter() - start_step
    if trained.any():  # groups whose advantages, as trained on, are all 0 (over every rank's groups)
        sums["zero_signal_groups"], weights["zero_signal_groups"] = groups_all_zero(
            advantages[trained], batch.group_ids.cpu()[trained])
    # rank r's minibatch loss is W S_r / T (see distributed.per_rank_sizes): over ranks they add up to W times the loss
    weights.update(dict.fromkeys(_LOSS_SHARES, float(settings.ppo_epochs * settings.minibatches)))
    # sample-weighted means over every rank's micro-batches (the loss: the global minibatch loss)
    sums, weights = sum_over_ranks(sums, device), sum_over_ranks(weights, device)
    return UpdateStats(
        metrics={name: sums[name] / weights[name] for name in sums if weights.get(name, 0) > 0},
        advantages=advantages, trained=trained, optimizer_seconds=optimizer_seconds,
        logprob_diff=diff[0] / diff[1] if diff[1] > 0 else None,
    )


def _skip_step(optimizer, counters: StepCounters, settings: UpdateSettings, nonfinite: bool) -> None:
    """Drop this step's gradients and step with none: AdamW leaves a parameter without a gradient
    (and its state) alone, while Lightning counts the step, so ``trainer.max_steps`` still ends the run."""
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()
    if not nonfinite:
        counters.zero_signal_steps += 1
        return
    counters.skipped_steps += 1
    counters.nonfinite_in_a_row += 1
    if counters.nonfinite_in_a_row >= settings.max_nonfinite_steps:
        raise TrainingError(
            f"{counters.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient; "
            "stopping. Lower model.learning_rate, check the reward scale, or use float32 "
            f"(model.max_nonfinite_steps={settings.max_nonfinite_steps})"
        )
