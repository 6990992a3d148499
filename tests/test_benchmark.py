"""The benchmark script runs end to end in smoke mode and writes JSON with every field (no timing checks)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_benchmark_smoke_writes_complete_json(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "bench.json"
    benchmark.main(["--smoke", "--output", str(out)])
    report = json.loads(out.read_text())
    ours, bare = report["ours"], report["bare"]
    for key in ("median_step_s", "generated_tokens_per_s", "trained_tokens_per_s", "update_tflops_per_s", "peak_rss_mb"):
        assert math.isfinite(ours[key]) and ours[key] > 0, key
    assert ours["update_mfu"] is None  # a CPU has no peak FLOP/s in Lightning's table
    assert set(ours["phases_s"]) == set(benchmark.PHASES)
    assert len(ours["steps_s"]) == report["settings"]["steps"]
    assert set(bare["parts_s"]) == {"generate", "policy_forward_backward", "reference_forward", "optimizer_step"}
    assert bare["median_step_s"] > 0 and report["ours_over_bare"] > 0
    chunked, whole = report["logprob_memory"]["chunked"], report["logprob_memory"]["unchunked"]
    assert whole["micro_batch_size"] == whole["completions"] > chunked["micro_batch_size"]
    for m in (chunked, whole):
        assert m["phase_peak_mb"] >= 0 and m["seconds"] > 0 and m["logits_mb_per_micro_batch"] > 0
