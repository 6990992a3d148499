"""The update's contract on the tiny model: the objective's shaping runs once per completion (once on
the whole rollout before several passes, micro-batch by micro-batch in the one pass, with no forward of
its own for logp_old), and the advantages it returns are the ones the loss trained on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_dsrl import scoring
from lightning_dsrl.data import CountdownTask
from lightning_dsrl.functional import ds_advantages, sequence_logprob
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch, TrainBatch
from lightning_dsrl.update import StepCounters, update


class CountingDSGRPO(DSGRPO):
    """DS-GRPO that records how many completions each call of its shaping hook sees."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shaped: list[int] = []

    def advantages(self, batch: TrainBatch) -> torch.Tensor:
        self.shaped.append(batch.num_samples)
        return super().advantages(batch)


@pytest.fixture(scope="module")
def rollout(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=3, max_new_tokens=7)
    records = CountdownTask(num_train=4, num_val=1, max_number=30, max_target=200, seed=5).records("train")
    torch.manual_seed(0)
    out = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    correct = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=torch.bool)  # one group all wrong
    return out.replace(correct=correct, rewards=correct.float())


def run(tiny_model_dir, rollout, monkeypatch, **settings):
    """One update of a fresh module with DS-GRPO (beta 0), an optimizer that only counts its steps, and
    the number of log-prob passes (one per micro-batch) the preparation and the update ran."""
    module = RLModule(name_or_path=tiny_model_dir, objective=CountingDSGRPO(gamma_p=0.5, gamma_n=0.5, beta=0.0),
                      **settings)
    module.configure_model()
    forwards = []
    real = scoring.completion_logits
    monkeypatch.setattr(scoring, "completion_logits", lambda *a, **kw: forwards.append(1) or real(*a, **kw))
    batch, batch_metrics = module.train_batch(rollout)
    steps = []
    optimizer = SimpleNamespace(step=lambda: steps.append(1), zero_grad=lambda set_to_none=True: None)
    stats = update(batch, objective=module.objective, policy=module.policy, scorer=module.scorer,
                   settings=module.update_settings, optimizer=optimizer, scheduler=SimpleNamespace(step=lambda: None),
                   backward=lambda loss: loss.backward(), on_all_ranks=lambda ok: ok, counters=StepCounters(),
                   shuffle=module.shuffle, device=module.device, batch_metrics=batch_metrics)
    return module, batch, stats, len(forwards), len(steps)


def test_one_pass_shapes_each_micro_batch_once_and_needs_no_logp_old_forward(tiny_model_dir, rollout, monkeypatch):
    module, batch, stats, forwards, steps = run(tiny_model_dir, rollout, monkeypatch, micro_batch_size=5)
    assert batch.logp_old is None and batch.advantages is None  # nothing shaped before the pass
    assert module.objective.shaped == [5, 5, 2] and steps == 1  # each completion once, in the pass
    assert forwards == 3  # the pass's own log-probs only: no separate logp_old pass
    # what came back is DS-GRPO of the policy's own log-likelihoods: the advantages trained on
    with torch.no_grad():
        logp, _ = module.scorer.logprobs(module.policy, batch)
    expected = ds_advantages(batch.group_advantages, batch.correct, sequence_logprob(logp, batch.completion_mask),
                             0.5, 0.5)
    torch.testing.assert_close(stats.advantages, expected, atol=1e-5, rtol=1e-5)
    assert stats.trained.all() and stats.metrics["advantage_abs_mean"] == pytest.approx(
        float(expected.abs().mean()), rel=1e-5)
    # every group has signal: the all-wrong one through gamma_n's smoothing
    assert stats.metrics["zero_signal_groups"] == 0.0


def test_several_passes_shape_once_before_them(tiny_model_dir, rollout, monkeypatch):
    module, batch, stats, forwards, steps = run(tiny_model_dir, rollout, monkeypatch, ppo_epochs=2, minibatches=2,
                                                micro_batch_size=1)
    assert module.objective.shaped == [12] and steps == 4  # once on the whole rollout, then 2 x 2 steps
    assert batch.logp_old is not None and batch.advantages is not None
    expected = ds_advantages(batch.group_advantages, batch.correct,
                             sequence_logprob(batch.logp_old, batch.completion_mask), 0.5, 0.5)
    torch.testing.assert_close(batch.advantages, expected)
    torch.testing.assert_close(stats.advantages, batch.advantages)  # what every pass trained on
    assert forwards == 12 + 2 * 12  # the logp_old pass (one completion per micro-batch), then 2 epochs
