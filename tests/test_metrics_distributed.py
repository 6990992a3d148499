"""Every metric reduces across processes: two CPU processes over gloo, each holding part of the
problems, compute the same report as one process holding all of them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("metrics_dist_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("metrics_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same(a, b, where="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_two_gloo_processes_equal_one_process(tmp_path):
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), str(rank), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    worker = load_worker()
    single = worker.evaluate(worker.make_batches())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the data is rich enough that every metric is defined and the bootstrap band is not flat
    assert single["num_problems"] == sum(worker.BATCH_SIZES) and not single["notes"]
    assert all(v is not None for v in single["values"].values()) and len(single["values"]) == 12
    assert single["passk"]["high"][0] > single["passk"]["low"][0]
    for report in ranks:
        assert_same(report, single)
