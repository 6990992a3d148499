"""Sharded models: FSDP wrapping, their full weights and their gradient clipping.

Lightning's strategies launch the processes and, for FSDP, call ``RLModule.configure_model``,
where the policy (and the frozen reference) are sharded here (:func:`shard_models`):

- ``FSDP2Strategy`` (``ModelParallelStrategy`` with every process in one data-parallel mesh
  dimension): ``fully_shard`` on each decoder layer, then on the whole model, so a forward
  all-gathers one layer at a time and parameters and gradients are ``DTensor`` shards.
- ``FSDPStrategy`` (FSDP1): the policy becomes its own ``FullyShardedDataParallel`` root with
  one unit per decoder layer (``use_orig_params=True``), so every call of the policy is a full
  root forward and several forward/backward passes per step work as with a plain model.
- DDP: nothing to do here; Lightning wraps the module and averages gradients in backward.

The collectives over the processes (and why every rank must run the same ones) are in
:mod:`lightning_dsrl.distributed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch import Tensor, nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.distributed.tensor import DTensor

from lightning_dsrl.checkpoint_io import refuse_weights_only_false, tensors_only
from lightning_dsrl.errors import ConfigError

__all__ = [
    "FSDP2Strategy",
    "clip_grad_norm",
    "decoder_layers",
    "full_weights",
    "is_fsdp1",
    "is_sharded",
    "shard_fsdp2",
    "shard_models",
    "wrap_fsdp1",
]


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2 data parallelism: one mesh dimension
    holding every process (``data_parallel_size`` = world size, ``tensor_parallel_size`` = 1).

    ``ModelParallelStrategy`` itself asks for both sizes and by default treats the processes of a
    node as a tensor-parallel group; this subclass fixes the sizes so that ``--trainer.devices``
    and ``--trainer.num_nodes`` alone decide the layout, and the overlay config stays the same on
    any machine. ``RLModule.configure_model`` applies ``fully_shard`` over the mesh's
    ``data_parallel`` dimension.

    Args:
        save_distributed_checkpoint: ``True``: every rank writes its own shard (a checkpoint is then a
            directory); ``False``: the full state is gathered on rank 0 and written as one file,
            atomically (fine for models that fit in one process's CPU memory).
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs (default: chosen from the device).
    """

    def __init__(self, save_distributed_checkpoint: bool = False, process_group_backend: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.pop("data_parallel_size", None)
        kwargs.pop("tensor_parallel_size", None)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loader, after the checks a checkpoint gets on one device. Lightning writes the weights
        straight into the shards, before ``RLModule.on_load_checkpoint`` runs, and without the trainer's
        ``CheckpointIO``; so the file is first read here with ``weights_only=True`` (a file holding
        pickled objects is refused, see :mod:`lightning_dsrl.checkpoint_io`) and given to the module's
        ``check_checkpoint``, which refuses a checkpoint of another model shape naming both shapes. Every
        rank reads the same file, so every rank raises alike."""
        refuse_weights_only_false(weights_only)
        path = Path(self.broadcast(checkpoint_path))
        checkpoint = _read_checkpoint(path)
        check = getattr(self.lightning_module, "check_checkpoint", None)
        if checkpoint is not None and check is not None:
            check(checkpoint)
        return super().load_checkpoint(path, weights_only=True)


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's contents for checking, tensors only: a full checkpoint file memory-mapped, or a
    sharded one's metadata with its weights as meta tensors of their global shapes (``None``: neither;
    Lightning's loader names the problem)."""
    if not path.is_file() and not (path / _METADATA_FILENAME).is_file():
        return None
    if path.is_file():
        with tensors_only(path):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    with tensors_only(path / _METADATA_FILENAME):
        checkpoint = torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=True)
    stored = FileSystemReader(path).read_metadata().state_dict_metadata
    checkpoint["state_dict"] = {key.removeprefix("state_dict."): torch.empty(tuple(meta.size), device="meta")
                                for key, meta in stored.items() if key.startswith("state_dict.") and hasattr(meta, "size")}
    return checkpoint


# ---------------------------------------------------------------------- sharding the models
def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (the classes it lists in ``_no_split_modules``,
    e.g. ``LlamaDecoderLayer``): the units FSDP shards and gathers one at a time."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"trainer.strategy: cannot shard {type(model).__name__}: the model declares no decoder "
                          "layer classes (_no_split_modules); use DDP (trainer.strategy: ddp) for this model")
    return layers


def shard_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, LM head)."""
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_fsdp1(model: nn.Module, strategy) -> nn.Module:
    """The model as its own FSDP1 root with one unit per decoder layer, with the strategy's settings."""
    device = strategy.root_device
    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=ModuleWrapPolicy({type(layer) for layer in decoder_layers(model)}),
        cpu_offload=strategy.cpu_offload,
        mixed_precision=strategy.mixed_precision_config,
        sharding_strategy=strategy.sharding_strategy,
        device_id=device.index if device.type == "cuda" else None,
        use_orig_params=True,  # frozen and trainable parameters may share a unit; names stay the model's own
    )


def shard_models(strategy, policy: nn.Module, reference: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """The policy and the reference as ``strategy`` wants them: FSDP2 (``FSDP2Strategy`` /
    ``ModelParallelStrategy``, sharded in place) or FSDP1 (``FSDPStrategy``, wrapped); as they are
    for DDP or a single device."""
    if isinstance(strategy, ModelParallelStrategy):
        if strategy.device_mesh["tensor_parallel"].size() != 1:
            raise ConfigError("trainer.strategy: tensor parallelism of the policy is not supported; use "
                              "FSDP2Strategy (data_parallel over every device, tensor_parallel_size 1)")
        for model in (policy, reference):
            if model is not None:
                shard_fsdp2(model, strategy.device_mesh["data_parallel"])
    elif isinstance(strategy, FSDPStrategy):
        policy = wrap_fsdp1(policy, strategy)
        reference = wrap_fsdp1(reference, strategy) if reference is not None else None
    return policy, reference


def is_fsdp1(model: nn.Module) -> bool:
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _is_dtensor(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether the model's parameters live in shards across processes (FSDP1 or FSDP2)."""
    return any(_is_dtensor(p) for p in model.parameters()) or is_fsdp1(model)


# ---------------------------------------------------------------------- operations on a sharded model
def clip_grad_norm(params: list[Tensor], max_norm: float) -> float:
    """Clip the global gradient norm of ``params`` to ``max_norm``; returns the norm before clipping,
    the same on every rank.

    FSDP2 gradients are ``DTensor`` shards: their norm is a partial value that ``full_tensor()``
    reduces over the ranks before the clip coefficient is formed (otherwise each rank would clip
    with its own shard's norm). DDP gradients are already identical on every rank. FSDP1 clips its
    own way (:func:`clip_policy_gradients`).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if _is_dtensor(total):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def clip_policy_gradients(model: nn.Module, max_norm: float | None) -> float:
    """Clip the gradient norm of ``model``'s parameters to ``max_norm`` (``None``: only measure it); returns
    the norm before clipping, the same on every rank. FSDP1 clips with its own collective over the flat
    shards of every unit."""
    max_norm = max_norm if max_norm is not None else float("inf")
    if is_fsdp1(model):
        return float(model.clip_grad_norm_(max_norm))
    return clip_grad_norm([p for p in model.parameters() if p.grad is not None], max_norm)


def full_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, full tensor)`` for every entry of the model's state dict, gathered from the shards
    one tensor at a time (a collective per tensor on a sharded model: call it on every rank).

    Names are the model's own (``model.layers.0.self_attn.q_proj.weight``), as ``save_pretrained``
    writes them; tied weights appear under each of their names.
    """
    if is_fsdp1(model):
        # FSDP1 gathers the whole state dict at once; every rank gets it (cpu_offload would keep rank 0's only)
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        yield from state.items()
        return
    for name, tensor in model.state_dict().items():
        yield name, tensor.full_tensor() if _is_dtensor(tensor) else tensor


def _register() -> None:
    """``--trainer.strategy fsdp2`` as a short name, beside Lightning's ``ddp`` and ``fsdp``."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 data parallelism (lightning_dsrl)")


_register()
