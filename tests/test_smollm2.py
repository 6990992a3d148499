"""The real pretrained-LLM path, offline: SmolLM2-135M-Instruct from its GGUF file (python -m lightning_dsrl.fetch smollm2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dsrl.__main__ import cli_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.slow
@pytest.mark.usefixtures("smollm2")  # skipped, or failed in CI, when SmolLM2 is not fetched
@pytest.mark.parametrize("name", ["smollm2_grpo", "smollm2_lora"])
def test_smollm2_config_fits_one_step_offline(tmp_path, name):
    cli_main([
        "fit", "--config", str(CONFIGS / f"{name}.yaml"),
        "--trainer.max_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.batch_size", "2",
        "--rollout.num_generations", "2",
        "--rollout.max_new_tokens", "12",
    ])
    run = next((tmp_path / name).glob("version_*"))
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    assert {"train/reward_mean", "reward/numeric", "timing/generate"} <= set(events.Tags()["scalars"])
    assert list((run / "checkpoints").glob("*.ckpt"))
