"""The metrics of ALGORITHMS.md section 5 as pure functions: the functional twins of the classes.

    passk.py      pass_at_k_curve (+ bootstrap interval), mean_at_k, potential_at_k, powers_of_two
    diversity.py  div_equ, div_answers, distinct_n, self_bleu, distinct_correct(_mean), tokenize
    entropy.py    token_entropy (all / correct / incorrect)

``group_counts`` (samples and correct samples per problem) is the framework's own,
:mod:`lightning_dsrl.functional.groups`. Conventions: ``N`` completions labelled by ``group_ids``
(one label per problem), ``P`` problems, ``K`` values of ``k``; a value undefined on the data is ``nan``.
"""

from lightning_dsrl.functional.groups import group_counts
from lightning_dsrl.metrics.functional.diversity import (
    distinct_correct,
    distinct_correct_mean,
    distinct_n,
    div_answers,
    div_equ,
    self_bleu,
    tokenize,
)
from lightning_dsrl.metrics.functional.entropy import token_entropy
from lightning_dsrl.metrics.functional.passk import (
    _check_counts,  # noqa: F401 - for metrics/paired.py
    _pass_at_k_matrix,  # noqa: F401 - for metrics/paired.py
    mean_at_k,
    pass_at_k_bootstrap,
    pass_at_k_curve,
    potential_at_k,
    powers_of_two,
)

__all__ = [
    "group_counts",
    "distinct_correct",
    "tokenize",
    "powers_of_two",
    "pass_at_k_curve",
    "pass_at_k_bootstrap",
    "mean_at_k",
    "potential_at_k",
    "div_equ",
    "div_answers",
    "distinct_n",
    "self_bleu",
    "distinct_correct_mean",
    "token_entropy",
]
