"""``RLModule.update`` against an independent loop written out here in plain PyTorch.

The reference knows nothing of the module's machinery (packed rows, micro-batches, minibatch sizes, hooks): it
runs one plain forward per completion, writes DS-GRPO's loss from ALGORITHMS.md (group advantages,
the smoothing, the clipped surrogate, the k3 KL, seq-mean-token-mean, truncated importance weights)
and steps AdamW. Both see the same rollout and the same minibatch order; every optimizer step's
gradient (after clipping) must agree, whatever the micro-batch size. The
settings make every part of the loop matter: two epochs of two minibatches (the ratio leaves 1 and
is clipped), a KL term, and sampler log-probs from a stale policy (importance weights != 1).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch, RolloutBatch

LR, EPOCHS, MINIBATCHES, MAX_NORM = 3e-2, 2, 2, 1.0
GAMMA_P, GAMMA_N, BETA, EPS_LOW, EPS_HIGH, TIS_CAP = 0.05, 0.02, 0.1, 0.02, 0.03, 1.5


@pytest.fixture(scope="module")
def rollout(tiny_model_dir) -> RolloutBatch:
    """Four prompts x three completions of the tiny model at T = 0.7, with mixed verdicts in three
    groups (one all wrong), and sampler log-probs of a stale policy (the trainer's, perturbed)."""
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=3, max_new_tokens=7, temperature=0.7)
    records = CountdownTask(num_train=4, num_val=1, max_number=30, max_target=200, seed=5).records("train")
    torch.manual_seed(0)
    out = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    out = out.replace(correct=torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool))
    out = out.replace(rewards=out.correct.float() + 0.1)
    with torch.no_grad():
        logp, _ = module.scorer.logprobs(module.policy, out)
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1)) * 0.3
    out = out.replace(sampler_logp=(logp + noise) * out.completion_mask)
    return out


# ------------------------------------------------------------------ the reference
def plain_logprobs(model, rollout: RolloutBatch, row: int) -> torch.Tensor:
    """``[T]`` log-probs of completion ``row``: one forward of its prompt and completion, no padding."""
    prompt = rollout.prompt_ids[row][rollout.prompt_mask[row]]
    completion = rollout.completion_ids[row][rollout.completion_mask[row]]
    logits = model(input_ids=torch.cat([prompt, completion])[None]).logits[0, len(prompt) - 1 : -1]
    logits = logits.float() / rollout.temperature
    return torch.log_softmax(logits, -1).gather(-1, completion[:, None])[:, 0]


def reference_advantages(rollout: RolloutBatch, logp_old: list[torch.Tensor]) -> list[float]:
    """GRPO's group advantage (sample std, eps 1e-6; 0 for a group of equal rewards), then DS's smoothing."""
    out = []
    for i in range(rollout.num_samples):
        group = [j for j in range(rollout.num_samples) if rollout.group_ids[j] == rollout.group_ids[i]]
        rewards = [float(rollout.rewards[j]) for j in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        a = 0.0 if max(rewards) == min(rewards) else (float(rollout.rewards[i]) - mean) / (std + 1e-6)
        ll = float(logp_old[i].sum())
        out.append(a - GAMMA_P * ll if rollout.correct[i] else a + GAMMA_N * ll)
    return out


def reference_loop(model_dir: str, rollout: RolloutBatch):
    """Every optimizer step's clipped gradients, and every importance weight applied."""
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir).requires_grad_(False)
    params = list(policy.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    n = rollout.num_samples
    with torch.no_grad():
        logp_old = [plain_logprobs(policy, rollout, i) for i in range(n)]
        logp_ref = [plain_logprobs(reference, rollout, i) for i in range(n)]
    advantages = reference_advantages(rollout, logp_old)
    generator = torch.Generator().manual_seed(0)  # the module's minibatch shuffle
    steps, applied = [], []
    for _ in range(EPOCHS):
        for minibatch in torch.tensor_split(torch.randperm(n, generator=generator), MINIBATCHES):
            optimizer.zero_grad()
            loss = 0.0
            for i in minibatch.tolist():
                logp = plain_logprobs(policy, rollout, i)
                tokens = len(logp)
                ratio = (logp - logp_old[i]).exp()
                a = advantages[i]
                surrogate = torch.minimum(ratio * a, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * a)
                weight = (logp_old[i] - rollout.sampler_logp[i, :tokens]).exp().clamp(max=TIS_CAP)
                applied.append(weight)
                kl = (logp_ref[i] - logp).exp() - (logp_ref[i] - logp) - 1
                loss = loss + (-surrogate * weight + BETA * kl).mean()  # token mean of the sequence
            (loss / len(minibatch)).backward()  # then the mean over the minibatch's sequences
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
            steps.append([p.grad.clone() for p in params])
            optimizer.step()
    return steps, torch.cat(applied)


# ------------------------------------------------------------------ the module
def module_update(model_dir: str, rollout: RolloutBatch, micro_batch_size: int):
    """``RLModule.update`` outside a Trainer: its optimizer and scheduler handed in, gradients recorded
    at every optimizer step."""
    objective = DSGRPO(gamma_p=GAMMA_P, gamma_n=GAMMA_N, beta=BETA, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH)
    module = RLModule(name_or_path=model_dir, objective=objective, learning_rate=LR, ppo_epochs=EPOCHS,
                      minibatches=MINIBATCHES, micro_batch_size=micro_batch_size, max_grad_norm=MAX_NORM,
                      tis_cap=TIS_CAP)
    module.configure_model()
    [optimizer], [scheduler] = module.configure_optimizers()
    steps = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        steps.append([p.grad.clone() for p in module.policy.parameters()])
        return step(*args, **kwargs)

    optimizer.step = recording_step
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: scheduler["scheduler"]
    module.manual_backward = lambda loss: loss.backward()
    prepared, batch_metrics = module.train_batch(rollout)
    metrics = module.update(prepared, batch_metrics).metrics
    return steps, metrics


@pytest.fixture(scope="module")
def reference(tiny_model_dir, rollout):
    return reference_loop(tiny_model_dir, rollout)


@pytest.mark.parametrize("micro_batch_size", [12, 1, 5])
def test_update_equals_the_reference_loop(tiny_model_dir, rollout, reference, micro_batch_size):
    ref_steps, applied = reference
    assert applied.min() < 0.9 and (applied == TIS_CAP).any()  # stale samples: weights far from 1, some capped
    steps, metrics = module_update(tiny_model_dir, rollout, micro_batch_size)
    assert len(steps) == len(ref_steps) == EPOCHS * MINIBATCHES
    for step, (got, want) in enumerate(zip(steps, ref_steps)):
        assert sum(float(g.abs().sum()) for g in want) > 0
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=lambda m, s=step: f"optimizer step {s}: {m}")
    # (the weights are not compared: AdamW divides each gradient by its running scale, so an element whose
    # gradient is ~1e-9 moves by up to lr in a direction set by rounding; each step's gradient, computed on
    # the weights the previous steps left, is the sharper check)
    # the settings exercise what they should: the ratio left 1 and was clipped, the KL pulled
    assert metrics["clip_fraction"] > 0 and metrics["ratio_mean"] != pytest.approx(1.0, abs=1e-4)
    assert metrics["kl"] > 0

