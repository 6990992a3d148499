"""``Evaluation``: validation (and test) over the held-out problems, batch by batch, then reported once.

    add(rollout, entropy, greedy, counted)   per validation batch: metrics, sample rows, reward sums
    finish(device)                           at the epoch's end, over every rank: the report and val/* values
    write(result, run_dir, ...)              rank 0: eval/metrics.json, samples.jsonl, history.jsonl, passk.png,
                                             the curve in TensorBoard, the table on the console

A rank whose share of the problems is one short repeats a problem to keep the ranks' forwards in
step; ``counted`` marks it, and it is dropped here, so every problem counts once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dsrl.distributed import all_gather_objects, interleave, sum_over_ranks
from lightning_dsrl.metrics import EvalReport, RolloutMetrics
from lightning_dsrl.metrics.plot import figure_to_array
from lightning_dsrl.metrics.report import format_table, sample_rows, write_eval
from lightning_dsrl.types import Rollout, SamplingParams

__all__ = ["Evaluation", "EvalResult"]


@dataclass(frozen=True)
class EvalResult:
    """One validation epoch, over every rank's problems."""

    report: EvalReport
    values: dict[str, float]  # val/<name> -> value, equal on every rank
    rows: list[dict[str, Any]]  # eval/samples.jsonl, in the order of the problems
    sampling: SamplingParams | None  # how the samples were drawn (None: this rank saw no batch)
    greedy: bool  # whether each problem also had a greedy completion (Potential@k)


class Evaluation(nn.Module):
    """Accumulates validation batches and reports them (the metrics are torchmetrics, synced over ranks).

    Args:
        bootstrap: resamples of the bootstrap interval of the pass@k curve (0: none).
        confidence: coverage of that interval.
    """

    def __init__(self, bootstrap: int = 1000, confidence: float = 0.95) -> None:
        super().__init__()
        self.metrics = RolloutMetrics(bootstrap=bootstrap, confidence=confidence)
        self._reset()

    def _reset(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._sums: dict[str, float] = defaultdict(float)  # this rank's reward and correct sums, sample count
        self._sampling: SamplingParams | None = None
        self._greedy = False

    def add(self, rollout: Rollout, entropy: Tensor, greedy: Rollout | None, counted: list[bool] | None) -> None:
        """A validation batch: ``entropy`` ``[N, L]`` the policy's token entropy on ``rollout``; ``greedy`` one
        greedy completion per problem (or ``None``); ``counted`` ``[B]`` False for a repeated problem."""
        self._sampling, self._greedy = rollout.sampling, greedy is not None
        if counted is not None and not all(counted):  # drop the problems this rank only repeats
            keep_group = torch.tensor(counted, device=rollout.group_ids.device)
            keep = keep_group[rollout.group_ids]  # [N]
            rollout, entropy = rollout.select(keep), entropy[keep]
            greedy = greedy.select(keep_group[greedy.group_ids]) if greedy is not None else None
        # one greedy completion per group, put in the sorted group order the metrics use
        greedy_correct = greedy.correct[torch.argsort(greedy.group_ids)] if greedy is not None else None
        self.metrics.update(rollout, entropy=entropy, greedy_correct=greedy_correct)
        self._rows.extend(sample_rows(rollout, greedy))
        self._sums["reward"] += float(rollout.rewards.sum())
        self._sums["correct"] += float(rollout.correct.sum())
        self._sums["samples"] += rollout.num_samples

    def finish(self, device: torch.device) -> EvalResult:
        """The epoch's report and ``val/*`` values over every rank (a collective), and a fresh start."""
        report = self.metrics.compute()  # synced across processes
        self.metrics.reset()
        # rank r's j-th problem is problem r + j * world_size of the set (EvalSampler)
        rows = interleave(all_gather_objects(self._rows))
        sums = sum_over_ranks(self._sums, device)
        values = {f"val/{name}": value for name, value in report.scalars().items()}
        if sums.get("samples"):  # over every rank's problems, each once: the same value on every rank
            values["val/reward_mean"] = sums["reward"] / sums["samples"]
            values["val/correct_rate"] = sums["correct"] / sums["samples"]
        result = EvalResult(report, values, rows, self._sampling, self._greedy)
        self._reset()
        return result

    def write(self, result: EvalResult, run_dir: Path, run: dict[str, Any], experiment: Any = None,
              print_table: bool = False) -> dict[str, Path]:
        """``eval/`` files in ``run_dir`` (``run``: stage, model, checkpoint, step), the pass@k curve as an image
        in TensorBoard (``experiment``: its ``SummaryWriter``, if any) and, when asked, the table on the console
        (in ``validate`` and ``test``); returns the files' paths."""
        sampling = result.sampling
        settings = {
            **run,
            "samples_per_problem": sampling.n if sampling else None,
            "temperature": sampling.temperature if sampling else None,
            "top_p": sampling.top_p if sampling else None,
            "top_k": sampling.top_k if sampling else None,
            "max_new_tokens": sampling.max_new_tokens if sampling else None,
            "greedy": result.greedy,
            "bootstrap": self.metrics.passk.bootstrap,
        }
        label = f"{run_dir.parent.name}/{run_dir.name}"
        paths, figure = write_eval(run_dir / "eval", result.report, result.rows, settings, label=label)
        if experiment is not None:
            experiment.add_image("val/passk_curve", figure_to_array(figure), run["global_step"], dataformats="HWC")
        if print_table:
            print(f"\n{format_table(result.report)}\n\nwritten: {paths['metrics.json'].parent}/"
                  "{metrics.json,samples.jsonl,passk.png}", flush=True)
        return paths
