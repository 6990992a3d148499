"""What a training step logs: the rollout's rewards and metrics, the update's statistics, throughput,
and now and then a table of sample completions.

Every value is over all ranks' samples: per-completion values are all-gathered, the torchmetrics
states are reduced by torchmetrics, the update's means are reduced inside the update, and what is
left is averaged over the ranks that report it.
"""

from __future__ import annotations

import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from torch import nn

from lightning_dsrl.batches import Rollout
from lightning_dsrl.distributed import all_gather_objects, mean_over_ranks
from lightning_dsrl.functional import group_index
from lightning_dsrl.metrics import EvalReport, RolloutMetrics
from lightning_dsrl.update import StepCounters, UpdateStats

__all__ = ["step_scalars", "step_values", "model_flops", "throughput", "samples_table"]


def step_scalars(rollout: Rollout, metrics: RolloutMetrics, stats: UpdateStats, counters: StepCounters, lr: float,
                 timings: dict[str, float]) -> dict[str, float]:
    """Every scalar a training step logs, the same on every rank: :func:`step_values` with the rollout's
    metrics (``metrics`` holds the policy's token entropy from the update already; read and reset here),
    ``timings`` and the time this took (``timing/metrics``)."""
    start = time.perf_counter()
    metrics.update(rollout)
    report = metrics.compute()
    metrics.reset()
    values = {**step_values(rollout, report, stats, counters, lr), **timings}
    values["timing/metrics"] = time.perf_counter() - start
    # the rest: every rank holds the value already, or a rank mean (equal-sized rank batches)
    return mean_over_ranks(values)


def step_values(rollout: Rollout, report: EvalReport, stats: UpdateStats, counters: StepCounters, lr: float
                ) -> dict[str, float]:
    """``train/*``, ``passk/*``, ``diversity/*``, ``reward/*`` and ``rollout/logprob_diff`` of one step."""
    # per-completion values of every rank's rollout, so that the statistics are over all ranks' samples
    rows = torch.stack([rollout.rewards.float(), rollout.correct.float(), rollout.completion_mask.sum(-1).float(),
                        rollout.truncated.float()], dim=1).tolist()  # [N, 4]
    rewards, correct, lengths, truncated = torch.tensor(sum(all_gather_objects(rows), [])).reshape(-1, 4).T
    values = {
        "train/reward_mean": float(rewards.mean()),
        "train/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "train/correct_rate": float(correct.mean()),
        "train/completion_length": float(lengths.mean()),
        "train/truncated_fraction": float(truncated.mean()),
        "train/lr": lr,
        "train/skipped_steps": float(counters.skipped_steps),
        "train/zero_signal_steps": float(counters.zero_signal_steps),
    }
    values.update({f"passk/pass@{k}": v for k, v in zip(report.passk["k"], report.passk["value"])})
    for name, value in report.values.items():  # undefined ones (None) are left out of this step
        if value is not None and not name.startswith("mean@"):  # mean@G is train/correct_rate
            values[f"train/{name}" if name.startswith("entropy") else f"diversity/{name}"] = value
    values.update({f"reward/{k}": float(v.mean()) for k, v in rollout.reward_parts.items()})
    values.update({f"train/{k}": v for k, v in stats.metrics.items()})
    if stats.logprob_diff is not None:  # mean |trainer - engine| log-prob of the sampled tokens
        values["rollout/logprob_diff"] = stats.logprob_diff
    return values


def compute_dtype(precision: str, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in under a Lightning ``precision`` ("bf16-mixed", "16-true", "32-true", ...):
    mixed precision keeps fp32 weights but multiplies in 16 bits, so the weights' dtype alone is wrong."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return param_dtype


def model_flops(policy: nn.Module, lora: bool, device: torch.device, precision: str = "32-true"
                ) -> tuple[float, float | None]:
    """Training FLOPs per token of ``policy``, 6 x parameters (4 with LoRA, whose frozen weights get no weight
    gradient), and the device's peak FLOP/s in the compute dtype of ``precision`` from Lightning's table of
    accelerators (``get_available_flops``: GPUs and TPUs it knows; ``None`` on a CPU)."""
    flops_per_token = (4 if lora else 6) * sum(p.numel() for p in policy.parameters())
    if device.type == "cpu":
        return flops_per_token, None
    return flops_per_token, get_available_flops(device, compute_dtype(precision, next(policy.parameters()).dtype))


def throughput(rollout: Rollout, seconds: float, flops_per_token: float, passes: int, peak_flops: float | None
               ) -> dict[str, float]:
    """Trained tokens per second of the update and its model FLOP/s over the completion tokens and each
    group's prompt once, per pass over the rollout (``passes``: ``ppo_epochs``), and the MFU against
    ``peak_flops`` when known. This rank's share."""
    inverse, counts = group_index(rollout.group_ids)
    prompt_tokens = float((rollout.prompt_mask.sum(-1) / counts[inverse]).sum())
    completion_tokens = float(rollout.completion_mask.sum())
    seconds = max(seconds, 1e-9)
    flops = flops_per_token * (prompt_tokens + completion_tokens) * passes / seconds
    out = {"timing/trained_tokens_per_s": completion_tokens * passes / seconds,
           "timing/update_tflops_per_s": flops / 1e12}
    if peak_flops:
        out["timing/update_mfu"] = flops / peak_flops
    return out


def samples_table(rollout: Rollout, count: int = 4) -> str:
    """The first ``count`` completions with their prompts, rewards and verdicts, as a markdown table."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")[:400]

    rows = ["| prompt | completion | reward | correct |", "|---|---|---|---|"]
    for i in range(min(count, rollout.num_samples)):
        rows.append(f"| {cell(rollout.prompts[i])} | {cell(rollout.completions[i])} | "
                    f"{float(rollout.rewards[i]):.3f} | {bool(rollout.correct[i])} |")
    return "\n".join(rows)
