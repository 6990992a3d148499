"""Models: where the policy comes from and how it is built.

    loading.py   ModelSpec, load_model, load_tokenizer (hub id, folder or pkg:// path; dtype, attention)
    packaged.py  pkg:// paths into installed or fetched packages; GGUF files de-quantised once into the cache
    lora.py      LoraSpec, apply_lora, merged_weights (for engines with their own weights), export_merged
"""

from lightning_dsrl.models.loading import (
    DEFAULT_MODEL,
    DTYPES,
    ModelSpec,
    cache_kwargs,
    load_model,
    load_tokenizer,
    local_path,
)
from lightning_dsrl.models.lora import LoraSpec, apply_lora, export_merged, merged_weights
from lightning_dsrl.models.packaged import (
    PACKAGED,
    PackagedModel,
    cache_root,
    fetched_dir,
    resolve_model_path,
)

__all__ = ["ModelSpec", "LoraSpec", "DEFAULT_MODEL", "DTYPES", "resolve_model_path", "load_tokenizer", "load_model",
           "local_path", "apply_lora", "merged_weights", "export_merged", "cache_root",
           "PackagedModel", "PACKAGED", "fetched_dir", "cache_kwargs"]
