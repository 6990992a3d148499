"""Run a study: every arm x seed as its own ``fit`` + ``validate``, then paired statistics.

    python scripts/study.py configs/study/countdown.yaml --workers 2     # run (or resume) and summarise
    python scripts/study.py configs/study/countdown.yaml --summary-only  # recompute the summary only
                                   # (from runs_dir, or from the committed runs.json when runs_dir is empty)
    python scripts/study.py configs/study/countdown.yaml --dry-run       # print the commands

A study YAML names arms (a config plus command-line overrides), seeds, and the evaluation:

    name: countdown
    output: docs/study/countdown      # summary.json, runs.json, table.md, passk.png, diff.png (commit these)
    runs_dir: runs/study/countdown    # one directory per arm and seed (not committed)
    seeds: [0, 1, 2]
    baseline: grpo                    # every other arm is compared with this one
    common_args: []                   # given to every fit and every validate
    fit_args: [--trainer.limit_val_batches, "0"]
    eval_args: [--data.eval_split, test, --rollout.val_num_generations, "64"]
    bootstrap: 2000                   # resamples of every interval
    curves: [train/correct_rate]      # TensorBoard scalars of each fit kept per step (optional)
    keep_checkpoints: true            # false: delete each fit's checkpoints once its validate is done
    arms:
      base: {config: configs/grpo.yaml, train: false}   # the model before RL: validate only
      grpo: {config: configs/grpo.yaml}
      ds_grpo: {config: configs/ds_grpo.yaml, args: [--model.objective.init_args.gamma_p, "0.1"]}

Each run is ``python -m lightning_dsrl fit`` of the arm's config with ``--seed_everything <seed>``,
then ``validate`` of its last checkpoint with the same seed and ``eval_args``; a worker process
runs one job (arm x seed) at a time with one thread (``OMP_NUM_THREADS=1``). A finished job leaves
``<runs_dir>/<arm>/seed_<s>/result.json`` (the per-problem correct counts, the evaluation's scalars,
the commands with the wall-clock, CPU time and peak memory of each, the fit's ``curves``); a study
that is run again skips those, so an interrupted study resumes where it stopped (an unfinished job
starts over). The summary also writes every run's record to ``<output>/runs.json`` (the problems once,
then per run its counts in that order), so it can be committed and analysed without ``runs_dir``.

Statistics (``lightning_dsrl/metrics/paired.py``): pass@k for k = 1, 2, 4, ..., the samples per
problem, as the mean over seeds and problems with a 95% interval from a bootstrap that resamples
seeds and problems; every arm minus the baseline at each k, paired (same seed index, same problems),
with its interval; and the DS paper's sample efficiency, the smallest k at which an arm's pass@k
reaches the baseline's pass@(largest k).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCALARS = ("greedy_accuracy", "distinct_correct", "div_equ", "div_answers", "entropy", "entropy_correct", "distinct_2")


@dataclass
class Arm:
    name: str
    config: str
    args: list[str] = field(default_factory=list)
    train: bool = True


@dataclass
class Study:
    name: str
    output: Path
    runs_dir: Path
    seeds: list[int]
    baseline: str
    arms: list[Arm]
    common_args: list[str] = field(default_factory=list)
    fit_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    bootstrap: int = 2000
    curves: list[str] = field(default_factory=list)
    keep_checkpoints: bool = True


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SystemExit(f"error: {where} must be a list of command-line tokens, e.g. [--trainer.max_steps, \"64\"]")
    return [str(v) for v in value]


def load_study(path: str | Path) -> Study:
    """The study YAML as a :class:`Study`, paths relative to the repository root; one ``error:`` line
    for anything missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: no study file {path}; see configs/study/ for examples")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {"name", "output", "runs_dir", "seeds", "baseline", "arms", "common_args", "fit_args", "eval_args",
             "bootstrap", "curves", "keep_checkpoints"}
    if unknown := set(raw) - known:
        raise SystemExit(f"error: {path}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("name", "output", "runs_dir", "seeds", "baseline", "arms"):
        if key not in raw:
            raise SystemExit(f"error: {path}: `{key}` is missing")
    arms = []
    for name, spec in (raw["arms"] or {}).items():
        spec = spec or {}
        if "config" not in spec:
            raise SystemExit(f"error: {path}: arm {name!r} has no `config`")
        if not (ROOT / spec["config"]).is_file() and not Path(spec["config"]).is_file():
            raise SystemExit(f"error: {path}: arm {name!r}: no config file {spec['config']}")
        arms.append(Arm(name, str(spec["config"]), _strings(spec.get("args"), f"arms.{name}.args"),
                        bool(spec.get("train", True))))
    if raw["baseline"] not in {a.name for a in arms}:
        raise SystemExit(f"error: {path}: baseline {raw['baseline']!r} is not an arm ({[a.name for a in arms]})")
    if not raw["seeds"] or len(set(raw["seeds"])) != len(raw["seeds"]):
        raise SystemExit(f"error: {path}: seeds must be a non-empty list of distinct integers")

    def rooted(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else ROOT / p

    return Study(str(raw["name"]), rooted(raw["output"]), rooted(raw["runs_dir"]), [int(s) for s in raw["seeds"]],
                 str(raw["baseline"]), arms, _strings(raw.get("common_args"), "common_args"),
                 _strings(raw.get("fit_args"), "fit_args"), _strings(raw.get("eval_args"), "eval_args"),
                 int(raw.get("bootstrap", 2000)), _strings(raw.get("curves"), "curves"),
                 bool(raw.get("keep_checkpoints", True)))


# ------------------------------------------------------------------ running
def job_dir(study: Study, arm: Arm, seed: int) -> Path:
    return study.runs_dir / arm.name / f"seed_{seed}"


def commands(study: Study, arm: Arm, seed: int) -> list[list[str]]:
    """The ``fit`` (trained arms) and ``validate`` command lines of one job."""
    where = job_dir(study, arm, seed)
    base = [sys.executable, "-m", "lightning_dsrl"]
    logger = ["--trainer.logger.init_args.save_dir", str(where.parent), "--trainer.logger.init_args.name", where.name,
              "--overwrite_run_dir", "true", "--trainer.enable_progress_bar", "false"]
    config = ["--config", str(ROOT / arm.config if not Path(arm.config).is_absolute() else arm.config)]
    seeded = ["--seed_everything", str(seed)]
    out = []
    ckpt: list[str] = []
    if arm.train:
        out.append(base + ["fit"] + config + seeded + study.common_args + study.fit_args + arm.args + logger
                   + ["--trainer.logger.init_args.version", "fit"])
        ckpt = ["--ckpt_path", str(where / "fit" / "checkpoints" / "last.ckpt")]
    out.append(base + ["validate"] + config + seeded + study.common_args + study.eval_args + arm.args + logger
               + ["--trainer.logger.init_args.version", "eval"] + ckpt)
    return out


_LIVE: set[subprocess.Popen] = set()  # the jobs' running commands, killed when the runner is stopped
_LIVE_LOCK = threading.Lock()
_STOPPED = threading.Event()  # set by _stop: no job starts a command after it


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM / SIGHUP: kill the running fits and validates (each job starts over on the next run), then exit.
    Without this a killed runner leaves its children training on, unseen, into the runs they share."""
    with _LIVE_LOCK:
        _STOPPED.set()
        for proc in _LIVE:
            proc.kill()
    print(f"stopped by signal {signum}: the running jobs were killed and start over on the next run", flush=True)
    raise SystemExit(128 + signum)


def _run(command: list[str], log) -> dict[str, float]:
    """Run ``command`` with one thread, its output appended to ``log``; its wall-clock and CPU seconds (user +
    system) and peak resident memory (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    with _LIVE_LOCK:
        if _STOPPED.is_set():
            raise RuntimeError("the study was stopped")
        start = time.time()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _LIVE.add(proc)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"exit code {proc.returncode}")
    return {"wall_s": round(time.time() - start, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux reports ru_maxrss in KiB


def read_curves(fit_dir: Path, tags: list[str]) -> dict[str, dict[str, list[float]]]:
    """``{tag: {"step": [...], "value": [...]}}`` of the TensorBoard scalars ``tags`` a fit wrote to ``fit_dir``."""
    if not tags:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fit_dir), size_guidance={"scalars": 0})
    events.Reload()
    present = set(events.Tags()["scalars"])
    if missing := [t for t in tags if t not in present]:
        raise RuntimeError(f"the fit in {fit_dir} logged no {missing}; its scalars are {sorted(present)}")
    scalars = {t: events.Scalars(t) for t in tags}
    return {t: {"step": [e.step for e in rows], "value": [e.value for e in rows]} for t, rows in scalars.items()}


def run_job(study: Study, arm: Arm, seed: int) -> dict[str, Any]:
    """Run one arm x seed from scratch and write its ``result.json``; returns it."""
    where = job_dir(study, arm, seed)
    if where.exists():
        shutil.rmtree(where)  # an unfinished job starts over
    where.mkdir(parents=True)
    start, usage = time.time(), []
    cmds = commands(study, arm, seed)
    with (where / "log.txt").open("w") as log:
        for command in cmds:
            try:
                usage.append(_run(command, log))
            except RuntimeError as err:
                raise RuntimeError(f"{arm.name} seed {seed}: `{' '.join(command[2:4])}` failed ({err}); "
                                   f"see {where / 'log.txt'}") from None
    evaluation = where / "eval" / "eval"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    rows = [json.loads(line) for line in (evaluation / "samples.jsonl").read_text().splitlines() if line.strip()]
    result = {
        "arm": arm.name, "seed": seed, "commands": [c[1:] for c in cmds],
        "wall_s": round(time.time() - start, 1), "cpu_s": round(sum(u["cpu_s"] for u in usage), 1),
        "usage": {c[3]: u for c, u in zip(cmds, usage)},  # fit / validate: wall_s, cpu_s, peak_rss_mib
        "curves": read_curves(where / "fit", study.curves) if arm.train else {},
        "problems": [row["prompt"] for row in rows],
        "n": [len(row["correct"]) for row in rows], "c": [sum(row["correct"]) for row in rows],
        "values": {k: metrics.get("values", {}).get(k) for k in SCALARS},
        "settings": metrics.get("settings", {}),
    }
    tmp = where / "result.json.tmp"
    tmp.write_text(json.dumps(result) + "\n")
    tmp.replace(where / "result.json")  # written last, atomically: its presence means the job is done
    if not study.keep_checkpoints:
        shutil.rmtree(where / "fit" / "checkpoints", ignore_errors=True)
    return result


def run_study(study: Study, workers: int, only: set[str] | None = None) -> list[str]:
    """Run every unfinished job with ``workers`` processes at a time; the failures, one line each."""
    jobs = [(arm, seed) for arm in study.arms for seed in study.seeds
            if (only is None or arm.name in only) and not (job_dir(study, arm, seed) / "result.json").is_file()]
    total = len(study.arms) * len(study.seeds) if only is None else len(jobs)
    print(f"study {study.name}: {len(jobs)} job(s) to run, {total - len(jobs)} already done; runs in {study.runs_dir}",
          flush=True)
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(run_job, study, arm, seed): (arm, seed) for arm, seed in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            arm, seed = futures[future]
            try:
                result = future.result()
                print(f"[{done}/{len(jobs)}] {arm.name} seed {seed}: {result['wall_s'] / 60:.1f} min, "
                      f"pass@1 {sum(result['c']) / max(sum(result['n']), 1):.3f}", flush=True)
            except Exception as err:  # noqa: BLE001 - report every failed job, keep the others running
                failures.append(str(err))
                print(f"[{done}/{len(jobs)}] FAILED {err}", flush=True)
    return failures


# ------------------------------------------------------------------ summary
def _counts(results: list[dict[str, Any]], problems: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S, P]`` samples and correct counts, problems in the order of ``problems``."""
    n, c = [], []
    for r in results:
        where = {p: i for i, p in enumerate(r["problems"])}
        if set(where) != set(problems):
            raise SystemExit(f"error: {r['arm']} seed {r['seed']} was evaluated on other problems than the baseline; "
                             "every arm must use the same eval_args")
        n.append([r["n"][where[p]] for p in problems])
        c.append([r["c"][where[p]] for p in problems])
    return torch.tensor(n), torch.tensor(c)


def finished_results(study: Study) -> dict[str, list[dict[str, Any]]]:
    """Per arm, the ``result.json`` of each finished job in ``runs_dir`` (arms with none are left out)."""
    results = {arm.name: [json.loads((job_dir(study, arm, s) / "result.json").read_text()) for s in study.seeds
                          if (job_dir(study, arm, s) / "result.json").is_file()] for arm in study.arms}
    return {name: rs for name, rs in results.items() if rs}


def per_run_record(results: dict[str, list[dict[str, Any]]], problems: list[str]) -> dict[str, Any]:
    """What ``<output>/runs.json`` commits: every run's per-problem counts (in the order of ``problems``),
    scalars, cost and commands, so the summary and any later analysis can be redone without ``runs_dir``."""
    runs = []
    for rs in results.values():
        for r in rs:
            n, c = _counts([r], problems)
            runs.append({**{k: v for k, v in r.items() if k != "problems"}, "n": n[0].tolist(), "c": c[0].tolist()})
    return {"problems": problems, "runs": runs}


def committed_results(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The inverse of :func:`per_run_record`: per arm, result records as ``run_job`` wrote them."""
    results: dict[str, list[dict[str, Any]]] = {}
    for run in record["runs"]:
        results.setdefault(run["arm"], []).append({**run, "problems": record["problems"]})
    return results


def summarise(study: Study, results: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The study's statistics from the finished runs (by default every ``result.json`` in ``runs_dir``)."""
    from lightning_dsrl.metrics.functional import powers_of_two
    from lightning_dsrl.metrics.paired import bootstrap_mean, passk_by_seed, samples_to_reach

    results = finished_results(study) if results is None else results
    if study.baseline not in results:
        raise SystemExit(f"error: the baseline arm {study.baseline!r} has no finished run yet")
    base = results[study.baseline]
    problems = base[0]["problems"]
    counts = {name: _counts(rs, problems) for name, rs in results.items()}
    ks = powers_of_two(int(min(int(n.min()) for n, _ in counts.values())))
    passk = {name: passk_by_seed(n, c, ks) for name, (n, c) in counts.items()}  # [S, P, K]
    seeds_of = {name: [r["seed"] for r in rs] for name, rs in results.items()}
    target = float(passk[study.baseline].mean((0, 1))[-1])  # the baseline's pass@(largest k)
    arms = {}
    for name, values in passk.items():
        mean, low, high = bootstrap_mean(values, study.bootstrap)
        # the curve's mean over the k grid (equal weight per doubling): one number to choose settings by
        curve_mean = [float(x[0]) for x in bootstrap_mean(values.mean(-1, keepdim=True), study.bootstrap)]
        entry = {"seeds": seeds_of[name], "pass@k": mean.tolist(), "low": low.tolist(), "high": high.tolist(),
                 "curve_mean": curve_mean,
                 "per_seed": values.mean(1).tolist(),
                 "samples_to_reach_baseline": samples_to_reach(*counts[name], target),
                 "values": {k: _mean_sd([r["values"].get(k) for r in results[name]]) for k in SCALARS},
                 "cpu_min": round(sum(r["cpu_s"] for r in results[name]) / 60, 1),
                 "usage": _usage(results[name]), "curves": _curves(results[name])}
        paired = [s for s in seeds_of[name] if s in seeds_of[study.baseline]]
        if name != study.baseline and paired:
            mine = values[[seeds_of[name].index(s) for s in paired]]
            theirs = passk[study.baseline][[seeds_of[study.baseline].index(s) for s in paired]]
            diff, dlow, dhigh = bootstrap_mean(mine - theirs, study.bootstrap)
            curve = [float(x[0]) for x in bootstrap_mean((mine - theirs).mean(-1, keepdim=True), study.bootstrap)]
            entry["minus_baseline"] = {"seeds": paired, "mean": diff.tolist(), "low": dlow.tolist(),
                                       "high": dhigh.tolist(), "curve_mean": curve}
        arms[name] = entry
    return {"name": study.name, "baseline": study.baseline, "k": ks, "problems": len(problems),
            "samples_per_problem": int(counts[study.baseline][0].min()), "confidence": 0.95,
            "bootstrap": study.bootstrap, "arms": arms,
            "cpu_min_total": round(sum(a["cpu_min"] for a in arms.values()), 1),
            "commands": {name: rs[0]["commands"] for name, rs in results.items()}}


def _usage(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per command (fit, validate): the mean wall-clock and CPU minutes over seeds and the largest peak memory."""
    out = {}
    for command in ("fit", "validate"):
        runs = [r["usage"][command] for r in results if command in r.get("usage", {})]
        if runs:
            out[command] = {"wall_min": round(sum(u["wall_s"] for u in runs) / len(runs) / 60, 2),
                            "cpu_min": round(sum(u["cpu_s"] for u in runs) / len(runs) / 60, 2),
                            "peak_rss_mib": max(u["peak_rss_mib"] for u in runs), "runs": len(runs)}
    return out


def _curves(results: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per tag: the steps every seed logged, the mean over seeds and the lowest and highest seed."""
    out = {}
    for tag in sorted({t for r in results for t in r.get("curves", {})}):
        runs = [dict(zip(r["curves"][tag]["step"], r["curves"][tag]["value"])) for r in results if tag in r.get("curves", {})]
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        values = torch.tensor([[run[step] for step in steps] for run in runs], dtype=torch.float64)  # [S, steps]
        out[tag] = {"step": steps, "mean": values.mean(0).tolist(), "min": values.min(0).values.tolist(),
                    "max": values.max(0).values.tolist(), "seeds": len(runs)}
    return out


def _mean_sd(values: list[float | None]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    t = torch.tensor(present, dtype=torch.float64)
    return {"mean": float(t.mean()), "sd": float(t.std()) if len(present) > 1 else 0.0}


def _fmt_mean_sd(value: dict[str, float] | None, digits: int) -> str:
    return "n/a" if value is None else f"{value['mean']:.{digits}f} ± {value['sd']:.{digits}f}"


def _fmt_interval(interval, signed: bool = False) -> str:
    """``value [low, high]``; a signed difference is bold when its interval excludes 0."""
    value, low, high = interval
    if not signed:
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    cell = f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"**{cell}**" if low > 0 or high < 0 else cell


def markdown(summary: dict[str, Any]) -> str:
    """Two tables: pass@k per arm with its interval and the scalars; every arm minus the baseline."""
    ks, base = summary["k"], summary["baseline"]
    lines = [f"# Study `{summary['name']}`", "",
             f"{summary['problems']} held-out problems x {summary['samples_per_problem']} samples per run; mean over "
             f"seeds and problems, [95% bootstrap interval over seeds and problems, {summary['bootstrap']} resamples]. "
             f"Total compute {summary['cpu_min_total']:.0f} CPU-minutes.", "",
             "| arm | seeds | " + " | ".join(f"pass@{k}" for k in ks)
             + " | mean over k | k to reach baseline's pass@" + str(ks[-1])
             + " | distinct correct | Div-Equ | entropy | greedy |",
             "|---|---|" + "---|" * (len(ks) + 6)]
    for name, arm in summary["arms"].items():
        cells = [_fmt_interval(interval) for interval in zip(arm["pass@k"], arm["low"], arm["high"])]
        reach = arm["samples_to_reach_baseline"]

        scalars = [_fmt_mean_sd(arm["values"].get(key), digits)
                   for key, digits in (("distinct_correct", 2), ("div_equ", 1), ("entropy", 3), ("greedy_accuracy", 3))]
        lines.append(f"| {name} | {len(arm['seeds'])} | " + " | ".join(cells) + f" | {_fmt_interval(arm['curve_mean'])}"
                     + f" | {reach if reach else '> ' + str(ks[-1])} | " + " | ".join(scalars) + " |")
    lines += ["", f"Paired difference to `{base}` (same seeds, same problems); **bold**: the interval excludes 0.", "",
              "| arm | " + " | ".join(f"pass@{k}" for k in ks) + " | mean over k |", "|---|" + "---|" * (len(ks) + 1)]
    for name, arm in summary["arms"].items():
        if "minus_baseline" not in arm:
            continue
        d = arm["minus_baseline"]
        cells = [_fmt_interval(interval, signed=True) for interval in zip(d["mean"], d["low"], d["high"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt_interval(d['curve_mean'], signed=True)} |")
    costs = [(name, arm["usage"]) for name, arm in summary["arms"].items() if arm.get("usage")]
    if costs:
        lines += ["", "Cost per run (one thread; mean over seeds; peak: the largest resident memory of any seed).", "",
                  "| arm | fit wall-clock min | fit CPU min | fit peak MiB | validate wall-clock min | validate peak MiB |",
                  "|---|---|---|---|---|---|"]
        for name, usage in costs:
            fit, val = usage.get("fit"), usage.get("validate")
            cells = ([f"{fit['wall_min']:.1f}", f"{fit['cpu_min']:.1f}", f"{fit['peak_rss_mib']:.0f}"] if fit
                     else ["-", "-", "-"])
            cells += [f"{val['wall_min']:.1f}", f"{val['peak_rss_mib']:.0f}"] if val else ["-", "-"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figures(summary: dict[str, Any], output: Path) -> list[Path]:
    """``passk.png`` (every arm's curve with its band) and ``diff.png`` (every arm minus the baseline)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lightning_dsrl.metrics.plot import Curve, line_style, passk_figure, save_figure

    ks = summary["k"]
    curves = [Curve(name, ks, a["pass@k"], a["low"], a["high"], confidence=summary["confidence"])
              for name, a in summary["arms"].items()]
    paths = [save_figure(passk_figure(curves, f"{summary['name']}: pass@k, {summary['problems']} problems x "
                                      f"{summary['samples_per_problem']} samples, mean over seeds"),
                         output / "passk.png")]
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, arm) in enumerate(summary["arms"].items()):
        if "minus_baseline" in arm:
            d = arm["minus_baseline"]
            ax.plot(ks, d["mean"], label=name, **line_style(i))
            ax.fill_between(ks, d["low"], d["high"], color=f"C{i % 10}", alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (log2 scale)")
    ax.set_ylabel(f"pass@k minus {summary['baseline']}")
    ax.set_title("paired difference to the baseline (band: 95% bootstrap CI)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, output / "diff.png"))
    tags = sorted({tag for arm in summary["arms"].values() for tag in arm.get("curves", {})})
    if tags:
        fig = Figure(figsize=(6.4 * len(tags), 4.4), dpi=100)
        FigureCanvasAgg(fig)
        for j, tag in enumerate(tags):
            ax = fig.add_subplot(1, len(tags), j + 1)
            for i, (name, arm) in enumerate(summary["arms"].items()):
                if tag in arm.get("curves", {}):
                    c = arm["curves"][tag]
                    ax.plot(c["step"], c["mean"], color=f"C{i % 10}", label=f"{name} ({c['seeds']} seed{'' if c['seeds'] == 1 else 's'})")
                    ax.fill_between(c["step"], c["min"], c["max"], color=f"C{i % 10}", alpha=0.15, linewidth=0)
            ax.set_xlabel("training step")
            ax.set_ylabel(tag)
            ax.set_title(f"{tag}: mean over seeds (band: lowest to highest seed)", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, output / "curves.png"))
    return paths


def write_summary(study: Study, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary = summarise(study, results)
    study.output.mkdir(parents=True, exist_ok=True)
    (study.output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    record = per_run_record(results, results[study.baseline][0]["problems"])
    (study.output / "runs.json").write_text(json.dumps(record) + "\n")
    (study.output / "table.md").write_text(markdown(summary))
    figures(summary, study.output)
    print(markdown(summary))
    print(f"written: {study.output}/{{summary.json,runs.json,table.md,passk.png,diff.png}}"
          + (" and curves.png" if any(a.get("curves") for a in summary["arms"].values()) else ""))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("study", help="a study YAML (configs/study/*.yaml)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at a time, one thread each")
    parser.add_argument("--only", nargs="+", help="run only these arms (the summary covers every finished job)")
    parser.add_argument("--summary-only", action="store_true", help="recompute the summary from finished jobs")
    parser.add_argument("--dry-run", action="store_true", help="print every job's commands and exit")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    if args.only and (unknown := set(args.only) - {a.name for a in study.arms}):
        raise SystemExit(f"error: --only {sorted(unknown)}: not arms of this study ({[a.name for a in study.arms]})")
    if args.dry_run:
        for arm in study.arms:
            for seed in study.seeds:
                for command in commands(study, arm, seed):
                    print(" ".join(command[1:]))
        return 0
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    failures = [] if args.summary_only else run_study(study, args.workers, set(args.only) if args.only else None)
    results = finished_results(study)
    if not results and args.summary_only and (study.output / "runs.json").is_file():
        print(f"no finished runs in {study.runs_dir}: summarising the committed {study.output / 'runs.json'}")
        results = committed_results(json.loads((study.output / "runs.json").read_text()))
    if study.baseline in results:
        write_summary(study, results)
    else:
        print(f"no summary yet: the baseline arm {study.baseline!r} has no finished run")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
