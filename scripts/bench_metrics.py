"""Cost of the metrics: one ``RolloutMetrics`` update + compute on synthetic CountDown-like rollouts.

    python scripts/bench_metrics.py [--out bench/metrics.json]

Measures the per-step overhead in training (B prompts x G samples, no bootstrap; the module logs
the same thing as ``timing/metrics``) and the cost of a validation report (P problems x n samples,
1000 bootstrap resamples, greedy verdicts, token entropy). Prints and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from lightning_dsrl.metrics import RolloutMetrics
from lightning_dsrl.types import Rollout


def synthetic_rollout(problems: int, samples: int, seed: int = 0) -> tuple[Rollout, torch.Tensor]:
    """CountDown-like completions (``<answer>a+b*c</answer>``, ~25 characters), 30% correct."""
    rng = random.Random(seed)
    n = problems * samples
    texts, answers = [], []
    for _ in range(n):
        a, b, c = (rng.randint(1, 20) for _ in range(3))
        expr = f"{a}{rng.choice('+-*/')}{b}{rng.choice('+-*/')}{c}"
        texts.append(f"<answer>{expr}</answer>")
        answers.append(expr)
    correct = torch.tensor([rng.random() < 0.3 for _ in range(n)])
    rollout = Rollout(
        prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.bool),
        completion_ids=torch.zeros(n, 32, dtype=torch.long), completion_mask=torch.ones(n, 32, dtype=torch.bool),
        group_ids=torch.arange(problems).repeat_interleave(samples), rewards=correct.float(), correct=correct,
        truncated=torch.zeros(n, dtype=torch.bool), completions=texts, answers=answers,
    )
    return rollout, torch.rand(n, 32)


def time_report(problems: int, samples: int, bootstrap: int, greedy: bool, repeats: int, self_bleu: bool = True
                ) -> float:
    rollout, entropy = synthetic_rollout(problems, samples)
    greedy_correct = torch.zeros(problems, dtype=torch.bool) if greedy else None
    best = float("inf")
    for _ in range(repeats):
        metrics = RolloutMetrics(bootstrap=bootstrap, self_bleu=self_bleu)
        start = time.perf_counter()
        metrics.update(rollout, entropy=entropy, greedy_correct=greedy_correct)
        metrics.compute()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/metrics.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [  # name, problems, samples, bootstrap, greedy, self_bleu
        ("train step B=32 G=8", 32, 8, 0, False, True),
        ("  without Self-BLEU", 32, 8, 0, False, False),
        ("train step B=64 G=16", 64, 16, 0, False, True),
        ("  without Self-BLEU", 64, 16, 0, False, False),
        ("validation P=200 n=16", 200, 16, 1000, True, True),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # timings on a shared machine mean little
    results = {"machine": platform.processor() or platform.machine(), "threads": 1, "load_average_1min": load,
               "cpus": os.cpu_count(), "cases": []}
    for name, problems, samples, bootstrap, greedy, self_bleu in cases:
        seconds = time_report(problems, samples, bootstrap, greedy, repeats=3, self_bleu=self_bleu)
        results["cases"].append({"case": name.strip(), "problems": problems, "samples": samples,
                                 "bootstrap": bootstrap, "self_bleu": self_bleu,
                                 "seconds_best_of_3": round(seconds, 4)})
        print(f"{name:<24} {seconds * 1000:8.1f} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
