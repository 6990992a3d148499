"""Helper of ``tests/test_distributed.py``: one optimizer step of DS-GRPO on the tiny model, in one
process of a DDP or FSDP2 run (or alone), with a scripted engine and reward so that every process
count sees exactly the same rollouts for the same prompts.

    python tests/dist_train_worker.py OUT_DIR MODEL_DIR STRATEGY WORLD RANK PORT BATCH_SIZE

``STRATEGY`` is ``single``, ``ddp`` or ``fsdp2``. Processes are started by the test with
``LOCAL_RANK`` set, so Lightning joins them instead of launching its own. Writes
``OUT_DIR/rank<RANK>.json`` (logged metrics, the prompts this rank generated for, the group of
each completion) and, on rank 0, ``OUT_DIR/weights.pt`` (the full policy after the step).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(out: Path, model_dir: str, strategy: str, world: int, rank: int, port: int, batch_size: int) -> None:
    if strategy != "single":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          NODE_RANK="0", LOCAL_RANK=str(rank), GLOBAL_RANK=str(rank))
    from lightning import Callback, Trainer

    from lightning_dsrl import sharding
    from lightning_dsrl.char_tokenizer import build_char_tokenizer
    from lightning_dsrl.data.base import Task
    from lightning_dsrl.data.datamodule import PromptDataModule
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import DSGRPO
    from lightning_dsrl.rewards import RewardModule
    from lightning_dsrl.rollout import Generation, RolloutCallback, RolloutEngine
    from lightning_dsrl.types import PromptRecord, RewardResult

    tokenizer = build_char_tokenizer()

    class SumsTask(Task):
        def build(self, split):
            return [PromptRecord(prompt=f"{i}+{i + 3}=") for i in range(8 if split == "train" else 2)]

    class ScriptedEngine(RolloutEngine):
        """Completion j of a prompt: the prompt's first digit repeated j + 1 times (lengths 1..G)."""

        def __init__(self) -> None:
            self.prompts: list[str] = []

        def bind(self, module) -> None:
            pass

        def generate(self, prompt_ids, params) -> Generation:
            texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            self.prompts += texts
            rows = [tokenizer(t[0] * (j + 1))["input_ids"] for t in texts for j in range(params.n)]
            return Generation(token_ids=rows, finished=[True] * len(rows))

    class ParityReward(RewardModule):
        """Correct when the completion's length has the parity of the prompt's first digit."""

        name = "dist_parity_test"
        is_verifier = True

        def score(self, record: PromptRecord, completion: str) -> RewardResult:
            ok = len(completion) % 2 == int(record.prompt[0]) % 2
            return RewardResult(float(ok), correct=ok)

    class Groups(Callback):
        def __init__(self) -> None:
            self.groups: list[list[str]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            r = batch.rollout
            self.groups = [sorted({r.prompts[i] for i in (r.group_ids == g).nonzero().flatten().tolist()})
                           for g in r.group_ids.unique().tolist()]

    engine, groups = ScriptedEngine(), Groups()
    rollout = RolloutCallback(engine=engine, rewards=[ParityReward()], num_generations=3, reward_timeout_s=None)
    module = RLModule(name_or_path=model_dir, objective=DSGRPO(gamma_p=0.1, gamma_n=0.1, beta=0.1),
                      learning_rate=1e-2, micro_batch_size=2, train_self_bleu=False, log_samples_every_n_steps=0)
    data = PromptDataModule(SumsTask(), batch_size=batch_size, shuffle=False)
    trainer = Trainer(accelerator="cpu", devices=world, strategy="auto" if strategy == "single" else strategy,
                      max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      callbacks=[rollout, groups])
    trainer.fit(module, data)
    weights = {name: t.detach().cpu().clone() for name, t in sharding.full_weights(module.policy)}
    metrics = {k: float(v) for k, v in trainer.logged_metrics.items()}
    result = {"metrics": metrics, "prompts": engine.prompts, "groups": groups.groups,
              "sharded": sharding.is_sharded(module.policy)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:
        torch.save(weights, out / "weights.pt")


if __name__ == "__main__":
    out, model_dir, strategy, world, rank, port, batch_size = sys.argv[1:]
    main(Path(out), model_dir, strategy, int(world), int(rank), int(port), int(batch_size))
