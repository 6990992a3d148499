"""Helper of ``tests/test_weight_sync.py``: one process of a 2-process run that trains LoRA adapters on a sharded
policy (FSDP2) and generates with ``HFEngine(weights: copy)``, whose weights come from the shards, merged, at
the start and after the step; the probe check (``rollout.sync_check: raise``) runs after the step's sync.

    python tests/lora_sync_worker.py OUT_DIR MODEL_DIR STRATEGY RANK PORT    # STRATEGY: fsdp2 (FSDP1 needs a GPU)

Writes ``OUT_DIR/rank<RANK>.json``: the logged probe difference, whether the policy is sharded, the largest
adapter value, and the largest difference between the engine's weights and peft's own merge of the gathered
adapted model (built unsharded from the gathered weights, independent of the sync's merge).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(out: Path, model_dir: str, strategy: str, rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank), GLOBAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lightning import Trainer

    from lightning_dsrl import sharding
    from lightning_dsrl.data.base import Task
    from lightning_dsrl.data.datamodule import PromptDataModule
    from lightning_dsrl.models import LoraSpec, ModelSpec, apply_lora, load_model
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import GRPO
    from lightning_dsrl.rewards import RewardModule
    from lightning_dsrl.rollout import HFEngine, RolloutCallback
    from lightning_dsrl.types import PromptRecord, RewardResult

    class SumsTask(Task):
        def build(self, split):
            return [PromptRecord(prompt=f"{i}+{i + 3}=") for i in range(8 if split == "train" else 2)]

    class EvenLength(RewardModule):
        """Correct when the completion has an even length: a reward spread for the untrained model."""

        name = "lora_sync_even_length"
        is_verifier = True

        def score(self, record: PromptRecord, completion: str) -> RewardResult:
            return RewardResult(float(len(completion) % 2 == 0), correct=len(completion) % 2 == 0)

    lora = LoraSpec(r=4, alpha=8)
    engine = HFEngine(weights="copy")
    rollout = RolloutCallback(engine=engine, rewards=[EvenLength()], num_generations=4, max_new_tokens=6,
                              reward_timeout_s=None)
    module = RLModule(name_or_path=model_dir, objective=GRPO(beta=0.0), lora=lora, learning_rate=5e-2,
                      micro_batch_size=4, train_self_bleu=False, log_samples_every_n_steps=0)
    data = PromptDataModule(SumsTask(), batch_size=2, shuffle=False)
    torch.manual_seed(rank)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[rollout])
    trainer.fit(module, data)
    gathered = {name: t.detach().clone() for name, t in sharding.full_weights(module.policy)}
    reference = apply_lora(load_model(ModelSpec(model_dir)), lora)
    reference.load_state_dict(gathered)
    expected = reference.merge_and_unload().state_dict()
    own = engine.model.state_dict()
    result = {
        "sync_logprob_diff": float(trainer.logged_metrics["rollout/sync_logprob_diff"]),
        "sharded": sharding.is_sharded(module.policy),
        "lora_b_max": max(float(t.abs().max()) for n, t in gathered.items() if "lora_B" in n),
        "names_match": sorted(own) == sorted(expected),
        "engine_vs_peft_merge": max(float((own[n] - expected[n]).abs().max()) for n in expected if n in own),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    out, model_dir, strategy, rank, port = sys.argv[1:]
    main(Path(out), model_dir, strategy, int(rank), int(port))
