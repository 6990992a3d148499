"""Padding token-id lists into tensors: prompts on the left, completions on the right."""

from __future__ import annotations

import torch

__all__ = ["pad_left", "pad_right"]


def pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, P]`` ids and bool mask, each row right-aligned (prompts)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = True
    return ids, mask


def pad_right(rows: list[list[int]], pad: int, min_width: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, L]`` ids and bool mask, each row left-aligned (completions); at least ``min_width`` wide."""
    width = max([min_width] + [len(r) for r in rows])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
    return ids, mask
