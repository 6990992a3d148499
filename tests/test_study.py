"""The study runner (``scripts/study.py``) and its statistics (``lightning_dsrl/metrics/paired.py``):
hand-computed pass@k, paired intervals and sample efficiency; a small study of 2 arms x 1 seed on the
tiny model that runs, summarises what its runs wrote, and resumes without re-running finished jobs."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_dsrl.metrics.paired import bootstrap_mean, passk_by_seed, samples_to_reach

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ statistics
def test_passk_by_seed_hand_computed():
    # seed 0: problem 0 has 1 of 4 correct, problem 1 has 2 of 4; seed 1: 0 of 4 and 4 of 4
    n = torch.tensor([[4, 4], [4, 4]])
    c = torch.tensor([[1, 2], [0, 4]])
    values = passk_by_seed(n, c, [1, 2, 4])
    # pass@2 of 1 in 4 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = .5; of 2 in 4 = 1 - C(2,2)/C(4,2) = 5/6
    expected = torch.tensor([[[0.25, 0.5, 1.0], [0.5, 5 / 6, 1.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]],
                            dtype=torch.float64)
    torch.testing.assert_close(values, expected)
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples"):
        passk_by_seed(n, c, [8])


def test_bootstrap_mean_resamples_seeds_and_problems():
    # two seeds that differ by a constant: resampling seeds alone spreads the mean over [1, 3]
    values = torch.tensor([[[1.0], [1.0], [1.0]], [[3.0], [3.0], [3.0]]], dtype=torch.float64)
    mean, low, high = bootstrap_mean(values, num_resamples=4000)
    assert float(mean) == 2.0 and float(low) == 1.0 and float(high) == 3.0
    # problems that differ, one seed: the interval is the problems' bootstrap; a constant has no width
    mean, low, high = bootstrap_mean(torch.full((1, 5, 2), 0.5, dtype=torch.float64))
    assert mean.tolist() == low.tolist() == high.tolist() == [0.5, 0.5]


def test_paired_difference_removes_shared_problem_difficulty():
    # problems of very different difficulty, the method ahead by exactly .1 on each: the paired interval
    # is a point, while each arm's own interval is wide
    generator = torch.Generator().manual_seed(0)
    baseline = torch.rand(3, 50, 1, generator=generator, dtype=torch.float64) * 0.8
    method = baseline + 0.1
    diff, low, high = bootstrap_mean(method - baseline)
    assert float(diff) == pytest.approx(0.1) and float(low) == pytest.approx(0.1) and float(high) == pytest.approx(0.1)
    _, own_low, own_high = bootstrap_mean(method)
    assert float(own_high - own_low) > 0.1


def test_samples_to_reach_the_baseline():
    n = torch.tensor([[8, 8]])
    c = torch.tensor([[2, 0]])  # pass@k = (1 - C(6,k)/C(8,k)) / 2
    curve = [(1 - math.comb(6, k) / math.comb(8, k)) / 2 for k in range(1, 9)]
    assert samples_to_reach(n, c, curve[2]) == 3
    assert samples_to_reach(n, c, curve[2] + 1e-6) == 4
    assert samples_to_reach(n, c, 0.6) is None  # never: problem 1 has no correct sample


# ------------------------------------------------------------------ the runner
def small_study(tmp_path: Path, model_dir: str) -> Path:
    common = ["--model.name_or_path", model_dir, "--data.task.init_args.num_train", "8",
              "--data.task.init_args.num_val", "3", "--data.task.init_args.max_number", "6",
              "--data.task.init_args.max_target", "30", "--data.batch_size", "2", "--rollout.num_generations", "2",
              "--rollout.max_new_tokens", "6"]
    spec = {
        "name": "tiny", "output": str(tmp_path / "out"), "runs_dir": str(tmp_path / "runs"), "seeds": [0],
        "baseline": "grpo", "common_args": common, "bootstrap": 200, "curves": ["train/correct_rate"],
        "fit_args": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                     "--trainer.num_sanity_val_steps", "0"],
        "eval_args": ["--rollout.val_num_generations", "4", "--rollout.val_greedy", "false"],
        "arms": {"base": {"config": "configs/grpo.yaml", "train": False}, "grpo": {"config": "configs/grpo.yaml"}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_small_study_runs_summarises_and_resumes(tmp_path, tiny_model_dir, capsys):
    study = _script()
    path = small_study(tmp_path, tiny_model_dir)
    assert study.main([str(path), "--workers", "2"]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert {p.name for p in out.iterdir()} == {"summary.json", "runs.json", "table.md", "passk.png", "diff.png",
                                               "curves.png"}
    assert summary["k"] == [1, 2, 4] and summary["problems"] == 3 and summary["samples_per_problem"] == 4
    # the summary is what the runs wrote: pass@k from the per-problem counts of each result.json
    for arm in ("base", "grpo"):
        result = json.loads((tmp_path / "runs" / arm / "seed_0" / "result.json").read_text())
        assert result["n"] == [4, 4, 4] and len(result["problems"]) == 3 and result["cpu_s"] > 0
        expected = [sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in result["c"]) / 3 for k in (1, 2, 4)]
        assert summary["arms"][arm]["pass@k"] == pytest.approx(expected)
        assert summary["arms"][arm]["curve_mean"][0] == pytest.approx(sum(expected) / 3)
    base, grpo = summary["arms"]["base"], summary["arms"]["grpo"]
    # cost and curves: the fit's own numbers, per command; the untrained arm has no fit and no curve
    result = json.loads((tmp_path / "runs" / "grpo" / "seed_0" / "result.json").read_text())
    assert set(result["usage"]) == {"fit", "validate"} and set(base["usage"]) == {"validate"}
    assert all(u["wall_s"] > 0 and u["cpu_s"] > 0 and u["peak_rss_mib"] > 100 for u in result["usage"].values())
    assert result["cpu_s"] == pytest.approx(sum(u["cpu_s"] for u in result["usage"].values()), abs=0.2)
    curve = result["curves"]["train/correct_rate"]
    assert len(curve["step"]) == 2 and all(0 <= v <= 1 for v in curve["value"])
    assert grpo["curves"]["train/correct_rate"]["mean"] == pytest.approx(curve["value"]) and base["curves"] == {}
    assert "| grpo |" in table_of(out) and "fit peak MiB" in table_of(out)
    assert base["minus_baseline"]["mean"] == pytest.approx([b - g for b, g in zip(base["pass@k"], grpo["pass@k"])])
    assert "minus_baseline" not in grpo
    table = (out / "table.md").read_text()
    assert "| base | 1 |" in table and "| grpo | 1 |" in table and "Paired difference to `grpo`" in table
    # the trained arm really trained: its fit left a checkpoint, and its validate evaluated that checkpoint
    assert (tmp_path / "runs" / "grpo" / "seed_0" / "fit" / "checkpoints" / "last.ckpt").is_file()
    assert "--ckpt_path" in json.loads((tmp_path / "runs" / "grpo" / "seed_0" / "result.json").read_text())[
        "commands"][1]
    # run again: nothing to do; drop one job's result: only that job runs again
    capsys.readouterr()
    assert study.main([str(path), "--workers", "2"]) == 0
    assert "0 job(s) to run, 2 already done" in capsys.readouterr().out
    (tmp_path / "runs" / "base" / "seed_0" / "result.json").unlink()
    assert study.main([str(path)]) == 0
    assert "1 job(s) to run, 1 already done" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["arms"]["grpo"] == grpo
    # the committed runs.json alone gives the same summary once runs_dir is gone
    summary = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "runs.json").read_text())
    assert [(r["arm"], r["seed"]) for r in record["runs"]] == [("base", 0), ("grpo", 0)]
    assert record["runs"][1]["c"] == json.loads((tmp_path / "runs" / "grpo" / "seed_0" / "result.json").read_text())["c"]
    shutil.rmtree(tmp_path / "runs")
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert study.main([str(path), "--summary-only"]) == 0
    assert "summarising the committed" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text()) == summary


def test_committed_runs_keep_each_runs_counts_in_one_problem_order():
    study = _script()
    runs = {"a": [{"arm": "a", "seed": 0, "problems": ["p", "q", "r"], "n": [4, 4, 4], "c": [1, 2, 3]}],
            "b": [{"arm": "b", "seed": 0, "problems": ["r", "p", "q"], "n": [8, 4, 4], "c": [7, 0, 4]}]}
    record = study.per_run_record(runs, ["p", "q", "r"])
    assert record["problems"] == ["p", "q", "r"]
    assert record["runs"][1] == {"arm": "b", "seed": 0, "n": [4, 4, 8], "c": [0, 4, 7]}  # reordered to p, q, r
    back = study.committed_results(record)
    assert back["b"][0]["problems"] == ["p", "q", "r"] and back["b"][0]["c"] == [0, 4, 7]
    assert study.per_run_record(back, ["p", "q", "r"]) == record


def test_a_failing_job_is_reported_and_the_others_still_run(tmp_path, tiny_model_dir, capsys):
    study = _script()
    path = small_study(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(path.read_text())
    spec["arms"]["broken"] = {"config": "configs/grpo.yaml", "args": ["--model.learning_rate", "-1"]}
    spec["keep_checkpoints"] = False
    path.write_text(yaml.safe_dump(spec))
    assert study.main([str(path), "--workers", "2", "--only", "broken", "base"]) == 1
    captured = capsys.readouterr()
    assert "broken seed 0: `lightning_dsrl fit` failed (exit code 2)" in captured.err and "log.txt" in captured.err
    assert "no summary yet: the baseline arm 'grpo' has no finished run" in captured.out
    assert (tmp_path / "runs" / "base" / "seed_0" / "result.json").is_file()
    # keep_checkpoints: false: the trained arm's checkpoints are gone once its validate has read them
    assert study.main([str(path), "--only", "grpo"]) == 0
    assert (tmp_path / "runs" / "grpo" / "seed_0" / "result.json").is_file()
    assert not (tmp_path / "runs" / "grpo" / "seed_0" / "fit" / "checkpoints").exists()
    assert "model.learning_rate" in (tmp_path / "runs" / "broken" / "seed_0" / "log.txt").read_text()


def table_of(out: Path) -> str:
    return (out / "table.md").read_text()


def test_curves_average_the_steps_every_seed_logged():
    study = _script()
    runs = [{"curves": {"t": {"step": [0, 1, 2], "value": [0.0, 0.5, 1.0]}}},
            {"curves": {"t": {"step": [0, 2], "value": [0.2, 0.4]}}}, {"curves": {}}]
    assert study._curves(runs) == {"t": {"step": [0, 2], "mean": pytest.approx([0.1, 0.7]), "min": [0.0, 0.4],
                                         "max": [0.2, 1.0], "seeds": 2}}


@pytest.mark.parametrize("change,message", [
    ({"baseline": "nope"}, "baseline 'nope' is not an arm"),
    ({"arms": {"grpo": {}}}, "arm 'grpo' has no `config`"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"colour": "red"}, "unknown key(s) ['colour']"),
])
def test_bad_study_files_end_in_one_error_line(tmp_path, tiny_model_dir, change, message):
    study = _script()
    path = small_study(tmp_path, tiny_model_dir)
    spec = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        study.load_study(path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "study").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_config_builds_each_of_its_runs(path):
    """Each arm's fit and validate command line parses into the objects it names (no weights loaded), with the
    arm's overrides applied: a misspelt option or a value out of range fails here, not hours into a study."""
    from lightning_dsrl.cli import DSRLCLI

    runner = _script()
    study = runner.load_study(path)
    assert study.baseline in {arm.name for arm in study.arms}
    for arm in study.arms:
        given = dict(zip(arm.args[::2], arm.args[1::2]))
        for command in runner.commands(study, arm, study.seeds[0]):
            args = command[4:]  # after python -m lightning_dsrl <subcommand>
            if "--ckpt_path" in args:  # the fit's checkpoint, not written yet
                del args[args.index("--ckpt_path"):args.index("--ckpt_path") + 2]
            cli = DSRLCLI(args=args, run=False)
            for option, value in given.items():
                if option.startswith("--model.objective.init_args."):
                    got = getattr(cli.model.objective, option.rsplit(".", 1)[1])
                    assert str(got) == value or float(got) == float(value), (arm.name, option, got)


def test_a_stopped_runner_leaves_no_job_running(tmp_path, tiny_model_dir):
    """SIGTERM to the runner kills the fit it started (and starts no other job), so nothing keeps training unseen."""
    import signal
    import subprocess
    import time

    path = small_study(tmp_path, tiny_model_dir)
    runner = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "study.py"), str(path), "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [tmp_path / "runs" / arm / "seed_0" / "log.txt" for arm in ("base", "grpo")]
    deadline = time.time() + 120
    while not all(log.is_file() and "$ " in log.read_text() for log in logs):  # both jobs' commands started
        assert time.time() < deadline and runner.poll() is None, "the jobs never started"
        time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no job process to stop"
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=60)
    time.sleep(1)
    for pid in children:  # each one is gone, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert runner.returncode == 128 + signal.SIGTERM and "stopped by signal" in out
    assert not any((tmp_path / "runs" / arm / "seed_0" / "result.json").exists() for arm in ("base", "grpo"))


def test_smollm2_twins_splits_held_out_pass_at_1_by_the_commuted_twin():
    spec = importlib.util.spec_from_file_location("smollm2_twins", ROOT / "scripts" / "smollm2_twins.py")
    twins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twins)
    from lightning_dsrl.data import AdditionTask

    task = AdditionTask(num_digits=1, num_train=30, num_val=20, seed=0, template="plain")
    trained = {tuple(r.meta["terms"]) for r in task.records("train")}
    held_out = task.records("val")
    has_twin = [tuple(reversed(r.meta["terms"])) in trained for r in held_out]
    assert 0 < sum(has_twin) < len(has_twin)  # both groups are there (6 of 20 held-out sums have a twin)
    counts = [min(4, i // 4) for i in range(20)]
    result = {"problems": [r.prompt for r in held_out], "n": [4] * 20, "c": counts}
    expected = {group: sum(c for c, t in zip(counts, has_twin) if t == want) / (4 * has_twin.count(want))
                for group, want in (("with_twin", True), ("without_twin", False))}
    assert twins.has_twin(task) == dict(zip(result["problems"], has_twin))
    assert twins.twin_rates(twins.has_twin(task), result) == pytest.approx(expected, abs=1e-4)


def test_countdown_regimes_compare_arms_inside_each_group_of_problems(tmp_path):
    """scripts/countdown_regimes.py: the paired difference inside the few- and many-solution groups is the
    mean over that group's problems only (hand-computed), and the groups are the task's solution counts."""
    _script()
    spec = importlib.util.spec_from_file_location("countdown_regimes", ROOT / "scripts" / "countdown_regimes.py")
    regimes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regimes)
    from lightning_dsrl.data import CountdownTask

    task_args = yaml.safe_load((ROOT / "configs" / "grpo.yaml").read_text())["data"]["task"]["init_args"]
    count = regimes.solutions_per_problem(CountdownTask(**task_args), "test")
    problems = list(count)
    assert len(problems) == 500 and {min(count.values()), max(count.values())} == {2, 11}
    grpo = [i % 3 for i in range(500)]
    ds = [(i % 3) + (count[p] >= 3) for i, p in enumerate(problems)]  # one more correct sample on many-solution ones
    record = {"problems": problems, "runs": [
        {"arm": "grpo", "seed": 0, "n": [4] * 500, "c": grpo, "values": {}, "cpu_s": 1.0, "commands": []},
        {"arm": "ds", "seed": 0, "n": [4] * 500, "c": ds, "values": {}, "cpu_s": 1.0, "commands": []}]}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "runs.json").write_text(json.dumps(record))
    spec = {"name": "t", "output": str(tmp_path / "out"), "runs_dir": str(tmp_path / "runs"), "seeds": [0],
            "baseline": "grpo", "bootstrap": 50, "eval_args": ["--data.eval_split", "test"],
            "arms": {"grpo": {"config": "configs/grpo.yaml"}, "ds": {"config": "configs/ds_grpo.yaml"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert regimes.main([str(tmp_path / "s.yaml")]) == 0
    out = json.loads((tmp_path / "out" / "regimes.json").read_text())
    few, many = out["groups"]["few (2 solutions)"], out["groups"]["many (3+ solutions)"]
    assert few["problems"] == sum(v == 2 for v in count.values()) and few["problems"] + many["problems"] == 500
    assert few["arms"]["ds"]["minus_baseline"]["mean"][0] == pytest.approx(0.0)
    assert many["arms"]["ds"]["minus_baseline"]["mean"][0] == pytest.approx(0.25)  # 1 more of 4 samples
    many_grpo = [g for g, p in zip(grpo, problems) if count[p] >= 3]
    assert many["arms"]["grpo"]["pass@k"][0] == pytest.approx(sum(many_grpo) / 4 / len(many_grpo))
    assert "| ds | +0.250" in (tmp_path / "out" / "regimes.md").read_text()
