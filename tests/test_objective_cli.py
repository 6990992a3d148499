"""Every objective config through the command line on the tiny model: a 2-step ``fit`` that logs what
the objective adds, a user's own objective file picked by ``class_path``, and the start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = Path(__file__).resolve().parent / "user_code"
# the configs built like configs/ds_grpo.yaml (CountDown, the embedded model): one per objective
OBJECTIVE_CONFIGS = sorted(p for p in ROOT.glob("configs/*.yaml")
                           if not p.read_text().startswith("# overlay") and "assets/countdown-lm" in p.read_text())
# what each config must log beyond the common panels (configs not listed: the common panels only)
ADDED_TAGS = {
    "ds_grpo": {"train/ds/smoothing_incorrect", "train/kl"},
    "dr_grpo": {"train/kl"},
    "dapo": {"rollout/dynamic_dropped_groups", "rollout/dynamic_rounds", "rollout/dynamic_short",
             "rollout/dynamic_kept_groups", "timing/resample"},
    "entropy_bonus": {"train/entropy_reg/term"},
    "entropy_penalty": {"train/entropy_reg/term"},
    "r1_zero_div": {"train/div/num_used"},
    "passk": {"train/passk/group_reward", "train/passk/zero_signal_groups"},
}


def small_run(tmp_path, model_dir: str, config: Path | str, *extra: str) -> list[str]:
    """The CLI arguments of a short run on the tiny model (as ``tests/test_cli.py::small_run``)."""
    return [
        "fit",
        "--config", str(config),
        "--model.name_or_path", model_dir,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.batch_size", "3",
        "--data.task.init_args.num_train", "30",
        "--data.task.init_args.num_val", "4",
        "--rollout.num_generations", "4",
        "--rollout.max_new_tokens", "8",
        "--trainer.enable_progress_bar", "false",
        "--trainer.max_steps", "2",
        *extra,
    ]


def events_of(run_root: Path) -> EventAccumulator:
    events = EventAccumulator(str(next(run_root.glob("version_*/events.out.tfevents.*"))))
    events.Reload()
    return events


def scalar_tags(run_root: Path) -> set[str]:
    return set(events_of(run_root).Tags()["scalars"])


def test_every_objective_has_a_config():
    assert set(ADDED_TAGS) - {"ds_grpo"} <= {p.stem for p in OBJECTIVE_CONFIGS}


# what each objective's own metrics must show in a run with a reward spread: tag -> check of its values
NONTRIVIAL = {
    # a bonus -gamma_p * LL > 0 on correct completions, a penalty +gamma_n * LL < 0 on incorrect ones
    "ds_grpo": {"train/ds/smoothing_correct": lambda v: all(x > 0 for x in v),
                "train/ds/smoothing_incorrect": lambda v: all(x < 0 for x in v)},
    "dapo": {"rollout/dynamic_dropped_groups": lambda v: sum(v) > 0, "rollout/dynamic_rounds": lambda v: sum(v) > 0},
    "entropy_bonus": {"train/entropy_reg/term": lambda v: all(x < 0 for x in v)},  # -c * H, c > 0
    "entropy_penalty": {"train/entropy_reg/term": lambda v: all(x > 0 for x in v)},
    "r1_zero_div": {"train/div/num_used": lambda v: all(x > 0 for x in v), "train/div/term": lambda v: all(x < 0 for x in v)},
    "passk": {"train/passk/group_reward": lambda v: all(0 < x < 1 for x in v)},
}


def policy_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(next(run.glob("version_*/checkpoints/last.ckpt")), weights_only=True)["state_dict"]
    return {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}


@pytest.mark.parametrize("config", OBJECTIVE_CONFIGS, ids=lambda p: p.stem)
def test_fit_every_objective_config(tmp_path, tiny_model_dir, config, monkeypatch):
    """Two real optimizer steps of every objective config: a scripted verifier (``my_reward.SpreadReward``)
    gives the random tiny model groups with mixed verdicts, so every objective has signal."""
    monkeypatch.syspath_prepend(str(USER_CODE))
    # pass@k with k = G has no signal in a group with a correct completion (pass@G is 1 there): k < G
    extra = ["--model.objective.init_args.k", "2"] if config.stem == "passk" else []
    cli_main(small_run(tmp_path, tiny_model_dir, config, "--rollout.rewards",
                       '[{"class_path": "my_reward.SpreadReward"}]', *extra))
    run = tmp_path / "runs" / config.stem  # logger name = config stem
    events = events_of(run)
    tags = set(events.Tags()["scalars"])
    expected = {"train/reward_mean", "train/policy_loss", "train/ratio_mean"} | ADDED_TAGS.get(config.stem, set())
    assert expected <= tags, expected - tags

    def values(tag: str) -> list[float]:
        return [e.value for e in events.Scalars(tag)]

    # real optimizer steps: a gradient every step, no step skipped for lack of signal, the weights moved
    assert all(g > 0 for g in values("train/grad_norm")) and values("train/zero_signal_steps")[-1] == 0
    assert all(x < 1 for x in values("train/zero_signal_groups"))
    assert 0 < sum(values("train/correct_rate")) < 2
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    trained = policy_weights(run)
    assert sum(not torch.equal(initial[k], v) for k, v in trained.items()) > len(trained) // 2
    # ppo_epochs 1, one minibatch: the old log-probs are the new ones, rho == 1 exactly, nothing clipped
    assert values("train/ratio_mean") == [1.0, 1.0]
    assert values("train/clip_fraction") == [0.0, 0.0]
    if "train/kl" in tags:  # the first step's policy is the reference; the second's has moved away from it
        kl = values("train/kl")
        assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 1e-6
    for tag, check in NONTRIVIAL.get(config.stem, {}).items():
        assert check(values(tag)), (tag, values(tag))
    if config.stem == "dapo":
        assert "train/kl" not in tags  # beta 0: no KL, no reference model


def test_a_users_objective_file_runs_by_class_path(tmp_path, tiny_model_dir, monkeypatch):
    """``my_objective.py`` lives in the user's folder, not in the package; running from that folder puts it
    on the import path (as ``python -m`` does with the working directory)."""
    monkeypatch.chdir(USER_CODE)
    monkeypatch.syspath_prepend(str(USER_CODE))
    cli_main(small_run(tmp_path, tiny_model_dir, ROOT / "configs" / "ds_grpo.yaml",
                       "--model.objective.class_path", "my_objective.MyObjective",
                       "--model.objective.init_args.length_coef", "0.5"))
    run = tmp_path / "runs" / "ds_grpo"
    assert "train/my/length_penalty" in scalar_tags(run)
    saved = next(run.glob("version_*/config.yaml")).read_text()
    assert "class_path: my_objective.MyObjective" in saved and "length_coef: 0.5" in saved


@pytest.mark.parametrize(
    "config,args,message",
    [
        ("passk", ["--model.objective.init_args.k", "8"], "model.objective.k=8 is larger than rollout.num_generations=4"),
        ("r1_zero_div", ["--model.objective.init_args.apply_to", "positives"], "apply_to"),
        ("r1_zero_div", ["--model.objective.init_args.diversity_coef", "-0.01"], "diversity_coef"),
        ("entropy_bonus", ["--model.objective.init_args.level", "sentence"], "level"),
        ("dapo", ["--rollout.max_resample_rounds", "-1"], "max_resample_rounds"),
        ("ds_grpo", ["--model.objective.init_args.smoothing_model", "base"], "smoothing_model='base': use old or"),
        ("dr_grpo", ["--model.objective.init_args.loss_agg_mode", "sum"], "loss_agg_mode='sum': use one of"),
    ],
)
def test_bad_objective_settings_end_in_one_clear_message(tmp_path, tiny_model_dir, capsys, config, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(small_run(tmp_path, tiny_model_dir, ROOT / "configs" / f"{config}.yaml", *args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "usage:" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1


def test_an_objective_that_needs_the_missing_reference_fails_at_start(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, objective=GRPO(beta=0.0))
    module.configure_model()  # no objective needs it: no reference model loaded
    module.objective = DSGRPO(beta=0.0, smoothing_model="reference")
    with pytest.raises(ConfigError, match="needs the reference model"):
        module.on_fit_start()


def test_ds_grpo_smoothing_under_the_reference_model_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    """``smoothing_model: reference`` with ``beta: 0``: the reference model is loaded for the smoothing alone.
    Same seed, same rollouts: on the first step the policy is the reference, so the smoothing equals
    ``smoothing_model: old``'s; on the second the policy has moved and the two differ."""
    monkeypatch.syspath_prepend(str(USER_CODE))
    logged = {}
    for model in ("old", "reference"):
        cli_main(small_run(tmp_path / model, tiny_model_dir, ROOT / "configs" / "ds_grpo.yaml",
                           "--rollout.rewards", '[{"class_path": "my_reward.SpreadReward"}]',
                           "--model.objective.init_args.smoothing_model", model,
                           "--model.objective.init_args.beta", "0.0", "--model.learning_rate", "1e-2"))
        events = events_of(tmp_path / model / "runs" / "ds_grpo")
        logged[model] = {tag: [e.value for e in events.Scalars(tag)]
                         for tag in ("train/ds/smoothing_correct", "train/ds/smoothing_incorrect")}
        assert "train/kl" not in events.Tags()["scalars"]
    for tag, old in logged["old"].items():
        ref = logged["reference"][tag]
        assert ref[0] == pytest.approx(old[0], rel=1e-6) and ref[1] != pytest.approx(old[1], rel=1e-3)
