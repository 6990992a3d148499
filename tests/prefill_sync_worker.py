"""Helper of ``tests/test_distributed.py``: one process of a 2-process FSDP2 step whose ``HFEngine`` generates
with the sharded policy itself, where rank 0's prompt is one token long and rank 1's is four. The prefill
forward (the prompt but its last token) is a collective on a sharded model: a rank with nothing to prefill
must still take part, or the other rank waits for it forever.

    python tests/prefill_sync_worker.py OUT_DIR MODEL_DIR RANK PORT

Writes ``OUT_DIR/rank<RANK>.json``: the prompt this rank rolled out and its completions' token counts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(out: Path, model_dir: str, rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank), GLOBAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lightning import Callback, Trainer

    from lightning_dsrl import sharding
    from lightning_dsrl.data.base import Task
    from lightning_dsrl.data.datamodule import PromptDataModule
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import GRPO
    from lightning_dsrl.rewards import RewardModule
    from lightning_dsrl.rollout import HFEngine, RolloutCallback
    from lightning_dsrl.types import PromptRecord, RewardResult

    class Prompts(Task):
        def build(self, split):  # without shuffling, rank r rolls out prompt r
            return [PromptRecord(prompt="7"), PromptRecord(prompt="1+2=")]

    class EvenLength(RewardModule):
        name = "prefill_sync_even_length"
        is_verifier = True

        def score(self, record: PromptRecord, completion: str) -> RewardResult:
            return RewardResult(float(len(completion) % 2 == 0), correct=len(completion) % 2 == 0)

    seen = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.update(prompt=[r.prompt for r in batch.records], sharded=sharding.is_sharded(pl_module.policy),
                        completion_tokens=batch.rollout.completion_mask.sum(-1).tolist())

    rollout = RolloutCallback(engine=HFEngine(), rewards=[EvenLength()], num_generations=2, max_new_tokens=4,
                              reward_timeout_s=None)
    module = RLModule(name_or_path=model_dir, objective=GRPO(beta=0.0), learning_rate=1e-3, micro_batch_size=2,
                      train_self_bleu=False, log_samples_every_n_steps=0)
    data = PromptDataModule(Prompts(), batch_size=1, shuffle=False)
    torch.manual_seed(rank)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="fsdp2", max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[rollout, Record()])
    trainer.fit(module, data)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    out, model_dir, rank, port = sys.argv[1:]
    main(Path(out), model_dir, int(rank), int(port))
