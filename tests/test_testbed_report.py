"""``scripts/testbed_report.py``: the summary of finished runs (pass@k of both arms, the paired
difference, the mistakes, the targets) on hand-made evaluation outputs, and the markdown report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# two problems; 4 samples each. Problem 1: numbers 2 3 4, target 10 (2*3+4); problem 2: 1 5 6, target 11 (5+6*1)
PROBLEMS = [([2, 3, 4], 10), ([1, 5, 6], 11)]
# per arm and seed, the completions of each problem: base gets 1 of 4 right on problem 1 and 0 on
# problem 2; GRPO 3 of 4 and 1 of 4
BASE = [["2*3+4", "2*3+5", "2*4+4", "2+3+4"], ["1+5+7", "1+5+7", "1*5*6", "<"]]
GRPO = [["2*3+4", "2*3+4", "3*2+4", "2*3+5"], ["1*6+5", "1+5+6", "1*5*6", "1*5*6"]]


def _script():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("testbed_report", ROOT / "scripts" / "testbed_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_dir(run_dir: Path, completions: list[list[str]], global_step: int) -> None:
    from lightning_dsrl.rewards.countdown import check

    (run_dir / "eval").mkdir(parents=True)
    rows = []
    for (numbers, target), texts in zip(PROBLEMS, completions):
        answers = [f"<answer>{t}</answer>" for t in texts]
        rows.append({"prompt": f"Numbers: {' '.join(map(str, numbers))}\nTarget: {target}\n",
                     "meta": {"numbers": numbers, "target": target}, "completions": answers,
                     "correct": [check(a, numbers, target) for a in answers]})
    (run_dir / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    values = {"greedy_accuracy": 0.5, "distinct_correct": 1.0, "div_equ": 50.0, "entropy": 0.1, "entropy_correct": None}
    metrics = {"settings": {"global_step": global_step, "split": "test"}, "values": values,
               "passk": {"k": [1, 2, 4], "value": [0.1, 0.2, 0.3]}}
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "eval" / "history.jsonl").write_text(json.dumps(metrics) + "\n")
    (run_dir / "done.json").write_text(json.dumps({"command": "python -m lightning_dsrl ...", "wall_seconds": 60.0,
                                                   "cpu_seconds": 30.0}))


def test_summary_of_finished_runs_and_the_report(tmp_path):
    script = _script()
    work, docs = tmp_path / "work", tmp_path / "docs"
    for seed in (0, 1):
        _eval_dir(work / "base_eval" / f"seed_{seed}", BASE, 0)
        _eval_dir(work / "grpo_fit" / f"seed_{seed}", GRPO, 128)
        _eval_dir(work / "grpo_eval" / f"seed_{seed}", GRPO, 128)
    script.main(["run", "--name", "final", "--summarize-only", "--workdir", str(work), "--docs", str(docs),
                 "--samples", "4", "--seeds", "0", "1", "2"])  # seed 2 never ran: summarised without it
    summary = json.loads((docs / "final.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["problems"] == 2 and summary["k"] == [1, 2, 4]
    base, grpo = summary["arms"]["base"], summary["arms"]["grpo"]
    # pass@1 = mean c / n: base (1/4 + 0) / 2 = 0.125, GRPO (3/4 + 1/4) / 2 = 0.5
    # pass@2 = 1 - C(n - c, 2) / C(4, 2): base (1 - 3/6 + 0) / 2 = 0.25; GRPO (1 + 1 - 3/6) / 2 = 0.75
    # pass@4: base (1 + 0) / 2 = 0.5, GRPO (1 + 1) / 2 = 1
    assert base["pass@k"] == [0.125, 0.25, 0.5] and grpo["pass@k"] == [0.5, 0.75, 1.0]
    assert base["per_seed"] == [[0.125, 0.25, 0.5]] * 2
    assert summary["difference_grpo_minus_base"]["mean"] == [0.375, 0.5, 0.5]
    assert base["low"][0] <= 0.125 <= base["high"][0]
    # base mistakes over its 8 samples: 2*3+5 and 1+5+7 (x2) use a number not given, 2*4+4 uses 4
    # twice, 2+3+4 and 1*5*6 have the right numbers and a wrong value, "<" is malformed
    assert base["outcomes"] == {"correct": 0.125, "malformed": 0.125, "foreign": 0.375, "repeat": 0.125,
                                "missing": 0.0, "value": 0.25}
    assert base["values"] == {"greedy_accuracy": 0.5, "distinct_correct": 1.0, "div_equ": 50.0, "entropy": 0.1}
    met = {t["target"]: t["met"] for t in summary["targets"]}
    assert met == {"base pass@1 in [0.15, 0.40]": False, "base pass@4 >= 0.85": False,
                   "GRPO pass@1 - base >= 0.10, 95% CI above 0": True, "GRPO pass@4 <= base": False}
    assert summary["in_run_val"]["0"] == [{"step": 128, "pass@1": 0.1, "pass@4": 0.3}]

    script.main(["report", "--docs", str(docs)])
    text = (docs / "README.md").read_text()
    assert "## final" in text and "| GRPO - base [95% CI] | +0.375 [" in text
    assert "GRPO pass@1 - base >= 0.10, 95% CI above 0: +0.375" in text and "**met**" in text
    assert (docs / "passk_final.png").stat().st_size > 0


def test_pairing_refuses_evaluations_of_different_problems(tmp_path):
    script = _script()
    work = tmp_path / "work"
    _eval_dir(work / "base_eval" / "seed_0", BASE, 0)
    _eval_dir(work / "grpo_fit" / "seed_0", GRPO, 128)
    _eval_dir(work / "grpo_eval" / "seed_0", GRPO, 128)
    samples = work / "grpo_eval" / "seed_0" / "eval" / "samples.jsonl"
    samples.write_text(samples.read_text().replace("Target: 11", "Target: 12"))
    with pytest.raises(SystemExit, match="same problems"):
        script.main(["run", "--name", "x", "--summarize-only", "--workdir", str(work), "--docs",
                     str(tmp_path / "docs"), "--samples", "4", "--seeds", "0"])
