"""What an evaluation leaves behind: files in ``<run>/eval/`` and a table on the console.

    eval/metrics.json   the EvalReport plus how it was made (settings, checkpoint, step)
    eval/samples.jsonl  one line per problem: prompt, completions, rewards, verdicts, answers, equations, greedy
    eval/history.jsonl  one line per evaluation (periodic validation during fit appends here)
    eval/passk.png      the pass@k curve (see :mod:`lightning_dsrl.metrics.plot`)

Undefined values are written as ``null`` with the reason under ``notes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lightning_dsrl.metrics.plot import curve_from_report, passk_figure, save_figure
from lightning_dsrl.metrics.rollout import EvalReport
from lightning_dsrl.types import Rollout

__all__ = ["sample_rows", "write_eval", "format_table", "passk_title"]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def sample_rows(rollout: Rollout, greedy: Rollout | None = None) -> list[dict[str, Any]]:
    """One JSON-ready row per problem of ``rollout`` (groups in sorted label order)."""
    labels = rollout.group_ids.tolist()
    greedy_at = {g: i for i, g in enumerate(greedy.group_ids.tolist())} if greedy is not None else {}
    rows: dict[int, dict[str, Any]] = {}
    for i, g in enumerate(labels):
        if g not in rows:
            record = rollout.records[i] if rollout.records else None
            rows[g] = {
                "prompt": rollout.prompts[i] if rollout.prompts else None,
                "reference": _jsonable(record.answer) if record is not None else None,
                "meta": _jsonable(record.meta) if record is not None else None,
                "completions": [], "rewards": [], "correct": [], "answers": [], "equations": [],
            }
            if g in greedy_at:
                j = greedy_at[g]
                rows[g]["greedy"] = {"completion": greedy.completions[j], "reward": float(greedy.rewards[j]),
                                     "correct": bool(greedy.correct[j]),
                                     "answer": greedy.answers[j] if greedy.answers else None}
        row = rows[g]
        row["completions"].append(rollout.completions[i] if rollout.completions else "")
        row["rewards"].append(round(float(rollout.rewards[i]), 6))
        row["correct"].append(bool(rollout.correct[i]))
        row["answers"].append(rollout.answers[i] if rollout.answers else None)
        equations = rollout.equations[i] if rollout.equations else None
        row["equations"].append(list(equations) if equations is not None else None)
    return [rows[g] for g in sorted(rows)]


def passk_title(report: EvalReport, settings: dict[str, Any]) -> str:
    parts = [f"{report.num_problems} problems", f"{report.samples_per_problem} samples each"]
    if settings.get("temperature") is not None:
        parts.append(f"T={settings['temperature']:g}")
    if settings.get("top_p") is not None and settings["top_p"] != 1.0:
        parts.append(f"top_p={settings['top_p']:g}")
    if settings.get("top_k"):
        parts.append(f"top_k={settings['top_k']}")
    return f"pass@k ({', '.join(parts)})"


def write_eval(directory: str | Path, report: EvalReport, rows: list[dict[str, Any]],
               settings: dict[str, Any], label: str = "this run") -> tuple[dict[str, Path], Figure]:
    """Write metrics.json, samples.jsonl and passk.png into ``directory``; append to history.jsonl.
    Returns the paths and the figure of the curve."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = {"settings": settings, **report.to_dict()}
    paths = {name: directory / name for name in ("metrics.json", "samples.jsonl", "history.jsonl", "passk.png")}
    paths["metrics.json"].write_text(json.dumps(content, indent=2) + "\n")
    with paths["samples.jsonl"].open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with paths["history.jsonl"].open("a") as f:
        f.write(json.dumps(content) + "\n")
    fig = passk_figure([curve_from_report(content, label)], passk_title(report, settings))
    save_figure(fig, paths["passk.png"])
    return paths, fig


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(report: EvalReport) -> str:
    """The report as a plain-text table: the curve (pass@k, interval, Potential@k), then the scalars."""
    passk, potential = report.passk, report.potential
    ci = f"{100 * passk['confidence']:g}% CI" if passk.get("low") else None
    head = f"{'k':>5}  {'pass@k':>8}" + (f"  {ci:>17}" if ci else "") + ("  potential@k" if potential else "")
    lines = [f"pass@k over {report.num_problems} problems, {report.samples_per_problem} samples each", head]
    for i, k in enumerate(passk["k"]):
        line = f"{k:>5}  {_fmt(passk['value'][i]):>8}"
        if ci:
            line += f"  {'[' + _fmt(passk['low'][i]) + ', ' + _fmt(passk['high'][i]) + ']':>17}"
        if potential:
            line += f"  {_fmt(potential['value'][i]):>11}"
        lines.append(line)
    if potential:
        lines.append(f"potential@k: over the {potential['problems']} problems greedy decoding fails"
                     + (f" ({report.notes['potential@k']})" if "potential@k" in report.notes else ""))
    width = max([len(name) for name in report.values] + [6])
    lines += ["", f"{'metric':<{width}}  value"]
    for name, value in report.values.items():
        why = f"  ({report.notes[name]})" if name in report.notes else ""
        lines.append(f"{name:<{width}}  {_fmt(value)}{why}")
    return "\n".join(lines)
