"""LoRA on the tiny model: adapters are all that trains and all that is saved, the reference
is the same network with adapters off, checkpoints reload, merged weights export."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import LoraSpec, ModelSpec, export_merged, load_model
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import GRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch

ROOT = Path(__file__).resolve().parents[1]


def lora_module(path, lora=None, **kw) -> RLModule:
    module = RLModule(name_or_path=path, lora=lora or LoraSpec(r=4, alpha=8), **kw)
    module.configure_model()
    return module


def perturb_adapters(module: RLModule, seed: int = 1) -> None:
    """lora_B starts at zero (the adapted model equals the base) and lora_A at random: set both
    from ``seed`` so that the adapters do something, the same in every module built this way."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))


@pytest.fixture(scope="module")
def rollout(tiny_model_dir):
    module = lora_module(tiny_model_dir)
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=3, max_new_tokens=8, temperature=0.7)
    records = CountdownTask(num_train=3, num_val=1, max_number=30, max_target=200, seed=5).records("train")
    torch.manual_seed(0)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    rollout.correct[::3] = True
    rollout = rollout.replace(rewards=rollout.correct.float())
    return rollout


def test_only_adapter_weights_get_gradients(tiny_model_dir, rollout):
    module = lora_module(tiny_model_dir, objective=GRPO(beta=0.1))
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    prepared = module.train_batch(rollout.select(torch.arange(rollout.num_samples)))[0]
    logp, _ = module.scorer.logprobs(module.policy, prepared)
    prepared = prepared.replace(logp_old=logp.detach())
    module.objective(prepared, logp).loss.backward()
    with_grad = {n for n, p in module.policy.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    # at initialisation lora_B = 0, so lora_A's gradient is 0; lora_B's must not be
    assert any(module.policy.get_parameter(n).grad.abs().sum() > 0 for n in with_grad if "lora_B" in n)
    # the optimizer sees the adapters only
    optimizer = module.configure_optimizers()[0][0]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        module.policy.get_parameter(n).numel() for n in trainable)


def test_reference_logprobs_are_the_base_models_without_a_copy(tiny_model_dir, rollout):
    module = lora_module(tiny_model_dir, objective=GRPO(beta=0.1))
    assert module.reference is None  # no second model in memory
    perturb_adapters(module)
    batch = rollout.select(torch.arange(rollout.num_samples))
    reference = module.reference_logprobs(batch)
    base = load_model(ModelSpec(tiny_model_dir)).eval()
    expected = module.scorer.per_token(base, batch, module.device)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    adapted = module.scorer.per_token(module.policy, batch, module.device)
    assert (adapted - expected).abs().max() > 1e-2  # the adapters are on again afterwards
    assert module.policy.training  # and the train/eval mode is restored


def test_checkpoint_holds_only_adapters_and_reloads(tiny_model_dir, tmp_path):
    module = lora_module(tiny_model_dir, objective=GRPO(beta=0.1))
    perturb_adapters(module)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    policy_keys = {k for k in keys if k.startswith("policy.")}
    assert policy_keys and all(".lora_A." in k or ".lora_B." in k for k in policy_keys)
    assert checkpoint["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
    fresh = lora_module(tiny_model_dir, objective=GRPO(beta=0.1))
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    for name, p in module.policy.named_parameters():
        torch.testing.assert_close(fresh.policy.get_parameter(name), p)
    full = RLModule(name_or_path=tiny_model_dir)
    with pytest.raises(ConfigError, match="trained with LoRA but model.lora is null"):
        full.on_load_checkpoint(checkpoint)


def test_export_merged_weights_equal_the_adapted_model(tiny_model_dir, rollout, tmp_path):
    module = lora_module(tiny_model_dir, objective=GRPO(beta=0.0))
    perturb_adapters(module)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "run.ckpt")
    out = tmp_path / "merged"
    argv = ["export_merged.py", str(tmp_path / "run.ckpt"), str(out)]
    old_argv, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(ROOT / "scripts" / "export_merged.py"), run_name="__main__")
    finally:
        sys.argv = old_argv
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    batch = rollout.select(torch.arange(rollout.num_samples))
    module.policy.eval()
    torch.testing.assert_close(module.scorer.per_token(merged, batch, module.device), module.scorer.per_token(module.policy, batch, module.device),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="not a lightning_dsrl run checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        export_merged(tmp_path / "other.ckpt", tmp_path / "x")


def test_target_modules_that_match_nothing_list_the_layers(tiny_model_dir):
    with pytest.raises(ConfigError) as info:
        lora_module(tiny_model_dir, lora=LoraSpec(target_modules=["q_proj", "qkv"]))
    message = str(info.value)
    assert "model.lora.target_modules: ['qkv'] match no layer" in message
    assert "'down_proj'" in message and "'q_proj'" in message and "'v_proj'" in message
    with pytest.raises(ConfigError, match="match no layer"):
        lora_module(tiny_model_dir, lora=LoraSpec(target_modules=r".*\.attention\.query"))
    named = lora_module(tiny_model_dir, lora=LoraSpec(target_modules=["q_proj", "v_proj"]))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in named.policy.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match="model.lora"):
        LoraSpec(r=0)


def test_lora_on_a_tied_embedding_is_refused(tiny_model_dir):
    # the tiny model ties its input embedding and output head: an adapter there would untie them
    with pytest.raises(ConfigError, match=r"\['model.embed_tokens'\] share their weight with the tied"):
        lora_module(tiny_model_dir, lora=LoraSpec(target_modules=["embed_tokens", "q_proj"]))


def test_lora_with_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, rollout):
    grads = []
    for checkpointing in (False, True):
        module = lora_module(tiny_model_dir, gradient_checkpointing=checkpointing)
        perturb_adapters(module)
        logp, _ = module.scorer.logprobs(module.policy, rollout)
        logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.requires_grad]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)  # gradients of order 10
