"""Padding into rectangles: prompts on the left (generation continues them), completions on the right.

    pad_left(rows) / pad_right(rows)   lists of token ids (or log-probs) -> [N, width] values and bool mask
    pad_columns(t, width, left)        a tensor widened to ``width`` columns (joining rollouts)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pad_left", "pad_right", "pad_columns"]


def _pad(rows: list[list], pad: float, width: int, left: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            columns = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, columns] = torch.tensor(row, dtype=dtype)
            mask[i, columns] = True
    return ids, mask


def pad_left(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """``[N, P]`` ids and bool mask, each row right-aligned (prompts)."""
    return _pad(rows, pad, max((len(r) for r in rows), default=0), True, torch.long)


def pad_right(rows: list[list[int]] | list[list[float]], pad: float, min_width: int = 1,
              dtype: torch.dtype = torch.long) -> tuple[Tensor, Tensor]:
    """``[N, L]`` values and bool mask, each row left-aligned (completions, or their log-probs with a float
    ``dtype``); at least ``min_width`` wide."""
    return _pad(rows, pad, max([min_width] + [len(r) for r in rows]), False, dtype)


def pad_columns(t: Tensor, width: int, value: float | bool, left: bool) -> Tensor:
    """``t`` ``[N, W]`` widened to ``[N, width]`` with ``value`` on the left (prompts) or the right."""
    extra = width - t.shape[1]
    if extra == 0:
        return t
    filler = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([filler, t] if left else [t, filler], dim=1)
