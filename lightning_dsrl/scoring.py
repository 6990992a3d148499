"""``Scorer``: a model's log-probs and token entropy on completions, at the sampling temperature.

Used by the module (old and reference log-probs, the update's forward, validation entropy) and handed
to the engines that check their own weights against the trainer's (the weight-sync probe), so the
same code computes every log-prob the framework compares.

Log-probs use the sampling temperature (``logits / T``), so they describe the distribution the
completions were drawn from. Logits exist for completion positions only, one micro-batch at a time
(:mod:`lightning_dsrl.logprobs`), so no ``[N, L, V]`` tensor for the whole batch ever exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import Tensor

from lightning_dsrl.distributed import passes_on_all_ranks
from lightning_dsrl.functional import entropy_from_logits, token_logprobs
from lightning_dsrl.logprobs import completion_logits
from lightning_dsrl.types import Rollout

__all__ = ["Scorer", "micro_batches_on_all_ranks"]

B = TypeVar("B", bound=Rollout)


def micro_batches_on_all_ranks(batch: B, size: int, device: torch.device) -> list[tuple[B, bool]]:
    """``batch`` in consecutive micro-batches of ``size`` completions (trimmed of padding columns), each
    with whether it is real; padded with repeats of the last one (``False``: run and discard) so that
    every rank runs as many passes as the longest rank (a sharded forward is a collective)."""
    micros = [micro.trim() for micro in batch.micro_batches(size)]
    extra = passes_on_all_ranks(len(micros), device) - len(micros)
    return [(micro, True) for micro in micros] + [(micros[-1], False)] * extra


@dataclass(frozen=True)
class Scorer:
    """Log-probs and entropy of completion tokens under a model.

    Args:
        micro_batch_size: completions per forward in :meth:`per_token`.
        share_prompt_prefix: run each group's prompt once, its completions packed behind it in one row or
            reading its KV cache (:mod:`lightning_dsrl.logprobs`; same values, less compute).
    """

    micro_batch_size: int = 16
    share_prompt_prefix: bool = True

    def logprobs(self, model, batch: Rollout, entropy: Literal["none", "detached", "grad"] = "none"
                 ) -> tuple[Tensor, Tensor | None]:
        """Log-probs ``[n, L]`` of the completion tokens under ``model`` in one forward, and the token
        entropy ``[n, L]`` of its full distribution when asked (with or without gradient). Padded
        positions are zero."""
        logits = completion_logits(model, batch, self.share_prompt_prefix)  # [n, L, V], one micro-batch only
        # float32 before the temperature: dividing bf16 logits rounds them to 8 bits of mantissa
        logits = logits.float()
        if batch.temperature != 1.0:
            logits = logits / batch.temperature
        mask = batch.completion_mask
        logp = token_logprobs(logits, batch.completion_ids).masked_fill(~mask, 0.0)  # [n, L] fp32
        if entropy == "none":
            return logp, None
        with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
            token_entropy = entropy_from_logits(logits).masked_fill(~mask, 0.0)
        return logp, token_entropy

    @torch.no_grad()
    def per_token(self, model, rollout: Rollout, device: torch.device,
                  what: Literal["logprobs", "entropy"] = "logprobs") -> Tensor:
        """``[N, L]`` log-probs (or token entropies) of every completion, micro-batch by micro-batch,
        without gradient; every rank runs as many forwards as the longest rank."""
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        start = 0
        for micro, real in micro_batches_on_all_ranks(rollout, self.micro_batch_size, device):
            logp, entropy = self.logprobs(model, micro, entropy="detached" if what == "entropy" else "none")
            values = entropy if what == "entropy" else logp
            if real:
                out[start : start + micro.num_samples, : values.shape[1]] = values
                start += micro.num_samples
        return out
