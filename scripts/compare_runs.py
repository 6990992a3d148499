"""Compare evaluations of several runs: one markdown table and one plot of their pass@k curves.

    python scripts/compare_runs.py runs/base/version_0 runs/grpo/version_0 runs/ds_grpo/version_0 \
        [--labels base GRPO DS-GRPO] [--out compare]

Each RUN_DIR is a run directory holding ``eval/metrics.json`` (what ``python -m lightning_dsrl
validate`` writes), an ``eval/`` directory, or a ``metrics.json`` file. Prints the table and
writes ``<out>.md`` and ``<out>.png`` (pass@k against k on a log2 axis, one curve per run with
its confidence band; dotted lines are greedy accuracies).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightning_dsrl.metrics.plot import curve_from_report, passk_figure, save_figure

COLUMNS = ("mean@", "greedy_accuracy", "div_equ", "distinct_2", "self_bleu", "distinct_correct", "entropy")


def find_metrics(path: str | Path) -> Path:
    """``metrics.json`` of a run directory, an ``eval/`` directory, or the file itself."""
    path = Path(path)
    for candidate in (path, path / "metrics.json", path / "eval" / "metrics.json"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"error: no eval/metrics.json under {path}; run `python -m lightning_dsrl validate "
                     "--config <the run's config.yaml> --ckpt_path <its checkpoint>` first")


def label_of(metrics_path: Path) -> str:
    """A readable default label: ``<name>/<version>`` of the run directory."""
    run = metrics_path.parent.parent if metrics_path.parent.name == "eval" else metrics_path.parent
    return f"{run.parent.name}/{run.name}" if run.parent.name else run.name


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(reports: list[dict[str, Any]], labels: list[str]) -> str:
    """One row per run: problems, samples, pass@k at every k any run reports, then the scalars."""
    ks = sorted({k for r in reports for k in r["passk"]["k"]})
    header = ["run", "problems", "n"] + [f"pass@{k}" for k in ks] + ["mean@n" if c == "mean@" else c
                                                                     for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, report in zip(labels, reports):
        passk = dict(zip(report["passk"]["k"], report["passk"]["value"]))
        values = report.get("values", {})
        cells = [label, str(report["num_problems"]), str(report["samples_per_problem"])]
        cells += [_fmt(passk.get(k)) for k in ks]
        for column in COLUMNS:
            if column.endswith("@"):  # mean@n: n differs between runs
                cells.append(_fmt(next((v for name, v in values.items() if name.startswith(column)), None)))
            else:
                cells.append(_fmt(values.get(column), 1 if column in ("div_equ", "self_bleu") else 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or eval/ dirs, metrics.json)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: <name>/<version>)")
    parser.add_argument("--out", default="compare", help="output prefix: writes <out>.md and <out>.png")
    args = parser.parse_args(argv)
    paths = [find_metrics(run) for run in args.runs]
    labels = args.labels or [label_of(p) for p in paths]
    if len(labels) != len(paths):
        raise SystemExit(f"error: --labels has {len(labels)} names for {len(paths)} runs")
    reports = [json.loads(p.read_text()) for p in paths]
    table = markdown_table(reports, labels)
    markdown, png = Path(f"{args.out}.md"), Path(f"{args.out}.png")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(table + "\n")
    curves = [curve_from_report(r, label) for r, label in zip(reports, labels)]
    save_figure(passk_figure(curves, "pass@k of " + ", ".join(labels)), png)
    print(table)
    print(f"\nwritten: {markdown}, {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
