"""``scripts/gpu_check.py``: its tiny CPU run passes every check with real figures (so the script a GPU user runs
is never stale), and a check that fails, crashes or hangs is reported as failed while the others still run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
NAMES = ["environment", "logprobs fp32", "logprobs bf16-mixed", "logprobs bf16", "fit 32-true", "fit bf16-mixed",
         "step packed", "step packed+ckpt", "step plain", "step plain+ckpt", "fsdp2"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def run_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--workdir",
                           str(tmp_path / "work"), "--output", str(out), *args],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, json.loads(out.read_text())


def test_tiny_cpu_run_passes_every_check_with_real_figures(tmp_path, gpu_check):
    bounds = gpu_check.gpu_checks
    proc, report = run_script(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == NAMES and report["failed"] == []
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:-1]] == [n.split()[0] for n in NAMES]  # the table
    assert checks["logprobs fp32"] == {"name": "logprobs fp32", "status": "skip", "reason": "no CUDA"}
    assert all(c["status"] == "pass" for name, c in checks.items() if name != "logprobs fp32")
    assert report["environment"]["gpus"] == 0 and report["environment"]["torch"]
    for precision in ("bf16-mixed", "bf16"):  # bf16 rounds (the diff is not 0), within the stated bounds
        f = checks[f"logprobs {precision}"]["figures"]
        assert f["tokens"] > 100 and 0 < f["mean_abs"] <= bounds.BF16_MEAN_ABS and f["max_abs"] <= bounds.BF16_MAX_ABS
    fits = {p: checks[f"fit {p}"]["figures"] for p in ("32-true", "bf16-mixed")}
    for f in fits.values():
        assert len(f["losses"]) == 2 and all(math.isfinite(x) for x in f["losses"])
        assert Path(f["checkpoint"]).is_file() and f["eval_files"] and f["val_pass@1"] is not None
        assert f["correct_rate"] >= bounds.MIN_CORRECT_RATE and f["generated_tokens_per_s"] > 0
    assert fits["bf16-mixed"]["losses"] != fits["32-true"]["losses"]  # autocast did run
    for name in ("step packed", "step packed+ckpt", "step plain", "step plain+ckpt"):
        f = checks[name]["figures"]
        assert f["trained_tokens_per_s"] > 0 and f["generated_tokens_per_s"] > 0 and f["peak_memory_mb"] > 0
        assert f["mfu_bf16"] is None  # no peak FLOP/s for a CPU
    fsdp = checks["fsdp2"]["figures"]
    assert fsdp["parameters"] == "DTensor" and fsdp["checkpoint_shards"] == 1 and fsdp["resumed_at_step"] == 1
    assert fsdp["loss_resumed"] == fsdp["loss_uninterrupted"]  # exact on a CPU
    # one process of FSDP2 takes the single-device run's steps
    assert fsdp["loss_uninterrupted"] == pytest.approx(fits["32-true"]["losses"][1], rel=1e-5)


def test_failing_checks_are_reported_and_the_others_still_run(tmp_path, gpu_check, capsys):
    Check, gpu_checks = gpu_check.Check, gpu_check.gpu_checks

    def bounds():
        raise gpu_checks.CheckFailed("max_abs 2 > 0.5", {"max_abs": 2.0})

    def error():
        raise ValueError("no such config: bad.yaml\nand a second line")

    def exits():
        sys.exit(2)  # what the CLI does on a bad option: it must not end the run of checks

    checks = [Check("first", lambda: {"x": 1}), Check("error", error), Check("crash", lambda: os._exit(3)),
              Check("hang", lambda: time.sleep(120)), Check("bounds", bounds), Check("exits", exits),
              Check("skipped", None, "no CUDA"), Check("last", lambda: {"y": 2.5})]
    results = {r["name"]: r for r in gpu_check.run_checks(checks, tmp_path, timeouts={"hang": 3})}
    assert results["first"]["status"] == results["last"]["status"] == "pass"
    assert results["first"]["figures"] == {"x": 1} and results["last"]["figures"] == {"y": 2.5}
    assert results["error"] == {**results["error"], "status": "fail", "error": "ValueError: no such config: bad.yaml"}
    assert "Traceback" in Path(results["error"]["log"]).read_text()  # the full trace in the check's log
    assert results["crash"]["error"] == "the check's process died (exit code 3)"
    assert results["hang"]["error"] == "timed out after 3 s"
    assert results["bounds"]["error"] == "max_abs 2 > 0.5" and results["bounds"]["figures"] == {"max_abs": 2.0}
    assert results["exits"]["error"] == "SystemExit: 2"
    assert results["skipped"] == {"name": "skipped", "status": "skip", "reason": "no CUDA"}
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[c.name, results[c.name]["status"]] for c in checks]


@pytest.mark.slow  # the same through the command line: two fits that stop at their config's typo
def test_a_bad_config_fails_the_fit_checks_with_its_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "ds_grpo.yaml").read_text().replace("learning_rate:", "learning_rat:"))
    proc, report = run_script(tmp_path, "--checks", "fit", "--config", str(bad))
    assert proc.returncode == 1
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["environment", "fit 32-true", "fit bf16-mixed"]
    assert checks["environment"]["status"] == "pass"
    assert report["failed"] == ["fit 32-true", "fit bf16-mixed"]
    for name in report["failed"]:
        error = checks[name]["error"]
        assert error.startswith("RuntimeError: exit status 2: error: ") and "learning_rat" in error, error
