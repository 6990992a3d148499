"""Weight sync to an engine that owns its weights, and its verification: ``HFEngine(weights="copy")``
keeps a second copy of the tiny policy on the CPU, so the sync path a vLLM engine takes (full
weights gathered from the policy, copied tensor by tensor) and the probe check run here."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning import Trainer

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.errors import ConfigError, TrainingError
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO
from lightning_dsrl.rewards import CountdownReward, FormatReward
from lightning_dsrl.rollout import HFEngine, RolloutCallback
from lightning_dsrl.types import PromptBatch


def callback(engine, **kw) -> RolloutCallback:
    return RolloutCallback(engine=engine, rewards=[CountdownReward(), FormatReward(weight=0.1)], num_generations=3,
                           max_new_tokens=6, **kw)


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
    cb.sync_check = "warn"
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


def fit(tiny_model_dir, engine, steps: int = 2) -> tuple[Trainer, RLModule]:
    module = RLModule(name_or_path=tiny_model_dir, objective=DSGRPO(), learning_rate=1e-2, micro_batch_size=8,
                      train_self_bleu=False, log_samples_every_n_steps=0)
    data = PromptDataModule(CountdownTask(num_train=8, num_val=1, seed=3), batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[callback(engine)])
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


def test_bad_settings():
    with pytest.raises(ConfigError, match="rollout.sync_check"):
        callback(HFEngine(), sync_check="sometimes")
    with pytest.raises(ConfigError, match="rollout.sync_tolerance"):
        callback(HFEngine(), sync_tolerance=0.0)
    with pytest.raises(ConfigError, match="weights='mirror'"):
        HFEngine(weights="mirror")
