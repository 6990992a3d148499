"""The prompt-sharing forward gives the same logits and gradients as the plain one."""

from __future__ import annotations

import pytest
import torch

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.logprobs import completion_logits
from lightning_dsrl.module import RLModule
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=4, max_new_tokens=7)
    records = CountdownTask(num_train=3, num_val=1, max_number=30, max_target=200, seed=3).records("train")
    torch.manual_seed(1)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    return module, rollout


def test_shared_prefix_equals_plain_forward(setup):
    module, rollout = setup
    assert not rollout.prompt_mask.all(), "prompts of different lengths exercise the left padding"
    shuffled = rollout.select(torch.randperm(rollout.num_samples, generator=torch.Generator().manual_seed(0)))
    plain = completion_logits(module.policy, shuffled, share_prefix=False)
    shared = completion_logits(module.policy, shuffled, share_prefix=True)
    mask = shuffled.completion_mask
    torch.testing.assert_close(shared[mask], plain[mask], atol=1e-5, rtol=1e-5)


def test_shared_prefix_gradients_equal_plain_gradients(setup):
    module, rollout = setup
    grads = []
    for share in (False, True):
        module.policy.zero_grad()
        logits = completion_logits(module.policy, rollout, share_prefix=share)
        picked = torch.log_softmax(logits, -1).gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        (picked * rollout.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten().clone() for p in module.policy.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_no_sharing_when_every_sample_is_its_own_group(setup):
    module, rollout = setup
    singles = rollout.select(torch.tensor([0, 4, 8]))  # one completion per group
    torch.testing.assert_close(completion_logits(module.policy, singles, True),
                               completion_logits(module.policy, singles, False))


def test_gradient_checkpointing_uses_the_plain_path(tiny_model_dir, setup):
    _, rollout = setup
    module = RLModule(name_or_path=tiny_model_dir, gradient_checkpointing=True)
    module.configure_model()
    logits = completion_logits(module.policy, rollout, share_prefix=True)
    torch.testing.assert_close(logits, completion_logits(module.policy, rollout, share_prefix=False))
    logits.sum().backward()  # recomputation must not see a cache appended twice
    assert all(p.grad is not None for p in module.policy.parameters())
