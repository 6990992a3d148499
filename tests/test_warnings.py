"""A run prints no warning: none of ours, and no library deprecating how we call it.

A short fit runs as a user runs it (its own process, Python's default warning filters, the
filters ``cli.py`` installs) and must print no warning at all. The forwards that go through the
KV cache, with and without LoRA, turn every warning into an error. Filtered because the call is
not ours: Lightning's pytree helper building torch's deprecated ``LeafSpec`` (``cli.py``) and
peft's read of a deprecated transformers property (``apply_lora``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import lightning_dsrl.logprobs as logprobs
from lightning_dsrl.data import CountdownTask
from lightning_dsrl.models import LoraSpec, cache_kwargs
from lightning_dsrl.module import RLModule
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptBatch

BASE = str(Path(__file__).resolve().parents[1] / "configs" / "ds_grpo.yaml")


def test_a_short_fit_prints_no_warning(tmp_path, tiny_model_dir):
    proc = subprocess.run([
        sys.executable, "-m", "lightning_dsrl", "fit", "--config", BASE,
        "--model.name_or_path", tiny_model_dir,
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2",  # validation sampling too
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "3",
        "--data.task.init_args.num_train", "30",
        "--data.task.init_args.num_val", "3",
        "--rollout.num_generations", "4",
        "--rollout.val_num_generations", "2",
        "--rollout.max_new_tokens", "8",
    ], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout + proc.stderr
    assert re.findall(r".*\w+Warning: .*", printed) == []


@pytest.mark.parametrize("lora", [None, LoraSpec(r=2)], ids=["full", "lora"])
def test_the_kv_cache_forwards_warn_nothing(tiny_model_dir, lora, monkeypatch):
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=3, max_new_tokens=6)
    records = CountdownTask(num_train=2, num_val=1, seed=0).records("train")
    shared = []
    monkeypatch.setattr(logprobs, "_shared_kv_cache", lambda *a, _f=logprobs._shared_kv_cache: shared.append(1) or _f(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = RLModule(name_or_path=tiny_model_dir, lora=lora)
        module.configure_model()  # LoRA: peft's get_peft_model
        rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
        logprobs.completion_logits(module.policy, rollout, max_packed_tokens=0)  # the shared KV-cache path
    assert shared == [1]


def test_the_cache_keyword_follows_the_models_forward():
    class OldForward(torch.nn.Module):  # transformers < 5.24 and remote code: only past_key_values
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return input_ids

    class Wrapper(torch.nn.Module):  # FSDP1-like: passes every keyword through to .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    cache = object()
    assert cache_kwargs(Wrapper(OldForward()), cache) == {"past_key_values": cache, "use_cache": True}
