"""LoRA adapters on the policy (``model.lora``, via peft) and what leaves a run as plain weights.

:func:`apply_lora` wraps the policy so that only the adapter weights train; the reference model is
then the same network with its adapters disabled (no second copy in memory), and checkpoints hold
only the adapters. :func:`merged_weights` hands a rollout engine with its own copy of the model
(vLLM, ``HFEngine(weights: copy)``) the merged weights under the base model's names, and
:func:`export_merged` turns a run checkpoint back into one full model folder
(``scripts/export_merged.py``). peft is imported inside the functions that need it, so that loading a
model without LoRA never imports it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models.loading import ModelSpec, load_model, load_tokenizer

__all__ = ["LoraSpec", "apply_lora", "merged_weights", "export_merged"]


@dataclass
class LoraSpec:
    """LoRA adapters on the policy (the ``model.lora`` option); ``None`` there means full fine-tuning."""

    r: int = 16
    """rank of each adapter"""
    alpha: float = 32.0
    """scale: the update is ``alpha / r * B @ A``"""
    dropout: float = 0.0
    """dropout on the adapter input"""
    target_modules: list[str] | str = "all-linear"
    """module names to adapt (``[q_proj, v_proj]``, matched as name suffixes), ``all-linear``
    (every linear layer but the output head), or one regular expression over full module names"""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"model.lora: need r >= 1, alpha > 0 and 0 <= dropout < 1, got r={self.r}, "
                              f"alpha={self.alpha}, dropout={self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise ConfigError(f"model.lora.target_modules={self.target_modules!r} is not a valid regular "
                                  f"expression ({err}); give a list of module names instead") from None
        elif not isinstance(self.target_modules, str) and not self.target_modules:
            raise ConfigError("model.lora.target_modules is empty; list module names or use 'all-linear'")


def _adaptable_layers(model: torch.nn.Module) -> dict[str, str]:
    """Full name -> class name of every layer LoRA can adapt (linear, embedding, GPT-2's Conv1D)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding, Conv1D)
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)}


def _check_targets(model: PreTrainedModel, spec: LoraSpec) -> None:
    """Every requested target must match a layer; the error lists the layer names that exist."""
    layers = _adaptable_layers(model)
    names = sorted({name.rsplit(".", 1)[-1] for name in layers})
    if spec.target_modules == "all-linear":
        if not any(kind != "Embedding" for kind in layers.values()):
            raise ConfigError("model.lora.target_modules='all-linear': the model has no linear layer to adapt")
        return
    if isinstance(spec.target_modules, str):
        matched = [n for n in layers if re.fullmatch(spec.target_modules, n)]
        missing = [] if matched else [spec.target_modules]
    else:
        matched = [n for n in layers if any(n == t or n.endswith("." + t) for t in spec.target_modules)]
        missing = [t for t in spec.target_modules if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        raise ConfigError(f"model.lora.target_modules: {missing} match no layer of the model; its adaptable layers "
                          f"are named {names} (or use 'all-linear')")
    if getattr(model.config, "tie_word_embeddings", False):
        modules = {id(m): n for n, m in model.named_modules()}
        tied = {modules.get(id(m)) for m in (model.get_input_embeddings(), model.get_output_embeddings())}
        if hit := sorted(n for n in matched if n in tied):
            # the merged model would need two different matrices where the architecture holds one
            raise ConfigError(f"model.lora.target_modules: {hit} share their weight with the tied input/output "
                              "embedding (tie_word_embeddings), which a LoRA update would untie; adapt other layers "
                              "(e.g. 'all-linear', which leaves the output head out)")


def apply_lora(model: PreTrainedModel, spec: LoraSpec):
    """Wrap ``model`` in peft LoRA adapters; only the adapter weights keep ``requires_grad``."""
    from peft import LoraConfig, get_peft_model  # here: only a run with LoRA imports peft (see the docstring)

    _check_targets(model, spec)
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft (0.21) reads transformers' deprecated model.is_gradient_checkpointing; the call is peft's, not ours
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


_LORA_PART = re.compile(r"(?P<layer>.+)\.(?P<part>base_layer|lora_A|lora_B|lora_embedding_A|lora_embedding_B)\."
                        r"(?P<rest>.+)")
_PEFT_PREFIX = "base_model.model."
_FSDP1_WRAPPER = "_fsdp_wrapped_module."  # in FSDP1's module names, not in its (full) state dict's


def merged_weights(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """``weights``, the full state dict entries of ``model`` (e.g. from ``sharding.full_weights``), as a
    plain model of the base architecture holds them: with LoRA, each adapted layer's ``W + scale * B @ A``
    (transposed for embeddings and GPT-2's ``Conv1D``, as peft merges) under the base name
    (``model.layers.0.self_attn.q_proj.weight``), adapters dropped; a model without LoRA passes through.

    What an engine with its own weights loads. ``model`` itself is left as it is (no in-place merge:
    it goes on training the adapters); a layer's weight is held only until its adapters arrive.
    """
    from peft.tuners.lora import LoraLayer  # here: only a run with LoRA imports peft

    layers = {name.replace(_FSDP1_WRAPPER, ""): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        yield from weights
        return
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        match = _LORA_PART.fullmatch(name)
        if match is None or match["layer"] not in layers:
            yield name.removeprefix(_PEFT_PREFIX), tensor
            continue
        layer, part, rest = match["layer"], match["part"], match["rest"]
        module = layers[layer]
        (adapter,) = module.active_adapters
        if part == "base_layer" and rest != "weight":  # the bias: not adapted
            yield f"{layer}.{rest}".removeprefix(_PEFT_PREFIX), tensor
            continue
        if part != "base_layer" and rest not in (adapter, f"{adapter}.weight"):
            raise RuntimeError(f"weight sync: {name}: only the active adapter {adapter!r} can be merged")
        parts = pending.setdefault(layer, {})
        parts[part.removeprefix("lora_embedding_").removeprefix("lora_")] = tensor
        if len(parts) == 3:
            del pending[layer]
            delta = parts["B"].float() @ parts["A"].float()  # [out, in] ([dim, vocab] for an embedding)
            if adapter in module.lora_embedding_A or module.fan_in_fan_out:
                delta = delta.T
            base = parts["base_layer"]
            merged = (base.float() + module.scaling[adapter] * delta).to(base.dtype)
            yield f"{layer}.weight".removeprefix(_PEFT_PREFIX), merged
    if pending:
        layer, parts = next(iter(pending.items()))
        raise RuntimeError(f"weight sync: the LoRA layer {layer} sent only {sorted(parts)}")


def export_merged(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the policy of a run checkpoint as one full model folder (``save_pretrained`` + tokenizer).

    A LoRA checkpoint holds only adapters: the base model is rebuilt from the checkpoint's
    ``model_spec`` (the same ``name_or_path`` / ``gguf_file`` as the run), the adapters are
    loaded and merged into its weights. A full fine-tuning checkpoint is loaded as is.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if "model_spec" not in checkpoint:
        raise ConfigError(f"{checkpoint_path}: not a lightning_dsrl run checkpoint (no 'model_spec'); give "
                          "runs/<name>/version_<n>/checkpoints/<file>.ckpt")
    spec = ModelSpec(**checkpoint["model_spec"])
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    lora = checkpoint.get("lora")
    if lora is not None:
        model = apply_lora(model, LoraSpec(**lora))
    policy = {k[len("policy."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    missing, unexpected = model.load_state_dict(policy, strict=False)
    loaded = set(policy) - set(unexpected)
    if unexpected or not loaded:
        raise ConfigError(f"{checkpoint_path}: its weights do not fit {spec.name_or_path!r} "
                          f"({len(unexpected)} unexpected keys, e.g. {sorted(unexpected)[:3]})")
    if lora is not None:
        model = model.merge_and_unload()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

