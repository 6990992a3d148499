"""Weight sync to an engine that owns its weights, and its verification: ``HFEngine(weights="copy")``
keeps a second copy of the tiny policy on the CPU, so the sync path a vLLM engine takes (full
weights gathered from the policy, copied tensor by tensor; with LoRA, merged under the base names)
and the probe check run here."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.errors import ConfigError, TrainingError
from lightning_dsrl.models import LoraSpec, merged_weights
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO
from lightning_dsrl.rewards import CountdownReward, FormatReward, RewardModule
from lightning_dsrl.rollout import HFEngine, RolloutCallback
from lightning_dsrl.types import PromptBatch, PromptRecord, RewardResult


def callback(engine, rewards=None, **kw) -> RolloutCallback:
    return RolloutCallback(engine=engine, rewards=rewards or [CountdownReward(), FormatReward(weight=0.1)],
                           num_generations=3, max_new_tokens=6, **kw)


@pytest.fixture()
def bound(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    engine = HFEngine(weights="copy")
    cb = callback(engine)
    records = CountdownTask(num_train=2, num_val=1, seed=3).records("train")
    torch.manual_seed(0)
    rollout = cb.rollout(module, PromptBatch(records), cb.train_sampling, log_prefix=None)
    return module, engine, cb, rollout


def test_copy_is_a_separate_model_with_the_policys_weights(bound):
    module, engine, cb, rollout = bound
    assert engine.model is not module.policy
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(engine.model.parameters(), module.policy.parameters()))
    assert cb.verify_sync(module, rollout) == 0.0  # same weights, same code path: identical log-probs


def test_stale_weights_fire_and_a_sync_fixes_them(bound):
    module, engine, cb, rollout = bound
    with torch.no_grad():  # an optimizer step the engine has not received yet
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(TrainingError, match=r"rollout.sync_tolerance=0.001"):
        cb.verify_sync(module, rollout)
    engine.sync_weights(module)
    assert cb.verify_sync(module, rollout) == 0.0
    torch.testing.assert_close(engine.model.state_dict(), module.policy.state_dict(), rtol=0, atol=0)


def test_one_corrupted_tensor_fires_or_warns(bound, caplog):
    module, engine, cb, rollout = bound
    with torch.no_grad():
        engine.model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    with pytest.raises(TrainingError, match="stale or corrupted"):
        cb.verify_sync(module, rollout)
    cb.sync = dataclasses.replace(cb.sync, mode="warn")  # rollout.sync_check: warn
    with caplog.at_level(logging.WARNING):
        diff = cb.verify_sync(module, rollout)
    assert diff > 1e-3 and any("stale or corrupted" in r.getMessage() for r in caplog.records)


class CorruptingEngine(HFEngine):
    """Syncs, then scales one tensor: a sync that silently goes wrong."""

    def sync_weights(self, module) -> None:
        super().sync_weights(module)
        if self.model is not None:
            with torch.no_grad():
                self.model.model.norm.weight.mul_(2.0)


def fit(tiny_model_dir, engine, steps: int = 2, rewards=None, **module_kw) -> tuple[Trainer, RLModule]:
    module = RLModule(name_or_path=tiny_model_dir, **{"objective": DSGRPO(), "learning_rate": 1e-2,
                      "micro_batch_size": 8, "train_self_bleu": False, "log_samples_every_n_steps": 0, **module_kw})
    data = PromptDataModule(CountdownTask(num_train=8, num_val=1, seed=3), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[callback(engine, rewards)])
    trainer.fit(module, data)
    return trainer, module


def test_fit_syncs_after_every_step(tiny_model_dir):
    engine = HFEngine(weights="copy")
    trainer, module = fit(tiny_model_dir, engine)
    assert trainer.logged_metrics["rollout/sync_logprob_diff"] == 0.0
    torch.testing.assert_close(engine.model.state_dict(), module.policy.state_dict(), rtol=0, atol=0)


def test_fit_stops_on_a_corrupted_sync(tiny_model_dir):
    with pytest.raises(TrainingError, match="stale or corrupted"):
        fit(tiny_model_dir, CorruptingEngine(weights="copy"), steps=1)


class EvenLength(RewardModule):
    """Correct when the completion has an even number of characters: a reward spread in most groups of the
    untrained model, which is never right at CountDown."""

    name = "even_length_test"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        return RewardResult(float(len(completion) % 2 == 0), correct=len(completion) % 2 == 0)


def lora_adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def perturb_adapters(model, seed: int = 1) -> None:
    """lora_B starts at zero (the adapted model equals the base): give every adapter weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))


def peft_merged(model) -> dict[str, torch.Tensor]:
    """peft's own merge (on a copy), the reference for ours."""
    return copy.deepcopy(model).merge_and_unload().state_dict()


@pytest.mark.parametrize("kind", ["llama-all-linear", "llama-embedding", "gpt2-conv1d"])
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own call
def test_merged_weights_equal_peft_merge_under_base_names(kind):
    # LoRA on linear layers (W + s B A), on an embedding ((B A)^T) and on GPT-2's Conv1D (fan_in_fan_out: (B A)^T)
    torch.manual_seed(0)
    if kind.startswith("llama"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, tie_word_embeddings=False))
        targets = "all-linear" if kind == "llama-all-linear" else ["embed_tokens", "q_proj"]
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                           bos_token_id=0, eos_token_id=0))
        targets = ["c_attn", "c_proj"]
    base = {k: v.clone() for k, v in model.state_dict().items()}
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, target_modules=targets,
                                              fan_in_fan_out=kind.startswith("gpt2")))
    perturb_adapters(policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    merged = dict(merged_weights(policy, policy.state_dict().items()))
    assert sorted(merged) == sorted(base)  # the base model's names
    assert sum(not torch.equal(merged[k], base[k]) for k in base) >= 2  # the adapters changed what they sit on
    expected = peft_merged(policy)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(policy.state_dict(), before, rtol=0, atol=0)  # the policy itself is left as it was


def test_lora_copy_engine_gets_merged_weights_and_passes_the_probe(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, lora=LoraSpec(r=4, alpha=8))
    module.configure_model()
    perturb_adapters(module.policy)
    engine = HFEngine(weights="copy")
    cb = callback(engine)
    records = CountdownTask(num_train=2, num_val=1, seed=3).records("train")
    torch.manual_seed(0)
    rollout = cb.rollout(module, PromptBatch(records), cb.train_sampling, log_prefix=None)  # binds: the first sync
    assert set(engine.model.state_dict()) == set(peft_merged(module.policy))
    torch.testing.assert_close(engine.model.state_dict(), peft_merged(module.policy), rtol=1e-6, atol=1e-6)
    assert any("lora_A" in n for n in module.policy.state_dict())  # still the peft model, adapters not merged in
    assert cb.verify_sync(module, rollout) < 1e-5  # the merged model computes what the adapted one does


def test_fit_with_lora_syncs_merged_weights_after_steps_that_moved_the_adapters(tiny_model_dir):
    engine = HFEngine(weights="copy")
    lora = LoraSpec(r=4, alpha=8, dropout=0.2)  # dropout: the probe must compare the models in eval mode
    trainer, module = fit(tiny_model_dir, engine, steps=2, rewards=[EvenLength()], lora=lora,
                          objective=GRPO(beta=0.0), learning_rate=5e-2)
    adapters = lora_adapters(module.policy)
    assert any("lora_B" in n and t.abs().max() > 1e-3 for n, t in adapters.items())  # B starts at 0: steps moved it
    assert trainer.logged_metrics["rollout/sync_logprob_diff"] <= 1e-5
    torch.testing.assert_close(engine.model.state_dict(), peft_merged(module.policy), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_lora_on_a_sharded_policy_syncs_merged_weights(tiny_model_dir, tmp_path):
    # 2 processes, FSDP2: the sync gathers the adapters' and base weights' shards, then merges (tests/lora_sync_worker.py)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    worker = Path(__file__).with_name("lora_sync_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path), tiny_model_dir, "fsdp2", str(rank), port],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["sharded"] and result["lora_b_max"] > 1e-3  # sharded, and the steps moved the adapters
        assert result["names_match"] and result["engine_vs_peft_merge"] <= 1e-6
        assert result["sync_logprob_diff"] <= 1e-5


def test_bad_settings():
    with pytest.raises(ConfigError, match="rollout.sync_check"):
        callback(HFEngine(), sync_check="sometimes")
    with pytest.raises(ConfigError, match="rollout.sync_tolerance"):
        callback(HFEngine(), sync_tolerance=0.0)
    with pytest.raises(ConfigError, match="weights='mirror'"):
        HFEngine(weights="mirror")
