"""The records that flow between the parts: prompts, rewards, rollouts and losses.

    PromptDataModule --PromptBatch--> RolloutCallback --RolloutBatch--> RLModule --> Objective --> LossOutput

One typed record per hop, with tensor shapes written at each field. ``N = B * G`` is the number
of completions in a rollout (``B`` prompts, ``G`` completions each), ``P`` the padded prompt
length and ``L`` the padded completion length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_dsrl.functional.groups import group_index
from lightning_dsrl.padding import pad_columns

__all__ = ["PromptRecord", "PromptBatch", "RewardResult", "RolloutBatch", "LossOutput"]


@dataclass
class PromptRecord:
    """One problem: the text shown to the model and what its verifier needs.

    ``prompt`` is plain text; when ``chat`` is true it is sent as a user message through the
    tokenizer's chat template. ``answer`` is the reference answer (``None`` when the verifier
    needs none), ``meta`` holds task data such as CountDown's ``numbers`` and ``target``.
    """

    prompt: str
    answer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    chat: bool = False
    uid: int = -1


@dataclass
class PromptBatch:
    """What the dataloader yields: ``B`` prompt records; the rollout callback fills ``rollout``
    (and, in validation, ``greedy``)."""

    records: list[PromptRecord]
    rollout: RolloutBatch | None = None
    greedy: RolloutBatch | None = None  # validation: one greedy completion per prompt (for Potential@k)
    # [B] validation: False for a problem a rank repeats only to match the other ranks' batches (generated,
    # since a sharded forward is a collective, but left out of the metrics); None: every record counts
    counted: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class RewardResult:
    """A reward's answer for one completion.

    ``reward`` is the scalar that trains the policy; ``correct`` is the verifier's verdict, kept
    apart from format bonuses because DS-GRPO, R1-zero-Div, pass@k and the metrics need it
    (``None`` from rewards that are not verifiers, such as a format bonus). ``answer`` is the
    normalised extracted answer (an equation, a number) used by the diversity metrics.
    ``equations`` are the distinct normalised equations written in the completion, for Div-Equ
    (``None`` from rewards that do not extract them).
    """

    reward: float
    correct: bool | None = None
    answer: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    equations: tuple[str, ...] | None = None


@dataclass
class LossOutput:
    """An objective's result for one micro-batch: the loss to backpropagate and scalars to log."""

    loss: Tensor  # [] scalar, already divided by the minibatch totals (sum over micro-batches = minibatch loss)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # name -> [] detached scalars
    advantages: Tensor | None = None  # [n] detached, the per-sample advantages the loss used (after shaping)


@dataclass
class RolloutBatch:
    """``G`` completions for each of ``B`` prompts, scored, as tensors plus their texts.

    Built by :class:`~lightning_dsrl.rollout.callback.RolloutCallback`; ``logp_old``,
    ``logp_ref`` and ``advantages`` are filled by the module before the update.
    """

    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] bool, True on real prompt tokens
    completion_ids: Tensor  # [N, L] long, right-padded after EOS
    completion_mask: Tensor  # [N, L] bool, True on generated tokens (EOS included)
    group_ids: Tensor  # [N] long, one label per prompt; equal labels form a group
    rewards: Tensor  # [N] float32, total (weighted) reward
    correct: Tensor  # [N] bool, verifier verdict
    truncated: Tensor  # [N] bool, stopped by max_new_tokens rather than EOS / a stop string
    temperature: float = 1.0  # sampling temperature; log-probs are computed on logits / temperature
    max_new_tokens: int = 0  # the generation budget, the constant of ``seq-mean-token-sum-norm``
    logp_old: Tensor | None = None  # [N, L] float32, rollout policy log-probs (None: reuse the new ones)
    logp_ref: Tensor | None = None  # [N, L] float32, reference model log-probs
    sampler_logp: Tensor | None = None  # [N, L] float32, log-probs reported by the engine (vLLM)
    is_weights: Tensor | None = None  # [N, L] float32, truncated importance weights (model.tis_cap), per micro-batch
    advantages: Tensor | None = None  # [N] float32, group-level advantages from the objective
    reward_parts: dict[str, Tensor] = field(default_factory=dict)  # name -> [N] unweighted component rewards
    prompts: list[str] = field(default_factory=list)  # [N] prompt text of each completion
    completions: list[str] = field(default_factory=list)  # [N] decoded completion text
    answers: list[str | None] = field(default_factory=list)  # [N] normalised extracted answers
    equations: list[tuple[str, ...] | None] = field(default_factory=list)  # [N] equations written in each completion
    records: list[PromptRecord] = field(default_factory=list)  # [N] the prompt record of each completion
    totals: dict[str, float] = field(default_factory=dict)  # sizes of the parent minibatch, see ``total``

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def num_groups(self) -> int:
        return int(group_index(self.group_ids)[1].numel())

    def total(self, key: str) -> float:
        """Size of the minibatch this (micro-)batch belongs to, for exact gradient accumulation.

        ``"seqs"`` (completions), ``"tokens"`` (completion tokens) or ``"correct"`` (correct
        completions). A batch that was not split from a larger one answers with its own sizes.
        """
        if key in self.totals:
            return self.totals[key]
        return self._own_totals()[key]

    def _own_totals(self) -> dict[str, float]:
        return {
            "seqs": float(self.num_samples),
            "tokens": float(self.completion_mask.sum().item()),
            "correct": float(self.correct.sum().item()),
        }

    # ------------------------------------------------------------------ slicing
    def select(self, index: Tensor | list[int]) -> RolloutBatch:
        """The completions at ``index`` (a 1-D index or bool mask over ``N``), every field sliced."""
        index = torch.as_tensor(index, device=self.completion_ids.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        positions = index.tolist()
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value[index.to(value.device)]
            elif isinstance(value, list) and value:
                changes[f.name] = [value[i] for i in positions]
            elif isinstance(value, dict) and f.name == "reward_parts":
                changes[f.name] = {k: v[index.to(v.device)] for k, v in value.items()}
        changes["totals"] = {}
        return dataclasses.replace(self, **changes)

    def minibatches(self, num: int, generator: torch.Generator | None = None) -> list[RolloutBatch]:
        """Split into ``num`` minibatches of (nearly) equal size, shuffled when ``generator`` is given."""
        n = self.num_samples
        if not 1 <= num <= n:
            raise ValueError(f"cannot split {n} completions into {num} minibatches")
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        return [self.select(chunk) for chunk in torch.tensor_split(order, num)]

    def micro_batches(self, size: int) -> list[RolloutBatch]:
        """Consecutive chunks of at most ``size`` completions that remember this batch's totals."""
        if size < 1:
            raise ValueError(f"micro-batch size must be >= 1, got {size}")
        totals = self.totals or self._own_totals()
        out = []
        for start in range(0, self.num_samples, size):
            micro = self.select(torch.arange(start, min(start + size, self.num_samples)))
            micro.totals = dict(totals)
            out.append(micro)
        return out

    def trim(self) -> RolloutBatch:
        """Drop columns that are padding in every row: leading prompt columns and trailing
        completion columns (worth doing after slicing out a micro-batch)."""
        length = max(int(self.completion_mask.sum(-1).max().item()) if self.num_samples else 0, 1)
        prompt_width = int(self.prompt_mask.sum(-1).max().item()) if self.num_samples else 0
        changes: dict[str, Any] = {}
        if length < self.completion_ids.shape[1]:
            for name in ("completion_ids", "completion_mask", "logp_old", "logp_ref", "sampler_logp", "is_weights"):
                if getattr(self, name) is not None:
                    changes[name] = getattr(self, name)[:, :length]
        if prompt_width < self.prompt_ids.shape[1]:
            changes["prompt_ids"] = self.prompt_ids[:, self.prompt_ids.shape[1] - prompt_width :]
            changes["prompt_mask"] = self.prompt_mask[:, self.prompt_mask.shape[1] - prompt_width :]
        return dataclasses.replace(self, **changes) if changes else self

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_id: int = 0) -> RolloutBatch:
        """One batch holding the completions of ``batches`` in order, re-padded to the widest
        prompt (on the left) and completion (on the right); group labels are renumbered
        ``0..num_groups-1`` so groups of different batches stay apart. Sampling settings
        (``temperature``, ``max_new_tokens``) come from the first batch; ``totals`` are reset."""
        if not batches:
            raise ValueError("concat needs at least one RolloutBatch")
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
            "totals": {},
        }
        for name in ("logp_old", "logp_ref", "sampler_logp"):
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

    def to(self, device: torch.device | str) -> RolloutBatch:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.to(device)
            elif f.name == "reward_parts":
                changes[f.name] = {k: v.to(device) for k, v in value.items()}
        return dataclasses.replace(self, **changes)
