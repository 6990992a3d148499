"""Diversity metrics as torchmetrics ``Metric`` s: ``DivEqu``, ``DivAnswers``, ``DistinctN``, ``SelfBLEU``,
``DistinctCorrect``.

Text goes in, only tensor sums come out of ``update`` (as in torchmetrics' text metrics), so the
state syncs across processes with a plain sum. The per-problem ones need every sample of a
problem in the same ``update`` call (a rollout batch always holds whole groups). A value that is
undefined on the data is ``nan`` (see each function in :mod:`lightning_dsrl.metrics.functional`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_dsrl.metrics.functional.diversity import (
    _distinct_correct_update,
    _distinct_n_update,
    _div_answers_update,
    _div_equ_update,
    _ratio,
    _self_bleu_compute,
    _self_bleu_update,
)

__all__ = ["DivEqu", "DivAnswers", "DistinctN", "SelfBLEU", "DistinctCorrect"]


class _SumRatio(Metric):
    """A metric whose state is a summed ``total`` and ``count`` (value ``total / count``)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, total: Tensor, count: Tensor) -> None:
        self.total += total.to(self.total)
        self.count += count.to(self.count)

    def compute(self) -> Tensor:
        return _ratio(self.total, self.count)


class DivEqu(_SumRatio):
    """Div-Equ ([DIV], Eq. 5): distinct extracted equations / extracted equations per problem (the
    equations of its completions pooled), x100, averaged over problems.

    >>> metric = DivEqu(); metric.update(torch.tensor([0, 0, 1]), [("1+2=3", "3*4=12"), ("1+2=3",), None])
    >>> metric.compute()
    tensor(66.6667, dtype=torch.float64)
    """

    higher_is_better = True

    def update(self, group_ids: Tensor, equations: list[Sequence[str] | None]) -> None:
        self._add(*_div_equ_update(group_ids, equations))


class DivAnswers(_SumRatio):
    """Distinct final answers / extracted answers per problem, x100, averaged over problems.

    >>> metric = DivAnswers(); metric.update(torch.tensor([0, 0, 0, 1, 1]), ["1+2", "1+2", None, "3", "4"])
    >>> metric.compute()
    tensor(75., dtype=torch.float64)
    """

    higher_is_better = True

    def update(self, group_ids: Tensor, answers: list[str | None]) -> None:
        self._add(*_div_answers_update(group_ids, answers))


class DistinctN(_SumRatio):
    """Distinct-n: distinct n-grams / n-grams of each response, averaged over responses.

    >>> metric = DistinctN(n=2); metric.update(["a b a b", "c"]); metric.compute()
    tensor(0.6667, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, n: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if n < 1:
            raise ValueError(f"DistinctN needs n >= 1, got {n}")
        self.n = n

    def update(self, texts: list[str]) -> None:
        self._add(*_distinct_n_update(texts, self.n))


class SelfBLEU(_SumRatio):
    """Self-BLEU diversity: ``100 - mean BLEU`` of each response against the others of its problem.

    >>> metric = SelfBLEU(); metric.update(torch.tensor([0, 0, 1, 1]), ["a b c d", "a b c d", "a b c d", "w x y z"])
    >>> metric.compute()
    tensor(50., dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, n_gram: int = 4, smooth: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_gram, self.smooth = n_gram, smooth

    def update(self, group_ids: Tensor, texts: list[str]) -> None:
        self._add(*_self_bleu_update(group_ids, texts, self.n_gram, self.smooth))

    def compute(self) -> Tensor:
        return _self_bleu_compute(self.total, self.count)


class DistinctCorrect(_SumRatio):
    """Distinct correct solutions per problem (distinct normalised answers among the correct samples).

    >>> metric = DistinctCorrect()
    >>> metric.update(torch.tensor([0, 0, 0, 1]), torch.tensor([True, True, True, False]), ["a", "a", "b", "c"])
    >>> metric.compute()
    tensor(1., dtype=torch.float64)
    """

    higher_is_better = True

    def update(self, group_ids: Tensor, correct: Tensor, answers: list[str | None]) -> None:
        self._add(*_distinct_correct_update(group_ids, correct, answers))
