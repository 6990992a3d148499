"""Each mistake a user can make in a config ends in one ``error:`` line naming the option and a fix,
with no stack trace (``--debug`` shows it); an existing run directory is never written into."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs" / "ds_grpo.yaml")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """If a check regresses, the run it no longer stops writes its runs/ here, not into the checkout."""
    monkeypatch.chdir(tmp_path)


def error_of(argv: list[str], capsys, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


YAML_MISTAKES = {
    "unknown_section": ("modle:\n  name_or_path: x\n", "error: modle.name_or_path: no such option (did you mean "
                                                       "model.name_or_path?)"),
    "unknown_key": ("model:\n  name_or_pth: x\n",
                    "error: model.name_or_pth: no such option (did you mean model.name_or_path?). "
                    "`python -m lightning_dsrl fit --help` lists every option"),
    "wrong_type": ("rollout:\n  num_generations: eight\n", "error: rollout.num_generations: expected int, got 'eight'"),
    "bad_choice": ("model:\n  torch_dtype: float64\n",
                   "error: model.torch_dtype: expected one of 'float32', 'bfloat16', 'float16', got 'float64'"),
    "unknown_init_arg": ("model:\n  objective:\n    class_path: DSGRPO\n    init_args:\n      gama_p: 0.1\n",
                         "error: model.objective.init_args.gama_p: DSGRPO has no option 'gama_p' (did you mean "
                         "gamma_p?). Its options: gamma_p, gamma_n, smoothing_model, logprob_reduction, beta, "
                         "epsilon_low, epsilon_high, scale_rewards, loss_agg_mode, eps"),
    "bad_yaml": ("rollout:\n   rewards:\n  - x\n",
                 "not valid YAML: expected <block end>, but found '<block sequence start>' at line 3, column 3"),
}


@pytest.mark.parametrize("case", YAML_MISTAKES)
def test_config_file_mistakes(tmp_path, capsys, case):
    text, expected = YAML_MISTAKES[case]
    overlay = tmp_path / f"{case}.yaml"
    overlay.write_text(text)
    assert expected in error_of(["fit", "--config", BASE, "--config", str(overlay)], capsys)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model.name_or_pth", "x"], "error: unknown option --model.name_or_pth (did you mean "
                                       "--model.name_or_path?). `python -m lightning_dsrl fit --help` lists every option"),
        (["--trainer.max_stepz", "3"], "error: unknown option --trainer.max_stepz (did you mean --trainer.max_steps?)"),
        (["--model.learning_rate", "abc"], "error: model.learning_rate: expected float, got 'abc'"),
        (["--model.max_grad_norm", "abc"], "error: model.max_grad_norm: expected float or null, got 'abc'"),
        (["--model.objective.init_args.gamma_p", "abc"],
         "error: model.objective.init_args.gamma_p: expected float, got 'abc'"),
        (["--model.objective.class_path", "my_missing_module.Thing"],
         "error: model.objective: cannot import 'my_missing_module.Thing' (No module named 'my_missing_module'); "
         "put my_missing_module.py in the working directory or on PYTHONPATH"),
        (["--config", "/no/such/config.yaml"], "error: --config /no/such/config.yaml: no such file (relative paths "
                                               "start in"),
        (["--model.objective.init_args.gamma_p", "-1"], "gamma_p"),
        (["--rollout.reward_timeout_s", "0"],
         "error: rollout.reward_timeout_s=0.0: give seconds > 0, or null for no limit"),
        # the trainer's log-probs are of the untruncated distribution: truncated training sampling is refused
        (["--rollout.top_p", "0.9"], "error: rollout.top_p=0.9: training samples from the full distribution"),
        (["--rollout.top_k", "20"], "error: rollout.top_k=20: training samples from the full distribution"),
    ],
)
def test_command_line_mistakes(capsys, args, expected):
    assert expected in error_of(["fit", "--config", BASE, *args], capsys)


@pytest.mark.parametrize(
    "option,name,builtins",
    [
        ("--model.objective.class_path", "DSGRP", "Built-in Objective classes: DSGRPO, GRPO"),
        ("--data.task.class_path", "CountdwnTask", "Built-in Task classes: AdditionTask, CountdownTask"),
        ("--rollout.engine.class_path", "VLLM", "Built-in RolloutEngine classes: HFEngine"),
        ("--rollout.rewards+=", "CountdownRewrd",
         "Built-in RewardModule classes: CountdownReward, FormatReward, NumericAnswerReward"),
    ],
)
def test_unknown_class_names_list_the_builtins(capsys, option, name, builtins):
    args = [f"{option}{name}"] if option.endswith("=") else [option, name]
    err = error_of(["fit", "--config", BASE, *args], capsys)
    key = option.strip("-+=").removesuffix(".class_path")
    assert err.startswith(f"error: {key}: unknown class {name!r}. ")
    # the lists grow as classes are added; these are the ones that ship today (and never the internal composite)
    listed = err.split("classes: ")[1].split(".")[0].split(", ")
    assert set(builtins.split("classes: ")[1].split(", ")) <= set(listed) and "CompositeReward" not in listed
    assert "class_path: my_module.MyClass" in err


def test_a_model_without_tokenizer(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    weights_only = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(weights_only)
    err = error_of(["fit", "--config", BASE, "--model.name_or_path", str(weights_only), "--trainer.max_steps", "1",
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], capsys)
    assert err.startswith(f"error: model.name_or_path={str(weights_only)!r}: could not load the tokenizer (")
    assert "give a local directory with config.json and weights" in err


def test_debug_shows_the_trace(monkeypatch):
    with pytest.raises(ConfigError, match="expected int"):
        cli_main(["fit", "--config", BASE, "--rollout.num_generations", "eight", "--debug"])
    monkeypatch.setenv("LIGHTNING_DSRL_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown option --model.name_or_pth"):
        cli_main(["fit", "--config", BASE, "--model.name_or_pth", "x"])


# ---------------------------------------------------------------------------- run directories
def run(tmp_path, model_dir, *extra) -> list[str]:
    return ["--config", BASE, "--model.name_or_path", model_dir,
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
            "--data.batch_size", "2", "--data.task.init_args.num_train", "8", "--data.task.init_args.num_val", "2",
            "--data.task.init_args.max_number", "6", "--data.task.init_args.max_target", "30",
            "--rollout.num_generations", "2", "--rollout.val_num_generations", "2", "--rollout.max_new_tokens", "6",
            *extra]


def test_an_existing_run_directory_is_never_overwritten(tmp_path, tiny_model_dir, capsys):
    version_0 = ["--trainer.logger.init_args.version", "0", "--trainer.max_steps", "1"]
    cli_main(["fit", *run(tmp_path, tiny_model_dir, *version_0)])
    run_dir = tmp_path / "runs" / "ds_grpo" / "version_0"
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert "config.yaml" in before and "last.ckpt" in before
    err = error_of(["fit", *run(tmp_path, tiny_model_dir, *version_0)], capsys)
    assert err == (f"error: trainer.logger.init_args.version=0: the run directory {run_dir} already exists and is not "
                   "empty; choose another version (or leave it unset for the next free one), move the old run away, or "
                   "pass --overwrite_run_dir true to write into it")
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # untouched
    # without an explicit version the next free one is used
    cli_main(["fit", *run(tmp_path, tiny_model_dir, "--trainer.max_steps", "1")])
    assert (tmp_path / "runs" / "ds_grpo" / "version_1" / "config.yaml").is_file()
    # an explicit checkpoint.dirpath that holds checkpoints is protected too
    ckpts = str(run_dir / "checkpoints")
    err = error_of(["fit", *run(tmp_path, tiny_model_dir, "--checkpoint.dirpath", ckpts, "--trainer.max_steps", "1")],
                   capsys)
    assert err.startswith(f"error: checkpoint.dirpath={ckpts!r} already holds checkpoints")
    # the explicit option allows it, and the checkpoint it wrote loads back (weights_only=True)
    cli_main(["fit", *run(tmp_path, tiny_model_dir, *version_0, "--overwrite_run_dir", "true")])
    cli_main(["validate", *run(tmp_path, tiny_model_dir, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))])
    assert not list(run_dir.rglob("*.tmp-*"))  # no half-written checkpoint left behind
