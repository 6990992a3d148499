"""Rollout / TrainBatch slicing: select, minibatches, micro-batches that remember their minibatch's sizes,
trim; and records that cannot be changed in place."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_dsrl.types import TrainBatch


def make_batch() -> TrainBatch:
    # 4 completions (2 groups of 2); prompt widths 2 and 3 (left-padded to 3); completion lengths 1, 3, 2, 1
    prompt_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    completion_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return TrainBatch(
        prompt_ids=torch.arange(12).view(4, 3) * prompt_mask,
        prompt_mask=prompt_mask,
        completion_ids=torch.arange(16).view(4, 4) * completion_mask,
        completion_mask=completion_mask,
        group_ids=torch.tensor([0, 0, 1, 1]),
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        correct=torch.tensor([True, False, True, True]),
        truncated=torch.zeros(4, dtype=torch.bool),
        completions=["a", "bbb", "cc", "d"],
        reward_parts={"r": torch.tensor([1.0, 0.0, 1.0, 1.0])},
    )


def test_select_slices_every_field():
    sub = make_batch().select(torch.tensor([2, 0]))
    assert sub.completions == ["cc", "a"]
    assert sub.group_ids.tolist() == [1, 0]
    assert sub.reward_parts["r"].tolist() == [1.0, 1.0]
    assert sub.select(torch.tensor([True, False])).completions == ["cc"]


def test_minibatches_partition_the_batch():
    batch = make_batch()
    parts = batch.minibatches(2)
    assert [p.completions for p in parts] == [["a", "bbb"], ["cc", "d"]]
    shuffled = batch.minibatches(2, torch.Generator().manual_seed(0))
    assert sorted(sum((p.completions for p in shuffled), [])) == sorted(batch.completions)


def test_micro_batches_carry_the_sizes_of_their_minibatch():
    batch = make_batch()
    micros = batch.micro_batches(3)
    assert [m.num_samples for m in micros] == [3, 1]
    for micro in micros:
        assert micro.minibatch_size("seqs") == 4 and micro.minibatch_size("tokens") == 7
        assert micro.minibatch_size("correct") == 3 and micro.total("correct") == 3  # total: the old name
    assert batch.minibatch_size("tokens") == 7  # a batch that was not split answers with its own sizes
    assert micros[0].select([0]).minibatch_size("seqs") == 1  # a selection is a batch of its own


def test_records_are_not_changed_in_place():
    batch = make_batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.rewards = torch.zeros(4)
    changed = batch.replace(rewards=torch.zeros(4))
    assert changed.rewards.sum() == 0 and batch.rewards.sum() == 3


def test_trim_drops_all_padding_columns():
    micro = make_batch().select(torch.tensor([0, 3])).trim()
    # completion lengths 1 and 1 -> width 1 ; prompt widths 2 and 3 -> width 3 (nothing to drop)
    assert micro.completion_ids.shape == (2, 1) and micro.prompt_ids.shape == (2, 3)
    micro = make_batch().select(torch.tensor([0, 1])).trim()
    # prompts of width 2 only -> the leading pad column goes
    assert micro.prompt_ids.shape == (2, 2) and micro.prompt_mask.all()
    assert micro.completion_ids.shape == (2, 3)
