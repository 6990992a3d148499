"""``RolloutMetrics``: every metric of one stage (training or validation), fed from rollout batches.

One object per stage (torchmetrics' advice): the module updates it with each
:class:`~lightning_dsrl.types.Rollout` (plus the token entropy and, in validation, the
verdict of one greedy completion per problem) and reads an :class:`EvalReport` from it. Values
that are undefined on the data (``nan`` from a metric) become ``None`` with a note saying why,
so no report carries an unexplained NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from lightning_dsrl.functional.groups import group_counts
from lightning_dsrl.metrics.diversity import DistinctCorrect, DistinctN, DivAnswers, DivEqu, SelfBLEU
from lightning_dsrl.metrics.entropy import TokenEntropy
from lightning_dsrl.metrics.passk import MeanAtK, PassAtK, PotentialAtK
from lightning_dsrl.types import Rollout

__all__ = ["RolloutMetrics", "EvalReport"]

_WHY_UNDEFINED = {
    "div_equ": "no completion wrote an equation (or no reward extracts them: RewardResult.equations)",
    "div_answers": "no completion had an extractable answer",
    "self_bleu": "no problem had 2 or more non-empty completions",
    "distinct_correct": "no problem",
    "entropy": "no completion token",
    "entropy_correct": "no correct completion",
    "entropy_incorrect": "no incorrect completion",
    "potential@k": "greedy decoding solved every problem, so there is no headroom to measure",
}


@dataclass
class EvalReport:
    """What one stage measured: the pass@k curve (with its interval), Potential@k and scalars.

    ``passk`` and ``potential`` hold lists indexed like ``passk["k"]``; ``values`` maps a metric
    name to its value, ``None`` where it is undefined on the data, with the reason in ``notes``.
    """

    num_problems: int
    samples_per_problem: int  # the smallest n over problems (pass@k is reported up to it)
    passk: dict[str, Any]  # {"k": [...], "value": [...], "low": [...], "high": [...], "confidence": c}
    potential: dict[str, Any] | None = None  # {"k": [...], "value": [...], "problems": greedy failures}
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """Flat ``name -> value`` of everything defined: ``pass@k``, ``potential@k`` and ``values``."""
        out = {f"pass@{k}": v for k, v in zip(self.passk["k"], self.passk["value"])}
        if self.potential is not None:
            out.update({f"potential@{k}": v for k, v in zip(self.potential["k"], self.potential["value"])
                        if v is not None})
        out.update({k: v for k, v in self.values.items() if v is not None})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Tensor | float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _numbers(values: Tensor) -> list[float | None]:
    return [_number(v) for v in values.tolist()]


class RolloutMetrics(nn.Module):
    """All metrics of section 5 of ALGORITHMS.md over a stream of rollout batches.

    Args:
        bootstrap: resamples of the pass@k confidence interval (0: none).
        confidence: coverage of the interval.
        distinct_ns: the ``n`` of each Distinct-n reported.
        bleu_n_gram: the largest n-gram of Self-BLEU's BLEU.
        self_bleu: compute Self-BLEU (one BLEU per distinct response against the rest of its group:
            O(G^2) work per group, the most expensive metric here).
    """

    def __init__(self, bootstrap: int = 0, confidence: float = 0.95, distinct_ns: tuple[int, ...] = (1, 2, 3),
                 bleu_n_gram: int = 4, self_bleu: bool = True) -> None:
        super().__init__()
        self.confidence = confidence
        self.passk = PassAtK(bootstrap=bootstrap, confidence=confidence)
        self.meank = MeanAtK()
        self.potential = PotentialAtK()
        self.div_equ = DivEqu()
        self.div_answers = DivAnswers()
        self.distinct = nn.ModuleDict({f"distinct_{n}": DistinctN(n) for n in distinct_ns})
        self.self_bleu = SelfBLEU(n_gram=bleu_n_gram) if self_bleu else None
        self.distinct_correct = DistinctCorrect()
        self.entropy = TokenEntropy()

    def update(self, rollout: Rollout, entropy: Tensor | None = None, greedy_correct: Tensor | None = None
               ) -> None:
        """Add a rollout batch (whole groups). ``entropy``: ``[N, L]`` token entropy of its completions
        (``None``: measured elsewhere or not at all). ``greedy_correct``: ``[P]`` verdict of a greedy
        completion for each group, in sorted group-label order (``None``: no Potential@k)."""
        n, c = group_counts(rollout.group_ids, rollout.correct)
        answers = rollout.answers or [None] * rollout.num_samples
        equations = rollout.equations or [None] * rollout.num_samples
        texts = rollout.completions or [""] * rollout.num_samples
        self.passk.update(n, c)
        self.meank.update(n, c)
        if greedy_correct is not None:
            self.potential.update(n, c, greedy_correct)
        self.div_equ.update(rollout.group_ids, equations)
        self.div_answers.update(rollout.group_ids, answers)
        for metric in self.distinct.values():
            metric.update(texts)
        if self.self_bleu is not None:
            self.self_bleu.update(rollout.group_ids, texts)
        self.distinct_correct.update(rollout.group_ids, rollout.correct, answers)
        if entropy is not None:
            self.entropy.update(entropy, rollout.completion_mask, rollout.correct)

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    def compute(self) -> EvalReport:
        """Every metric that was updated, synced across processes (all processes must call it)."""
        passk = self.passk.compute()
        report = EvalReport(
            num_problems=int(passk["problems"]),
            samples_per_problem=int(passk["min_n"]),
            passk={"k": passk["k"].tolist(), "value": _numbers(passk["value"]),
                   "low": _numbers(passk["low"]) if "low" in passk else None,
                   "high": _numbers(passk["high"]) if "high" in passk else None,
                   "confidence": self.confidence if "low" in passk else None},
        )
        values: dict[str, Tensor] = {f"mean@{report.samples_per_problem}": self.meank.compute()}
        if self.potential.update_called:
            potential = self.potential.compute()
            failed = int(potential["problems"])
            report.potential = {"k": potential["k"].tolist(), "value": _numbers(potential["value"]),
                                "problems": failed}
            report.values["greedy_accuracy"] = 1.0 - failed / report.num_problems
            if failed == 0:
                report.notes["potential@k"] = _WHY_UNDEFINED["potential@k"]
        values["div_equ"] = self.div_equ.compute()
        values["div_answers"] = self.div_answers.compute()
        for name, metric in self.distinct.items():
            values[name] = metric.compute()
        if self.self_bleu is not None:
            values["self_bleu"] = self.self_bleu.compute()
        values["distinct_correct"] = self.distinct_correct.compute()
        if self.entropy.update_called:
            for key, value in self.entropy.compute().items():
                values["entropy" if key == "all" else f"entropy_{key}"] = value
        for name, value in values.items():
            report.values[name] = _number(value)
            if report.values[name] is None:
                size = name.removeprefix("distinct_")
                report.notes[name] = _WHY_UNDEFINED.get(name) or f"no completion has {size} or more tokens"
        return report
