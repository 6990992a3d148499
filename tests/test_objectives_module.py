"""The new objectives inside ``RLModule`` on the tiny model: their extra terms reach the policy's
gradient (the token entropy with gradient included), and micro-batching does not change it."""

from __future__ import annotations

import pytest
import torch

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import GRPO, EntropyGRPO, PassAtKTraining, R1ZeroDiv
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch


@pytest.fixture(scope="module")
def rollout(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, objective=GRPO(beta=0.0))
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=4, max_new_tokens=7)
    records = CountdownTask(num_train=3, num_val=1, max_number=30, max_target=200, seed=3).records("train")
    torch.manual_seed(0)
    out = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    out = out.replace(correct=torch.tensor([True, False, False, True, False, True, False, False, True, True, True, False]))
    out = out.replace(rewards=out.correct.float())  # the random model is never right: mark some completions correct
    return out


def policy_grad(model_dir, objective, rollout, micro_size: int) -> torch.Tensor:
    """The policy gradient of one minibatch, accumulated over micro-batches as ``RLModule.update`` does."""
    module = RLModule(name_or_path=model_dir, objective=objective)
    module.configure_model()
    prepared = module.train_batch(rollout.select(torch.arange(rollout.num_samples)))[0]
    for micro in prepared.micro_batches(micro_size):
        micro = micro.trim()
        mode = "grad" if objective.needs_entropy else "detached"
        logp, entropy = module.scorer.logprobs(module.policy, micro, mode)
        micro = micro.replace(logp_old=logp.detach())  # ppo_epochs = 1: rho == 1
        out = objective(micro, logp, entropy)
        assert float(out.metrics["ratio_mean"]) == 1.0 and float(out.metrics["clip_fraction"]) == 0.0
        out.loss.backward()
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


@pytest.fixture(scope="module")
def grpo_grad(tiny_model_dir, rollout) -> torch.Tensor:
    return policy_grad(tiny_model_dir, GRPO(beta=0.0), rollout, rollout.num_samples)


@pytest.mark.parametrize(
    "objective",
    [
        EntropyGRPO(entropy_coef=0.5, level="token", beta=0.0),
        EntropyGRPO(entropy_coef=0.5, level="sequence", beta=0.0),
        R1ZeroDiv(diversity_coef=0.5, estimator="sampled", beta=0.0),
        R1ZeroDiv(diversity_coef=0.5, estimator="exact", beta=0.0),
        PassAtKTraining(k=2, beta=0.0),
    ],
    ids=["entropy-token", "entropy-sequence", "div-sampled", "div-exact", "passk"],
)
def test_extra_terms_reach_the_gradient_and_micro_batching_is_exact(tiny_model_dir, rollout, grpo_grad, objective):
    full = policy_grad(tiny_model_dir, objective, rollout, rollout.num_samples)
    assert (full - grpo_grad).abs().max() > 1e-4  # the objective changes the update
    torch.testing.assert_close(policy_grad(tiny_model_dir, objective, rollout, 5), full, atol=1e-6, rtol=1e-4)
