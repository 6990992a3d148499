"""The batches of a training step, each built once and never filled in afterwards.

    PromptBatch  what the dataloader yields: prompt records (the rollout callback adds their rollout)
    Rollout      what the sampler drew and the rewards said: prompts, completions, rewards, verdicts
    TrainBatch   a Rollout plus what the module derives from it for the update: old and reference
                 log-probs, group advantages, the final advantages (after the objective's shaping)

``N = B * G`` completions (``B`` prompts, ``G`` completions each), ``P`` the padded prompt length,
``L`` the padded completion length. Slicing (``select``, ``minibatches``, ``micro_batches``, ``trim``)
and ``replace`` return new records; nothing here changes one in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_dsrl.functional.groups import group_index
from lightning_dsrl.padding import pad_columns
from lightning_dsrl.records import PromptRecord, SamplingParams

__all__ = ["PromptBatch", "Rollout", "TrainBatch"]

B = TypeVar("B", bound="Rollout")


@dataclass
class PromptBatch:
    """What the dataloader yields: ``B`` prompt records; the rollout callback fills ``rollout``
    (and, in validation, ``greedy``)."""

    records: list[PromptRecord]
    rollout: Rollout | None = None
    greedy: Rollout | None = None  # validation: one greedy completion per prompt (for Potential@k)
    # [B] validation: False for a problem a rank repeats only to match the other ranks' batches (generated,
    # since a sharded forward is a collective, but left out of the metrics); None: every record counts
    counted: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Rollout:
    """``G`` completions for each of ``B`` prompts, scored, as tensors plus their texts.

    Built by :class:`~lightning_dsrl.rollout.sampler.Sampler`, read by everything after it.
    """

    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] bool, True on real prompt tokens
    completion_ids: Tensor  # [N, L] long, right-padded after EOS
    completion_mask: Tensor  # [N, L] bool, True on generated tokens (EOS included)
    group_ids: Tensor  # [N] long, one label per prompt; equal labels form a group
    rewards: Tensor  # [N] float32, total (weighted) reward
    correct: Tensor  # [N] bool, verifier verdict
    truncated: Tensor  # [N] bool, stopped by max_new_tokens rather than EOS / a stop string
    sampling: SamplingParams = field(default_factory=SamplingParams)  # how the completions were drawn
    sampler_logp: Tensor | None = None  # [N, L] float32, log-probs reported by the engine (vLLM)
    reward_parts: dict[str, Tensor] = field(default_factory=dict)  # name -> [N] unweighted component rewards
    prompts: list[str] = field(default_factory=list)  # [N] prompt text of each completion
    completions: list[str] = field(default_factory=list)  # [N] decoded completion text
    answers: list[str | None] = field(default_factory=list)  # [N] normalised extracted answers
    equations: list[tuple[str, ...] | None] = field(default_factory=list)  # [N] equations written in each completion
    records: list[PromptRecord] = field(default_factory=list)  # [N] the prompt record of each completion

    # [N, L] fields cut by trim() and padded by concat() along with the completions
    _COMPLETION_COLUMNS = ("sampler_logp",)

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def num_groups(self) -> int:
        return int(group_index(self.group_ids)[1].numel())

    @property
    def temperature(self) -> float:
        """The sampling temperature; log-probs are computed on ``logits / temperature``."""
        return self.sampling.temperature

    @property
    def max_new_tokens(self) -> int:
        """The generation budget, the constant of ``seq-mean-token-sum-norm``."""
        return self.sampling.max_new_tokens

    # ------------------------------------------------------------------ new records from this one
    def replace(self: B, **changes: Any) -> B:
        return dataclasses.replace(self, **changes)

    def select(self: B, index: Tensor | list[int]) -> B:
        """The completions at ``index`` (a 1-D index or bool mask over ``N``), every field sliced."""
        index = torch.as_tensor(index, device=self.completion_ids.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        positions = index.tolist()
        return self._mapped(lambda t: t[index.to(t.device)], lambda values: [values[i] for i in positions])

    def _mapped(self: B, on_tensor: Callable[[Tensor], Tensor], on_list: Callable[[list], list] | None = None) -> B:
        """This record with ``on_tensor`` applied to every tensor (those of ``reward_parts`` included) and
        ``on_list`` to every non-empty per-completion list."""
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = on_tensor(value)
            elif f.name == "reward_parts":
                changes[f.name] = {k: on_tensor(v) for k, v in value.items()}
            elif on_list is not None and isinstance(value, list) and value:
                changes[f.name] = on_list(value)
        return dataclasses.replace(self, **changes)

    def minibatch_indices(self, num: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The rows of ``num`` minibatches of (nearly) equal size, shuffled when ``generator`` is given."""
        n = self.num_samples
        if not 1 <= num <= n:
            raise ValueError(f"cannot split {n} completions into {num} minibatches")
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return list(torch.tensor_split(order, num))

    def minibatches(self: B, num: int, generator: torch.Generator | None = None) -> list[B]:
        """Split into ``num`` minibatches of (nearly) equal size, shuffled when ``generator`` is given."""
        return [self.select(rows) for rows in self.minibatch_indices(num, generator)]

    def micro_batches(self: B, size: int) -> list[B]:
        """Consecutive chunks of at most ``size`` completions."""
        if size < 1:
            raise ValueError(f"micro-batch size must be >= 1, got {size}")
        return [self.select(torch.arange(start, min(start + size, self.num_samples)))
                for start in range(0, self.num_samples, size)]

    def trim(self: B) -> B:
        """Drop columns that are padding in every row: leading prompt columns and trailing
        completion columns (worth doing after slicing out a micro-batch)."""
        length = max(int(self.completion_mask.sum(-1).max().item()) if self.num_samples else 0, 1)
        prompt_width = int(self.prompt_mask.sum(-1).max().item()) if self.num_samples else 0
        changes: dict[str, Any] = {}
        if length < self.completion_ids.shape[1]:
            for name in ("completion_ids", "completion_mask", *self._COMPLETION_COLUMNS):
                if getattr(self, name) is not None:
                    changes[name] = getattr(self, name)[:, :length]
        if prompt_width < self.prompt_ids.shape[1]:
            changes["prompt_ids"] = self.prompt_ids[:, self.prompt_ids.shape[1] - prompt_width :]
            changes["prompt_mask"] = self.prompt_mask[:, self.prompt_mask.shape[1] - prompt_width :]
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def concat(cls: type[B], batches: list[B], pad_id: int = 0) -> B:
        """One record holding the completions of ``batches`` in order, re-padded to the widest
        prompt (on the left) and completion (on the right); group labels are renumbered
        ``0..num_groups-1`` so groups of different batches stay apart. The sampling settings come
        from the first batch."""
        if not batches:
            raise ValueError("concat needs at least one rollout")
        width_p = max(b.prompt_ids.shape[1] for b in batches)
        width_c = max(b.completion_ids.shape[1] for b in batches)
        groups, offset = [], 0
        for b in batches:
            dense, _ = group_index(b.group_ids)
            groups.append(dense + offset)
            offset += int(dense.max()) + 1 if dense.numel() else 0
        changes: dict[str, Any] = {
            "prompt_ids": torch.cat([pad_columns(b.prompt_ids, width_p, pad_id, True) for b in batches]),
            "prompt_mask": torch.cat([pad_columns(b.prompt_mask, width_p, False, True) for b in batches]),
            "completion_ids": torch.cat([pad_columns(b.completion_ids, width_c, pad_id, False) for b in batches]),
            "completion_mask": torch.cat([pad_columns(b.completion_mask, width_c, False, False) for b in batches]),
            "group_ids": torch.cat(groups),
        }
        for name in batches[0]._COMPLETION_COLUMNS:
            values = [getattr(b, name) for b in batches]
            if any(v is None for v in values) and any(v is not None for v in values):
                raise ValueError(f"concat: {name} is set on some batches but not on others")
            changes[name] = None if values[0] is None else torch.cat([pad_columns(v, width_c, 0.0, False) for v in values])
        for f in dataclasses.fields(batches[0]):
            value = getattr(batches[0], f.name)
            if f.name in changes:
                continue
            if isinstance(value, Tensor):
                changes[f.name] = torch.cat([getattr(b, f.name) for b in batches])
            elif isinstance(value, list):
                changes[f.name] = [x for b in batches for x in getattr(b, f.name)]
            elif f.name == "reward_parts":
                changes[f.name] = {k: torch.cat([b.reward_parts[k] for b in batches]) for k in value}
        return dataclasses.replace(batches[0], **changes)

    def to(self: B, device: torch.device | str) -> B:
        return self._mapped(lambda t: t.to(device))


@dataclass(frozen=True)
class TrainBatch(Rollout):
    """A rollout with what the update needs, derived by ``RLModule.train_batch`` once per rollout.

    ``advantages`` are the ones the loss uses, after the objective's per-sample shaping (DS-GRPO's
    smoothing, ...). They are known before the update when ``logp_old`` is (several passes over the
    rollout); with one pass, ``logp_old`` is the pass's own log-probs, so the objective shapes each
    micro-batch's advantages in the pass (``advantages`` is ``None`` here) and the update returns them.
    """

    logp_old: Tensor | None = None  # [N, L] float32, the rollout policy's log-probs (None: the pass's own)
    logp_ref: Tensor | None = None  # [N, L] float32, the reference model's log-probs
    group_advantages: Tensor | None = None  # [N] float32, Objective.group_advantages, once per rollout
    advantages: Tensor | None = None  # [N] float32, the final advantages (None: shaped in the one pass)
    is_weights: Tensor | None = None  # [N, L] float32, truncated importance weights (model.tis_cap), per micro-batch
    # the sizes of the minibatch this micro-batch is part of (seqs, tokens, correct), per rank: under data
    # parallelism the sum over ranks divided by their number (distributed.per_rank_sizes); None: its own
    minibatch_sizes: dict[str, float] | None = None

    _COMPLETION_COLUMNS = ("sampler_logp", "logp_old", "logp_ref", "is_weights")

    @classmethod
    def of(cls, rollout: Rollout, **fields: Any) -> TrainBatch:
        """``rollout`` with the training fields given (the rest ``None``)."""
        return cls(**{f.name: getattr(rollout, f.name) for f in dataclasses.fields(Rollout)}, **fields)

    def own_sizes(self) -> dict[str, float]:
        """This batch's completions, completion tokens and correct completions."""
        return {
            "seqs": float(self.num_samples),
            "tokens": float(self.completion_mask.sum().item()),
            "correct": float(self.correct.sum().item()),
        }

    def minibatch_size(self, key: str) -> float:
        """The size of the minibatch this micro-batch belongs to, for exact gradient accumulation:
        ``"seqs"`` (completions), ``"tokens"`` (completion tokens) or ``"correct"`` (correct completions).
        A batch that was not split from a larger one answers with its own sizes."""
        return (self.minibatch_sizes or self.own_sizes())[key]

    def total(self, key: str) -> float:
        """The old name of :meth:`minibatch_size`."""
        return self.minibatch_size(key)

    def select(self, index: Tensor | list[int]) -> TrainBatch:
        """The completions at ``index``, every field sliced; a selection has its own sizes."""
        return dataclasses.replace(super().select(index), minibatch_sizes=None)

    def micro_batches(self, size: int) -> list[TrainBatch]:
        """Consecutive chunks of at most ``size`` completions that keep this batch's sizes."""
        sizes = self.minibatch_sizes or self.own_sizes()
        return [dataclasses.replace(micro, minibatch_sizes=dict(sizes)) for micro in super().micro_batches(size)]

    @classmethod
    def concat(cls, batches: list[TrainBatch], pad_id: int = 0) -> TrainBatch:
        return dataclasses.replace(super().concat(batches, pad_id), minibatch_sizes=None)
