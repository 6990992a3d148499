"""``PromptDataModule``: batches of prompt records from a task, seeded and map-style.

Training prompts come through :class:`~lightning_dsrl.data.sampler.PromptLoader`: a seeded
permutation per epoch, sharded across ranks (each rank draws ``batch_size`` prompts per step, so
a step trains on ``batch_size x world size`` prompts), and resumable mid-epoch. A batch is a
:class:`PromptBatch` of ``batch_size`` records; the rollout callback turns each record into a
group of completions.

Validation prompts come in order through :class:`~lightning_dsrl.data.sampler.EvalSampler`, sharded
across ranks; a rank whose share is one short repeats a problem, marked as not counted
(``PromptBatch.counted``), so every held-out problem is counted exactly once.
"""

from __future__ import annotations

from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_dsrl.data.base import Task
from lightning_dsrl.data.sampler import EvalSampler, PromptLoader, PromptSampler
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.types import PromptBatch, PromptRecord

__all__ = ["EvalDataset", "PromptDataModule", "PromptDataset", "collate_eval", "collate_prompts"]


class PromptDataset(Dataset):
    def __init__(self, records: list[PromptRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


class EvalDataset(PromptDataset):
    """Validation records with whether each counts: position ``len + i`` (an :class:`EvalSampler` pad)
    is record ``i`` again, not counted."""

    def __getitem__(self, index: int) -> tuple[PromptRecord, bool]:
        return self.records[index % len(self.records)], index < len(self.records)


def collate_prompts(records: list[PromptRecord]) -> PromptBatch:
    return PromptBatch(records=list(records))


def collate_eval(items: list[tuple[PromptRecord, bool]]) -> PromptBatch:
    return PromptBatch(records=[record for record, _ in items], counted=[counted for _, counted in items])


class PromptDataModule(LightningDataModule):
    """Prompts for training and validation.

    Args:
        task: where the prompts come from (``CountdownTask``, ``AdditionTask``, ``MathTask``, ...).
        batch_size: prompts per rollout step and process; each becomes a group of ``rollout.num_generations``.
        val_batch_size: prompts per validation step (default: ``batch_size``).
        eval_split: the split ``validate`` and the validation during ``fit`` evaluate: ``val`` (the
            held-out problems to tune on), ``test`` (held-out problems to report, for tasks that
            have them, e.g. ``CountdownTask(num_test=...)``) or ``train``.
        max_val_prompts: evaluate only the first this-many prompts of ``eval_split`` (``None``: all).
        shuffle: shuffle training prompts each epoch (seeded by ``seed``).
        seed: seed of the shuffling.
        num_workers: dataloader worker processes (prompts are cheap; 0 is usually right).
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        eval_split: str = "val",
        max_val_prompts: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: need at least 1 prompt per step")
        if eval_split not in task.splits:
            raise ConfigError(f"data.eval_split={eval_split!r}: {type(task).__name__} has the splits "
                              f"{list(task.splits)}; use one of them")
        self.task = task
        self.eval_split = eval_split
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_val_prompts = max_val_prompts
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers

    def _records(self, split: str, limit: int | None = None) -> list[PromptRecord]:
        records = self.task.records(split)[:limit]  # type: ignore[arg-type]
        if not records:
            name = type(self.task).__name__
            option = f"num_{split}"
            raise ConfigError(f"data.task ({name}) has no {split} prompts; set data.task.{option} > 0 "
                              "or point it at a dataset with rows")
        return records

    def _shard(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` of this process's share of the data (``(1, 0)`` on one device)."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        shard = getattr(strategy, "distributed_sampler_kwargs", None) or {}  # None on one device
        return shard.get("num_replicas", 1), shard.get("rank", 0)

    def train_dataloader(self) -> DataLoader:
        dataset = PromptDataset(self._records("train"))
        replicas, rank = self._shard()
        sampler = PromptSampler(dataset, num_replicas=replicas, rank=rank, shuffle=self.shuffle, seed=self.seed)
        return PromptLoader(dataset, sampler, self.batch_size, seed=self.seed, collate_fn=collate_prompts,
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        # a DistributedSampler of our own, so Lightning does not put in one that repeats problems unmarked
        dataset = EvalDataset(self._records(self.eval_split, self.max_val_prompts))
        replicas, rank = self._shard()
        return DataLoader(dataset, batch_size=self.val_batch_size, sampler=EvalSampler(dataset, replicas, rank),
                          collate_fn=collate_eval, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
