"""Does lightning_dsrl work on this GPU machine, and how fast? One command, a few minutes.

    python scripts/gpu_check.py                          # on one or more GPUs (sizes: gpu_checks.GPU)
    python scripts/gpu_check.py --device cpu --tiny      # every check with tiny sizes on a CPU (a test runs this)
    python scripts/gpu_check.py --checks fit,fsdp2       # some of them (the environment check always runs)

The checks (``scripts/gpu_checks.py``):

- ``environment``: versions, the GPUs, the bf16 peak FLOP/s that MFU is measured against;
- ``logprobs fp32 | bf16-mixed | bf16``: the Scorer's log-probs of one fixed batch of the embedded model on the
  device (fp32; autocast as ``trainer.precision bf16-mixed``; bf16 weights as ``model.torch_dtype bfloat16``)
  against fp32 on the CPU, within the bounds stated in ``gpu_checks.py``;
- ``fit 32-true | bf16-mixed``: ``python -m lightning_dsrl fit --config configs/ds_grpo.yaml`` for a few steps and
  a validation: finite losses, a checkpoint with finite weights, eval files, problems still solved;
- ``step packed | packed+ckpt | plain | plain+ckpt``: ``scripts/benchmark.py``'s training step of a ~0.5B Llama with
  random weights, with the packed log-prob path (``model.share_prompt_prefix``) on or off and gradient
  checkpointing on or off: generated and trained tokens/s, update TFLOP/s and MFU, peak memory;
- ``fsdp2``: ``configs/fsdp.yaml`` on every GPU: sharded parameters, a sharded checkpoint, an exact resume.

Each check runs in its own process, forked from this one (which has imported torch and the package, never
touched CUDA), with its output in ``<workdir>/<check>.log``: a check that raises, crashes or runs past its time
limit is reported as failed with its error line, and the others still run. Prints a table, writes JSON
(``--output``); exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # before torch is imported: CUDA availability asked through NVML, which (unlike the
    # CUDA runtime) stays usable in forked processes; one CPU thread per process (the checks' CPU work is small)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_checks, benchmark

import gpu_checks  # noqa: E402

GROUPS = ("logprobs", "fit", "step", "fsdp2")
# seconds after which a check counts as hung and is killed: several times what each should take on a GPU
TIMEOUT_S = {"environment": 120, "logprobs": 300, "fit": 600, "step": 600, "fsdp2": 900}


@dataclass
class Check:
    name: str
    run: Callable[[], dict] | None  # None: skipped for ``skip``
    skip: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks that everything runs, not speed")
    p.add_argument("--checks", default=",".join(GROUPS), help=f"comma-separated groups of checks: {', '.join(GROUPS)}")
    p.add_argument("--config", default=str(gpu_checks.ROOT / "configs" / "ds_grpo.yaml"), help="the config to fit")
    p.add_argument("--peak-tflops", type=float,
                   help="the GPU's dense bf16 TFLOP/s for MFU, if Lightning's table lacks it")
    p.add_argument("--workdir", help="runs, models and logs (default: a new temporary folder, kept)")
    p.add_argument("--output", default="bench/gpu_check.json")
    args = p.parse_args(argv)
    unknown = set(args.checks.split(",")) - set(GROUPS)
    if unknown:
        p.error(f"--checks: unknown {', '.join(sorted(unknown))}; use some of {', '.join(GROUPS)}")
    return args


def plan(args, env: dict, workdir: Path) -> list[Check]:
    """The checks after ``environment``, in order, with the skips this machine implies."""
    sizes = gpu_checks.TINY if args.tiny else gpu_checks.GPU
    device, peak = args.device, env.get("peak_bf16_tflops")
    fp32_skip = "no CUDA" if not env["cuda_available"] else "--device cpu" if device == "cpu" else ""
    checks = [Check("logprobs fp32", None if fp32_skip else lambda: gpu_checks.logprobs(device, "fp32", sizes),
                    fp32_skip)]
    checks += [Check(f"logprobs {p}", lambda p=p: gpu_checks.logprobs(device, p, sizes))
               for p in ("bf16-mixed", "bf16")]
    checks += [Check(f"fit {p}", lambda p=p: gpu_checks.fit(device, p, sizes, args.config, workdir))
               for p in ("32-true", "bf16-mixed")]
    for name, packed, ckpt in (("packed", True, False), ("packed+ckpt", True, True), ("plain", False, False),
                               ("plain+ckpt", False, True)):
        checks.append(Check(f"step {name}", lambda p=packed, c=ckpt: gpu_checks.training_step(
            device, p, c, sizes, workdir, peak)))
    checks.append(Check("fsdp2", lambda: gpu_checks.fsdp2(device, env["gpus"], sizes, args.config, workdir)))
    wanted = args.checks.split(",")
    return [check for check in checks if check.name.split()[0] in wanted]


def run_isolated(check: Check, log: Path, timeout: float) -> dict:
    """``check.run()`` in a forked process writing to ``log``: its status (``pass`` with its figures, ``skip``
    with the reason, ``fail`` with the error line) and seconds. A crash or a timeout fails it, and a timeout
    kills the check's processes (the fits it started included)."""
    if check.run is None:
        return {"name": check.name, "status": "skip", "reason": check.skip}
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(check.run, send, log))
    start = time.monotonic()
    process.start()
    send.close()
    try:
        result = receive.recv() if receive.poll(timeout) else {
            "status": "fail", "error": f"timed out after {timeout:.0f} s"}
    except EOFError:  # the process ended without a result
        result = None
    _kill_group(process.pid)
    if process.is_alive():  # not yet in its own group
        process.kill()
    process.join()
    if result is None:
        result = {"status": "fail", "error": f"the check's process died (exit code {process.exitcode})"}
    return {"name": check.name, **result, "seconds": round(time.monotonic() - start, 1), "log": str(log)}


def _child(run: Callable[[], dict], send, log: Path) -> None:
    os.setpgrp()  # its own process group: a timeout kills the subprocesses it started too
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)  # the output of the subprocesses it starts, and of C code
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # Python's own, whatever they were
    try:
        result = {"status": "pass", "figures": run()}
    except gpu_checks.Skip as reason:
        result = {"status": "skip", "reason": str(reason)}
    except BaseException as err:  # SystemExit included: a check must never end the run
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0]
        result = {"status": "fail", "error": f"{type(err).__name__}: {first}"[:500]}
        if isinstance(err, gpu_checks.CheckFailed):
            result.update(error=str(err), figures=err.figures)
    sys.stdout.flush()
    sys.stderr.flush()
    send.send(result)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_checks(checks: list[Check], workdir: Path, timeouts: dict[str, float] | None = None) -> list[dict]:
    """Every check, one after another, each printed as it ends."""
    timeouts = {**TIMEOUT_S, **(timeouts or {})}
    results = []
    for check in checks:
        log = workdir / (check.name.replace(" ", "_").replace("+", "_") + ".log")
        result = run_isolated(check, log, timeouts.get(check.name.split()[0], 600))
        results.append(result)
        print(row(result), flush=True)
    return results


def row(result: dict) -> str:
    figures = result.get("figures") or {}
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items() if not isinstance(v, (list, dict)))
    why = result.get("error") or result.get("reason") or ""
    seconds = f"{result['seconds']:.0f} s" if "seconds" in result else ""
    return f"{result['name']:<20}{result['status']:<6}{seconds:>7}  " + "  ".join(x for x in (text, why) if x)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # the heavy imports, once: every check's process is a fork of this one
    import benchmark  # noqa: F401
    import torch

    import lightning_dsrl.cli  # noqa: F401

    assert not torch.cuda.is_initialized(), "CUDA must not be initialised before the checks fork"
    print(f"{'check':<20}{'status':<6}{'time':>7}  figures (logs in {workdir})", flush=True)
    env_check = Check("environment", lambda: gpu_checks.environment(args.device, args.peak_tflops))
    results = run_checks([env_check], workdir)
    env = results[0].get("figures")
    if env is None:
        skipped = plan(args, {"cuda_available": False, "gpus": 0}, workdir)
        results += run_checks([Check(c.name, None, "the environment check failed") for c in skipped], workdir)
    else:
        results += run_checks(plan(args, env, workdir), workdir)
    failed = [r["name"] for r in results if r["status"] == "fail"]
    report = {"settings": {k: v for k, v in vars(args).items()}, "workdir": str(workdir), "environment": env,
              "checks": results, "failed": failed}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or were skipped; wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
