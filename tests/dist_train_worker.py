"""Helper of ``tests/test_distributed.py``: a short DS-GRPO fit on the tiny model in one process of a
DDP or FSDP2 run (or alone), with rollouts that depend on the prompt only, so that every process
count sees the same samples for the same prompts.

    python tests/dist_train_worker.py OUT_DIR RANK PORT SPEC_JSON

``SPEC_JSON`` (see ``test_distributed.spec``): ``model_dir``; ``strategy`` (``single``, ``ddp`` or
``fsdp2``); ``world``; ``batch_size`` (prompts per step and process); ``steps``; ``engine``:
``scripted`` (completion ``j`` of a prompt is its first digit ``d`` repeated ``j + 1 + d % 2`` times: the
ranks, holding even and odd digits, hold different token counts; never touches the weights), ``seeded`` (``HFEngine`` on the policy, sampling each prompt from a
generator seeded by its tokens: the sharded generate path, with samples independent of the process
count) or ``hf`` (plain ``HFEngine``, drawing from the global generator); ``validate`` (validate the
5 held-out problems after the last step); ``lora``; ``checkpoint`` (save one every step in
``OUT_DIR/ckpts``); ``resume`` (a checkpoint to continue from).

Processes are started by the test with ``LOCAL_RANK`` set, so Lightning joins them instead of
launching its own. Writes ``OUT_DIR/rank<RANK>.json`` (logged metrics, the prompts this rank
generated for, the group of each completion) and, on rank 0, ``OUT_DIR/weights.pt`` (the full policy
after the run) and ``OUT_DIR/grads.pt`` (the full gradient of every trained parameter before each
optimizer step). Validation writes its files in ``OUT_DIR/eval``.
"""

from __future__ import annotations

import json
import os
import string
import sys
import zlib
from pathlib import Path

import torch


def main(out: Path, rank: int, port: int, spec: dict) -> None:
    world = spec["world"]
    if spec["strategy"] != "single":
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                          NODE_RANK="0", LOCAL_RANK=str(rank), GLOBAL_RANK=str(rank))
    from lightning import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.distributed.tensor import DTensor

    from lightning_dsrl import sharding
    from lightning_dsrl.char_tokenizer import build_char_tokenizer
    from lightning_dsrl.checkpoint_io import SafeCheckpointIO
    from lightning_dsrl.data.base import Task
    from lightning_dsrl.data.datamodule import PromptDataModule
    from lightning_dsrl.models import LoraSpec
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import DSGRPO
    from lightning_dsrl.rewards import RewardModule
    from lightning_dsrl.rollout import Generation, HFEngine, RolloutCallback, RolloutEngine
    from lightning_dsrl.types import PromptRecord, RewardResult

    seed_everything(0, verbose=False)  # as the configs do: the LoRA adapters start alike in every process
    tokenizer = build_char_tokenizer()

    class SumsTask(Task):
        def build(self, split):
            if split == "train":
                return [PromptRecord(prompt=f"{i}+{i + 3}=") for i in range(8)]
            return [PromptRecord(prompt=f"{i}*{i + 2}=") for i in range(5)]  # 5: the shares of 2 ranks differ

    class ScriptedEngine(RolloutEngine):
        def bind(self, module) -> None:
            pass

        def generate(self, prompt_ids, params) -> Generation:
            texts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
            rows = [tokenizer(t[0] * (j + 1 + int(t[0]) % 2))["input_ids"] for t in texts for j in range(params.n)]
            return Generation(token_ids=rows, finished=[True] * len(rows))

    class SeededEngine(HFEngine):
        def generate(self, prompt_ids, params) -> Generation:
            token_ids, finished = [], []
            for ids in prompt_ids:  # one prompt at a time: every rank holds as many prompts, so as many calls
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(zlib.crc32(str(ids).encode()))
                    part = super().generate([ids], params)
                token_ids += part.token_ids
                finished += part.finished
            return Generation(token_ids=token_ids, finished=finished)

    class CrcReward(RewardModule):
        """A verdict that depends on the text only and splits most groups: the parity of a checksum."""

        name = "dist_crc_test"
        is_verifier = True

        def score(self, record: PromptRecord, completion: str) -> RewardResult:
            ok = zlib.crc32((record.prompt + completion).encode()) % 2 == 0
            return RewardResult(float(ok), correct=ok)

    class Record(Callback):
        """The prompts rolled out, the groups of the last batch, and the full gradients before each step."""

        def __init__(self) -> None:
            self.prompts: list[str] = []
            self.groups: list[list[str]] = []
            self.grads: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            r = batch.rollout
            self.prompts += [rec.prompt for rec in batch.records]
            self.groups = [sorted({r.prompts[i] for i in (r.group_ids == g).nonzero().flatten().tolist()})
                           for g in r.group_ids.unique().tolist()]

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            grads = {}
            for name, p in pl_module.policy.named_parameters():  # every rank: a sharded gradient is gathered
                if p.grad is not None:
                    grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                    grads[name] = grad.detach().cpu().clone()
            self.grads.append(grads)

    engine = {"scripted": ScriptedEngine, "seeded": SeededEngine, "hf": HFEngine}[spec["engine"]]()
    record = Record()
    # HFEngine: a completion stops at any lowercase letter (a quarter of the vocabulary), so completions, and
    # the decode steps of the ranks' generate calls, differ in length (the scripted engine writes digits only)
    rollout = RolloutCallback(engine=engine, rewards=[CrcReward()], num_generations=3, max_new_tokens=6,
                              stop=list(string.ascii_lowercase), val_num_generations=4, reward_timeout_s=None)
    lora = LoraSpec(r=2, alpha=4.0, target_modules=["q_proj", "v_proj"]) if spec.get("lora") else None
    # token-mean: the loss is normalised by the token count over all ranks, which differs between the ranks here
    objective = DSGRPO(gamma_p=0.1, gamma_n=0.1, beta=0.1, loss_agg_mode="token-mean")
    module = RLModule(name_or_path=spec["model_dir"], objective=objective, lora=lora, learning_rate=1e-4,
                      micro_batch_size=2, max_grad_norm=None, train_self_bleu=False, log_samples_every_n_steps=0,
                      val_bootstrap=0)
    data = PromptDataModule(SumsTask(), batch_size=spec["batch_size"], val_batch_size=2, shuffle=False)
    callbacks: list[Callback] = [rollout, record]
    if spec.get("checkpoint"):
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpts", every_n_train_steps=1, save_top_k=-1))
    validate = spec.get("validate", False)
    trainer = Trainer(accelerator="cpu", devices=world, default_root_dir=out,
                      strategy="auto" if spec["strategy"] == "single" else spec["strategy"],
                      max_steps=spec["steps"], logger=False, enable_checkpointing=bool(spec.get("checkpoint")),
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=None if validate else 0, check_val_every_n_epoch=None,
                      val_check_interval=spec["steps"], plugins=[SafeCheckpointIO()], callbacks=callbacks)
    trainer.fit(module, data, ckpt_path=spec.get("resume"))
    weights = {name: t.detach().cpu().clone() for name, t in sharding.full_weights(module.policy)}
    result = {"metrics": {k: float(v) for k, v in trainer.logged_metrics.items()}, "prompts": record.prompts,
              "groups": record.groups, "sharded": sharding.is_sharded(module.policy)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:
        torch.save(weights, out / "weights.pt")
        torch.save(record.grads, out / "grads.pt")


if __name__ == "__main__":
    out, rank, port, spec = sys.argv[1:]
    main(Path(out), int(rank), int(port), json.loads(spec))
