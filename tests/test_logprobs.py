"""The prompt-sharing forwards (packed rows and the shared KV cache) give the plain forward's logits
and gradients at every completion position."""

from __future__ import annotations

import pytest
import torch

import lightning_dsrl.logprobs as logprobs
from lightning_dsrl.data import CountdownTask
from lightning_dsrl.logprobs import completion_logits
from lightning_dsrl.module import RLModule
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch

PATHS = {"packed": {}, "cached": {"max_packed_tokens": 0}}


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=4, max_new_tokens=7)
    records = CountdownTask(num_train=3, num_val=1, max_number=30, max_target=200, seed=3).records("train")
    torch.manual_seed(1)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    return module, rollout


@pytest.fixture
def taken(monkeypatch) -> list[str]:
    """The names of the paths ``completion_logits`` took, in call order."""
    calls: list[str] = []
    for name in ("_packed_rows", "_shared_kv_cache", "_plain"):
        original = getattr(logprobs, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(logprobs, name, spy)
    return calls


def assert_equal_on_completions(batch, shared, plain):
    mask = batch.completion_mask
    torch.testing.assert_close(shared[mask], plain[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_prefix_sharing_equals_plain_forward(setup, taken, path):
    module, rollout = setup
    assert not rollout.prompt_mask.all(), "prompts of different lengths exercise the left padding"
    lengths = rollout.completion_mask.sum(-1)
    assert lengths.min() < lengths.max(), "completions of different lengths exercise the right padding"
    shuffled = rollout.select(torch.randperm(rollout.num_samples, generator=torch.Generator().manual_seed(0)))
    plain = completion_logits(module.policy, shuffled, share_prefix=False)
    shared = completion_logits(module.policy, shuffled, share_prefix=True, **PATHS[path])
    assert taken == ["_plain", {"packed": "_packed_rows", "cached": "_shared_kv_cache"}[path]]
    assert_equal_on_completions(shuffled, shared, plain)


@pytest.mark.parametrize("path", PATHS)
def test_prefix_sharing_gradients_equal_plain_gradients(setup, path):
    module, rollout = setup
    grads = []
    for share in (False, True):
        module.policy.zero_grad()
        logits = completion_logits(module.policy, rollout, share_prefix=share, **PATHS[path])
        picked = torch.log_softmax(logits, -1).gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        (picked * rollout.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten().clone() for p in module.policy.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_packing_handles_empty_and_one_token_completions(setup, taken):
    module, rollout = setup
    batch = rollout.select(torch.arange(8))  # two groups
    mask = batch.completion_mask.clone()
    mask[1] = False  # an empty completion
    mask[2, 1:] = False  # a one-token completion: only the last prompt token's output predicts it
    batch = batch.__class__(**{**batch.__dict__, "completion_mask": mask})
    plain = completion_logits(module.policy, batch, share_prefix=False)
    packed = completion_logits(module.policy, batch)
    assert taken[-1] == "_packed_rows"
    assert_equal_on_completions(batch, packed, plain)


def test_one_completion_per_group_is_packed_without_prompt_padding(setup, taken):
    module, rollout = setup
    singles = rollout.select(torch.tensor([0, 4, 8]))  # one completion per group
    assert_equal_on_completions(singles, completion_logits(module.policy, singles, True),
                                completion_logits(module.policy, singles, False))
    assert taken == ["_packed_rows", "_plain"]


def test_eager_attention_takes_the_additive_mask(tiny_model_dir, setup, taken):
    _, rollout = setup
    module = RLModule(name_or_path=tiny_model_dir, attn_implementation="eager")
    module.configure_model()
    packed = completion_logits(module.policy, rollout)
    assert taken == ["_packed_rows"]
    assert_equal_on_completions(rollout, packed, completion_logits(module.policy, rollout, share_prefix=False))


def test_backends_without_custom_masks_share_the_cache(setup, taken, monkeypatch):
    module, rollout = setup
    monkeypatch.setattr(logprobs, "_attention", lambda model: "flash_attention_2")
    completion_logits(module.policy, rollout)
    assert taken == ["_shared_kv_cache"]


def test_gradient_checkpointing_packs_but_never_uses_the_cache(tiny_model_dir, setup, taken):
    _, rollout = setup
    module = RLModule(name_or_path=tiny_model_dir, gradient_checkpointing=True)
    module.configure_model()
    plain = completion_logits(module.policy, rollout, share_prefix=False)
    for options in PATHS.values():
        logits = completion_logits(module.policy, rollout, **options)
        assert_equal_on_completions(rollout, logits, plain)
        (logits * rollout.completion_mask[..., None]).sum().backward()  # recomputation must not fail
    assert taken == ["_plain", "_packed_rows", "_plain"]  # the cache would be appended to twice on recomputation
    assert all(p.grad is not None for p in module.policy.parameters())


def test_packing_under_bf16_autocast(setup, taken):
    """Lightning's bf16-mixed: fp32 weights, bf16 attention; the boolean mask suits any compute dtype."""
    module, rollout = setup
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = completion_logits(module.policy, rollout).float()
        plain = completion_logits(module.policy, rollout, share_prefix=False).float()
    assert taken == ["_packed_rows", "_plain"]
    mask = rollout.completion_mask
    torch.testing.assert_close(packed[mask], plain[mask], atol=0.1, rtol=0.05)
