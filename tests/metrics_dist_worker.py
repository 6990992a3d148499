"""Helper of ``tests/test_metrics_distributed.py``: two CPU processes over gloo feed their share of
the same rollout batches into ``RolloutMetrics`` and save what ``compute()`` returns.

    python tests/metrics_dist_worker.py OUT_DIR RANK WORLD_SIZE   # writes OUT_DIR/rank<RANK>.json

The test starts one such process per rank (two imports of the package instead of the three that
``torch.multiprocessing.spawn`` from a launcher would cost).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from lightning_dsrl.metrics import RolloutMetrics
from lightning_dsrl.types import RolloutBatch

WORDS = ["<answer>", "</answer>", "1", "2", "3", "+", "-", "*", "(", ")", "x", "y"]
BATCH_SIZES = [3, 2, 4, 1, 2]  # problems per rollout batch; rank 0 gets batches 0, 2, 4 and rank 1 the rest
GROUP = 6


def make_batches() -> list[tuple[RolloutBatch, torch.Tensor, torch.Tensor]]:
    """Seeded rollout batches (with token entropy and greedy verdicts), identical in every process."""
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    out, label = [], 0
    for size in BATCH_SIZES:
        n = size * GROUP
        lengths = torch.randint(1, 9, (n,), generator=g)
        mask = torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)  # [n, 8]
        correct = torch.rand(n, generator=g) < 0.4
        texts = ["" if rng.random() < 0.1 else " ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in range(n)]
        answers = [None if rng.random() < 0.3 else rng.choice(["1+2", "2*3", "3-1", "(1+2)*3"]) for _ in range(n)]
        equations = [tuple(rng.sample(["1+2=3", "2*3=6", "3-1=2", "x=2"], rng.randint(0, 3))) for _ in range(n)]
        rollout = RolloutBatch(
            prompt_ids=torch.zeros(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.bool),
            completion_ids=torch.zeros(n, 8, dtype=torch.long), completion_mask=mask,
            group_ids=torch.arange(label, label + size).repeat_interleave(GROUP),
            rewards=correct.float(), correct=correct, truncated=torch.zeros(n, dtype=torch.bool),
            completions=texts, answers=answers, equations=equations,
        )
        entropy = torch.rand(n, 8, generator=g) * 3 * mask
        greedy = torch.rand(size, generator=g) < 0.3
        out.append((rollout, entropy, greedy))
        label += size
    return out


def evaluate(batches) -> dict:
    metrics = RolloutMetrics(bootstrap=200)
    for rollout, entropy, greedy in batches:
        metrics.update(rollout, entropy=entropy, greedy_correct=greedy)
    return metrics.compute().to_dict()


def run(rank: int, world: int, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                                         world_size=world)
    try:
        report = evaluate(make_batches()[rank::world])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[2]), int(sys.argv[3]), sys.argv[1])
