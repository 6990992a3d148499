"""Golden metrics: the first steps of ``configs/ds_grpo.yaml``, seeded, as the guard of every refactor.

    python scripts/golden_metrics.py            # run them and compare with the committed values
    python scripts/golden_metrics.py --write    # record them again (say why in the commit message)

The default run, unchanged but for its length (``--trainer.max_steps``) and without the sanity
validation (``--trainer.num_sanity_val_steps 0``), logs every training scalar; every one but the
``timing/*`` ones must come out as committed in ``tests/data/golden_ds_grpo.json``, to 1e-5.
``tests/test_golden_metrics.py`` runs the comparison in the default suite. A change that is meant to
change the numbers (a bug fix, a new embedded model) records them again; one that is not (a refactor,
a speed-up) must leave them as they are.

A refactor is also checked on the whole default run (128 steps and its in-run validations, ~6-10
minutes on one thread): record it on the commit before, then compare the commit after with it,

    python scripts/golden_metrics.py --full-record /tmp/before.json   # on the old commit
    python scripts/golden_metrics.py --full-compare /tmp/before.json  # on the new one: exit 1 on any difference

(``--run-dir runs/ds_grpo/version_0`` reads a run made already instead of running one). Every
scalar but ``timing/*`` must be equal at every step, and every validation's record in
``eval/history.jsonl`` (settings, pass@k with its interval, the other metrics) equal as written;
``--tolerance`` allows a relative difference (default 0: exact).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden_ds_grpo.json"
CONFIG = ROOT / "configs" / "ds_grpo.yaml"
STEPS = 2
TOLERANCE = 1e-5  # relative, and absolute near 0


def fit(save_dir: str | Path, steps: int | None = STEPS) -> Path:
    """Run the default config into ``save_dir`` (``steps``: its first steps only; ``None``: all of it,
    validations included); returns the run directory."""
    from lightning_dsrl.__main__ import cli_main

    length = ["--trainer.max_steps", str(steps)] if steps is not None else []
    cli_main(["fit", "--config", str(CONFIG), *length, "--trainer.num_sanity_val_steps", "0",
              "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(save_dir)])
    return next(Path(save_dir).glob("ds_grpo/version_*"))


def scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events but ``timing/*``: tag -> ``(step, value)`` in order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(Path(run_dir).glob("events.out.tfevents.*"))))
    events.Reload()
    return {tag: [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
            for tag in sorted(events.Tags()["scalars"]) if not tag.startswith("timing/")}


def measure(save_dir: str | Path, steps: int = STEPS) -> dict[str, list[float]]:
    """Every logged training scalar but ``timing/*``: tag -> its value at steps 1..``steps``."""
    return {tag: [value for _, value in points] for tag, points in scalars(fit(save_dir, steps)).items()}


def record_run(run_dir: str | Path) -> dict[str, object]:
    """What a full run is compared on: its scalars and every validation's ``eval/history.jsonl`` record."""
    history = Path(run_dir) / "eval" / "history.jsonl"
    evals = [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else []
    return {"scalars": {tag: [list(p) for p in points] for tag, points in scalars(run_dir).items()},
            "evals": evals}


def _close(got: object, want: object, tolerance: float) -> bool:
    if isinstance(got, float) and isinstance(want, float):
        return got == want or (math.isnan(got) and math.isnan(want)) or (
            tolerance > 0 and math.isclose(got, want, rel_tol=tolerance, abs_tol=tolerance))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k], tolerance) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_close(g, w, tolerance) for g, w in zip(got, want))
    return got == want


def run_differences(got: dict, want: dict, tolerance: float = 0.0) -> list[str]:
    """One line per scalar tag or validation record of ``got`` that differs from ``want`` (see :func:`record_run`)."""
    out = [f"{tag}: not logged" for tag in sorted(set(want["scalars"]) - set(got["scalars"]))]
    out += [f"{tag}: logged, not in the record" for tag in sorted(set(got["scalars"]) - set(want["scalars"]))]
    for tag in sorted(set(got["scalars"]) & set(want["scalars"])):
        g, w = got["scalars"][tag], want["scalars"][tag]
        if not _close(g, w, tolerance):
            first = next((i for i, (a, b) in enumerate(zip(g, w)) if not _close(a, b, tolerance)), min(len(g), len(w)))
            out.append(f"{tag}: {len(g)} points vs {len(w)}; first difference at point {first}: "
                       f"{g[first] if first < len(g) else None} != {w[first] if first < len(w) else None}")
    if len(got["evals"]) != len(want["evals"]):
        out.append(f"eval/history.jsonl: {len(got['evals'])} validations vs {len(want['evals'])}")
    for i, (g, w) in enumerate(zip(got["evals"], want["evals"])):
        for key in sorted(set(g) | set(w)):
            if not _close(g.get(key), w.get(key), tolerance):
                out.append(f"eval/history.jsonl, validation {i}: {key} {g.get(key)} != {w.get(key)}")
    return out


def differences(measured: dict[str, list[float]], golden: dict[str, list[float]]) -> list[str]:
    """One line per tag that is missing, extra, or off by more than the tolerance at some step."""
    out = [f"{tag}: not logged (golden {golden[tag]})" for tag in sorted(set(golden) - set(measured))]
    out += [f"{tag}: logged but not in the golden file ({measured[tag]})" for tag in sorted(set(measured) - set(golden))]
    for tag in sorted(set(golden) & set(measured)):
        got, want = measured[tag], golden[tag]
        if len(got) != len(want) or not all(
                math.isclose(g, w, rel_tol=TOLERANCE, abs_tol=TOLERANCE) or (math.isnan(g) and math.isnan(w))
                for g, w in zip(got, want)):
            out.append(f"{tag}: {got} != golden {want}")
    return out


def load_golden() -> dict[str, list[float]]:
    return json.loads(GOLDEN.read_text())["metrics"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"record the values into {GOLDEN.relative_to(ROOT)}")
    parser.add_argument("--full-record", metavar="JSON", help="run the whole default config and record it into JSON")
    parser.add_argument("--full-compare", metavar="JSON", help="run the whole default config and compare it with JSON")
    parser.add_argument("--run-dir", help="with --full-*: read this finished run instead of running one")
    parser.add_argument("--tolerance", type=float, default=0.0, help="with --full-compare: relative (default 0)")
    args = parser.parse_args(argv)
    if args.full_record or args.full_compare:
        return _full(args)
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(tmp)
    if args.write:
        import torch
        import transformers

        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": f"fit --config configs/ds_grpo.yaml --trainer.max_steps {STEPS} "
                             "--trainer.num_sanity_val_steps 0",
                  "recorded_with": {"python": platform.python_version(), "torch": torch.__version__,
                                    "transformers": transformers.__version__},
                  "metrics": measured}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {len(measured)} tags x {STEPS} steps to {GOLDEN}")
        return 0
    off = differences(measured, load_golden())
    print("\n".join(off) if off else f"all {len(measured)} tags match the golden values to {TOLERANCE}")
    return 1 if off else 0


def _full(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        got = record_run(args.run_dir or fit(tmp, steps=None))
    if args.full_record:
        Path(args.full_record).write_text(json.dumps(got) + "\n")
        print(f"recorded {len(got['scalars'])} tags and {len(got['evals'])} validations into {args.full_record}")
        return 0
    off = run_differences(got, json.loads(Path(args.full_compare).read_text()), args.tolerance)
    points = sum(len(v) for v in got["scalars"].values())
    print("\n".join(off) if off else f"all {len(got['scalars'])} tags ({points} points) and {len(got['evals'])} "
          f"validations equal the record (tolerance {args.tolerance})")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
