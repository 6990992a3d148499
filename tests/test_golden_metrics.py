"""The first 2 steps of ``configs/ds_grpo.yaml`` (seeded) reproduce the committed metrics to 1e-5
(``scripts/golden_metrics.py``): the guard every refactor and speed-up must pass unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "golden_metrics.py"


def _script():
    spec = importlib.util.spec_from_file_location("golden_metrics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_run_reproduces_the_golden_metrics(tmp_path):
    golden = _script()
    measured = golden.measure(tmp_path)
    assert len(measured) > 30 and all(len(v) == golden.STEPS for v in measured.values())
    assert golden.differences(measured, golden.load_golden()) == []


def test_differences_names_every_kind_of_mismatch():
    golden = _script()
    want = {"a": [1.0, 2.0], "b": [0.0, 0.0], "gone": [1.0, 1.0]}
    got = {"a": [1.0, 2.0 + 1e-7], "b": [0.0, 2e-5], "new": [3.0, 3.0]}
    assert golden.differences(got, want) == [
        "gone: not logged (golden [1.0, 1.0])",
        "new: logged but not in the golden file ([3.0, 3.0])",
        "b: [0.0, 2e-05] != golden [0.0, 0.0]",
    ]
