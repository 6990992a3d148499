"""``TokenEntropy``: mean per-token entropy of the policy on its own samples, split by verdict.

The input is the entropy of the full next-token distribution at every completion position
(``Scorer.logprobs(..., entropy="detached")``, at the sampling temperature); the
state is three token-entropy sums and three token counts (all / correct / incorrect), summed
across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_dsrl.metrics.functional.entropy import _token_entropy_compute, _token_entropy_update

__all__ = ["TokenEntropy"]


class TokenEntropy(Metric):
    """Token-weighted mean entropy over all, correct and incorrect completions.

    ``update(entropy [N, L], mask [N, L], correct [N])``; ``compute()`` returns
    ``{"all", "correct", "incorrect"}``, ``nan`` for a set with no token (e.g. no correct completion).

    >>> metric = TokenEntropy()
    >>> metric.update(torch.tensor([[1., 3.], [4., 9.]]), torch.tensor([[1, 1], [1, 0]]), torch.tensor([True, False]))
    >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
    {'all': 2.6667, 'correct': 2.0, 'incorrect': 4.0}
    """

    is_differentiable = False
    higher_is_better = None  # more is not better: it is what diversity-preserving methods watch
    full_state_update = False
    keys = ("all", "correct", "incorrect")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sums", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, entropy: Tensor, mask: Tensor, correct: Tensor) -> None:
        if entropy.shape != mask.shape or entropy.shape[:1] != correct.shape:
            raise ValueError(f"entropy {tuple(entropy.shape)}, mask {tuple(mask.shape)} and correct "
                             f"{tuple(correct.shape)} must be [N, L], [N, L], [N]")
        sums, counts = _token_entropy_update(entropy, mask, correct)
        self.sums += sums.to(self.sums)
        self.counts += counts.to(self.counts)

    def compute(self) -> dict[str, Tensor]:
        return dict(zip(self.keys, _token_entropy_compute(self.sums, self.counts)))
