"""Checkpoints: what they leave out, the state Lightning does not save (exact resume), and a clear error
for a checkpoint of another model.

A checkpoint never holds the frozen reference model (it is rebuilt from ``name_or_path``), nor, with
LoRA, the base weights: only the adapters (:func:`save_checkpoint_state`); it records the model spec
and LoRA settings that ``scripts/export_merged.py`` rebuilds the model from.

Lightning's checkpoint holds the weights, the optimizer and scheduler states, the loop counters
(global step, epoch, batches seen) and the state of a stateful train dataloader (our
:class:`~lightning_dsrl.data.sampler.PromptLoader` saves how far into the epoch it was). What it
leaves out and a run killed at step N needs, to continue as if it had never stopped:

- the random number generators of **every rank** (torch, CUDA, Python, NumPy): HF sampling draws
  from torch's global generator, so without them the rollouts after a resume differ;
- the module's own minibatch-shuffle generator and its step counters (skipped steps, ...).

:func:`save_checkpoint_state` stores them under ``checkpoint["resume_state"]`` (gathered from
all ranks; plain values and tensors only, so ``weights_only=True`` loads them) and
``on_load_checkpoint`` puts each rank's back. ``HFEngine`` samples from torch's generators, so its
rollouts after a resume are the uninterrupted run's, with ``weights: shared`` or ``copy``
(``tests/test_resume.py``). ``VLLMEngine`` samples from vLLM's own generator, seeded with
``seed + rank`` when the engine starts and not saved: after a resume it starts that stream again, so
its rollouts are valid samples but not the ones the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import numpy as np
import torch

from lightning_dsrl import distributed, sharding
from lightning_dsrl.errors import ConfigError

__all__ = ["check_checkpoint", "check_shapes", "module_state", "restore_module_state", "rng_states",
           "save_checkpoint_state", "set_rng_states"]

log = logging.getLogger(__name__)

# the checkpoint's keys of the module's counters (the names they had when the format was fixed)
_COUNTERS = {"_skipped_steps": "skipped_steps", "_zero_signal_steps": "zero_signal_steps",
             "_nonfinite_in_a_row": "nonfinite_in_a_row"}


def rng_states() -> dict[str, Any]:
    """This process's generators as tensors and plain values (NumPy's key array as a tensor)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))


def module_state(module) -> dict[str, Any]:
    """What ``RLModule`` adds to a checkpoint: every rank's generators (a collective: Lightning builds
    the checkpoint on every rank), the shuffle generator and the counters."""
    state = {"rng": distributed.all_gather_objects(rng_states()), "shuffle": module.shuffle.get_state(),
             "_rollouts_seen": module.rollouts_seen}
    state.update({key: getattr(module.counters, name) for key, name in _COUNTERS.items()})
    return state


def restore_module_state(module, state: dict[str, Any] | None) -> None:
    """Put back what :func:`module_state` saved (nothing for checkpoints written before it existed)."""
    if not state:
        return
    ranks = state["rng"]
    rank = module.global_rank if module._trainer is not None else 0
    if len(ranks) != distributed.world_size():
        log.warning("the checkpoint was written by %d processes and is resumed by %d: random states restart "
                    "from rank 0's, so the run will not repeat the uninterrupted one exactly", len(ranks),
                    distributed.world_size())
        rank = 0
    set_rng_states(ranks[rank])
    module.shuffle.set_state(state["shuffle"])
    module.rollouts_seen = state["_rollouts_seen"]
    for key, name in _COUNTERS.items():
        setattr(module.counters, name, state[key])


def check_shapes(module, state_dict: dict[str, Any]) -> None:
    """``ConfigError`` naming the first tensor whose shape differs between the checkpoint and the
    model built from the config (loading is not strict, as the reference is never saved, so a
    checkpoint of another model would otherwise fail deep inside ``load_state_dict``).

    FSDP1 models are skipped (their parameters are flat shards; FSDP1's loader reports it itself).
    """
    if not state_dict or module.policy is None or sharding.is_fsdp1(module.policy):
        return
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}  # DTensor shapes are the global ones
    saved = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    common = [k for k in saved if k in own]
    if not common and any(k.startswith("policy.") for k in saved):
        raise ConfigError(f"ckpt_path: none of the checkpoint's weights (e.g. {next(iter(saved))}) exists in the model "
                          f"built from model.name_or_path={module.spec.name_or_path!r}; the checkpoint comes from "
                          "another model: use the run's own config (its config.yaml) with --ckpt_path")
    for key in common:
        if saved[key] != own[key]:
            raise ConfigError(f"ckpt_path: the checkpoint's {key} has shape {list(saved[key])} but the model built from "
                              f"model.name_or_path={module.spec.name_or_path!r} has {list(own[key])}; the checkpoint "
                              "comes from a different model: use the run's own config (its config.yaml) with --ckpt_path")


def save_checkpoint_state(module, checkpoint: dict[str, Any]) -> None:
    """What ``RLModule.on_save_checkpoint`` does to the checkpoint Lightning built: the reference (and with
    LoRA the base weights) out, the model spec, the LoRA settings and the resume state in."""
    state = checkpoint.get("state_dict", {})
    for key in [k for k in state if k.startswith("reference.")]:
        del state[key]
    if module.lora is not None:  # the base weights are rebuilt from name_or_path too: keep the adapters only
        trainable = {f"policy.{n}" for n, p in module.policy.named_parameters() if p.requires_grad}
        for key in [k for k in state if k.startswith("policy.") and k not in trainable]:
            del state[key]
    # what scripts/export_merged.py needs to rebuild the model (plain types only)
    checkpoint["model_spec"] = dataclasses.asdict(module.spec)
    checkpoint["lora"] = dataclasses.asdict(module.lora) if module.lora is not None else None
    checkpoint["resume_state"] = module_state(module)  # RNG states of every rank, counters (exact resume)


def check_checkpoint(module, checkpoint: dict[str, Any]) -> None:
    """``ConfigError`` for a checkpoint of another model than ``module``'s config builds."""
    # loading is not strict (the reference, and with LoRA the base weights, are absent), so a
    # LoRA checkpoint into a full model or the reverse would load nothing: refuse it instead
    if "model_spec" in checkpoint and (checkpoint.get("lora") is None) != (module.lora is None):
        trained = "with" if checkpoint.get("lora") is not None else "without"
        raise ConfigError(f"the checkpoint was trained {trained} LoRA but model.lora is "
                          f"{'set' if module.lora is not None else 'null'}; use the run's own config "
                          "(its config.yaml) with --ckpt_path")
    check_shapes(module, checkpoint.get("state_dict", {}))
