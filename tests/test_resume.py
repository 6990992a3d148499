"""Exact resume: a run of 4 steps and a run of 2 steps resumed with ``fit --ckpt_path last`` for 2
more log the same metrics at steps 3 and 4 and end with the same weights (CPU, same seed), which
needs the policy, optimizer, scheduler, step counters, every RNG and the data position restored.
A checkpoint of a differently shaped model is refused naming both shapes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dsrl.__main__ import cli_main

ROOT = Path(__file__).resolve().parents[1]


def args(save_dir: Path, model_dir: str, steps: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/ds_grpo.yaml"), "--model.name_or_path", model_dir,
            "--model.learning_rate", "1e-2", "--model.minibatches", "2",  # the minibatch shuffle draws from its RNG
            "--model.lr_warmup_steps", "3",  # (a decaying schedule depends on max_steps, which differs here)
            "--trainer.logger.init_args.save_dir", str(save_dir), "--data.batch_size", "2",
            "--data.task.init_args.num_train", "5", "--data.task.init_args.num_val", "2",  # 5 prompts: epochs of 3 steps
            "--rollout.num_generations", "3", "--rollout.max_new_tokens", "6", "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", "1", *extra]


def scalars(run: Path) -> dict[tuple[str, int], float]:
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    return {(tag, e.step): e.value for tag in events.Tags()["scalars"] if not tag.startswith("timing/")
            for e in events.Scalars(tag)}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


# HFEngine samples from torch's generator, restored with the checkpoint; with ``weights: copy`` the engine's
# own model is built and synced from the restored policy at the first rollout after the resume
@pytest.mark.parametrize("engine_weights", ["shared", pytest.param("copy", marks=pytest.mark.slow)])
def test_two_steps_resumed_for_two_equal_four_steps(tmp_path, tiny_model_dir, engine_weights):
    engine = ("--rollout.engine.init_args.weights", engine_weights)
    # max_steps counts optimizer steps: 2 per rollout step (model.minibatches 2)
    cli_main(args(tmp_path / "a", tiny_model_dir, 8, *engine))
    cli_main(args(tmp_path / "b", tiny_model_dir, 4, *engine))
    cli_main(args(tmp_path / "b", tiny_model_dir, 8, "--ckpt_path", "last", *engine))  # into version_1 of the same run
    full, first, resumed = (tmp_path / "a/ds_grpo/version_0", tmp_path / "b/ds_grpo/version_0",
                            tmp_path / "b/ds_grpo/version_1")
    a, b = scalars(full), scalars(resumed)
    later = {key: value for key, value in a.items() if key[1] >= 2}  # rollout steps 3 and 4 (logged at 2, 3)
    assert {key for key in b if key[1] >= 2} == set(later) and len({k[0] for k in later}) > 20
    for key, value in later.items():
        assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-8), key
    # the first half itself matched, and the runs trained (the weights moved between steps 2 and 4)
    assert all(scalars(first)[key] == pytest.approx(v, rel=1e-6, abs=1e-8) for key, v in a.items() if key[1] < 2)
    wa, wb, w2 = weights(full), weights(resumed), weights(first)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.equal(wa[n], w2[n]) for n in wa)


def one_line_error(argv: list[str], capsys) -> str:
    """The CLI's ``error:`` line (exit status 2: a ConfigError)."""
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    return line


def test_last_without_an_earlier_run(tmp_path, tiny_model_dir, capsys):
    line = one_line_error(args(tmp_path, tiny_model_dir, 1, "--ckpt_path", "last"), capsys)
    assert "--ckpt_path last: no earlier run" in line


def test_checkpoint_of_another_model_shape_names_both(tmp_path, tiny_model_dir, wider_model_dir, capsys):
    cli_main(args(tmp_path, tiny_model_dir, 1))
    ckpt = next(tmp_path.glob("ds_grpo/version_0/checkpoints/last.ckpt"))
    line = one_line_error(args(tmp_path / "other", wider_model_dir, 2, "--ckpt_path", str(ckpt)), capsys)
    assert re.search(r"has shape \[\d+, 32\] but the model built from .* has \[\d+, 48\]", line), line


def test_ckpt_path_takes_a_sharded_checkpoint_directory(tmp_path):
    # FSDP2Strategy(save_distributed_checkpoint=True) writes each checkpoint as a directory of shards plus
    # Lightning's metadata file; scripts/gpu_check.py's fsdp2 check resumes from one through the command line
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    from lightning_dsrl.cli import check_ckpt_path
    from lightning_dsrl.errors import ConfigError

    sharded = tmp_path / "epoch=0-step=1.ckpt"
    sharded.mkdir()
    (sharded / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(ConfigError, match="a directory, not a checkpoint file"):
        check_ckpt_path(str(sharded))  # no metadata: not a checkpoint
    (sharded / _METADATA_FILENAME).write_bytes(b"")
    check_ckpt_path(str(sharded))


@pytest.mark.slow
def test_sharded_fsdp2_checkpoint_of_a_lora_run_resumes_exactly(tmp_path, tiny_model_dir):
    # one FSDP2 process over gloo, each run in its own process (it starts a process group); the sharded
    # checkpoint holds the adapters only, and the rebuilt base weights are not asked of it
    lora = json.dumps({"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"]})
    extra = ("--config", str(ROOT / "configs/fsdp.yaml"), "--model.lora", lora, "--checkpoint.save_top_k", "-1",
             "--trainer.strategy.init_args.save_distributed_checkpoint", "true")
    subprocess.run([sys.executable, "-m", "lightning_dsrl", *args(tmp_path, tiny_model_dir, 4, *extra)], check=True)
    run = tmp_path / "ds_grpo/version_0"
    ckpt = run / "checkpoints" / "epoch=0-step=2.ckpt"  # after the first rollout (2 optimizer steps each)
    assert ckpt.is_dir() and list(ckpt.glob("*.distcp"))
    subprocess.run([sys.executable, "-m", "lightning_dsrl", *args(tmp_path, tiny_model_dir, 4, *extra),
                    "--ckpt_path", str(ckpt)], check=True)
    full, resumed = scalars(run), scalars(tmp_path / "ds_grpo/version_1")
    later = {key: value for key, value in full.items() if key[1] >= 1}  # the second rollout (logged at 1)
    assert set(resumed) == set(later) and len({k[0] for k in later}) > 20
    for key, value in later.items():
        assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-8), key
