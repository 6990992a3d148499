"""The pass@k curve as a picture: pass@k against k on a log2 axis, with the bootstrap band.

Used by validation (``eval/passk.png`` and the TensorBoard image) and by
``scripts/compare_runs.py`` (several runs on one plot). Figures are drawn on matplotlib's Agg
canvas directly, so no global backend is switched and nothing needs a display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["Curve", "curve_from_report", "passk_figure", "save_figure", "figure_to_array"]


@dataclass
class Curve:
    """One run's pass@k curve: values (and optional interval) at each k, plus its greedy accuracy."""

    label: str
    k: list[int]
    value: list[float]
    low: list[float] | None = None
    high: list[float] | None = None
    greedy: float | None = None
    confidence: float | None = None  # coverage of the interval (0.95)


def curve_from_report(report: dict[str, Any], label: str) -> Curve:
    """The curve of a report dict (``EvalReport.to_dict()``, the content of ``eval/metrics.json``)."""
    passk = report["passk"]
    return Curve(label, list(passk["k"]), list(passk["value"]), passk.get("low"), passk.get("high"),
                 report.get("values", {}).get("greedy_accuracy"), passk.get("confidence"))


def line_style(i: int) -> dict[str, str]:
    """Colour and marker of the ``i``-th line: matplotlib's 10 colours, then the same colours with another
    marker, so a figure of more than 10 lines has no two alike."""
    return {"color": f"C{i % 10}", "marker": "osD^v"[i // 10 % 5]}


def passk_figure(curves: list[Curve], title: str = "pass@k") -> Figure:
    """pass@k (y, 0..1) against k (x, log2), one line per curve; the band is the confidence
    interval, a dotted line of the same colour the accuracy of greedy decoding."""
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ks: set[int] = set()
    for i, curve in enumerate(curves):
        style = line_style(i)
        colour = style["color"]
        ax.plot(curve.k, curve.value, label=curve.label, **style)
        if curve.low is not None and curve.high is not None:
            ax.fill_between(curve.k, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
        if curve.greedy is not None:
            ax.axhline(curve.greedy, color=colour, linestyle=":", linewidth=1)
        ks.update(curve.k)
    ax.set_xscale("log", base=2)
    ticks = sorted(ks)
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("k (samples per problem, log2 scale)")
    ax.set_ylabel("pass@k")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    banded = [c for c in curves if c.low is not None and c.confidence is not None]
    notes = [f"band: {100 * banded[0].confidence:g}% bootstrap CI"] if banded else []
    notes += ["dotted: greedy decoding"] if any(c.greedy is not None for c in curves) else []
    ax.legend(loc="upper left", fontsize=8, title="; ".join(notes) or None, title_fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB pixels of the figure (for TensorBoard's ``add_image``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
