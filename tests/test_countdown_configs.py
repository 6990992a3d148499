"""The CountDown configs on the embedded model: both parse, and the default one trains
(``fit --trainer.max_steps 2``, the whole pipeline: rollout, rewards, DS-GRPO, logging, checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["ds_grpo.yaml", "grpo.yaml"])
def test_config_parses(config, capsys):
    from lightning_dsrl.__main__ import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "name_or_path: pkg://lightning_dsrl/assets/countdown-lm" in printed
    assert ("DSGRPO" in printed) == (config == "ds_grpo.yaml")


def _fit_two_steps(config: str, save_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_dsrl.__main__ import cli_main

    cli_main(["fit", "--config", str(ROOT / "configs" / config), "--trainer.max_steps", "2",
              "--trainer.logger.init_args.save_dir", str(save_dir)])
    events = list(save_dir.rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0])).Reload()
    assert len(acc.Scalars("train/correct_rate")) == 2
    assert {"passk/pass@8", "diversity/distinct_correct", "train/entropy", "train/kl"} <= set(acc.Tags()["scalars"])
    assert list(save_dir.rglob("*.ckpt")), "no checkpoint written"


def test_default_config_fits_two_steps(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _fit_two_steps("ds_grpo.yaml", tmp_path)
        assert torch.get_num_threads() == 1  # model.cpu_threads: 1 in the config
    finally:
        torch.set_num_threads(threads)


def test_cpu_threads_must_be_positive():
    from lightning_dsrl.errors import ConfigError
    from lightning_dsrl.module import RLModule

    with pytest.raises(ConfigError, match="model.cpu_threads=0 must be >= 1"):
        RLModule(cpu_threads=0)


@pytest.mark.slow
def test_grpo_config_fits_two_steps(tmp_path):
    torch.set_num_threads(1)
    _fit_two_steps("grpo.yaml", tmp_path)
