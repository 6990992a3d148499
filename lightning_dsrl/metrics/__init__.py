"""Metrics of correctness and diversity (ALGORITHMS.md section 5) as torchmetrics ``Metric`` s.

    passk.py      PassAtK (curve + bootstrap interval), MeanAtK, PotentialAtK
    diversity.py  DivEqu, DivAnswers, DistinctN, SelfBLEU, DistinctCorrect
    entropy.py    TokenEntropy (all / correct / incorrect)
    functional.py the functional twins (``_x_update`` / ``_x_compute`` shared with the classes)
    rollout.py    RolloutMetrics: all of them for one stage, fed from rollout batches -> EvalReport
    report.py     eval/metrics.json, eval/samples.jsonl and the console table
    plot.py       the pass@k curve as a PNG (matplotlib)
"""

from lightning_dsrl.metrics.diversity import DistinctCorrect, DistinctN, DivAnswers, DivEqu, SelfBLEU
from lightning_dsrl.metrics.entropy import TokenEntropy
from lightning_dsrl.metrics.functional import (
    distinct_correct,
    distinct_correct_mean,
    distinct_n,
    div_answers,
    div_equ,
    group_counts,
    mean_at_k,
    paired_pass_at_k_bootstrap,
    pass_at_k_bootstrap,
    pass_at_k_curve,
    potential_at_k,
    powers_of_two,
    self_bleu,
    token_entropy,
    tokenize,
)
from lightning_dsrl.metrics.passk import MeanAtK, PassAtK, PotentialAtK
from lightning_dsrl.metrics.rollout import EvalReport, RolloutMetrics

__all__ = [
    "DistinctCorrect",
    "DistinctN",
    "DivAnswers",
    "DivEqu",
    "EvalReport",
    "MeanAtK",
    "PassAtK",
    "PotentialAtK",
    "RolloutMetrics",
    "SelfBLEU",
    "TokenEntropy",
    "distinct_correct",
    "distinct_correct_mean",
    "distinct_n",
    "div_answers",
    "div_equ",
    "group_counts",
    "mean_at_k",
    "paired_pass_at_k_bootstrap",
    "pass_at_k_bootstrap",
    "pass_at_k_curve",
    "potential_at_k",
    "powers_of_two",
    "self_bleu",
    "token_entropy",
    "tokenize",
]
