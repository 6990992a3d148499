"""Data parallelism is exact: two CPU processes over gloo (DDP, and FSDP2 through ``FSDP2Strategy``)
take the steps of one process that trained on both ranks' prompts, gradient for gradient, each rolling
out only its own shard; they validate the held-out problems together, each problem counted once, and
write the eval files once; FSDP2 checkpoints resume exactly and refuse another model's shapes.

The worker (``tests/dist_train_worker.py``) gives each prompt the same samples whatever the process
count (a scripted engine, or ``HFEngine`` on the sharded policy seeded per prompt), so the only
difference left is the order of float additions (gradients reduced over ranks), hence the tolerances.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_train_worker.py")
TIMEOUT_S = 600  # a run that hangs (mismatched collectives) fails after this instead of hanging CI
# mean over samples, or reduced over all ranks' samples: equal to one process holding every sample
EXACT = ["train/loss", "train/policy_loss", "train/grad_norm", "train/reward_mean", "train/reward_std",
         "train/correct_rate", "train/completion_length", "train/advantage_abs_mean", "train/lr", "passk/pass@1",
         "passk/pass@2", "passk/pass@3", "train/zero_signal_groups"]
TRAIN = [f"{i}+{i + 3}=" for i in range(8)]
HELD_OUT = [f"{i}*{i + 2}=" for i in range(5)]
# some of the validation metrics of 5 problems x 4 samples (+ a greedy one), each over all ranks' problems
VAL = ["val/reward_mean", "val/correct_rate", "val/pass@1", "val/pass@4", "val/mean@4", "val/greedy_accuracy",
       "val/distinct_1", "val/self_bleu", "val/distinct_correct", "val/entropy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec(model_dir: str, strategy: str, **options) -> dict:
    """A worker run: 2 steps of 4 prompts (2 per rank on two processes), validating after the last."""
    world = 1 if strategy == "single" else 2
    return {"model_dir": model_dir, "strategy": strategy, "world": world, "batch_size": 4 // world, "steps": 2,
            "engine": "scripted", "validate": True, **options}


def start_ranks(out: Path, argv_of_rank, world: int, what: str, timeout_s: float = TIMEOUT_S
                ) -> list[tuple[int, str]]:
    """Start ``world`` worker processes (``argv_of_rank(rank)``, stderr in ``out/rank<r>.err``) and wait for all;
    ``(exit status, stderr)`` of each. Processes still running after ``timeout_s`` are killed and fail the test."""
    procs = []
    for rank in range(world):
        with open(out / f"rank{rank}.err", "w") as err:  # a file, not a pipe: a full pipe would block the rank
            procs.append(subprocess.Popen([sys.executable, *argv_of_rank(rank)], stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish in {timeout_s:.0f} s (a hang); stderr of the ranks:\n"
                    + "\n".join((out / f"rank{r}.err").read_text()[-1500:] for r in range(world)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(proc.returncode, (out / f"rank{r}.err").read_text()) for r, proc in enumerate(procs)]


def launch(out: Path, job: dict) -> list[tuple[int, str]]:
    """One ``dist_train_worker.py`` per rank of ``job``; ``(exit status, stderr)`` of each."""
    out.mkdir(parents=True)
    port = str(free_port())
    return start_ranks(out, lambda rank: [str(WORKER), str(out), str(rank), port, json.dumps(job)], job["world"],
                       f"the {job['strategy']} run")

def run(out: Path, job: dict) -> list[dict]:
    """The ranks' results of a run that must succeed."""
    for code, err in launch(out, job):
        assert code == 0, err[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(job["world"])]


def grads(out: Path) -> list[dict[str, torch.Tensor]]:
    return torch.load(out / "grads.pt", weights_only=True)


def assert_same_grads(got: list[dict], want: list[dict]) -> None:
    """Equal per parameter at every step to rtol 1e-5 (atol: 1e-5 of the parameter's largest entry, for
    entries that cancel to ~0); the steps carry signal and the second differs from the first."""
    assert len(got) == len(want) >= 2
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys() and len(w) > 0, step
        assert sum(float(t.abs().sum()) for t in w.values()) > 0, step
        for name, tensor in w.items():
            torch.testing.assert_close(g[name], tensor, rtol=1e-5, atol=1e-5 * float(tensor.abs().max()),
                                       msg=f"step {step + 1}: {name}")
    assert any(not torch.allclose(want[0][n], want[1][n]) for n in want[0])


def eval_files(out: Path) -> tuple[dict, list[dict], list[str]]:
    """metrics.json, the samples.jsonl rows and the history.jsonl lines (one per evaluation written)."""
    directory = out / "eval"
    rows = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines()]
    return json.loads((directory / "metrics.json").read_text()), rows, (directory / "history.jsonl").read_text(
        ).splitlines()


def assert_same_validation(ranks: list[dict], out: Path, one: dict, one_out: Path) -> None:
    """The eval files written once, over the 5 problems each once, and the same values as one process."""
    metrics, rows, history = eval_files(out)
    assert len(history) == 1  # one validation, written by one process
    assert metrics["num_problems"] == 5 and [row["prompt"] for row in rows] == HELD_OUT
    one_metrics, one_rows, _ = eval_files(one_out)
    assert metrics["passk"]["value"] == pytest.approx(one_metrics["passk"]["value"], rel=1e-6)
    for row, want in zip(rows, one_rows):
        for key in ("completions", "rewards", "correct", "greedy"):
            assert row[key] == want[key], (row["prompt"], key)
    names = {name for name in one["metrics"] if name.startswith("val/")}
    assert names >= set(VAL)
    for rank in ranks:
        assert {name for name in rank["metrics"] if name.startswith("val/")} == names
        for name in names:
            assert rank["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5), name
    assert 0 < one["metrics"]["val/correct_rate"] < 1


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "single"
    return run(out, spec(tiny_model_dir, "single"))[0], out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process(strategy, single, tiny_model_dir, tmp_path):
    out = tmp_path / strategy
    ranks = run(out, spec(tiny_model_dir, strategy))
    one, one_out = single
    # the sampler hands rank r prompts r, r + 2, ...: disjoint shards whose union is the one process's batches
    assert ranks[0]["prompts"] == TRAIN[0::2] and ranks[1]["prompts"] == TRAIN[1::2]
    assert one["prompts"] == TRAIN
    # every group holds the completions of one prompt of the rank's own shard
    for rank in ranks:
        assert rank["groups"] == [[p] for p in rank["prompts"][-2:]]
    assert ranks[0]["sharded"] is (strategy == "fsdp2")
    assert_same_grads(grads(out), grads(one_out))
    # every rank logs the same reduced values, equal to the one process's
    for name in EXACT:
        assert ranks[0]["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5, abs=1e-7), name
        assert ranks[1]["metrics"][name] == ranks[0]["metrics"][name], name
    assert one["metrics"]["train/grad_norm"] > 0 and one["metrics"]["train/reward_std"] > 0
    # both applied their steps (the weights after AdamW are no test of exactness: its first step is about
    # lr * sign(g), and entries with |g| near its eps amplify rounding differences)
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    for path in (out, one_out):
        weights = torch.load(path / "weights.pt")
        assert weights.keys() == initial.keys() | {"lm_head.weight"}
        assert float((weights["model.norm.weight"] - initial["model.norm.weight"]).abs().mean()) > 5e-5  # lr: 1e-4
    # held-out problems 0, 2, 4 on rank 0 and 1, 3 (+ 1 again, not counted) on rank 1
    assert_same_validation(ranks, out, one, one_out)


def test_unknown_strategy_is_one_config_error(tmp_path, tiny_model_dir, capsys):
    from lightning_dsrl.__main__ import cli_main

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(root / "configs/ds_grpo.yaml"), "--model.name_or_path", tiny_model_dir,
                  "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.strategy", "fsdp3"])
    assert info.value.code == 2
    assert "error: trainer.strategy='fsdp3' is not a strategy Lightning knows; use one of" in capsys.readouterr().err


@pytest.mark.slow
def test_generation_on_the_sharded_policy_equals_one_process(tiny_model_dir, tmp_path):
    # HFEngine generating with the FSDP2-sharded policy itself (every decode step gathers the shards)
    one = run(tmp_path / "single", spec(tiny_model_dir, "single", engine="seeded"))[0]
    ranks = run(tmp_path / "fsdp2", spec(tiny_model_dir, "fsdp2", engine="seeded"))
    assert ranks[0]["sharded"] and ranks[0]["prompts"] == TRAIN[0::2]
    for name in EXACT:
        assert ranks[0]["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5, abs=1e-7), name
    assert_same_grads(grads(tmp_path / "fsdp2"), grads(tmp_path / "single"))
    assert_same_validation(ranks, tmp_path / "fsdp2", one, tmp_path / "single")
    # the model's own samples, some stopped early: the ranks' decode loops run different numbers of steps
    lengths = {len(c) for row in eval_files(tmp_path / "single")[1] for c in row["completions"]}
    assert len(lengths) > 2 and max(lengths) == 6


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_exactly_and_refuses_another_shape(tiny_model_dir, wider_model_dir, tmp_path):
    # 3 steps (rollouts drawn from each rank's global generator) with a checkpoint after every step, then
    # the run resumed from step 1 (mid-epoch: 2 batches per epoch) for steps 2 and 3; both validate at the end
    full = spec(tiny_model_dir, "fsdp2", engine="hf", steps=3, checkpoint=True)
    run(tmp_path / "full", full)
    ckpt = tmp_path / "full" / "ckpts" / "epoch=0-step=1.ckpt"
    state = torch.load(ckpt, weights_only=True)  # plain tensors and values: loads safely
    assert {k.split(".")[0] for k in state["state_dict"]} == {"policy"}  # whole tensors; no reference model
    assert state["state_dict"]["policy.model.embed_tokens.weight"].shape[1] == 32
    assert len(state["resume_state"]["rng"]) == 2  # each rank's generators
    resumed = run(tmp_path / "resumed", {**full, "resume": str(ckpt), "checkpoint": False})
    assert_same_grads(grads(tmp_path / "resumed"), grads(tmp_path / "full")[1:])
    weights, want = torch.load(tmp_path / "resumed" / "weights.pt"), torch.load(tmp_path / "full" / "weights.pt")
    for name, tensor in want.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    # validation after the resume: files written once, the same values as the uninterrupted run's
    metrics, rows, history = eval_files(tmp_path / "resumed")
    assert len(history) == 1 and metrics["num_problems"] == 5 and [r["prompt"] for r in rows] == HELD_OUT
    assert metrics["passk"] == eval_files(tmp_path / "full")[0]["passk"]
    full_rank = json.loads((tmp_path / "full" / "rank0.json").read_text())
    for name in VAL:
        assert resumed[0]["metrics"][name] == pytest.approx(full_rank["metrics"][name], rel=1e-6), name

    results = launch(tmp_path / "wider-run", {**full, "model_dir": wider_model_dir, "resume": str(ckpt), "checkpoint": False})
    for code, err in results:  # both ranks refuse it before loading anything, neither hangs
        assert code != 0
        assert re.search(r"ConfigError: ckpt_path: the checkpoint's \S+ has shape \[\d+, 32\] but the model built "
                         r"from .* has \[\d+, 48\]", err), err[-3000:]


@pytest.mark.slow
def test_lora_under_fsdp2_equals_one_process(tiny_model_dir, tmp_path):
    one = run(tmp_path / "single", spec(tiny_model_dir, "single", lora=True))[0]
    ranks = run(tmp_path / "fsdp2", spec(tiny_model_dir, "fsdp2", lora=True, checkpoint=True))
    assert ranks[0]["sharded"]
    got, want = grads(tmp_path / "fsdp2"), grads(tmp_path / "single")
    assert all(".lora_" in name for step in want for name in step)  # only the adapters train
    assert_same_grads(got, want)
    weights = torch.load(tmp_path / "fsdp2" / "weights.pt")
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    base = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(weights[base], initial["model.layers.0.self_attn.q_proj.weight"])  # frozen
    assert_same_validation(ranks, tmp_path / "fsdp2", one, tmp_path / "single")
    state = torch.load(tmp_path / "fsdp2" / "ckpts" / "epoch=0-step=2.ckpt", weights_only=True)
    assert state["lora"] is not None and state["state_dict"] and all(".lora_" in k for k in state["state_dict"])


def test_sharded_generation_does_not_hang_when_one_rank_has_only_one_token_prompts(tiny_model_dir, tmp_path):
    """The prefill forward is a collective under FSDP2: rank 0 (a one-token prompt, nothing to prefill) must
    still join rank 1's prefill (a four-token prompt), or rank 1 waits for it until the timeout."""
    worker, port = Path(__file__).with_name("prefill_sync_worker.py"), str(free_port())
    results = start_ranks(tmp_path, lambda rank: [str(worker), str(tmp_path), tiny_model_dir, str(rank), port], 2,
                          "the 2-process FSDP2 step (mismatched prefill collectives?)", timeout_s=180)
    for code, err in results:
        assert code == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["prompt"] for r in ranks] == [["7"], ["1+2="]] and all(r["sharded"] for r in ranks)
    assert all(len(r["completion_tokens"]) == 2 and min(r["completion_tokens"]) >= 1 for r in ranks)
