"""The math + LoRA config through the command line: fit on the tiny model with the shipped sample,
validate from the adapter-only checkpoint, export merged weights; the real SmolLM2 run (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.models import export_merged

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "math_lora.yaml")
SAMPLE = str(ROOT / "tests" / "data" / "gsm8k_sample.jsonl")


def scalars(run: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tiny_args(tmp_path, tiny_model_dir) -> list[str]:
    return [
        "--config", CONFIG,
        "--model.name_or_path", tiny_model_dir,
        "--model.gguf_file", "null",
        "--data.task.init_args.dataset", SAMPLE,  # absolute: the test may run from any directory
        "--data.task.init_args.chat", "false",  # the character tokenizer has no chat template
        "--data.task.init_args.cache_dir", str(tmp_path / "datasets-cache"),
        "--rollout.num_generations", "2",
        "--rollout.val_num_generations", "2",
        "--rollout.max_new_tokens", "8",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ]


def test_math_lora_config_fits_validates_and_exports_on_the_tiny_model(tmp_path, tiny_model_dir):
    cli_main(["fit", *tiny_args(tmp_path, tiny_model_dir), "--trainer.max_steps", "2"])
    run = tmp_path / "runs" / "math_lora" / "version_0"
    values = scalars(run)
    assert {"train/reward_mean", "reward/math", "train/correct_rate", "train/kl", "train/grad_norm"} <= set(values)
    # the random character model answers no word problem (reward 0, no gradient); that adapters train
    # and merge correctly is tested on hand-set adapters in test_lora.py
    assert len(values["reward/math"]) == 2
    checkpoint_path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state), sorted(state)[:5]
    assert checkpoint["lora"]["r"] == 16 and checkpoint["model_spec"]["name_or_path"] == tiny_model_dir

    cli_main(["validate", *tiny_args(tmp_path, tiny_model_dir), "--ckpt_path", str(checkpoint_path)])
    validated = scalars(tmp_path / "runs" / "math_lora" / "version_1")
    assert {"val/pass@1", "val/pass@2", "val/reward_mean"} <= set(validated)

    merged = AutoModelForCausalLM.from_pretrained(export_merged(checkpoint_path, tmp_path / "merged"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {n: p.shape for n, p in merged.named_parameters()} == {n: p.shape for n, p in base.named_parameters()}


def test_full_checkpoint_into_a_lora_config_is_refused(tmp_path, tiny_model_dir, capsys):
    args = tiny_args(tmp_path, tiny_model_dir)
    cli_main(["fit", *args, "--model.lora", "null", "--trainer.max_steps", "1"])
    checkpoint_path = tmp_path / "runs" / "math_lora" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", *args, "--ckpt_path", str(checkpoint_path)])
    assert exit_info.value.code == 2
    assert "trained without LoRA but model.lora is set" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("smollm2")  # skipped, or failed in CI, when SmolLM2 is not fetched
def test_math_lora_config_fits_two_steps_on_smollm2_offline(tmp_path):
    cli_main([
        "fit", "--config", CONFIG,
        "--trainer.max_steps", "2",
        "--data.task.init_args.dataset", SAMPLE,
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    run = next((tmp_path / "math_lora").glob("version_*"))
    values = scalars(run)
    assert len(values["reward/math"]) == 2 and len(values["train/kl"]) == 2
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
