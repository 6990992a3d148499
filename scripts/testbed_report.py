"""Measure the embedded CountDown model (the testbed) against its targets: the base model and GRPO on it.

    python scripts/testbed_report.py run --name final --split test --seeds 0 1 2   # resumable; then:
    python scripts/testbed_report.py report                                        # docs/testbed/README.md

``run`` evaluates, for every seed ``s``: the base model (``validate``, ``--seed_everything s``),
GRPO trained from it (``fit --config configs/grpo.yaml --seed_everything s``, the default
length), and the trained model (``validate`` on its ``last.ckpt``), each a ``python -m
lightning_dsrl`` process run as a user would, with ``rollout.val_num_generations`` samples per
problem of ``data.eval_split``. A step whose output is complete is skipped, so an interrupted run
resumes; two ``run`` processes with different seeds or names can share the machine. It then
writes ``docs/testbed/<name>.json``: pass@k of both arms (k = 1, 2, 4, ..., samples), the paired
difference GRPO - base with a 95% bootstrap interval over seeds and problems, what the samples
are (correct, or their mistake), the diversity figures of ``validate``, the targets and whether
each is met.

``report`` puts every ``docs/testbed/*.json`` into ``docs/testbed/README.md`` (the run named
``final`` first, the others as the exploration that chose the design) with a pass@k figure each.
Targets (issue 16), on held-out problems: base pass@1 in [0.15, 0.40] and pass@64 >= 0.85; GRPO
pass@1 at least 0.10 above base with the interval above 0; GRPO pass@64 at or below base.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from lightning_dsrl.metrics import paired_pass_at_k_bootstrap, pass_at_k_curve, powers_of_two
from lightning_dsrl.metrics.plot import Curve, passk_figure, save_figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_countdown import OUTCOMES, classify  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "testbed"
MODEL = "pkg://lightning_dsrl/assets/countdown-lm"
ARMS = ("base", "grpo")
# the diversity figures of validate's eval/metrics.json carried into the report
VALUES = ("greedy_accuracy", "distinct_correct", "div_equ", "entropy", "entropy_correct")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run what is missing, then write docs/testbed/<name>.json")
    run.add_argument("--name", required=True, help="the measurement's name (final: the shipped model on test)")
    run.add_argument("--model", default=MODEL, help="model.name_or_path of the base model")
    run.add_argument("--split", choices=["val", "test"], default="test", help="data.eval_split")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--samples", type=int, default=64, help="rollout.val_num_generations")
    run.add_argument("--config", default=str(ROOT / "configs" / "grpo.yaml"))
    run.add_argument("--workdir", type=Path, default=None, help="default: runs/testbed/<name>")
    run.add_argument("--note", default="", help="one line on what this measurement tries (in the report)")
    run.add_argument("--extra", default="", help="more options for every fit and validate, one string "
                                                  "(e.g. \"--trainer.max_steps 2\" for a smoke test)")
    run.add_argument("--summarize-only", action="store_true", help="write the JSON from the finished seeds")
    run.add_argument("--docs", type=Path, default=DOCS, help="where the JSON goes")
    rep = sub.add_parser("report", help="docs/testbed/README.md from docs/testbed/*.json")
    rep.add_argument("--docs", type=Path, default=DOCS)
    args = p.parse_args(argv)
    if args.command == "run" and args.workdir is None:
        args.workdir = ROOT / "runs" / "testbed" / args.name
    return args


# ---------------------------------------------------------------------------- running
def _step(workdir: Path, arm: str, seed: int, argv: list[str]) -> dict:
    """Run ``python -m lightning_dsrl <argv>`` into ``workdir/<arm>/seed_<seed>`` unless a finished
    run is there (``done.json``); a directory without it is an interrupted run and starts over."""
    run_dir = workdir / arm / f"seed_{seed}"
    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "lightning_dsrl", *argv, "--seed_everything", str(seed),
               "--trainer.logger.init_args.save_dir", str(workdir), "--trainer.logger.init_args.name", arm,
               "--trainer.logger.init_args.version", f"seed_{seed}", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: {' '.join(command[1:])}", flush=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log_path = workdir / f"{arm}_seed_{seed}.log"
    with log_path.open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"error: {arm} seed {seed} exited with code {code}; its output is in {log_path}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"command": " ".join(["python", *command[1:]]).replace(str(workdir), "<workdir>").replace(
                  f"{ROOT}/", ""),
              "wall_seconds": round(time.perf_counter() - start, 1),
              "cpu_seconds": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1)}
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    common = ["--config", args.config, "--model.name_or_path", args.model, *shlex.split(args.extra)]
    evaluate = ["--rollout.val_num_generations", str(args.samples), "--data.eval_split", args.split]
    steps = {"base_eval": _step(args.workdir, "base_eval", seed, ["validate", *common, *evaluate]),
             "grpo_fit": _step(args.workdir, "grpo_fit", seed, ["fit", *common])}
    ckpt = args.workdir / "grpo_fit" / f"seed_{seed}" / "checkpoints" / "last.ckpt"
    steps["grpo_eval"] = _step(args.workdir, "grpo_eval", seed,
                               ["validate", *common, *evaluate, "--ckpt_path", str(ckpt)])
    return steps


# ---------------------------------------------------------------------------- summarising
def read_eval(run_dir: Path) -> dict:
    """An evaluation's per-problem counts, its mistakes and its diversity figures."""
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    outcomes = Counter(classify(text, row["meta"]["numbers"], row["meta"]["target"])
                       for row in rows for text in row["completions"])
    total = sum(outcomes.values())
    return {"prompts": [row["prompt"] for row in rows],
            "n": [len(row["correct"]) for row in rows], "c": [sum(row["correct"]) for row in rows],
            "outcomes": {o: outcomes[o] / total for o in OUTCOMES},
            "values": {k: metrics["values"].get(k) for k in VALUES}, "settings": metrics["settings"]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(args: argparse.Namespace, seeds: list[int], steps: dict[int, dict]) -> dict:
    evals = {arm: [read_eval(args.workdir / f"{arm}_eval" / f"seed_{s}") for s in seeds] for arm in ARMS}
    prompts = evals["base"][0]["prompts"]
    if any(e["prompts"] != prompts for arm in ARMS for e in evals[arm]):
        raise SystemExit("error: the evaluations did not see the same problems in the same order; cannot pair them")
    counts = {arm: (torch.tensor([e["n"] for e in evals[arm]]), torch.tensor([e["c"] for e in evals[arm]]))
              for arm in ARMS}  # [S, P] each
    ks = powers_of_two(args.samples)
    zero = torch.zeros_like(counts["base"][1])
    arms = {}
    for arm in ARMS:
        n, c = counts[arm]
        # each arm's own interval: its difference to an arm that never succeeds, resampled the same way
        value, low, high = paired_pass_at_k_bootstrap(n, zero, n, c, ks)
        arms[arm] = {"pass@k": [round(float(v), 4) for v in value],
                     "low": [round(float(v), 4) for v in low], "high": [round(float(v), 4) for v in high],
                     "per_seed": [[round(float(v), 4) for v in pass_at_k_curve(n[i], c[i], ks)]
                                  for i in range(len(seeds))],
                     "outcomes": {o: round(_mean([e["outcomes"][o] for e in evals[arm]]), 4) for o in OUTCOMES},
                     "values": {k: round(_mean([e["values"][k] for e in evals[arm]]), 4)
                                for k in VALUES if all(e["values"][k] is not None for e in evals[arm])}}
    diff, low, high = paired_pass_at_k_bootstrap(*counts["base"], *counts["grpo"], ks)
    difference = {"mean": [round(float(v), 4) for v in diff], "low": [round(float(v), 4) for v in low],
                  "high": [round(float(v), 4) for v in high]}
    base, top = arms["base"]["pass@k"], len(ks) - 1
    targets = [
        {"target": "base pass@1 in [0.15, 0.40]", "value": base[0], "met": 0.15 <= base[0] <= 0.40},
        {"target": f"base pass@{ks[top]} >= 0.85", "value": base[top], "met": base[top] >= 0.85},
        {"target": "GRPO pass@1 - base >= 0.10, 95% CI above 0",
         "value": [difference["mean"][0], difference["low"][0], difference["high"][0]],
         "met": difference["mean"][0] >= 0.10 and difference["low"][0] > 0},
        {"target": f"GRPO pass@{ks[top]} <= base", "value": [difference["mean"][top], difference["low"][top],
                                                             difference["high"][top]],
         "met": difference["mean"][top] <= 0},
    ]
    card = Path(args.model.replace("pkg://lightning_dsrl", str(ROOT / "lightning_dsrl"))) / "base_metrics.json"
    pretraining = json.loads(card.read_text()) if card.is_file() else {}
    return {
        "name": args.name, "note": args.note, "model": args.model, "split": args.split, "seeds": seeds,
        "problems": len(prompts), "samples_per_problem": args.samples, "k": ks,
        "config": str(Path(args.config).resolve().relative_to(ROOT)), "extra": args.extra,
        "pretraining": {k: pretraining.get(k) for k in ("args", "data_mix", "train_cpu_seconds", "final_loss")},
        "arms": arms, "difference_grpo_minus_base": difference, "targets": targets,
        "in_run_val": {s: _history(args.workdir / "grpo_fit" / f"seed_{s}") for s in seeds},
        "steps": {s: steps[s] for s in seeds},
    }


def _history(run_dir: Path) -> list[dict]:
    """pass@1 and the largest pass@k of the validation during fit (the config's val split, step by step)."""
    path = run_dir / "eval" / "history.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        entry = json.loads(line)
        ks, values = entry["passk"]["k"], entry["passk"]["value"]
        out.append({"step": entry["settings"]["global_step"], "pass@1": round(values[0], 4),
                    f"pass@{ks[-1]}": round(values[-1], 4)})
    return out


# ---------------------------------------------------------------------------- the report
def figure(summary: dict, path: Path) -> None:
    seeds = f"{len(summary['seeds'])} seed{'s' if len(summary['seeds']) > 1 else ''}"
    curves = [Curve(f"{label} ({seeds})", summary["k"], arm["pass@k"], arm["low"], arm["high"], confidence=0.95)
              for label, arm in (("base model", summary["arms"]["base"]), ("GRPO", summary["arms"]["grpo"]))]
    title = (f"{summary['name']}: {summary['problems']} {summary['split']} problems x "
             f"{summary['samples_per_problem']} samples, T=1")
    save_figure(passk_figure(curves, title), path)


def _mix(summary: dict) -> str:
    args = (summary.get("pretraining") or {}).get("args") or {}
    if not args:
        return "?"
    if not args.get("wrong_fraction"):
        return "correct solutions only"
    return f"{args['wrong_fraction']:.0%} wrong ({', '.join(args['wrong_kinds'])})"


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown(summaries: list[dict]) -> str:
    lines = ["# The testbed: the embedded CountDown model and GRPO on it", "",
             "Written by `python scripts/testbed_report.py report` from the JSON files beside it (each written by "
             "`scripts/testbed_report.py run`). Every figure is on held-out problems that neither pretraining nor "
             "RL saw: `test` for the final measurement, `val` (the split to tune on) for the exploration. "
             "GRPO is `configs/grpo.yaml` at its default length (128 steps); pass@k is the unbiased estimator; "
             "intervals are 95% percentile bootstraps over seeds and problems, paired (the same problems and seeds "
             "for both arms) for differences.", "",
             "| measurement | split x samples | seeds | pretraining mix | base pass@1 | GRPO pass@1 | "
             "GRPO - base, pass@1 | base pass@64 | GRPO pass@64 | targets met |", "|---|---|---|---|---|---|---|---|---|---|"]
    for summary in summaries:
        base, grpo = summary["arms"]["base"]["pass@k"], summary["arms"]["grpo"]["pass@k"]
        d = summary["difference_grpo_minus_base"]
        lines.append(f"| [{summary['name']}](#{summary['name']}) | {summary['problems']} {summary['split']} x "
                     f"{summary['samples_per_problem']} | {len(summary['seeds'])} | {_mix(summary)} | {base[0]:.3f} | "
                     f"{grpo[0]:.3f} | {_ci(d['mean'][0], d['low'][0], d['high'][0])} | {base[-1]:.3f} | "
                     f"{grpo[-1]:.3f} | {sum(t['met'] for t in summary['targets'])} of {len(summary['targets'])} |")
    lines.append("")
    for summary in summaries:
        ks, base, grpo = summary["k"], summary["arms"]["base"], summary["arms"]["grpo"]
        d = summary["difference_grpo_minus_base"]
        lines += [f"## {summary['name']}", ""]
        if summary.get("note"):
            lines += [summary["note"], ""]
        lines += [f"Model `{summary['model']}` ({_mix(summary)}); {summary['problems']} `{summary['split']}` problems "
                  f"x {summary['samples_per_problem']} samples, seeds {summary['seeds']}.", "",
                  "| | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks),
                  "| base model | " + " | ".join(f"{v:.3f}" for v in base["pass@k"]) + " |",
                  "| GRPO | " + " | ".join(f"{v:.3f}" for v in grpo["pass@k"]) + " |",
                  "| GRPO - base [95% CI] | " + " | ".join(_ci(*v) for v in zip(d["mean"], d["low"], d["high"]))
                  + " |", "",
                  "| | greedy | distinct correct | Div-Equ | entropy | "
                  + " | ".join(OUTCOMES) + " |", "|---|" + "---|" * (4 + len(OUTCOMES))]
        for label, arm in (("base model", base), ("GRPO", grpo)):
            v = arm["values"]
            lines.append(f"| {label} | " + " | ".join(f"{v[k]:.3f}" if k in v else "" for k in
                                                       ("greedy_accuracy", "distinct_correct", "div_equ", "entropy"))
                         + " | " + " | ".join(f"{arm['outcomes'][o]:.3f}" for o in OUTCOMES) + " |")
        lines += ["", "Targets:", ""]
        for t in summary["targets"]:
            value = t["value"] if isinstance(t["value"], float) else _ci(*t["value"])
            lines.append(f"- {t['target']}: {value}: **{'met' if t['met'] else 'not met'}**")
        per_seed = "; ".join(f"seed {s}: base {b[0]:.3f}, GRPO {g[0]:.3f}" for s, b, g in
                             zip(summary["seeds"], base["per_seed"], grpo["per_seed"]))
        cpu = sum(step["cpu_seconds"] for s in summary["steps"].values() for step in s.values())
        lines += ["", f"pass@1 by seed: {per_seed}. Compute: {cpu / 60:.0f} CPU-minutes for the runs above.",
                  "", f"![pass@k, {summary['name']}](passk_{summary['name']}.png)", ""]
    lines += ["Columns `correct` ... `value`: the share of all samples that are correct, malformed, use a number "
              "not in the list (`foreign`), use a number more often than given (`repeat`), leave one out "
              "(`missing`), or use the right numbers for a wrong value (`value`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "report":
        summaries = [json.loads(p.read_text()) for p in sorted(args.docs.glob("*.json"))]
        summaries.sort(key=lambda s: (s["name"] != "final", s["name"]))
        for summary in summaries:
            figure(summary, args.docs / f"passk_{summary['name']}.png")
        (args.docs / "README.md").write_text(markdown(summaries))
        print(f"written: {args.docs}/README.md")
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps = {}
    for seed in args.seeds:
        if args.summarize_only:
            marks = {arm: args.workdir / arm / f"seed_{seed}" / "done.json" for arm in ("base_eval", "grpo_fit",
                                                                                       "grpo_eval")}
            if all(p.is_file() for p in marks.values()):
                steps[seed] = {arm: json.loads(p.read_text()) for arm, p in marks.items()}
        else:
            steps[seed] = run_seed(args, seed)
    if not steps:
        raise SystemExit(f"error: no seed of {args.name} has finished in {args.workdir}")
    summary = summarize(args, sorted(steps), steps)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["targets"], indent=2))


if __name__ == "__main__":
    main()
