"""Tasks and the data module: seeded, disjoint splits, clear errors."""

from __future__ import annotations

import pytest

from lightning_dsrl.data import AdditionTask, CountdownTask, PromptDataModule
from lightning_dsrl.data.countdown import solve
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.countdown import check
from lightning_dsrl.types import PromptBatch


def small_countdown(**kw) -> CountdownTask:
    args = dict(num_numbers=3, max_number=10, num_train=40, num_val=10, seed=1)
    args.update(kw)
    return CountdownTask(**args)


def test_countdown_is_seeded_and_splits_are_disjoint():
    a, b = small_countdown(), small_countdown()
    assert [r.prompt for r in a.records("train")] == [r.prompt for r in b.records("train")]
    assert [r.prompt for r in small_countdown(seed=2).records("train")] != [r.prompt for r in a.records("train")]
    key = lambda r: (tuple(sorted(r.meta["numbers"])), r.meta["target"])  # noqa: E731
    train = {key(r) for r in a.records("train")}
    val = {key(r) for r in a.records("val")}
    assert len(train) == 40 and len(val) == 10 and not train & val


def test_the_test_split_comes_after_val_and_leaves_train_and_val_as_they_were():
    key = lambda r: (tuple(sorted(r.meta["numbers"])), r.meta["target"])  # noqa: E731
    task, before = small_countdown(num_test=20), small_countdown()
    for split in ("train", "val"):
        assert [r.prompt for r in task.records(split)] == [r.prompt for r in before.records(split)]
    held_out = {key(r) for r in task.records("train") + task.records("val")}
    test = {key(r) for r in task.records("test")}
    assert len(test) == 20 and not test & held_out
    assert small_countdown().records("test") == []  # num_test defaults to 0
    too_many = small_countdown(num_test=5000)
    assert len(too_many.records("train")) == 40  # only the split that does not fit is refused
    with pytest.raises(ConfigError, match=r"data.task.num_test=5000: only \d+ .* lower num_test"):
        too_many.records("test")
    with pytest.raises(ConfigError, match=r"data.eval_split='test': AdditionTask has the splits \['train', 'val'\]"):
        AdditionTask(num_train=20, num_val=5).records("test")


def test_every_countdown_problem_is_solvable_with_enough_solutions():
    task = small_countdown(min_solutions=2)
    for record in task.records("train") + task.records("val"):
        numbers, target = record.meta["numbers"], record.meta["target"]
        assert record.meta["num_solutions"] >= 2
        assert check(f"<answer>{record.answer}</answer>", numbers, target)
        assert record.prompt == f"Numbers: {' '.join(map(str, numbers))}\nTarget: {target}\n"


def test_solve_counts_distinct_solutions_up_to_reordering():
    # 2 and 3: 2+3=5, 2*3=6, 3-2=1, 3/2 not integral; target 6 has one normal form despite 3*2
    assert solve((2, 3), 1, 10) == {1: ("3-2",), 5: ("2+3",), 6: ("2*3",)}


def test_templates_and_bad_settings():
    task = small_countdown(template="tinyzero")
    assert "<answer>" in task.records("train")[0].prompt
    custom = small_countdown(template="{numbers_list} -> {target}")
    assert custom.records("train")[0].prompt.startswith("[")
    with pytest.raises(ConfigError, match="template"):
        small_countdown(template="{nums} {target}")
    with pytest.raises(ConfigError, match="only .* distinct CountDown problems"):
        CountdownTask(num_numbers=2, max_number=3, num_train=100, num_val=10).records("train")


def test_addition_task():
    task = AdditionTask(num_train=20, num_val=5, seed=3)
    record = task.records("val")[0]
    a, b = record.meta["terms"]
    assert 10 <= a <= 99 and record.answer == str(a + b) and f"{a} + {b}" in record.prompt
    with pytest.raises(ConfigError, match="question"):
        AdditionTask(template="no placeholder")


def test_addition_shots_are_worked_examples_in_neither_split():
    task = AdditionTask(num_digits=1, num_train=40, num_val=57, shots=3, template="plain", chat=True)
    train, val = task.records("train"), task.records("val")
    history = val[0].history
    assert [turn["role"] for turn in history] == ["user", "assistant"] * 3
    examples = [turn["content"] for turn in history[0::2]]
    asked = {r.prompt for r in train + val}
    assert len(asked) == 97 and not asked & set(examples)  # all 100 one-digit sums: 3 examples, 97 problems
    for question, answer in zip(history[0::2], history[1::2]):
        a, b = map(int, question["content"].removeprefix("What is ").split("?")[0].split(" + "))
        assert answer["content"] == f"<answer>{a + b}</answer>"
    assert all(r.history == history and r.chat for r in train + val)
    # without chat the same examples are lines of text before the question
    plain = AdditionTask(num_digits=1, num_train=40, num_val=57, shots=3, template="plain").records("val")[0]
    assert plain.history == [] and plain.prompt == "\n".join(t["content"] for t in history) + "\n" + val[0].prompt
    with pytest.raises(ConfigError, match="101 problems requested"):
        AdditionTask(num_digits=1, num_train=40, num_val=58, shots=3, template="plain")
    with pytest.raises(ConfigError, match="already holds its own worked example"):
        AdditionTask(shots=1, template="oneshot")


def test_datamodule_batches_and_empty_splits():
    dm = PromptDataModule(small_countdown(), batch_size=8, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, PromptBatch) and len(batch) == 8 and batch.rollout is None
    again = next(iter(PromptDataModule(small_countdown(), batch_size=8, seed=0).train_dataloader()))
    assert [r.uid for r in batch.records] == [r.uid for r in again.records]  # seeded shuffle
    assert len(next(iter(dm.val_dataloader()))) == 8
    empty = PromptDataModule(small_countdown(num_val=0), batch_size=4)
    with pytest.raises(ConfigError, match="no val prompts.*num_val"):
        empty.val_dataloader()
    with pytest.raises(ConfigError, match="batch_size"):
        PromptDataModule(small_countdown(), batch_size=0)


def test_validation_shards_count_every_problem_once():
    """10 problems over 3 ranks: shares of 4 (equal batches on every rank, as a sharded model needs), the
    2 pads marked as not counted, and the counted problems of all ranks are the set, each once."""
    from types import SimpleNamespace

    dm = PromptDataModule(small_countdown(), batch_size=4, val_batch_size=3)
    counted = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 3,
                                                                                          "rank": rank}))
        batches = list(dm.val_dataloader())
        assert [len(b) for b in batches] == [3, 1]
        counted += [r.uid for b in batches for r, c in zip(b.records, b.counted) if c]
        assert sum(not c for b in batches for c in b.counted) == (0 if rank == 0 else 1)
    assert sorted(counted) == list(range(10))


def test_datamodule_evaluates_the_split_eval_split_names():
    task = small_countdown(num_test=12)
    dm = PromptDataModule(task, batch_size=8, eval_split="test", max_val_prompts=10)
    evaluated = [r for batch in dm.val_dataloader() for r in batch.records]
    assert [r.prompt for r in evaluated] == [r.prompt for r in task.records("test")[:10]]
    assert len(dm.train_dataloader().dataset) == 40  # max_val_prompts cuts the evaluated split only
    on_train = PromptDataModule(small_countdown(), batch_size=8, eval_split="train", max_val_prompts=5)
    assert len(on_train.val_dataloader().dataset) == 5 and len(on_train.train_dataloader().dataset) == 40
    assert PromptDataModule(task, batch_size=8).eval_split == "val"
    with pytest.raises(ConfigError, match=r"data.eval_split='dev': CountdownTask has the splits"):
        PromptDataModule(task, batch_size=8, eval_split="dev")
    with pytest.raises(ConfigError, match="no test prompts; set data.task.num_test > 0"):
        PromptDataModule(small_countdown(), batch_size=8, eval_split="test").val_dataloader()
    with pytest.raises(ConfigError, match="AdditionTask has the splits"):
        PromptDataModule(AdditionTask(num_train=20, num_val=5), batch_size=4, eval_split="test")
