"""The checks ``scripts/gpu_check.py`` runs, one function each: it returns its figures, raises ``Skip``, or raises
(``CheckFailed`` keeps the figures that were out of bounds). Sizes for a GPU and for ``--tiny`` are in ``Sizes``.

The training runs go through the command line (``python -m lightning_dsrl fit``), as a user's do; the step
timings are ``scripts/benchmark.py``'s own (``run_ours``); the log-probs are the ``Scorer``'s that training uses.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "pkg://lightning_dsrl/assets/countdown-lm"

# Per-token log-probs of the embedded model's own samples (mean about -0.1, down to -7), on the device against
# fp32 on the CPU. fp32: only the order of float additions may differ, so 1e-3 is wide, yet TF32 matmuls (10-bit
# mantissa) or a wrong mask or position would exceed it.
FP32_MAX_ABS = 1e-3
# bf16 (autocast, as trainer.precision bf16-mixed; or bf16 weights, as model.torch_dtype bfloat16) rounds logits
# of size ~10 to within ~0.04 (8-bit mantissa). Measured on a CPU (128 completions): mean 0.0015, max 0.08
# (autocast) and 0.17 (bf16 weights). A broken path errs by ~1 on most tokens.
BF16_MEAN_ABS = 0.02
BF16_MAX_ABS = 0.5
# the embedded model solves 35-57% of its training problems at T = 1; a run producing garbage solves ~none
MIN_CORRECT_RATE = 0.1
# a resumed run's first step against the uninterrupted run's same step (exact on a CPU)
RESUME_LOSS_RTOL = 1e-4
# dense bf16 peaks of GPUs Lightning's table (2.6) misses: it parses no plain 'NVIDIA H200' and lists the H200's
# sparse figure; NVIDIA's H200 SXM datasheet (the H100 SXM's rate)
DENSE_BF16_TFLOPS = {"NVIDIA H200": 989.4}


class Skip(Exception):
    """The check does not apply here; the message says why."""


class CheckFailed(Exception):
    """The check ran and a figure is out of bounds; ``figures`` are reported with the message."""

    def __init__(self, message: str, figures: dict) -> None:
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: a real GPU run (``GPU``) or a plumbing check on a CPU (``TINY``)."""

    fit_steps: int = 4
    fit_args: tuple[str, ...] = ("--data.task.init_args.num_val", "64", "--rollout.val_num_generations", "8")
    logprob_prompts: int = 16  # x 8 completions of <= 32 tokens
    model: str = "0.5b"  # scripts/benchmark.py RANDOM_MODELS
    step_args: tuple[str, ...] = ("--num-prompts", "16", "--num-generations", "8", "--max-new-tokens", "256",
                                  "--micro-batch-size", "8", "--steps", "3", "--dtype", "bfloat16")


GPU = Sizes()
TINY = Sizes(fit_steps=2, logprob_prompts=4, model="tiny",
             fit_args=("--data.batch_size", "2", "--rollout.num_generations", "4", "--data.task.init_args.num_train",
                       "8", "--data.task.init_args.max_number", "10", "--data.task.init_args.num_val", "4",
                       "--rollout.val_num_generations", "2"),
             step_args=("--num-prompts", "2", "--num-generations", "2", "--max-new-tokens", "8",
                        "--micro-batch-size", "2", "--steps", "2", "--dtype", "float32"))


# ---------------------------------------------------------------------------------- environment
def environment(device: str, peak_tflops: float | None) -> dict:
    """Versions, the GPUs torch sees and the bf16 peak FLOP/s MFU is measured against."""
    import platform

    import lightning
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "lightning": lightning.__version__, "transformers": transformers.__version__,
           "cuda_available": torch.cuda.is_available(), "gpus": 0, "cpus": os.cpu_count()}
    if device == "cpu":
        return out
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device cuda: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    name = torch.cuda.get_device_name(0)
    peak, source = bf16_peak(name, peak_tflops)
    return {**out, "gpus": torch.cuda.device_count(), "gpu": name, "bf16": torch.cuda.is_bf16_supported(),
            "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "peak_bf16_tflops": peak, "peak_source": source}


def bf16_peak(name: str, given: float | None) -> tuple[float | None, str]:
    """Dense bf16 TFLOP/s of GPU 0 and where the figure comes from."""
    if given:
        return given, "--peak-tflops"
    if name in DENSE_BF16_TFLOPS:
        return DENSE_BF16_TFLOPS[name], "gpu_checks.DENSE_BF16_TFLOPS"
    import torch
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(torch.device("cuda", 0), torch.bfloat16)
    return (flops / 1e12, "lightning") if flops else (None, "unknown: pass --peak-tflops")


# ---------------------------------------------------------------------------------- log-probs
def logprobs(device: str, precision: str, sizes: Sizes) -> dict:
    """The Scorer's per-token log-probs of one fixed batch (the embedded model's own seeded samples) on ``device``
    in ``precision`` (``fp32``, ``bf16-mixed``: autocast, ``bf16``: bf16 weights) against fp32 on the CPU."""
    import torch

    from lightning_dsrl.data import CountdownTask
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.rewards import CountdownReward
    from lightning_dsrl.rollout import RolloutCallback
    from lightning_dsrl.types import PromptBatch

    module = RLModule(name_or_path=EMBEDDED)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=8, max_new_tokens=32)
    records = CountdownTask(num_train=sizes.logprob_prompts, num_val=1, max_number=10, seed=0).records("train")
    torch.manual_seed(0)
    batch = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    want = module.scorer.per_token(module.policy, batch, torch.device("cpu"))  # [N, L]
    target = torch.device(device)
    model = copy.deepcopy(module.policy).to(torch.bfloat16) if precision == "bf16" else module.policy
    with torch.autocast(target.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        got = module.scorer.per_token(model.to(target), batch.to(target), target).cpu()
    diff = (got - want)[batch.completion_mask].abs()
    figures = {"tokens": diff.numel(), "max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    if precision == "fp32":
        figures["bound_max_abs"] = FP32_MAX_ABS
        within = figures["max_abs"] <= FP32_MAX_ABS
    else:
        figures.update(bound_max_abs=BF16_MAX_ABS, bound_mean_abs=BF16_MEAN_ABS)
        within = figures["max_abs"] <= BF16_MAX_ABS and figures["mean_abs"] <= BF16_MEAN_ABS
    if not within:
        raise CheckFailed(f"{precision} on {device} differs from fp32 on the CPU beyond the bounds", figures)
    return figures


# ---------------------------------------------------------------------------------- fit through the CLI
def fit(device: str, precision: str, sizes: Sizes, config: str, workdir: Path) -> dict:
    """``fit`` of ``config`` for a few steps with a validation after the last: finite losses at every step, a
    checkpoint with finite weights, the eval files, and a model that still solves problems."""
    import torch

    root = workdir / f"fit-{precision}"
    steps = sizes.fit_steps
    run_cli(["fit", "--config", config, *common_args(device, sizes, root, steps), "--trainer.precision", precision,
             "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", str(steps)], root)
    run = only_run(root, "version_0")
    scalars = read_scalars(run)
    losses = [value for _, value in scalars.get("train/loss", [])]
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    weights = [t for t in state["state_dict"].values() if t.is_floating_point()]
    correct = [value for _, value in scalars.get("train/correct_rate", [])]
    figures = {"losses": losses, "correct_rate": sum(correct) / max(len(correct), 1),
               "val_pass@1": scalars.get("val/pass@1", [(0, None)])[-1][1],
               "generated_tokens_per_s": mean(scalars.get("timing/generated_tokens_per_s", [])),
               "checkpoint": str(run / "checkpoints" / "last.ckpt"), "eval_files": (run / "eval").is_dir()}
    problems = [
        f"{len(losses)} losses logged for {steps} steps" if len(losses) != steps else "",
        "a non-finite loss" if not all(map(math.isfinite, losses)) else "",
        "non-finite weights in last.ckpt" if not weights or not all(bool(t.isfinite().all()) for t in weights) else "",
        "no eval/ files from the validation" if not figures["eval_files"] else "",
        f"correct rate {figures['correct_rate']:.3f} < {MIN_CORRECT_RATE}" if figures["correct_rate"] < MIN_CORRECT_RATE
        else "",
    ]
    if any(problems):
        raise CheckFailed("; ".join(p for p in problems if p), figures)
    return figures


def fsdp2(device: str, gpus: int, sizes: Sizes, config: str, workdir: Path) -> dict:
    """``configs/fsdp.yaml`` on every GPU (1 process on a CPU): two steps writing a sharded checkpoint after each,
    then the run resumed from the first: the policy's parameters are DTensor shards, each process wrote its
    shard, the resumed run starts at step 1 and its step equals the uninterrupted run's."""
    root = workdir / "fsdp2"
    devices = max(gpus, 1)
    args = ["fit", "--config", config, "--config", str(ROOT / "configs" / "fsdp.yaml"),
            *common_args(device, sizes, root, 2), "--trainer.devices", str(devices), "--trainer.limit_val_batches", "0",
            "--trainer.strategy.init_args.save_distributed_checkpoint", "true",
            "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1"]
    probe = json.dumps({"class_path": "gpu_checks.ShardingProbe", "init_args": {"path": str(root / "probe.json")}})
    run_cli([*args, f"--trainer.callbacks+={probe}"], root)
    full, first = only_run(root, "version_0"), json.loads((root / "probe.json").read_text())
    checkpoint = one((full / "checkpoints").glob("*step=1.ckpt"), "checkpoint of step 1")
    shards = sorted(p.name for p in checkpoint.glob("*.distcp"))
    run_cli([*args, "--ckpt_path", str(checkpoint), f"--trainer.callbacks+={probe}"], root)
    resumed, second = only_run(root, "version_1"), json.loads((root / "probe.json").read_text())
    want, got = dict(read_scalars(full)["train/loss"]), dict(read_scalars(resumed)["train/loss"])
    figures = {"processes": devices, "parameters": first["parameter_type"], "checkpoint_shards": len(shards),
               "resumed_at_step": second["global_step"], "loss_uninterrupted": want.get(1), "loss_resumed": got.get(1)}
    problems = [
        "the policy is not sharded" if not (first["sharded"] and second["sharded"]) else "",
        f"{len(shards)} shard files for {devices} processes" if len(shards) != devices else "",
        f"resumed at step {second['global_step']}, not 1" if second["global_step"] != 1 else "",
        f"the resumed run logged steps {sorted(got)}, not [1]" if sorted(got) != [1] else "",
    ]
    if not any(problems) and not math.isclose(got[1], want[1], rel_tol=RESUME_LOSS_RTOL, abs_tol=1e-8):
        problems.append(f"the resumed step's loss {got[1]} differs from the uninterrupted run's {want[1]}")
    if any(problems):
        raise CheckFailed("; ".join(p for p in problems if p), figures)
    return figures


class ShardingProbe(Callback):
    """Writes (rank 0, as training starts) whether the policy is sharded and the step the run starts at."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        from lightning_dsrl.sharding import is_sharded

        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({
                "sharded": is_sharded(pl_module.policy), "global_step": trainer.global_step,
                "parameter_type": type(next(pl_module.policy.parameters())).__name__}))


def common_args(device: str, sizes: Sizes, root: Path, steps: int) -> list[str]:
    return ["--trainer.accelerator", device, "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar",
            "false", "--trainer.logger.init_args.save_dir", str(root), *sizes.fit_args]


def run_cli(argv: list[str], root: Path) -> None:
    """``python -m lightning_dsrl *argv``, its output appended to ``root/cli.log``; its ``error:`` line (or last
    line) raised if it fails. ``gpu_checks`` is importable there (the probe callback)."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "cli.log"
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    with open(log, "a") as out:
        code = subprocess.run([sys.executable, "-m", "lightning_dsrl", *argv], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": path}).returncode
    if code != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        raise RuntimeError(f"exit status {code}: {(errors or lines or ['no output'])[-1].strip()} (log: {log})")


def only_run(root: Path, version: str) -> Path:
    return one(root.glob(f"*/{version}"), f"run directory {root}/*/{version}")  # <save_dir>/<logger name>/version_<n>


def one(paths, what: str) -> Path:
    found = list(paths)
    if len(found) != 1:
        raise RuntimeError(f"expected one {what}, found {len(found)}")
    return found[0]


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(one(run.glob("events.out.tfevents.*"), f"TensorBoard file in {run}")))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mean(points: list[tuple[int, float]]) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


# ---------------------------------------------------------------------------------- one training step, timed
def training_step(device: str, packed: bool, checkpointing: bool, sizes: Sizes, workdir: Path,
                  peak_tflops: float | None) -> dict:
    """``scripts/benchmark.py``'s step (``run_ours``) of a random-weights Llama: throughput, MFU, peak memory."""
    import benchmark
    import torch

    args = benchmark.parse_args(["--device", device, *sizes.step_args, "--warmup", "1", "--threads", "1",
                                 "--share-prompt-prefix" if packed else "--no-share-prompt-prefix",
                                 *(["--gradient-checkpointing"] if checkpointing else [])])
    args.model, args.gguf_file = benchmark.random_model_dir(sizes.model, str(workdir / f"random-{sizes.model}")), ""
    torch.set_num_threads(args.threads)
    ours = benchmark.run_ours(args)
    figures = {key: ours[key] for key in ("median_step_s", "generated_tokens_per_s", "trained_tokens_per_s",
                                          "update_tflops_per_s")}
    figures["mfu_bf16"] = ours["update_tflops_per_s"] / peak_tflops if peak_tflops else None
    figures["peak_memory_mb"] = ours["peak_gpu_mb"] if device == "cuda" else ours["peak_rss_mb"]
    bad = [key for key, value in figures.items() if value is not None and not (math.isfinite(value) and value > 0)]
    if bad:
        raise CheckFailed(f"not a finite positive figure: {', '.join(bad)}", figures)
    return figures
