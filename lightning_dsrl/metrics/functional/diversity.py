"""Diversity of a problem's completions (ALGORITHMS.md section 5), the functional twins of
:mod:`lightning_dsrl.metrics.diversity`: Div-Equ, distinct answers, Distinct-n, Self-BLEU, distinct
correct solutions.

Each metric ``x`` is split as torchmetrics does it: ``_x_update`` turns a batch into summable
statistics (tensors, also for text input, so the state syncs across processes) and ``_x_compute``
turns statistics into the value; ``x`` is the two in a row. Every sample of a problem is in the same
call (labelled by ``group_ids``). A value that is undefined on the data (no extracted answer to
count) is ``nan``; the caller says why (see :class:`~lightning_dsrl.metrics.rollout.RolloutMetrics`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.text import bleu_score

from lightning_dsrl.functional.groups import group_positions

__all__ = ["tokenize", "distinct_correct", "div_equ", "div_answers", "distinct_n", "self_bleu",
           "distinct_correct_mean"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Words and single symbols, the unit of the n-gram metrics: ``\\w+`` runs and any other
    non-space character on its own (so ``(3+4)*2`` has 7 tokens, not 1 as with whitespace).

    >>> tokenize("<answer>(3+4)*2</answer>")
    ['<', 'answer', '>', '(', '3', '+', '4', ')', '*', '2', '<', '/', 'answer', '>']
    """
    return _TOKEN.findall(text)


def distinct_correct(group_ids: Tensor, correct: Tensor, answers: list[str | None]) -> Tensor:
    """Number of distinct correct answers in each group (groups in sorted label order).

    >>> distinct_correct(torch.tensor([0, 0, 0, 1]), torch.tensor([True, True, True, False]), ["a", "a", "b", "c"])
    tensor([2, 0])
    """
    flags = correct.tolist()
    return torch.tensor(
        [len({answers[i] for i in rows if flags[i] and answers[i] is not None}) for rows in group_positions(group_ids)],
        dtype=torch.long,
    )


def _div_equ_update(group_ids: Tensor, equations: list[Sequence[str] | None]) -> tuple[Tensor, Tensor]:
    """Sum over problems with at least one extracted equation of ``100 * distinct / extracted``
    (every completion's equations pooled), and the number of such problems."""
    total, count = 0.0, 0
    for rows in group_positions(group_ids):
        extracted: list[str] = []
        for i in rows:
            if isinstance(equations[i], str):
                raise TypeError(f"div_equ takes the equations of each completion (a tuple of strings), got the string "
                                f"{equations[i]!r}; for one answer per completion use div_answers")
            extracted += equations[i] or ()
        if extracted:
            total += 100.0 * len(set(extracted)) / len(extracted)
            count += 1
    return torch.tensor(total, dtype=torch.float64), torch.tensor(count, dtype=torch.float64)


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, ``nan`` when ``count == 0`` (the metric is undefined on the data)."""
    return total / count if float(count) > 0 else torch.full_like(total, math.nan)


def div_equ(group_ids: Tensor, equations: list[Sequence[str] | None]) -> Tensor:
    """Div-Equ ([DIV], its Eq. 5): distinct extracted equations / extracted equations per problem,
    the equations of the problem's k completions pooled, x100, averaged over problems.

        div_equ = mean_{problems with an extracted equation} 100 * |set(E_p)| / |E_p|,
        E_p = the equations of every completion of problem p, concatenated

    ``equations[i]`` holds the distinct equations written in completion ``i``
    (:attr:`~lightning_dsrl.types.RewardResult.equations`: for free text
    :func:`~lightning_dsrl.rewards.equations.extract_equations`; for CountDown the answer, which
    is the equation). ``None`` or ``()`` means none. Problems with none are left out; ``nan``
    when no completion has one.

    >>> div_equ(torch.tensor([0, 0, 1, 1]), [("1+2=3", "3*4=12"), ("1+2=3", "3+9=12"), ("5-1=4",), None])
    tensor(87.5000, dtype=torch.float64)

    (problem 0: 4 equations, 3 distinct -> 75; problem 1: 1 of 1 -> 100; mean 87.5)
    """
    return _ratio(*_div_equ_update(group_ids, equations))


def _div_answers_update(group_ids: Tensor, answers: list[str | None]) -> tuple[Tensor, Tensor]:
    return _div_equ_update(group_ids, [(a,) if a is not None else None for a in answers])


def div_answers(group_ids: Tensor, answers: list[str | None]) -> Tensor:
    """Distinct final answers / extracted answers per problem, x100, averaged over problems: Div-Equ
    with each completion's answer as its one "equation" (equal to Div-Equ on CountDown, where the
    answer is the equation; on free-text math a different, coarser ratio).

        div_answers = mean_{problems with an extracted answer} 100 * |set(answers)| / |answers|

    Completions without an extractable answer are left out; problems with none are left out;
    ``nan`` when no completion has one.

    >>> div_answers(torch.tensor([0, 0, 0, 1, 1]), ["1+2", "1+2", None, "3", "4"])  # (100*1/2 + 100*2/2) / 2
    tensor(75., dtype=torch.float64)
    """
    return _ratio(*_div_answers_update(group_ids, answers))


def _distinct_n_update(texts: list[str], n: int) -> tuple[Tensor, Tensor]:
    """Sum over responses with at least one n-gram of ``distinct / total`` n-grams, and their number."""
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    total, count = 0.0, 0
    for text in texts:
        tokens = tokenize(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if grams:
            total += len(set(grams)) / len(grams)
            count += 1
    return torch.tensor(total, dtype=torch.float64), torch.tensor(count, dtype=torch.float64)


def distinct_n(texts: list[str], n: int = 2) -> Tensor:
    """Distinct-n (intra-response diversity): distinct n-grams / n-grams of each response, averaged.

        distinct_n = mean_{responses with >= n tokens} |set(ngrams)| / |ngrams|

    Tokens are :func:`tokenize`'s words and symbols. Responses shorter than ``n`` tokens (empty
    ones included) are left out; ``nan`` when none is long enough.

    >>> distinct_n(["a b a b", "c"], n=2)  # "a b a b": bigrams (a,b) (b,a) (a,b): 2 distinct of 3; "c": none
    tensor(0.6667, dtype=torch.float64)
    """
    return _ratio(*_distinct_n_update(texts, n))


def _self_bleu_update(group_ids: Tensor, texts: list[str], n_gram: int = 4, smooth: bool = False
                      ) -> tuple[Tensor, Tensor]:
    """Sum over problems (with >= 2 non-empty responses) of the mean BLEU x100 of each response
    against the others, and the number of such problems."""
    total, count = 0.0, 0
    for rows in group_positions(group_ids):
        joined = [" ".join(tokenize(texts[i])) for i in rows]
        joined = [t for t in joined if t]  # an empty response is neither hypothesis nor reference
        if len(joined) < 2:
            continue
        # equal responses have equal "others" (as multisets), so BLEU is taken once per distinct text
        score: dict[str, float] = {}
        for j, hyp in enumerate(joined):
            if hyp not in score:
                score[hyp] = float(bleu_score([hyp], [joined[:j] + joined[j + 1 :]], n_gram=n_gram, smooth=smooth))
        total += 100.0 * sum(score[hyp] for hyp in joined) / len(joined)
        count += 1
    return torch.tensor(total, dtype=torch.float64), torch.tensor(count, dtype=torch.float64)


def _self_bleu_compute(total: Tensor, count: Tensor) -> Tensor:
    return 100.0 - _ratio(total, count)


def self_bleu(group_ids: Tensor, texts: list[str], n_gram: int = 4, smooth: bool = False) -> Tensor:
    """Self-BLEU diversity (inter-response): ``100 - mean BLEU`` of each response against the others.

        self_bleu = 100 - mean_problems mean_{i in problem} 100 * BLEU(y_i; {y_j : j != i})

    BLEU is torchmetrics' ``bleu_score`` (``n_gram``, ``smooth``) over :func:`tokenize`'s tokens.
    Empty responses are left out; problems with fewer than 2 responses are left out; ``nan``
    when none has 2. 0 means all responses of a problem are identical, 100 that they share no
    ``n_gram``-gram.

    >>> self_bleu(torch.tensor([0, 0, 1, 1]), ["a b c d", "a b c d", "a b c d", "w x y z"])  # (0 + 100) / 2
    tensor(50., dtype=torch.float64)
    """
    return _self_bleu_compute(*_self_bleu_update(group_ids, texts, n_gram, smooth))


def _distinct_correct_update(group_ids: Tensor, correct: Tensor, answers: list[str | None]
                             ) -> tuple[Tensor, Tensor]:
    per_group = distinct_correct(group_ids, correct, answers)
    return per_group.sum().double(), torch.tensor(per_group.numel(), dtype=torch.float64)


def distinct_correct_mean(group_ids: Tensor, correct: Tensor, answers: list[str | None]) -> Tensor:
    """Distinct correct solutions per problem, averaged over problems (CountDown: distinct
    normal-form equations among the correct samples; problems with none count 0).

    >>> distinct_correct_mean(torch.tensor([0, 0, 0, 1]), torch.tensor([True, True, True, False]), ["a", "a", "b", "c"])
    tensor(1., dtype=torch.float64)
    """
    return _ratio(*_distinct_correct_update(group_ids, correct, answers))
