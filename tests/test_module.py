"""RLModule internals on the tiny model: exact log-probs under padding, exact gradient
accumulation, reuse of old log-probs, checkpoints without the reference model."""

from __future__ import annotations

import pytest
import torch

from lightning_dsrl import training_log
from lightning_dsrl.data import CountdownTask
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.training_log import model_flops, throughput
from lightning_dsrl.types import PromptBatch


def make_module(path, **kw) -> RLModule:
    module = RLModule(name_or_path=path, **kw)
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def rollout_and_module(tiny_model_dir):
    module = make_module(tiny_model_dir, objective=DSGRPO(gamma_p=0.05, gamma_n=0.05, beta=0.1))
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=3, max_new_tokens=9, temperature=0.7)
    records = CountdownTask(num_train=4, num_val=1, max_number=30, max_target=200, seed=5).records("train")
    torch.manual_seed(0)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    # make the batch informative: mark a few completions correct with a reward
    correct = rollout.correct.clone()
    correct[::4] = True
    rollout = rollout.replace(correct=correct, rewards=correct.float())
    return rollout, module


def test_logprobs_under_padding_equal_unpadded_forward(rollout_and_module):
    rollout, module = rollout_and_module
    assert not rollout.prompt_mask.all(), "the prompts should have different lengths"
    batched, entropy = module.scorer.logprobs(module.policy, rollout, entropy="detached")
    for i in range(rollout.num_samples):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i]]
        completion = rollout.completion_ids[i][rollout.completion_mask[i]]
        ids = torch.cat([prompt, completion]).unsqueeze(0)
        with torch.no_grad():
            logits = module.policy(input_ids=ids).logits[0, len(prompt) - 1 : -1] / rollout.temperature
        expected = torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(batched[i, : len(completion)], expected, atol=1e-5, rtol=1e-5)
        assert (batched[i, len(completion) :] == 0).all()
        p = torch.softmax(logits, -1)
        torch.testing.assert_close(entropy[i, : len(completion)], -(p * p.log()).sum(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_gradients_equal_full_batch_gradients(tiny_model_dir, rollout_and_module, mode):
    rollout, _ = rollout_and_module
    grads = []
    for micro_size in (rollout.num_samples, 1, 5):
        module = make_module(tiny_model_dir, objective=DSGRPO(gamma_p=0.05, gamma_n=0.05, beta=0.1,
                                                              loss_agg_mode=mode))
        prepared = module.train_batch(rollout.select(torch.arange(rollout.num_samples)))[0]
        for micro in prepared.micro_batches(micro_size):
            micro = micro.trim()
            logp, _ = module.scorer.logprobs(module.policy, micro)
            micro = micro.replace(logp_old=logp.detach())
            module.objective(micro, logp).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-6, rtol=1e-4)


def test_old_logprobs_reused_only_when_one_update_per_rollout(tiny_model_dir, rollout_and_module):
    rollout, _ = rollout_and_module
    one = make_module(tiny_model_dir, objective=GRPO(beta=0.0))
    prepared = one.train_batch(rollout.select(torch.arange(rollout.num_samples)))[0]
    assert prepared.logp_old is None and prepared.logp_ref is None and one.reference is None
    # one pass: the advantages are shaped in it, from its own log-probs
    assert prepared.group_advantages.shape == (rollout.num_samples,) and prepared.advantages is None
    two = make_module(tiny_model_dir, objective=GRPO(beta=0.1), ppo_epochs=2)
    prepared = two.train_batch(rollout.select(torch.arange(rollout.num_samples)))[0]
    direct, _ = two.scorer.logprobs(two.policy, prepared)
    torch.testing.assert_close(prepared.logp_old, direct.detach(), atol=1e-5, rtol=1e-5)
    # before any update the reference model is the policy
    torch.testing.assert_close(prepared.logp_ref, prepared.logp_old)
    # several passes: the shaping is done once, before them (GRPO's: none)
    torch.testing.assert_close(prepared.advantages, prepared.group_advantages)


def test_checkpoint_leaves_out_the_reference(tiny_model_dir):
    module = make_module(tiny_model_dir, objective=GRPO(beta=0.1))
    checkpoint = {"state_dict": module.state_dict()}
    assert any(k.startswith("reference.") for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("reference.") for k in checkpoint["state_dict"])


def test_update_throughput_counts_each_groups_prompt_once(tiny_model_dir, fixed_batch):
    module = make_module(tiny_model_dir, ppo_epochs=2)
    batch, _ = fixed_batch()  # one group: prompt of 1 token, completions of 2 and 1 tokens
    params = sum(p.numel() for p in module.policy.parameters())
    flops_per_token, peak = model_flops(module.policy, lora=False, device=module.device)
    assert flops_per_token == 6 * params and peak is None  # a CPU has no peak in Lightning's table
    out = throughput(batch, 2.0, flops_per_token, passes=2, peak_flops=peak)
    assert out["timing/trained_tokens_per_s"] == pytest.approx(3 * 2 / 2.0)
    assert out["timing/update_tflops_per_s"] == pytest.approx(6 * params * (1 + 3) * 2 / 2.0 / 1e12)
    assert "timing/update_mfu" not in out
    out = throughput(batch, 2.0, flops_per_token, passes=2, peak_flops=1e12)
    assert out["timing/update_mfu"] == pytest.approx(6 * params * 8 / 2 / 1e12)


def test_mfu_peak_is_the_compute_dtypes_not_the_weights(tiny_model_dir, monkeypatch):
    """bf16-mixed keeps fp32 weights but multiplies in bf16: the peak must be the bf16 one."""
    module = make_module(tiny_model_dir)
    asked = []
    monkeypatch.setattr(training_log, "get_available_flops", lambda device, dtype: asked.append(dtype) or 1.0)
    cuda = torch.device("cuda", 0)
    for precision, dtype in (("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16),
                             ("16-mixed", torch.float16), ("32-true", torch.float32), ("64-true", torch.float64)):
        assert model_flops(module.policy, lora=False, device=cuda, precision=precision)[1] == 1.0
        assert asked.pop() == dtype, precision
    assert next(module.policy.parameters()).dtype == torch.float32
