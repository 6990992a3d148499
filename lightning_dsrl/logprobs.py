"""Logits of the completion positions of a rollout micro-batch, computed without waste.

Three things a naive ``model(prompt + completion).logits`` pays for and this does not:

1. **Logits at prompt positions.** Only positions that predict completion tokens go through the
   LM head (``logits_to_keep``); with a 49k vocabulary the head is a fifth of the compute per
   token and its output the largest tensor of the step.
2. **The prompt, G times.** The ``G`` completions of a group share their prompt.
3. **Padding.** Completions of one group differ in length; padded to the longest, a group with
   one 64-token completion and seven of 20 tokens spends more than half its compute on padding.

**Packed rows** (attention backends that take a custom 4-D mask: ``sdpa``, ``eager``) avoid all
three: each group becomes one row, its prompt followed by the fed tokens of each of its
completions (``completion[:-1]``), no padding between them, and a mask that lets each
completion see the prompt and its own earlier tokens only; position ids restart after the
prompt for every completion. The last prompt token's output predicts the first token of every
completion. One forward, one graph: it works under gradient checkpointing and sharding too.
Rows are capped at ``MAX_PACKED_TOKENS`` (the mask and the attention grow with the square of a
row). Preferred to the shared KV cache below where both apply: one forward instead of two, and
no padding at all.

**Shared KV cache** (other backends, or rows too long to pack): the prompt (all but its last
token) runs once per group, its cache is expanded to the group's completions
(``reorder_cache``), and ``last prompt token + completion[:-1]`` runs per completion, padded.
It runs two forwards in one graph, so not under gradient checkpointing (recomputation would
append to the cache twice) nor with gradient through a sharded model (the first forward's
gathered weights are freed before its backward).

Whichever of packed, cached and plain puts the fewest tokens through the model is taken. Both
ways of running a group's prompt once are what ``model.share_prompt_prefix`` turns on; generation
shares the prompt's prefill in the engine (``HFEngine(share_prompt_prefix)``), a separate option.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from lightning_dsrl import sharding
from lightning_dsrl.functional.groups import group_index
from lightning_dsrl.models import cache_kwargs
from lightning_dsrl.types import Rollout

__all__ = ["completion_logits"]

PACKABLE = ("sdpa", "eager")  # attention backends that take a custom 4-D mask
MAX_PACKED_TOKENS = 2048  # longest packed row: its [T, T] mask and attention grow with the square


def _plain(model, batch: Rollout, length: int) -> Tensor:
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids[:, :-1]], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask[:, :-1]], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                logits_to_keep=length, use_cache=False)
    return out.logits[:, -length:]


def _shared_kv_cache(model, batch: Rollout, length: int, first: Tensor, inverse: Tensor) -> Tensor:
    prompt_ids = batch.prompt_ids[first]  # [U, P] one row per group
    prompt_mask = batch.prompt_mask[first].long()
    prefix_mask = prompt_mask[:, :-1]  # [U, P-1]
    cache = DynamicCache()
    model(input_ids=prompt_ids[:, :-1], attention_mask=prefix_mask,
          position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0), **cache_kwargs(model, cache), logits_to_keep=1)
    cache.reorder_cache(inverse)  # [U, ...] -> [n, ...], one copy per completion (autograd-safe)
    inputs = torch.cat([batch.prompt_ids[:, -1:], batch.completion_ids[:, :-1]], dim=1)  # [n, L]
    attention = torch.cat([batch.prompt_mask, batch.completion_mask[:, :-1]], dim=1).long()  # [n, P-1+L]
    start = batch.prompt_mask.sum(-1, keepdim=True) - 1  # position of the last prompt token
    positions = start + torch.arange(length, device=inputs.device)  # [n, L]
    out = model(input_ids=inputs, attention_mask=attention, position_ids=positions, **cache_kwargs(model, cache),
                logits_to_keep=length)
    return out.logits[:, -length:]


def _packed_layout(batch: Rollout, first: Tensor, inverse: Tensor, fed: Tensor, prompt_len: Tensor,
                   row_fed: Tensor) -> tuple[Tensor, ...]:
    """Token, position and segment ids ``[U, T]`` of one row per group: its prompt (without padding),
    then the fed tokens ``completion[:-1]`` of each of its completions, right-padded; and for every
    completion token, the row column whose output predicts it ``[n, L]``.

    ``fed``: fed tokens per completion ``[n]``; ``prompt_len``, ``row_fed``: prompt tokens and fed completion
    tokens per row ``[U]`` (see :func:`completion_logits`). Segments: 0 for the prompt, ``i + 1`` for
    completion ``i``, -1 for padding.
    """
    device = batch.completion_ids.device
    n, length = batch.completion_ids.shape
    width = batch.prompt_ids.shape[1]
    lengths = batch.completion_mask.sum(-1)  # [n]
    # offset of each completion inside its row's completion area: fed tokens of earlier completions of its row
    order = torch.argsort(inverse, stable=True)  # completions row by row, in batch order within a row
    offset = torch.empty_like(fed)
    offset[order] = torch.cumsum(fed[order], 0) - fed[order] - (torch.cumsum(row_fed, 0) - row_fed)[inverse[order]]
    rows, cols = first.numel(), int((prompt_len + row_fed).max())
    column = torch.arange(cols, device=device)
    ids = torch.zeros((rows, cols), dtype=torch.long, device=device)
    positions = torch.zeros((rows, cols), dtype=torch.long, device=device)
    segments = torch.full((rows, cols), -1, dtype=torch.long, device=device)
    in_prompt = column < prompt_len[:, None]  # [U, T]
    source = (width - prompt_len[:, None] + column).clamp(max=width - 1)  # left-padded prompt column
    ids[in_prompt] = batch.prompt_ids[first].gather(1, source)[in_prompt]
    positions[in_prompt] = column.expand(rows, -1)[in_prompt]
    segments[in_prompt] = 0
    t = torch.arange(length, device=device)
    real = t < fed[:, None]  # [n, L] fed tokens
    row = inverse[:, None].expand(n, length)
    col = prompt_len[inverse][:, None] + offset[:, None] + t  # [n, L]
    ids[row[real], col[real]] = batch.completion_ids[real]
    positions[row[real], col[real]] = (prompt_len[inverse][:, None] + t).expand(n, -1)[real]
    segments[row[real], col[real]] = torch.arange(1, n + 1, device=device)[:, None].expand(n, length)[real]
    # token t is predicted by the last prompt token (t = 0) or by fed token t - 1; padding points anywhere valid
    predictor = torch.where((t >= 1) & (t < lengths[:, None]), col - 1, prompt_len[inverse][:, None] - 1)
    return ids, positions, segments, predictor


def _packed_rows(model, batch: Rollout, first: Tensor, inverse: Tensor, fed: Tensor, prompt_len: Tensor,
            row_fed: Tensor) -> Tensor:
    ids, positions, segments, predictor = _packed_layout(batch, first, inverse, fed, prompt_len, row_fed)
    cols = ids.shape[1]
    causal = torch.ones((cols, cols), dtype=torch.bool, device=ids.device).tril()
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((seg_k == 0) | (seg_k == seg_q))  # [U, T, T]: own prompt and own completion only
    if _attention(model) == "sdpa":  # boolean, True = attend: valid whatever dtype the attention computes in
        mask = allowed[:, None]
    else:  # eager adds the mask to the scores
        mask = torch.zeros(allowed[:, None].shape, device=ids.device).masked_fill(~allowed[:, None], torch.finfo().min)
    start = int(predictor.min())
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                logits_to_keep=cols - start)
    return out.logits[inverse[:, None], predictor - start]  # [n, L, V]


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers renamed the attribute in v5."""
    if hasattr(model, "get_base_model"):  # a peft (LoRA) wrapper: ask the transformers model inside
        model = model.get_base_model()
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _attention(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def completion_logits(model, batch: Rollout, share_prefix: bool = True,
                      max_packed_tokens: int = MAX_PACKED_TOKENS) -> Tensor:
    """``[n, L, V]`` logits whose position ``t`` predicts ``batch.completion_ids[:, t]``.

    Prompts are left-padded and completions right-padded, as in :class:`Rollout`;
    position ids follow the attention mask, as in generation. With ``share_prefix``, each group's
    prompt runs once, by whichever of packing and the shared KV cache puts fewer tokens through the
    model (see the module docstring); entries at padded completion positions are unspecified.
    """
    length = batch.completion_ids.shape[1]
    if not share_prefix or batch.prompt_ids.shape[1] < 2:
        return _plain(model, batch, length)
    inverse, counts = group_index(batch.group_ids)
    n, groups = batch.num_samples, counts.numel()
    first = torch.full((groups,), n, dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=inverse.device), "amin")
    fed = (batch.completion_mask.sum(-1) - 1).clamp(min=0)  # completion[:-1]: the last token predicts nothing
    prompt_len = batch.prompt_mask.sum(-1)[first]  # [U]
    row_fed = torch.zeros_like(first).index_add(0, inverse, fed)  # [U]
    row_len = int((prompt_len + row_fed).max())
    plain = n * (batch.prompt_ids.shape[1] + length - 1)
    cached = groups * (batch.prompt_ids.shape[1] - 1) + n * length
    if _attention(model) in PACKABLE and row_len <= max_packed_tokens and groups * row_len <= min(plain, cached):
        return _packed_rows(model, batch, first, inverse, fed, prompt_len, row_fed)
    # the cache path runs two forwards in one graph: checkpointing's recomputation would append to the cache
    # twice, and a sharded model frees the gathered weights the first forward's backward needs
    two_forwards = not _checkpointing(model) and not (torch.is_grad_enabled() and sharding.is_sharded(model))
    if groups < n and cached < plain and two_forwards:
        return _shared_kv_cache(model, batch, length, first, inverse)
    return _plain(model, batch, length)
