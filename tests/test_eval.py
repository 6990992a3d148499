"""Evaluation as a user meets it: ``validate`` (and periodic validation in ``fit``) on the tiny
model writes eval/metrics.json, eval/samples.jsonl, eval/passk.png and a TensorBoard image;
mistakes end in one message; ``scripts/compare_runs.py`` overlays runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.data import CountdownTask

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs" / "ds_grpo.yaml")


def small_run(tmp_path, tiny_model_dir, *extra: str) -> list[str]:
    return [
        "--config", BASE,
        "--model.name_or_path", tiny_model_dir,
        "--model.val_bootstrap", "200",
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


def assert_valid_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()  # a structurally valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 2  # something is drawn on it


def events_of(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    events.Reload()
    return events


def assert_report(report: dict, problems: int, samples: int) -> None:
    assert report["num_problems"] == problems and report["samples_per_problem"] == samples
    ks = [k for k in (1, 2, 4, 8, 16) if k < samples] + [samples]
    assert report["passk"]["k"] == ks
    for key in ("value", "low", "high"):
        assert len(report["passk"][key]) == len(ks)
        assert all(0.0 <= v <= 1.0 for v in report["passk"][key])
    assert report["potential"]["k"] == ks
    expected = {"greedy_accuracy", f"mean@{samples}", "div_equ", "div_answers", "distinct_1", "distinct_2", "distinct_3",
                "self_bleu", "distinct_correct", "entropy", "entropy_correct", "entropy_incorrect"}
    assert set(report["values"]) == expected
    # never an unexplained gap: every undefined value has its reason
    assert {k for k, v in report["values"].items() if v is None} <= set(report["notes"])
    assert report["values"]["entropy"] > 0


def test_validate_writes_metrics_samples_and_the_passk_plot(tmp_path, tiny_model_dir, capsys):
    cli_main(["validate", *small_run(tmp_path, tiny_model_dir)])
    run = next((tmp_path / "runs" / "ds_grpo").glob("version_*"))
    text = (run / "eval" / "metrics.json").read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert_report(report, problems=4, samples=4)
    assert report["settings"]["ckpt_path"] is None and report["settings"]["model"] == tiny_model_dir
    assert report["settings"]["stage"] == "validate" and report["settings"]["temperature"] == 1.0
    assert report["settings"]["split"] == "val"

    rows = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["prompt"].startswith("Numbers:")
        assert len(row["completions"]) == len(row["rewards"]) == len(row["correct"]) == len(row["equations"]) == 4
        assert set(row["greedy"]) == {"completion", "reward", "correct", "answer"}
    assert_valid_png(run / "eval" / "passk.png")

    events = events_of(run)
    assert "val/passk_curve" in events.Tags()["images"]
    assert {"val/pass@1", "val/pass@4", "val/potential@1", "val/self_bleu", "val/entropy",
            "val/greedy_accuracy", "val/mean@4"} <= set(events.Tags()["scalars"])
    out = capsys.readouterr().out
    assert "pass@k over 4 problems, 4 samples each" in out and "95% CI" in out and "self_bleu" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ckpt_path", "/no/such/run/last.ckpt"], "--ckpt_path /no/such/run/last.ckpt: no such file"),
        (["--data.task.init_args.num_val", "0"], "no val prompts"),
        (["--data.max_val_prompts", "0"], "no val prompts"),
        (["--model.val_bootstrap", "-1"], "model.val_bootstrap"),
        (["--data.eval_split", "dev"], "data.eval_split='dev': CountdownTask has the splits"),
        (["--data.eval_split", "test", "--data.task.init_args.num_test", "0"], "no test prompts"),
    ],
)
def test_validate_mistakes_end_in_one_clear_message(tmp_path, tiny_model_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", *small_run(tmp_path, tiny_model_dir), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_validate_evaluates_the_split_data_eval_split_names(tmp_path, tiny_model_dir):
    cli_main(["validate", *small_run(tmp_path, tiny_model_dir, "--data.eval_split", "test",
                                     "--data.max_val_prompts", "3")])
    run = next((tmp_path / "runs" / "ds_grpo").glob("version_*"))
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert report["settings"]["split"] == "test" and report["num_problems"] == 3
    rows = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    # the config's task (500 test problems after its val split) with small_run's train and val sizes
    task = CountdownTask(num_train=30, num_val=4, num_test=500)
    assert [row["prompt"] for row in rows] == [r.prompt for r in task.records("test")[:3]]


def test_periodic_validation_in_fit_then_validate_a_checkpoint(tmp_path, tiny_model_dir):
    cli_main(["fit", *small_run(tmp_path, tiny_model_dir, "--trainer.max_steps", "2",
                                "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "1",
                                "--data.task.init_args.num_val", "3")])
    run = tmp_path / "runs" / "ds_grpo" / "version_0"
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert report["settings"]["stage"] == "fit" and report["settings"]["global_step"] == 2
    assert_report(report, problems=3, samples=4)
    assert len((run / "eval" / "history.jsonl").read_text().splitlines()) == 1
    assert_valid_png(run / "eval" / "passk.png")
    events = events_of(run)
    assert "val/passk_curve" in events.Tags()["images"] and "val/pass@4" in events.Tags()["scalars"]
    train_tags = {"passk/pass@1", "passk/pass@4", "diversity/self_bleu", "diversity/distinct_2",
                  "diversity/distinct_correct", "train/entropy", "train/entropy_incorrect", "timing/metrics"}
    assert train_tags <= set(events.Tags()["scalars"])

    checkpoint = run / "checkpoints" / "last.ckpt"
    cli_main(["validate", *small_run(tmp_path, tiny_model_dir, "--data.task.init_args.num_val", "3"),
              "--ckpt_path", str(checkpoint)])
    report = json.loads((tmp_path / "runs" / "ds_grpo" / "version_1" / "eval" / "metrics.json").read_text())
    assert report["settings"]["ckpt_path"] == str(checkpoint) and report["settings"]["stage"] == "validate"


def load_compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "scripts" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, name: str, passk: list[float], greedy: float | None) -> Path:
    run = root / name / "version_0"
    (run / "eval").mkdir(parents=True)
    report = {
        "settings": {"temperature": 1.0}, "num_problems": 10, "samples_per_problem": 4,
        "passk": {"k": [1, 2, 4], "value": passk, "low": [v - 0.05 for v in passk],
                  "high": [v + 0.05 for v in passk], "confidence": 0.95},
        "potential": None,
        "values": {"greedy_accuracy": greedy, "mean@4": passk[0], "div_equ": None, "distinct_2": 0.5,
                   "self_bleu": 42.25, "distinct_correct": 1.5, "entropy": 0.75},
        "notes": {"div_equ": "no completion had an extractable answer"},
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(report))
    return run


def test_compare_runs_writes_one_table_and_one_plot(tmp_path, capsys):
    compare = load_compare_runs()
    a = fake_run(tmp_path, "grpo", [0.30, 0.40, 0.45], 0.35)
    b = fake_run(tmp_path, "ds_grpo", [0.32, 0.46, 0.58], None)
    assert compare.main([str(a), str(b / "eval"), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == ("| run | problems | n | pass@1 | pass@2 | pass@4 | mean@n | greedy_accuracy | div_equ | "
                        "distinct_2 | self_bleu | distinct_correct | entropy |")
    assert table[2] == "| grpo/version_0 | 10 | 4 | 0.300 | 0.400 | 0.450 | 0.300 | 0.350 | n/a | 0.500 | 42.2 | " \
                       "1.500 | 0.750 |"
    assert table[3].startswith("| ds_grpo/version_0 | 10 | 4 | 0.320 | 0.460 | 0.580 | 0.320 | n/a |")
    assert (tmp_path / "cmp.md").read_text().strip().splitlines() == table
    assert_valid_png(tmp_path / "cmp.png")
    with pytest.raises(SystemExit, match="no eval/metrics.json under"):
        compare.main([str(tmp_path / "missing")])


def test_the_curve_title_names_every_sampling_truncation():
    from types import SimpleNamespace

    from lightning_dsrl.metrics.report import passk_title

    report = SimpleNamespace(num_problems=200, samples_per_problem=16)
    title = passk_title(report, {"temperature": 0.9, "top_p": 0.95, "top_k": 20})
    assert title == "pass@k (200 problems, 16 samples each, T=0.9, top_p=0.95, top_k=20)"
    assert passk_title(report, {"temperature": 1.0, "top_p": 1.0, "top_k": 0}) == \
        "pass@k (200 problems, 16 samples each, T=1)"
