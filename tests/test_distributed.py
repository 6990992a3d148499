"""Data parallelism is exact: two CPU processes over gloo (DDP, and FSDP2 through ``FSDP2Strategy``)
take one DS-GRPO step on the tiny model and end with the parameters of one process that trained on
both ranks' prompts, log the same metrics, and each rolls out only its own shard of the prompts.

The engine and the reward are scripted (``tests/dist_train_worker.py``), so the rollouts of a
prompt are the same whatever the process count; the only difference left is the order of float
additions (gradients reduced over ranks), hence the tolerances.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_train_worker.py")
# mean over samples, or reduced over all ranks' samples: equal to one process holding every sample
EXACT = ["train/loss", "train/policy_loss", "train/grad_norm", "train/reward_mean", "train/reward_std",
         "train/correct_rate", "train/completion_length", "train/advantage_abs_mean", "train/lr", "passk/pass@1",
         "passk/pass@2", "passk/pass@3", "train/zero_signal_groups"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, model_dir: str, strategy: str, world: int, batch_size: int) -> list[dict]:
    out.mkdir()
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), model_dir, strategy, str(world), str(rank),
                               port, str(batch_size)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for rank in range(world)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "single"
    return run(out, tiny_model_dir, "single", 1, 4)[0], torch.load(out / "weights.pt")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process(strategy, single, tiny_model_dir, tmp_path):
    ranks = run(tmp_path / strategy, tiny_model_dir, strategy, 2, 2)
    one, one_weights = single
    # the sampler hands rank r prompts r, r + 2, ...: disjoint shards whose union is the one process's batch
    assert ranks[0]["prompts"] == ["0+3=", "2+5="] and ranks[1]["prompts"] == ["1+4=", "3+6="]
    assert sorted(ranks[0]["prompts"] + ranks[1]["prompts"]) == sorted(one["prompts"])
    # every group holds the completions of one prompt of the rank's own shard
    for rank in ranks:
        assert rank["groups"] == [[p] for p in rank["prompts"]]
    assert ranks[0]["sharded"] is (strategy == "fsdp2")
    # every rank logs the same reduced values, equal to the one process's
    for name in EXACT:
        assert ranks[0]["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5, abs=1e-7), name
        assert ranks[1]["metrics"][name] == ranks[0]["metrics"][name], name
    assert one["metrics"]["train/grad_norm"] > 0 and one["metrics"]["train/reward_std"] > 0
    weights = torch.load(tmp_path / strategy / "weights.pt")
    assert weights.keys() == one_weights.keys()
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    # the step moved the weights far more than the tolerance (AdamW's first step: about lr = 1e-2 each)
    assert float((one_weights["model.norm.weight"] - initial["model.norm.weight"]).abs().min()) > 1e-3
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, one_weights[name], rtol=1e-4, atol=2e-5, msg=name)


def test_unknown_strategy_is_one_config_error(tmp_path, tiny_model_dir, capsys):
    from lightning_dsrl.__main__ import cli_main

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(root / "configs/ds_grpo.yaml"), "--model.name_or_path", tiny_model_dir,
                  "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.strategy", "fsdp3"])
    assert info.value.code == 2
    assert "error: trainer.strategy='fsdp3' is not a strategy Lightning knows; use one of" in capsys.readouterr().err
