"""Held-out sums with and without their commuted twin in training, for the SmolLM2 study.

One-digit addition has only 100 problems, so 23 of the 50 held-out sums ``a + b`` have ``b + a`` among
the 47 training sums. Does GRPO's held-out gain come only from those? This splits each run's held-out
pass@1 into the two groups (problems as ``configs/smollm2_grpo.yaml`` builds them) and writes
``docs/study/smollm2/twins.json``:

    python scripts/smollm2_twins.py   # reads docs/study/smollm2/runs.json (scripts/study.py writes it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_dsrl.data import AdditionTask  # noqa: E402


def has_twin(task: AdditionTask) -> dict[str, bool]:
    """Each held-out prompt: whether its commuted twin (``b + a`` for ``a + b``) is a training problem."""
    trained = {tuple(r.meta["terms"]) for r in task.records("train")}
    return {r.prompt: tuple(reversed(r.meta["terms"])) in trained for r in task.records("val")}


def twin_rates(twin: dict[str, bool], result: dict) -> dict[str, float]:
    """Pass@1 of one run (a study ``result.json``) on the held-out sums with and without a trained twin."""
    rates = {}
    for group, wanted in (("with_twin", True), ("without_twin", False)):
        rows = [(n, c) for p, n, c in zip(result["problems"], result["n"], result["c"]) if twin[p] == wanted]
        rates[group] = round(sum(c for _, c in rows) / sum(n for n, _ in rows), 4)
    return rates


def main() -> int:
    study = yaml.safe_load((ROOT / "configs" / "study" / "smollm2.yaml").read_text())
    task_args = yaml.safe_load((ROOT / "configs" / "smollm2_grpo.yaml").read_text())["data"]["task"]["init_args"]
    twin = has_twin(AdditionTask(**task_args))
    source = ROOT / study["output"] / "runs.json"  # every run's per-problem counts, written by scripts/study.py
    if not source.is_file():
        raise SystemExit(f"error: no {source}; run `python scripts/study.py configs/study/smollm2.yaml` first")
    record = json.loads(source.read_text())
    out = {"held_out": len(twin), "with_twin_in_train": sum(twin.values()), "arms": {}}
    for run in record["runs"]:  # in the study's order of arms, then seeds
        rate = twin_rates(twin, {**run, "problems": record["problems"]})
        out["arms"].setdefault(run["arm"], {})[f"seed_{run['seed']}"] = rate
        print(f"{run['arm']} seed {run['seed']}: pass@1 with twin {rate['with_twin']:.3f}, "
              f"without {rate['without_twin']:.3f}")
    target = ROOT / study["output"] / "twins.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
