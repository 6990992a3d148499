"""The maths of the framework as small pure torch functions (see ``ALGORITHMS.md``).

Every objective and metric composes these; each docstring gives the equation it implements.
Conventions: ``N`` completions, ``L`` completion positions; ``group_ids`` are arbitrary integer
labels (unsorted, with gaps); masks may be bool or 0/1 float; nothing here clamps or dual-clips
unless it says so (those are objective options on top).

    groups.py       group_index, group_counts, group_has_spread, groups_all_zero
    advantages.py   group_advantages (GRPO), ds_advantages (DS-GRPO), passk_advantages, sequence_logprob
    losses.py       clipped_policy_loss, clip_fraction, kl_k3, truncated_is_weights, sampled_entropy
    reductions.py   masked_sum, masked_mean, aggregate (the loss aggregation modes)
    estimators.py   token_logprobs, entropy_from_logits, pass_at_k
"""

from lightning_dsrl.functional.advantages import (
    REDUCTIONS,
    ScaleMode,
    ds_advantages,
    group_advantages,
    passk_advantages,
    sequence_logprob,
)
from lightning_dsrl.functional.estimators import entropy_from_logits, pass_at_k, token_logprobs
from lightning_dsrl.functional.groups import (
    group_counts,
    group_has_spread,
    group_index,
    group_positions,
    groups_all_zero,
)
from lightning_dsrl.functional.losses import (
    clip_fraction,
    clipped_policy_loss,
    kl_k3,
    sampled_entropy,
    truncated_is_weights,
)
from lightning_dsrl.functional.reductions import AGG_MODES, AggMode, aggregate, masked_mean, masked_sum

__all__ = [
    "AGG_MODES",
    "REDUCTIONS",
    "AggMode",
    "ScaleMode",
    "aggregate",
    "clip_fraction",
    "clipped_policy_loss",
    "ds_advantages",
    "entropy_from_logits",
    "group_advantages",
    "group_counts",
    "group_has_spread",
    "group_index",
    "group_positions",
    "groups_all_zero",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "pass_at_k",
    "passk_advantages",
    "sampled_entropy",
    "sequence_logprob",
    "token_logprobs",
    "truncated_is_weights",
]
