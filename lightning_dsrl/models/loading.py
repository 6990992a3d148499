"""Load the policy (and its frozen reference copy) and the tokenizer from a model name or path.

``name_or_path`` is what ``from_pretrained`` takes (a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``
or a local directory), or a ``pkg://`` path, with an optional ``gguf_file`` inside it
(:mod:`lightning_dsrl.models.packaged`).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models.packaged import materialize_gguf, resolve_model_path

__all__ = ["ModelSpec", "DEFAULT_MODEL", "DTYPES", "local_path", "load_tokenizer", "load_model", "cache_kwargs"]

DEFAULT_MODEL = "pkg://lightning_dsrl/assets/countdown-lm"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """Where the policy comes from and how it is loaded (the ``model.*`` options of a config)."""

    name_or_path: str = DEFAULT_MODEL
    """hub id, local directory, or ``pkg://package/path``"""
    gguf_file: str | None = None
    """a GGUF file inside ``name_or_path``, de-quantised to float weights once"""
    torch_dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16`` weights"""
    attn_implementation: str | None = None
    """transformers attention backend (``sdpa``, ``eager``, ...; ``None``: the model's default)"""
    gradient_checkpointing: bool = False
    """recompute activations in backward to save memory"""
    trust_remote_code: bool = False
    """allow model code from the hub"""

    def __post_init__(self) -> None:
        if self.torch_dtype not in DTYPES:
            raise ConfigError(f"model.torch_dtype={self.torch_dtype!r} is not supported; use one of {sorted(DTYPES)}")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name.strip("/").replace("/", "", 1)


def local_path(spec: ModelSpec) -> str:
    """The folder ``from_pretrained`` reads for ``spec``: ``pkg://`` resolved, a GGUF file de-quantised once."""
    path = resolve_model_path(spec.name_or_path)
    if not os.path.exists(path) and _looks_like_path(spec.name_or_path):
        raise ConfigError(f"model.name_or_path={spec.name_or_path!r}: no such directory. Give a directory with "
                          "config.json and weights (the output of save_pretrained), or a hub id such as "
                          "'Qwen/Qwen2.5-0.5B-Instruct'")
    if spec.gguf_file:
        return materialize_gguf(path, spec.gguf_file)
    return path


def _load_error(spec: ModelSpec, what: str, err: Exception) -> ConfigError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = spec.name_or_path
    hint = (
        "If it is a hub id, this machine needs the network once (or HF_HOME pointing at a cache that "
        "holds it; HF_HUB_OFFLINE=1 forbids downloads); otherwise give a local directory with "
        "config.json and weights, e.g. the output of save_pretrained."
    )
    return ConfigError(f"model.name_or_path={where!r}: could not load the {what} ({first}). {hint}")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (the EOS token when it has none) and left padding."""
    path = local_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise _load_error(spec, "tokenizer", err) from err
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model.name_or_path={spec.name_or_path!r}: the tokenizer has no EOS token, "
                          "so completions could never stop; set tokenizer.eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(spec: ModelSpec) -> PreTrainedModel:
    """The causal LM in ``spec.torch_dtype``, in train mode, ready for full fine-tuning."""
    path = local_path(spec)
    kwargs = {"dtype": DTYPES[spec.torch_dtype], "trust_remote_code": spec.trust_remote_code}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(spec, "model", err) from err
    if spec.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name warns)
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """The forward keywords that make ``model`` read and extend the KV cache ``cache``.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40 drops
    it); earlier versions and remote code know only the old name. Wrappers (peft, FSDP1) pass
    keywords through, so the model inside them decides.
    """
    inner = model
    while True:
        if hasattr(inner, "get_base_model"):
            nested = inner.get_base_model()
        elif isinstance(getattr(inner, "module", None), torch.nn.Module):
            nested = inner.module
        else:
            break
        if nested is inner:
            break
        inner = nested
    keyword = "cache" if _forward_takes_cache(type(inner)) else "past_key_values"
    return {keyword: cache, "use_cache": True}


@functools.cache
def _forward_takes_cache(cls: type) -> bool:
    return "cache" in inspect.signature(cls.forward).parameters
