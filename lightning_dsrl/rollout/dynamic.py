"""DAPO's dynamic sampling: a rollout's groups without signal replaced by groups for fresh prompts.

DAPO filters on accuracy: a group whose completions are all correct or all wrong has ``A_i = 0``
under GRPO whatever its format bonuses, so it is dropped, and the batch is filled back to its number
of groups from fresh training prompts, in rounds of at most ``batch`` prompts each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dsrl.functional import group_has_spread
from lightning_dsrl.rollout.engine import EngineOwner
from lightning_dsrl.rollout.sampler import Sampler
from lightning_dsrl.types import PromptRecord, Rollout, SamplingParams

__all__ = ["refill"]


def _groups_all_correct(rollout: Rollout, dropped: Tensor) -> int:
    """How many of the groups marked by ``dropped`` (``[N]`` bool, whole groups) are all correct."""
    return int(torch.unique(rollout.group_ids[dropped & rollout.correct.bool()]).numel())


def refill(sampler: Sampler, owner: EngineOwner, rollout: Rollout, records: list[PromptRecord],
           sampling: SamplingParams, step: int, max_rounds: int) -> tuple[Rollout, dict[str, float]]:
    """The groups of ``rollout`` whose verdicts differ, then groups for fresh ``records`` (drawn without
    replacement in an order seeded by ``(torch.initial_seed(), step, round)``: reproducible, also after a
    resume) until the batch has its number of groups again or ``max_rounds`` rounds are spent. A batch
    still short trains on the groups it has (on ``rollout`` itself if no group has mixed verdicts).
    Returns the rollout and what happened (``rollout/dynamic_*``: dropped groups, of which all correct)."""
    wanted = rollout.num_groups
    keep = group_has_spread(rollout.correct.float(), rollout.group_ids)  # [N]
    parts = [rollout.select(keep)] if keep.any() else []
    have = parts[0].num_groups if parts else 0
    dropped, rounds = wanted - have, 0
    dropped_correct = _groups_all_correct(rollout, ~keep)
    tried = {r.prompt for r in rollout.records}  # never draw a prompt already in this step
    while have < wanted and rounds < max_rounds:
        rounds += 1
        seed = ((torch.initial_seed() * 1_000_003 + step) * 1_009 + rounds) % 2**63
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
        fresh = [records[i] for i in order if records[i].prompt not in tried][:wanted]
        if not fresh:
            break
        tried.update(r.prompt for r in fresh)
        extra, _ = sampler.sample(owner, fresh, sampling)
        mixed = group_has_spread(extra.correct.float(), extra.group_ids)  # [N]
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
    return Rollout.concat(parts, pad_id=owner.tokenizer.pad_token_id), stats
