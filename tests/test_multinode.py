"""The README's multi-node launches, simulated on one machine: two "nodes" of one CPU process each
(gloo), started the way a cluster starts them, run the default config for a few steps with a
validation inside. Both must finish, leave one run directory with the evaluation written once, and
end with the same weights.

- torchrun: ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank {0,1} --master_addr 127.0.0.1 ...``
  (the README's command, with the CPU instead of 8 GPUs per node);
- SLURM: ``python -m lightning_dsrl fit`` with the variables ``srun`` sets for each task
  (``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_NODEID``, ...) written by hand, which Lightning's
  ``SLURMEnvironment`` reads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = Path(__file__).resolve().parent / "user_code"
STEPS, VALIDATE_EVERY = 4, 2

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_args(tmp_path: Path) -> list[str]:
    """The default config, smaller: 2 prompts x 4 samples per process and step, a validation of 6 held-out
    problems every 2 steps, 2 nodes of 1 process."""
    return [
        "fit", "--config", str(ROOT / "configs" / "ds_grpo.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
        "--trainer.strategy", "ddp", "--trainer.max_steps", str(STEPS),
        "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", str(VALIDATE_EVERY),
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "2", "--rollout.num_generations", "4", "--rollout.val_num_generations", "4",
        "--data.task.init_args.num_val", "6",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=my_callbacks.SaveWeights",
        "--trainer.callbacks.directory", str(tmp_path / "weights"),
    ]


def launch(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(USER_CODE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=cwd, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd, extra in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])  # a hang fails the test instead of CI
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {i} failed:\n{out[-4000:]}"


def check_run(tmp_path: Path) -> None:
    runs = sorted((tmp_path / "runs" / "ds_grpo").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # one run directory, made by global rank 0
    run = runs[0]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    history = [json.loads(line) for line in (run / "eval" / "history.jsonl").read_text().splitlines()]
    assert [h["settings"]["global_step"] for h in history] == [VALIDATE_EVERY, STEPS]  # each validation once
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_problems"] == 6  # every held-out problem once, from both nodes
    samples = (run / "eval" / "samples.jsonl").read_text().splitlines()
    assert len({json.loads(row)["prompt"] for row in samples}) == len(samples) == 6
    weights = [torch.load(tmp_path / "weights" / f"rank{r}.pt") for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    initial = AutoModelForCausalLM.from_pretrained(ROOT / "lightning_dsrl" / "assets" / "countdown-lm").state_dict()
    assert any(not torch.equal(initial[name], weights[0][name]) for name in weights[0])  # it trained


def test_two_nodes_with_torchrun(tmp_path):
    port = str(free_port())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", port]
    launch([(torchrun + ["--node_rank", str(node), "-m", "lightning_dsrl"] + fit_args(tmp_path), {})
            for node in range(2)], cwd=tmp_path)
    check_run(tmp_path)


def test_two_nodes_under_slurm_variables(tmp_path):
    port = str(free_port())
    slurm = {"SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "dsrl-test",
             "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
             "SLURM_LOCALID": "0"}
    launch([([sys.executable, "-m", "lightning_dsrl"] + fit_args(tmp_path),
             {**slurm, "SLURM_PROCID": str(node), "SLURM_NODEID": str(node)}) for node in range(2)], cwd=tmp_path)
    check_run(tmp_path)
