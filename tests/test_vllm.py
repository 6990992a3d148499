"""``VLLMEngine`` with vLLM replaced by a fake (the engine's bookkeeping: settings, sleep/wake,
weight loading, sampler log-probs), its one-line errors, the truncated importance-sampling
correction in the module, and a real vLLM run marked ``gpu``."""

from __future__ import annotations

import copy
import dataclasses
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_dsrl import functional as F
from lightning_dsrl.data import CountdownTask
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import LoraSpec, ModelSpec, load_model
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import GRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import HFEngine, RolloutCallback, SamplingParams, VLLMEngine
from lightning_dsrl.types import PromptBatch
from lightning_dsrl.update import StepCounters, update

ROOT = Path(__file__).resolve().parents[1]


class FakeLLM:
    """Completion j of every prompt: token 7 repeated j + 1 times, sampler log-prob -0.1 (j + 1) per token."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.calls, self.loaded = kwargs, [], {}

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append("generate")
        if params.kw.get("prompt_logprobs") is not None:
            return [SimpleNamespace(prompt_logprobs=[None] + [{t: SimpleNamespace(logprob=-0.25)} for t in
                                                              p["prompt_token_ids"][1:]]) for p in prompts]
        return [SimpleNamespace(outputs=[
            SimpleNamespace(token_ids=[7] * (j + 1), finish_reason="stop" if j == 0 else "length",
                            logprobs=[{7: SimpleNamespace(logprob=-0.1 * (j + 1))}] * (j + 1))
            for j in range(params.kw["n"])]) for _ in prompts]

    def sleep(self, level):
        self.calls.append("sleep")

    def wake_up(self, tags=None):
        self.calls.append(("wake", tags))

    def collective_rpc(self, fn):
        fn(SimpleNamespace(device="cpu", model_runner=SimpleNamespace(model=self)))

    def load_weights(self, weights):
        self.calls.append("load")
        self.loaded = dict(weights)


class FakeSamplingParams:
    def __init__(self, **kw) -> None:
        self.kw = kw


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return module


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_one_error_with_the_install_command():
    with pytest.raises(ConfigError, match=r'python -m pip install "lightning_dsrl\[vllm\]"'):
        VLLMEngine().check()


def test_without_a_gpu_one_error(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        VLLMEngine().check()


def test_bad_settings():
    with pytest.raises(ConfigError, match="gpu_memory_utilization=1.5"):
        VLLMEngine(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="tensor_parallel_size=0"):
        VLLMEngine(tensor_parallel_size=0)
    # prompts are not gathered within a tensor-parallel group nor seeded alike: refused until implemented
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2: only 1 is supported"):
        VLLMEngine(tensor_parallel_size=2)


def test_engine_settings_weights_sleep_and_sampler_logprobs(fake_vllm, tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    engine = VLLMEngine(gpu_memory_utilization=0.4, tensor_parallel_size=1, sleep=True)
    engine.bind(module)
    llm = engine.llm
    assert llm.kwargs["gpu_memory_utilization"] == 0.4 and llm.kwargs["tensor_parallel_size"] == 1
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["model"] == tiny_model_dir
    assert llm.calls == ["load"]  # bind loaded the policy's full weights
    assert llm.loaded.keys() == module.policy.state_dict().keys()
    assert all(torch.equal(llm.loaded[k], v) for k, v in module.policy.state_dict().items())
    out = engine.generate([[1, 2], [3]], SamplingParams(n=2, temperature=0.7, max_new_tokens=4))
    assert llm.calls == ["load", "generate", "sleep"]  # asleep for the update
    llm.calls.clear()
    engine.sync_weights(module)  # only the weights come back; the KV cache when generating again
    engine.generate([[1]], SamplingParams(n=1, max_new_tokens=2))
    assert llm.calls == [("wake", ["weights"]), "load", ("wake", ["kv_cache"]), "generate", "sleep"]
    assert out.token_ids == [[7], [7, 7], [7], [7, 7]] and out.finished == [True, False, True, False]
    assert out.logprobs == [[-0.1], [-0.2, -0.2], [-0.1], [-0.2, -0.2]]


def test_lora_policy_sends_merged_weights_under_the_base_names(fake_vllm, tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, lora=LoraSpec(r=4, alpha=8))
    module.configure_model()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adapters that change the weights (lora_B starts at zero)
        for name, p in module.policy.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    engine = VLLMEngine()
    engine.bind(module)
    expected = copy.deepcopy(module.policy).merge_and_unload().state_dict()  # peft's merge, on a copy
    assert engine.llm.loaded.keys() == load_model(ModelSpec(tiny_model_dir)).state_dict().keys() == expected.keys()
    torch.testing.assert_close(engine.llm.loaded, expected, rtol=1e-6, atol=1e-6)
    assert any(".lora_A." in n for n in module.policy.state_dict())  # the policy keeps its adapters


def test_rollout_carries_sampler_logprobs_and_the_probe_check_reads_prompt_logprobs(fake_vllm, tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    cb = RolloutCallback(engine=VLLMEngine(), rewards=[CountdownReward()], num_generations=2, max_new_tokens=4)
    records = CountdownTask(num_train=2, num_val=1, seed=3).records("train")
    rollout = cb.rollout(module, PromptBatch(records), cb.train_sampling, log_prefix=None)
    assert torch.allclose(rollout.sampler_logp, torch.tensor([[-0.1, 0.0], [-0.2, -0.2]] * 2))
    engine_logp = cb.engine.logprobs(rollout.select([1]).trim())  # the fake: -0.25 per token
    assert engine_logp.tolist() == [[-0.25, -0.25]]


@pytest.fixture(scope="module")
def rollout_and_module(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, objective=GRPO(beta=0.0), micro_batch_size=64)
    module.configure_model()
    cb = RolloutCallback(engine=HFEngine(), rewards=[CountdownReward()], num_generations=3, max_new_tokens=6)
    records = CountdownTask(num_train=2, num_val=1, seed=3).records("train")
    torch.manual_seed(0)
    rollout = cb.rollout(module, PromptBatch(records), cb.train_sampling, log_prefix=None)
    rollout = rollout.replace(rewards=torch.arange(rollout.num_samples, dtype=torch.float32) % 2)  # a reward spread in each group
    return rollout, module


def policy_grad(module, rollout, tis_cap: float | None) -> tuple[torch.Tensor, float]:
    """The policy gradient of one GRPO update on ``rollout`` with ``tis_cap`` (unclipped; recorded where the
    optimizer would step, so the weights stay as they are), and the logged log-prob difference."""
    module.policy.zero_grad()
    batch, _ = module.train_batch(rollout)
    grads = []

    class Recorder:  # in place of AdamW
        def step(self):
            grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None]))

        def zero_grad(self, set_to_none=True):
            module.policy.zero_grad(set_to_none=set_to_none)

    settings = dataclasses.replace(module.update_settings, tis_cap=tis_cap, max_grad_norm=None)
    stats = update(batch, objective=module.objective, policy=module.policy, scorer=module.scorer, settings=settings,
                   optimizer=Recorder(), scheduler=SimpleNamespace(step=lambda: None),
                   backward=lambda loss: loss.backward(), on_all_ranks=lambda ok: ok, counters=StepCounters(),
                   shuffle=torch.Generator(), device=module.device)
    return grads[0], stats.logprob_diff


def test_truncated_importance_weights_scale_the_policy_gradient(rollout_and_module):
    rollout, module = rollout_and_module
    with torch.no_grad():
        logp, _ = module.scorer.logprobs(module.policy, rollout)
    mask = rollout.completion_mask
    rollout = rollout.replace(sampler_logp=logp.clone())
    plain, diff = policy_grad(module, rollout, None)
    assert diff == pytest.approx(0.0, abs=1e-6) and plain.abs().sum() > 0
    # the engine thought every token 10 nats less likely: w = min(exp(10), cap 2) = 2 doubles the gradient
    rollout = rollout.replace(sampler_logp=(logp - 10.0) * mask)
    doubled, diff = policy_grad(module, rollout, 2.0)
    assert diff == pytest.approx(10.0, rel=1e-5)  # mean |logp_old - sampler_logp| over real tokens
    torch.testing.assert_close(doubled, 2 * plain, rtol=1e-4, atol=1e-7)
    # within the cap the weight is the ratio itself: exp(0.5)
    rollout = rollout.replace(sampler_logp=(logp - 0.5) * mask)
    scaled, _ = policy_grad(module, rollout, 2.0)
    torch.testing.assert_close(scaled, torch.exp(torch.tensor(0.5)) * plain, rtol=1e-4, atol=1e-7)


def test_truncated_is_weights_hand_computed():
    # exp(0 - 0) = 1; exp(0 - (-2)) = e^2 = 7.39 -> capped at 3; exp(-1 - 0) = 0.368
    w = F.truncated_is_weights(torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, -2.0, 0.0]]), 3.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 3.0, 0.36788]]), rtol=1e-4, atol=0)


def test_tis_cap_below_one_is_refused():
    with pytest.raises(ConfigError, match="model.tis_cap=0.5"):
        RLModule(tis_cap=0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs CUDA and vLLM")
def test_fit_with_vllm_on_a_gpu(tmp_path, tiny_model_dir):
    from lightning_dsrl.__main__ import cli_main

    cli_main(["fit", "--config", str(ROOT / "configs/ds_grpo.yaml"), "--config", str(ROOT / "configs/vllm.yaml"),
              "--model.name_or_path", tiny_model_dir, "--trainer.accelerator", "gpu", "--trainer.max_steps", "2",
              "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.batch_size", "4"])
    assert list(tmp_path.glob("ds_grpo/version_0/checkpoints/last.ckpt"))
