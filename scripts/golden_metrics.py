"""Golden metrics: the first steps of ``configs/ds_grpo.yaml``, seeded, as the guard of every refactor.

    python scripts/golden_metrics.py            # run them and compare with the committed values
    python scripts/golden_metrics.py --write    # record them again (say why in the commit message)

The default run, unchanged but for its length (``--trainer.max_steps``) and without the sanity
validation (``--trainer.num_sanity_val_steps 0``), logs every training scalar; every one but the
``timing/*`` ones must come out as committed in ``tests/data/golden_ds_grpo.json``, to 1e-5.
``tests/test_golden_metrics.py`` runs the comparison in the default suite. A change that is meant to
change the numbers (a bug fix, a new embedded model) records them again; one that is not (a refactor,
a speed-up) must leave them as they are.
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


def measure(save_dir: str | Path, steps: int = STEPS) -> dict[str, list[float]]:
    """Every logged training scalar but ``timing/*``: tag -> its value at steps 1..``steps``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_dsrl.__main__ import cli_main

    cli_main(["fit", "--config", str(CONFIG), "--trainer.max_steps", str(steps),
              "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(save_dir)])
    events = EventAccumulator(str(next(Path(save_dir).glob("ds_grpo/version_*/events.out.tfevents.*"))))
    events.Reload()
    return {tag: [float(e.value) for e in events.Scalars(tag)]
            for tag in sorted(events.Tags()["scalars"]) if not tag.startswith("timing/")}


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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
