"""The model options on the tiny model: dtype, attention backend, gradient checkpointing, chat
template, pad-token fix, left padding, remote code off by default, offline hub ids."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.models import ModelSpec, load_model, load_tokenizer
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import GRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch, PromptRecord

CHAT_TEMPLATE = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")


def module_for(path, **kw) -> RLModule:
    module = RLModule(name_or_path=path, objective=GRPO(beta=0.0), **kw)
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def rollout(tiny_model_dir):
    module = module_for(tiny_model_dir)
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=2, max_new_tokens=8, temperature=0.8)
    records = CountdownTask(num_train=3, num_val=1, max_number=30, max_target=200, seed=2).records("train")
    torch.manual_seed(0)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    assert not rollout.prompt_mask.all(), "the prompts should need left padding"
    return rollout


def test_bfloat16_weights_give_float32_logprobs_close_to_float32(tiny_model_dir, rollout):
    full = module_for(tiny_model_dir)
    half = module_for(tiny_model_dir, torch_dtype="bfloat16")
    assert next(half.policy.parameters()).dtype == torch.bfloat16
    logp_half, _ = half.scorer.logprobs(half.policy, rollout)
    logp_full, _ = full.scorer.logprobs(full.policy, rollout)
    assert logp_half.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: per-token log-probs of a 101-token vocabulary agree to ~0.05
    torch.testing.assert_close(logp_half, logp_full, atol=0.1, rtol=0.05)


def test_attention_backends_agree_under_left_padding(tiny_model_dir, rollout):
    eager = module_for(tiny_model_dir, attn_implementation="eager")
    sdpa = module_for(tiny_model_dir, attn_implementation="sdpa")
    assert eager.policy.config._attn_implementation == "eager"
    assert sdpa.policy.config._attn_implementation == "sdpa"
    a, _ = eager.scorer.logprobs(eager.policy, rollout)
    b, _ = sdpa.scorer.logprobs(sdpa.policy, rollout)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, rollout):
    grads = []
    for checkpointing in (False, True):
        module = module_for(tiny_model_dir, gradient_checkpointing=checkpointing)
        flag = "is_activation_checkpointing"  # transformers >= 5.2; the old name warns
        flag = flag if hasattr(type(module.policy), flag) else "is_gradient_checkpointing"
        assert getattr(module.policy, flag) == checkpointing
        logp, _ = module.scorer.logprobs(module.policy, rollout)
        logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def chat_module(tiny_model_dir, tmp_path) -> RLModule:
    """The tiny model with a tokenizer that has a chat template (``[role] content`` lines)."""
    path = tmp_path / "chat-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return module_for(str(path))


def test_chat_template_wraps_prompts_that_ask_for_it(tiny_model_dir, tmp_path):
    module = chat_module(tiny_model_dir, tmp_path)
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=1, max_new_tokens=4)
    chat, plain = callback.sampler.encode(module, [PromptRecord("What is 2+3?", chat=True),
                                                   PromptRecord("What is 2+3?", chat=False)], max_new_tokens=4)
    assert module.tokenizer.decode(chat) == "[user] What is 2+3?\n[assistant] "
    assert module.tokenizer.decode(plain) == "What is 2+3?"
    no_template = module_for(tiny_model_dir)
    with pytest.raises(ConfigError, match="chat template"):
        callback.sampler.encode(no_template, [PromptRecord("hi", chat=True)], max_new_tokens=4)


def test_chat_history_goes_before_the_prompt(tiny_model_dir, tmp_path):
    module = chat_module(tiny_model_dir, tmp_path)
    history = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "<answer>5</answer>"}]
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=1, max_new_tokens=4)
    ids = callback.sampler.encode(module, [PromptRecord("What is 4+1?", chat=True, history=history)], max_new_tokens=4)
    assert module.tokenizer.decode(ids[0]) == ("[user] What is 2+3?\n[assistant] <answer>5</answer>\n"
                                               "[user] What is 4+1?\n[assistant] ")
    with pytest.raises(ValueError, match="chat=True"):
        PromptRecord("hi", history=history)


def test_tokenizer_without_pad_token_pads_with_eos_on_the_left(tiny_model_dir, tmp_path):
    path = tmp_path / "no-pad"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token_id is None
    loaded = load_tokenizer(ModelSpec(str(path)))
    assert loaded.pad_token_id == loaded.eos_token_id == 2 and loaded.padding_side == "left"
    batch = loaded(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [2, 2]  # "ab" is padded on the left


def test_remote_code_is_off_unless_the_config_says_so(tiny_model_dir, monkeypatch):
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(ModelSpec(tiny_model_dir))
    load_model(ModelSpec(tiny_model_dir, trust_remote_code=True))
    assert seen == [False, True]
    assert RLModule(name_or_path=tiny_model_dir).spec.trust_remote_code is False


def test_uncached_hub_model_offline_is_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelSpec("lightning-dsrl-tests/no-such-model"))
    message = str(info.value)
    assert message.startswith("model.name_or_path='lightning-dsrl-tests/no-such-model': could not load")
    assert "local directory" in message and "HF_HUB_OFFLINE" in message
