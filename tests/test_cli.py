"""The command line as a user meets it: every config parses and instantiates, a short fit and a
validate on the tiny model write what they should, and mistakes end in one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.cli import DSRLCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in ROOT.glob("configs/**/*.yaml") if "study" not in p.parts)  # study files: test_study.py
BASE = str(ROOT / "configs" / "ds_grpo.yaml")


def is_overlay(path: Path) -> bool:
    """Overlay configs (fsdp, vllm, ...) say so on their first line and are applied on top of ds_grpo.yaml."""
    return path.read_text().startswith("# overlay")


def config_args(path: Path) -> list[str]:
    return ["--config", BASE, "--config", str(path)] if is_overlay(path) else ["--config", str(path)]


def small_run(tmp_path, tiny_model_dir, *extra: str, config: str = BASE) -> list[str]:
    return [
        "--config", config,
        "--model.name_or_path", tiny_model_dir,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.batch_size", "3",
        "--data.task.init_args.num_train", "30",
        "--data.task.init_args.num_val", "4",
        "--rollout.num_generations", "4",
        "--rollout.val_num_generations", "4",
        "--rollout.max_new_tokens", "8",
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def test_there_are_configs():
    assert (ROOT / "configs" / "ds_grpo.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_prints_and_instantiates(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *config_args(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"model", "data", "rollout", "trainer"} <= set(printed)
    assert printed["model"]["objective"]["class_path"] and printed["rollout"]["rewards"]
    cli = DSRLCLI(args=config_args(path), run=False)  # builds every object; loads no weights
    assert cli.model.objective is not None and cli.datamodule.task is not None


def test_fit_through_the_cli_writes_a_run_directory(tmp_path, tiny_model_dir):
    cli_main(["fit", *small_run(tmp_path, tiny_model_dir, "--trainer.max_steps", "2")])
    run = tmp_path / "runs" / "ds_grpo" / "version_0"
    assert (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name_or_path"] == tiny_model_dir and saved["trainer"]["max_steps"] == 2
    assert list((run / "checkpoints").glob("*.ckpt"))
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/reward_mean", "train/reward_std", "train/correct_rate", "passk/pass@4", "train/zero_signal_groups",
        "train/completion_length", "train/kl", "train/clip_fraction", "train/entropy", "train/grad_norm",
        "train/lr", "train/ds/smoothing_incorrect", "timing/generate", "timing/score", "timing/logprobs",
        "timing/update", "timing/optimizer", "timing/trained_tokens_per_s", "timing/update_tflops_per_s", "reward/countdown",
        "reward/format", "diversity/distinct_correct",
    }
    assert expected <= tags, expected - tags
    assert len(events.Scalars("train/reward_mean")) == 2
    assert "samples/text_summary" in events.Tags()["tensors"]


def test_validate_through_the_cli(tmp_path, tiny_model_dir):
    cli_main(["validate", *small_run(tmp_path, tiny_model_dir)])
    run = next((tmp_path / "runs" / "ds_grpo").glob("version_*"))
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    assert {"val/pass@1", "val/pass@4", "val/reward_mean"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.name_or_pth", "x"], "name_or_pth"),
        (["--model.objective.class_path", "NoSuchObjective"], "NoSuchObjective"),
        (["--model.objective.init_args.gamma_p", "-1"], "gamma_p"),
        (["--data.task.init_args.num_train", "0"], "no train prompts"),
        (["--model.name_or_path", "/no/such/model"], "no such directory"),
    ],
)
def test_mistakes_end_in_one_clear_message(tmp_path, tiny_model_dir, capsys, args, message):
    argv = ["fit", *small_run(tmp_path, tiny_model_dir, "--trainer.max_steps", "1"), *args]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_progress_bar_counts_steps(tmp_path, tiny_model_dir):
    from lightning_dsrl.progress import StepProgressBar

    cli = DSRLCLI(args=small_run(tmp_path, tiny_model_dir, "--trainer.max_steps", "128",
                                 "--trainer.enable_progress_bar", "true"), run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1  # replaces Lightning's default bar, not added beside it
    bars[0]._trainer = cli.trainer  # what the bar's setup() does when fit starts
    assert bars[0]._get_train_description(3).startswith("Step 0/128 · epoch 3")  # was "Epoch 3/-2"
    quiet = DSRLCLI(args=small_run(tmp_path, tiny_model_dir, "--overwrite_run_dir", "true"), run=False)
    assert not any(isinstance(c, StepProgressBar) for c in quiet.trainer.callbacks)
