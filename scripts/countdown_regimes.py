"""The CountDown study split by how many solutions each test problem has: few (exactly 2) or many (3 or more).

The DS paper predicts that a global entropy bonus helps tasks with many solutions, a penalty helps tasks
with few, and DS-GRPO helps both. The study (``configs/study/countdown.yaml``) trains on one mix of
problems, so this is a within-study split of its 500 test problems, not the paper's separate tasks: every
arm minus GRPO, paired by seed and problem, inside each group, from the committed per-run counts:

    python scripts/countdown_regimes.py [configs/study/countdown.yaml]   # reads the study's runs.json,
                                                                          # writes regimes.json and .md beside it

The number of solutions is ``CountdownTask``'s (distinct expressions that reach the target, as the
task that ``configs/grpo.yaml`` builds counts them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import study as study_mod  # noqa: E402  (scripts/study.py)

from lightning_dsrl.data import CountdownTask  # noqa: E402

GROUPS = {"few (2 solutions)": lambda s: s <= 2, "many (3+ solutions)": lambda s: s >= 3}


def solutions_per_problem(task: CountdownTask, split: str) -> dict[str, int]:
    """Each prompt of ``split``: how many distinct solutions reach its target."""
    return {r.prompt: r.meta["num_solutions"] for r in task.records(split)}


def restrict(results: dict[str, list[dict[str, Any]]], keep: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The same result records (``scripts/study.py``'s) with only the problems in ``keep``."""
    out = {}
    for arm, runs in results.items():
        out[arm] = []
        for run in runs:
            rows = [(p, n, c) for p, n, c in zip(run["problems"], run["n"], run["c"]) if p in keep]
            out[arm].append({**run, "problems": [p for p, _, _ in rows], "n": [n for _, n, _ in rows],
                             "c": [c for _, _, c in rows]})
    return out


def by_group(study) -> dict[str, Any]:
    """Per group of problems: every arm's pass@k and its paired difference to the study's baseline
    (``study``: ``scripts/study.py``'s ``Study``)."""
    record = json.loads((study.output / "runs.json").read_text())
    results = study_mod.committed_results(record)
    base_config = next(a.config for a in study.arms if a.name == study.baseline)
    task_args = yaml.safe_load((ROOT / base_config).read_text())["data"]["task"]["init_args"]
    split = study.eval_args[study.eval_args.index("--data.eval_split") + 1] if "--data.eval_split" in \
        study.eval_args else "val"
    count = solutions_per_problem(CountdownTask(**task_args), split)
    if missing := set(record["problems"]) - set(count):
        raise SystemExit(f"error: {len(missing)} problems of {study.output / 'runs.json'} are not in the {split} split "
                         f"of {base_config}'s task; was the study run on another task?")
    out: dict[str, Any] = {"study": study.name, "split": split, "groups": {}}
    for group, wanted in GROUPS.items():
        keep = {p for p in record["problems"] if wanted(count[p])}
        summary = study_mod.summarise(study, restrict(results, keep))
        out["groups"][group] = {
            "problems": summary["problems"], "k": summary["k"],
            "arms": {name: {"pass@k": arm["pass@k"], "minus_baseline": arm.get("minus_baseline")}
                     for name, arm in summary["arms"].items()}}
    return out


def markdown(out: dict[str, Any]) -> str:
    lines = []
    for group, data in out["groups"].items():
        ks = data["k"]
        shown = [i for i, k in enumerate(ks) if k in (1, 4, 16, ks[-1])]
        lines += [f"**{group}**, {data['problems']} problems: arm minus GRPO (95% interval)", "",
                  "| arm | " + " | ".join(f"pass@{ks[i]}" for i in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for name, arm in data["arms"].items():
            diff = arm["minus_baseline"]
            if diff is None:
                lines.append(f"| {name} (baseline) | " + " | ".join(f"{arm['pass@k'][i]:.3f}" for i in shown) + " |")
            else:
                lines.append(f"| {name} | " + " | ".join(
                    f"{diff['mean'][i]:+.3f} [{diff['low'][i]:+.3f}, {diff['high'][i]:+.3f}]" for i in shown) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else ROOT / "configs" / "study" / "countdown.yaml"
    study = study_mod.load_study(path)
    out = by_group(study)
    target = study.output / "regimes.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    target.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    print(f"written: {target} and {target.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
