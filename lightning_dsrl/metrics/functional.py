"""The metrics of ALGORITHMS.md section 5 as pure functions: the functional twins of the classes.

Each metric ``x`` is split as torchmetrics does it: ``_x_update`` turns a batch into summable
statistics (tensors, also for text input, so the state syncs across processes) and
``_x_compute`` turns statistics into the value; ``x`` is the two in a row.

Conventions: ``N`` completions labelled by ``group_ids`` (one label per problem; every sample of
a problem is in the same call), ``P`` problems, ``K`` values of ``k``. Counts ``n`` and ``c`` are
samples and correct samples per problem. A value that is undefined on the data (no correct
completion to take the entropy of, no extracted answer to count) is ``nan``; the caller says why
(see :class:`~lightning_dsrl.metrics.rollout.RolloutMetrics`). Input that can never make sense
(``k > n``, a problem with no sample) raises ``ValueError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.text import bleu_score

from lightning_dsrl.functional import pass_at_k

__all__ = [
    "group_counts",
    "distinct_correct",
    "tokenize",
    "powers_of_two",
    "pass_at_k_curve",
    "pass_at_k_bootstrap",
    "paired_pass_at_k_bootstrap",
    "mean_at_k",
    "potential_at_k",
    "div_equ",
    "div_answers",
    "distinct_n",
    "self_bleu",
    "distinct_correct_mean",
    "token_entropy",
]

_TOKEN = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------------------------------- groups
def group_counts(group_ids: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """Samples ``n`` and correct samples ``c`` of every group, ``[N], [N] -> [num_groups], [num_groups]``.

    >>> group_counts(torch.tensor([5, 5, 2]), torch.tensor([True, False, True]))
    (tensor([1, 2]), tensor([1, 1]))
    """
    _, index = torch.unique(group_ids, return_inverse=True)
    n = torch.bincount(index)
    c = torch.bincount(index, weights=correct.float(), minlength=n.numel()).long()
    return n, c


def _groups(group_ids: Tensor) -> list[list[int]]:
    """Sample positions of every group, groups in sorted label order."""
    labels = group_ids.tolist()
    found: dict[int, list[int]] = {}
    for i, g in enumerate(labels):
        found.setdefault(g, []).append(i)
    return [found[g] for g in sorted(found)]


def distinct_correct(group_ids: Tensor, correct: Tensor, answers: list[str | None]) -> Tensor:
    """Number of distinct correct answers in each group (groups in sorted label order).

    >>> distinct_correct(torch.tensor([0, 0, 0, 1]), torch.tensor([True, True, True, False]), ["a", "a", "b", "c"])
    tensor([2, 0])
    """
    flags = correct.tolist()
    return torch.tensor(
        [len({answers[i] for i in rows if flags[i] and answers[i] is not None}) for rows in _groups(group_ids)],
        dtype=torch.long,
    )


def tokenize(text: str) -> list[str]:
    """Words and single symbols, the unit of the n-gram metrics: ``\\w+`` runs and any other
    non-space character on its own (so ``(3+4)*2`` has 7 tokens, not 1 as with whitespace).

    >>> tokenize("<answer>(3+4)*2</answer>")
    ['<', 'answer', '>', '(', '3', '+', '4', ')', '*', '2', '<', '/', 'answer', '>']
    """
    return _TOKEN.findall(text)


# ---------------------------------------------------------------------------------------- pass@k
def powers_of_two(n: int) -> list[int]:
    """``[1, 2, 4, ..., n]`` (``n`` itself included even when it is not a power of two).

    >>> powers_of_two(12)
    [1, 2, 4, 8, 12]
    """
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


def _check_counts(n: Tensor, c: Tensor, ks: list[int] | None = None) -> None:
    if n.shape != c.shape or n.dim() != 1:
        raise ValueError(f"n and c must be 1-D and of equal length, got shapes {tuple(n.shape)} and {tuple(c.shape)}")
    if n.numel() and bool((n < 1).any()):
        raise ValueError(f"{int((n < 1).sum())} problem(s) have no sample (n = 0): every problem needs n >= 1")
    if bool(((c < 0) | (c > n)).any()):
        raise ValueError("correct counts must satisfy 0 <= c <= n for every problem")
    if ks is not None and n.numel():
        if any(k < 1 for k in ks):
            raise ValueError(f"k must be >= 1, got ks={ks}")
        if max(ks) > int(n.min()):
            raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per problem, but a problem has "
                             f"only n = {int(n.min())}: lower k or sample more (rollout.val_num_generations)")


def _pass_at_k_matrix(n: Tensor, c: Tensor, ks: list[int]) -> Tensor:
    """``[P, K]`` float64 pass@k of every problem for every ``k`` (unbiased estimator)."""
    return torch.stack([pass_at_k(n, c, k) for k in ks], dim=-1).reshape(n.numel(), len(ks))


def pass_at_k_curve(n: Tensor, c: Tensor, ks: list[int] | None = None) -> Tensor:
    """Mean over problems of the unbiased pass@k (Chen et al. 2021), one value per ``k``, ``[K]`` float64.

        pass@k = mean_problems [ 1 - C(n - c, k) / C(n, k) ]

    ``ks`` defaults to ``1, 2, 4, ..., min n``. Float64 log-gamma per problem
    (:func:`lightning_dsrl.functional.pass_at_k`): exact to ~1e-12 for n = 256.

    >>> pass_at_k_curve(torch.tensor([4, 4]), torch.tensor([1, 0]))  # (1/4 + 0)/2, (1/2 + 0)/2, (1 + 0)/2
    tensor([0.1250, 0.2500, 0.5000], dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    if n.numel() == 0:
        raise ValueError("pass@k of no problems: the evaluation set is empty")
    ks = ks or powers_of_two(int(n.min()))
    _check_counts(n, c, ks)
    return _pass_at_k_matrix(n, c, ks).mean(0)


def pass_at_k_bootstrap(
    n: Tensor, c: Tensor, ks: list[int], num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of :func:`pass_at_k_curve` over problems, ``([K], [K])``.

    Draw ``num_resamples`` sets of ``P`` problems with replacement, take the mean pass@k of each,
    and return the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. Problems are
    first put in ``(n, c)`` order, so the interval does not depend on the order they arrived in
    (or on how they were split across processes).
    """
    n, c = torch.as_tensor(n).flatten().long(), torch.as_tensor(c).flatten().long()
    _check_counts(n, c, ks)
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and num_resamples >= 1, got {confidence}, {num_resamples}")
    order = torch.argsort(n * (int(n.max()) + 1) + c, stable=True)
    values = _pass_at_k_matrix(n[order], c[order], ks)  # [P, K]
    num = n.numel()
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, num_resamples, 256):  # chunks keep the [chunk, P] weights small
        size = min(256, num_resamples - start)
        index = torch.randint(0, num, (size, num), generator=generator)
        weights = torch.zeros(size, num, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(size, num, dtype=torch.float64))  # [chunk, P] draw counts
        means.append(weights @ values.cpu() / num)  # [chunk, K]
    means = torch.cat(means)  # [num_resamples, K]
    alpha = (1.0 - confidence) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    low, high = torch.quantile(means, q, dim=0)
    return low.to(n.device), high.to(n.device)


def paired_pass_at_k_bootstrap(
    n_a: Tensor, c_a: Tensor, n_b: Tensor, c_b: Tensor, ks: list[int], num_resamples: int = 2000,
    confidence: float = 0.95, seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean difference of pass@k between two arms, ``b - a``, with a percentile bootstrap interval
    over seeds and problems: ``(difference [K], low [K], high [K])``, float64.

    Counts are ``[S, P]``: row ``s`` of each arm is its run with seed ``s``, evaluated on the same
    ``P`` problems in the same order, so the two arms are paired by seed and by problem. The
    difference is the mean over the ``S x P`` cells of ``pass@k(b) - pass@k(a)``; each resample
    draws ``S`` seeds and ``P`` problems with replacement, independently, and takes the mean over
    the drawn cells, so the interval covers both the spread between seeds and between problems.

    >>> n = torch.full((1, 2), 4)
    >>> paired_pass_at_k_bootstrap(n, torch.tensor([[1, 0]]), n, torch.tensor([[3, 0]]), [1])[0]  # (3/4 - 1/4 + 0)/2
    tensor([0.2500], dtype=torch.float64)
    """
    counts = [torch.as_tensor(x).long() for x in (n_a, c_a, n_b, c_b)]
    if any(x.dim() != 2 or x.shape != counts[0].shape for x in counts) or not counts[0].numel():
        raise ValueError(f"counts must be [seeds, problems] of one shape, got {[tuple(x.shape) for x in counts]}")
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and num_resamples >= 1, got {confidence}, {num_resamples}")
    for n, c in ((counts[0], counts[1]), (counts[2], counts[3])):
        _check_counts(n.flatten(), c.flatten(), ks)
    num_seeds, num_problems = counts[0].shape
    diff = (_pass_at_k_matrix(counts[2].flatten(), counts[3].flatten(), ks)
            - _pass_at_k_matrix(counts[0].flatten(), counts[1].flatten(), ks)).reshape(num_seeds, num_problems, -1)
    generator = torch.Generator().manual_seed(seed)

    def draws(size: int, num: int) -> Tensor:
        """``[size, num]``: how often each of ``num`` indices is drawn in each of ``size`` resamples."""
        index = torch.randint(0, num, (size, num), generator=generator)
        ones = torch.ones(size, num, dtype=torch.float64)
        return torch.zeros(size, num, dtype=torch.float64).scatter_add_(1, index, ones)

    means = []
    for start in range(0, num_resamples, 256):
        size = min(256, num_resamples - start)
        means.append(torch.einsum("rs,spk,rp->rk", draws(size, num_seeds), diff, draws(size, num_problems))
                     / (num_seeds * num_problems))  # [size, K]
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(torch.cat(means), torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64), dim=0)
    return diff.mean(dim=(0, 1)), low, high


def mean_at_k(n: Tensor, c: Tensor) -> Tensor:
    """Mean@k (avg@k): expected accuracy of k samples, averaged over problems, ``[]`` float64.

        mean@k = mean_problems [ c / n ]

    The unbiased estimate of the accuracy of any ``k <= n`` of the samples is ``c / n``, so the
    value does not depend on ``k``.

    >>> mean_at_k(torch.tensor([4, 2]), torch.tensor([1, 2]))  # (1/4 + 2/2) / 2
    tensor(0.6250, dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    _check_counts(n, c)
    if n.numel() == 0:
        raise ValueError("mean@k of no problems: the evaluation set is empty")
    return (c.double() / n.double()).mean()


def potential_at_k(n: Tensor, c: Tensor, greedy_correct: Tensor, ks: list[int] | None = None) -> Tensor:
    """Potential@k ([DIV]): among the problems greedy decoding fails, the mean unbiased pass@k, ``[K]``.

        potential@k = mean_{problems with greedy wrong} [ 1 - C(n - c, k) / C(n, k) ]

    ``nan`` for every ``k`` when greedy decoding solves every problem (no headroom to measure).

    >>> potential_at_k(torch.tensor([4, 4, 4]), torch.tensor([2, 1, 4]), torch.tensor([False, False, True]), [1, 4])
    tensor([0.3750, 1.0000], dtype=torch.float64)
    """
    n, c = torch.as_tensor(n).flatten(), torch.as_tensor(c).flatten()
    failed = ~torch.as_tensor(greedy_correct, dtype=torch.bool).flatten()
    if failed.numel() != n.numel():
        raise ValueError(f"greedy_correct has {failed.numel()} entries for {n.numel()} problems")
    if n.numel() == 0:
        raise ValueError("potential@k of no problems: the evaluation set is empty")
    ks = ks or powers_of_two(int(n.min()))
    _check_counts(n, c, ks)
    if not bool(failed.any()):
        return torch.full((len(ks),), math.nan, dtype=torch.float64, device=n.device)
    return _pass_at_k_matrix(n[failed], c[failed], ks).mean(0)


# ---------------------------------------------------------------------------------------- diversity
def _div_equ_update(group_ids: Tensor, equations: list[Sequence[str] | None]) -> tuple[Tensor, Tensor]:
    """Sum over problems with at least one extracted equation of ``100 * distinct / extracted``
    (every completion's equations pooled), and the number of such problems."""
    total, count = 0.0, 0
    for rows in _groups(group_ids):
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
    for rows in _groups(group_ids):
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


# ---------------------------------------------------------------------------------------- entropy
def _token_entropy_update(entropy: Tensor, mask: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """``[3]`` sums of token entropy and ``[3]`` token counts over all / correct / incorrect completions."""
    mask = mask.to(torch.float64)
    per_seq = (entropy.detach().to(torch.float64) * mask).sum(-1)  # [N]
    tokens = mask.sum(-1)  # [N]
    ok = correct.to(torch.bool)
    sums = torch.stack([per_seq.sum(), per_seq[ok].sum(), per_seq[~ok].sum()])
    counts = torch.stack([tokens.sum(), tokens[ok].sum(), tokens[~ok].sum()])
    return sums, counts


def _token_entropy_compute(sums: Tensor, counts: Tensor) -> Tensor:
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


def token_entropy(entropy: Tensor, mask: Tensor, correct: Tensor) -> Tensor:
    """Mean per-token entropy over all / correct / incorrect completions, ``[N, L], [N, L], [N] -> [3]``.

        H_set = sum_{i in set, t} H(i,t) / sum_{i in set} T_i      (token-weighted; nan for an empty set)

    ``entropy[i, t]`` is the entropy of the policy's full next-token distribution at the
    sampling temperature (:func:`lightning_dsrl.functional.entropy_from_logits`).

    >>> token_entropy(torch.tensor([[1., 3.], [4., 9.]]), torch.tensor([[1, 1], [1, 0]]), torch.tensor([True, False]))
    tensor([2.6667, 2.0000, 4.0000], dtype=torch.float64)
    """
    return _token_entropy_compute(*_token_entropy_update(entropy, mask, correct))
