"""Numerical guards and degenerate rollouts: non-finite steps are skipped and stop the run after N,
zero-signal steps are skipped, log-probs are float32 under bf16 weights, advantages never divide by
zero, and empty / full-budget completions and over-long prompts go through."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lightning_dsrl import functional as F
from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.data import CountdownTask, PromptDataModule
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.logprobs import completion_logits
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO
from lightning_dsrl.rewards import CountdownReward
from lightning_dsrl.rollout import RolloutCallback
from lightning_dsrl.types import PromptRecord, Rollout, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = Path(__file__).resolve().parent / "user_code"


@pytest.fixture
def user_code(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_CODE))
    import my_reward
    import nan_objective

    return my_reward, nan_objective


def fit(tmp_path, model_dir, objective, rewards, steps: int = 3, **module_kw) -> tuple[RLModule, Trainer]:
    """A tiny run built in Python: 2 prompts x 2 samples per step, TensorBoard logs in ``tmp_path``."""
    module = RLModule(name_or_path=model_dir, objective=objective, learning_rate=1e-2, **module_kw)
    data = PromptDataModule(CountdownTask(num_train=8, num_val=2, max_number=6, max_target=30), batch_size=2)
    callback = RolloutCallback(rewards=rewards, num_generations=2, max_new_tokens=6)
    trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, callbacks=[callback],
                      logger=TensorBoardLogger(str(tmp_path), name="run"), log_every_n_steps=1,
                      num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return module, trainer


def scalars(root: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(next(root.glob("**/events.out.tfevents.*"))))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def unchanged(module: RLModule, model_dir: str) -> bool:
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return all(torch.equal(initial[k], v) for k, v in module.policy.state_dict().items())


# ---------------------------------------------------------------------------- non-finite steps
def test_non_finite_steps_are_skipped_without_touching_the_weights(tmp_path, tiny_model_dir, user_code):
    _, nan_objective = user_code
    # a finite loss with a NaN gradient, every step
    module, trainer = fit(tmp_path, tiny_model_dir, nan_objective.NaNObjective(where="grad", beta=0.0),
                          [CountdownReward()], steps=3, max_nonfinite_steps=10)
    assert trainer.global_step == 3  # skipped steps still count, so max_steps ends the run
    assert module.counters.skipped_steps == 3 and unchanged(module, tiny_model_dir)
    assert not trainer.optimizers[0].state  # AdamW never stepped: no moments were created
    assert scalars(tmp_path, "train/skipped_steps") == [1.0, 2.0, 3.0]


def test_the_run_recovers_after_one_non_finite_step(tmp_path, tiny_model_dir, user_code):
    _, nan_objective = user_code
    # a NaN loss on the first step only
    module, trainer = fit(tmp_path, tiny_model_dir, nan_objective.NaNObjective(where="loss", nan_calls=1, beta=0.0),
                          [CountdownReward()], steps=3, max_nonfinite_steps=2)
    assert module.counters.skipped_steps == 1 and module.counters.nonfinite_in_a_row == 0
    assert trainer.optimizers[0].state and not unchanged(module, tiny_model_dir)  # the later steps were taken
    assert scalars(tmp_path, "train/skipped_steps") == [1.0, 1.0, 1.0]


def test_the_cli_stops_after_n_non_finite_steps_with_one_line(tmp_path, tiny_model_dir, user_code, capsys):
    argv = [
        "fit", "--config", str(ROOT / "configs" / "ds_grpo.yaml"), "--model.name_or_path", tiny_model_dir,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "2", "--data.task.init_args.num_train", "8", "--data.task.init_args.num_val", "2",
        "--data.task.init_args.max_number", "6", "--data.task.init_args.max_target", "30",
        "--rollout.num_generations", "2", "--rollout.max_new_tokens", "6", "--trainer.max_steps", "10",
        "--model.objective", "nan_objective.NaNObjective", "--model.max_nonfinite_steps", "2",
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert ("error: 2 optimizer steps in a row had a non-finite loss or gradient; stopping. Lower "
            "model.learning_rate, check the reward scale, or use float32 (model.max_nonfinite_steps=2)") in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- zero signal
def test_a_batch_without_signal_skips_the_step(tmp_path, tiny_model_dir, user_code):
    my_reward, _ = user_code
    # every completion wrong with reward 0: GRPO's advantages are all 0, and beta = 0 adds nothing
    module, trainer = fit(tmp_path, tiny_model_dir, GRPO(beta=0.0), [my_reward.ConstantReward()], steps=2)
    assert trainer.global_step == 2 and module.counters.zero_signal_steps == 2 and module.counters.skipped_steps == 0
    assert unchanged(module, tiny_model_dir) and not trainer.optimizers[0].state
    assert scalars(tmp_path, "train/zero_signal_steps") == [1.0, 2.0]
    assert scalars(tmp_path, "train/zero_signal_groups") == [1.0, 1.0]  # every group's advantages are 0


def test_ds_grpo_still_learns_from_all_wrong_groups(tmp_path, tiny_model_dir, user_code):
    my_reward, _ = user_code
    # same rewards, but DS-GRPO's advantages +gamma_n * LL(y) differ between completions
    module, _ = fit(tmp_path, tiny_model_dir, DSGRPO(gamma_p=0.05, gamma_n=0.05, beta=0.0),
                    [my_reward.ConstantReward()], steps=2)
    assert module.counters.zero_signal_steps == 0 and not unchanged(module, tiny_model_dir)
    # counted on the advantages trained on, not on the rewards: no group is without signal
    assert scalars(tmp_path, "train/zero_signal_groups") == [0.0, 0.0]


# ---------------------------------------------------------------------------- precision
def test_logprobs_are_float32_with_bf16_weights(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir, torch_dtype="bfloat16")
    module.configure_model()
    assert module.policy.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    n, p, length, vocab = 3, 5, 7, module.policy.config.vocab_size
    batch = Rollout(
        prompt_ids=torch.randint(3, vocab, (n, p), generator=gen), prompt_mask=torch.ones(n, p, dtype=torch.bool),
        completion_ids=torch.randint(3, vocab, (n, length), generator=gen),
        completion_mask=torch.ones(n, length, dtype=torch.bool), group_ids=torch.zeros(n, dtype=torch.long),
        rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool), truncated=torch.zeros(n, dtype=torch.bool),
        sampling=SamplingParams(temperature=0.7),
    )
    with torch.no_grad():
        logp, entropy = module.scorer.logprobs(module.policy, batch, entropy="detached")
        logits = completion_logits(module.policy, batch, module.scorer.share_prompt_prefix)  # the same forward
    assert logits.dtype == torch.bfloat16 and logp.dtype == torch.float32 and entropy.dtype == torch.float32
    exact = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, exact, atol=1e-5, rtol=1e-5)
    # what dividing in bf16 first would have given: off by far more than that tolerance
    rounded = torch.log_softmax((logits / 0.7).float(), -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert (rounded - exact).abs().max() > 1e-3


# ---------------------------------------------------------------------------- advantages
def test_advantages_never_divide_by_zero():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 2.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3])  # two flat groups and two groups of one
    for scale in ("group", "batch", "none"):
        adv = F.group_advantages(rewards, groups, scale)
        assert torch.isfinite(adv).all()
        assert adv.tolist() == [0.0] * 6  # r - mean(group) is 0 everywhere
    flat = F.group_advantages(torch.full((4,), 3.0), torch.tensor([0, 0, 0, 0]), "batch", eps=0.0)
    assert flat.tolist() == [0.0] * 4  # std 0 and eps 0: 0, not 0/0


# ---------------------------------------------------------------------------- degenerate rollouts
def degenerate_rollout(module: RLModule) -> Rollout:
    """Four completions: none at all, only EOS, one full 6-token budget, one normal."""
    eos = module.tokenizer.eos_token_id
    tok = module.tokenizer("12+3=")["input_ids"]
    rows = [[], [eos], tok[:1] * 6, tok[:3] + [eos]]
    width = 6
    ids = torch.full((4, width), module.tokenizer.pad_token_id)
    mask = torch.zeros(4, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    prompt = torch.tensor([tok] * 4)
    return Rollout(
        prompt_ids=prompt, prompt_mask=torch.ones_like(prompt, dtype=torch.bool), completion_ids=ids,
        completion_mask=mask, group_ids=torch.tensor([0, 0, 1, 1]), rewards=torch.tensor([0.0, 1.0, 0.0, 1.0]),
        correct=torch.tensor([False, True, False, True]), truncated=torch.tensor([False, False, True, False]),
        sampling=SamplingParams(temperature=0.8, max_new_tokens=6),
    )


@pytest.mark.parametrize("mode", F.AGG_MODES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_and_full_budget_completions_give_finite_losses(tiny_model_dir, mode, reduction):
    module = RLModule(name_or_path=tiny_model_dir, objective=DSGRPO(beta=0.1, loss_agg_mode=mode,
                                                                    logprob_reduction=reduction))
    module.configure_model()
    rollout = module.train_batch(degenerate_rollout(module))[0]
    assert torch.isfinite(rollout.logp_ref).all() and (rollout.logp_ref[0] == 0).all()
    for micro in rollout.micro_batches(2):
        micro = micro.trim()
        logp, _ = module.scorer.logprobs(module.policy, micro)
        micro = micro.replace(logp_old=logp.detach())
        out = module.objective(micro, logp)
        assert torch.isfinite(out.loss)
        out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0


def test_prompts_are_cut_to_fit_the_model_context(tiny_model_dir):
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    assert module.policy.config.max_position_embeddings == 512
    long = PromptRecord("7" * 600 + "\nTarget: 7\n")
    callback = RolloutCallback(rewards=[CountdownReward()], max_new_tokens=8)
    ids = callback.sampler.encode(module, [long, PromptRecord("short")], max_new_tokens=8)
    assert len(ids[0]) == 512 - 8 and callback.sampler.prompts_truncated == 1  # the context minus the budget
    assert module.tokenizer.decode(ids[0]).endswith("\nTarget: 7\n")  # the end of the prompt is kept
    assert len(RolloutCallback(rewards=[CountdownReward()], max_new_tokens=8, max_prompt_tokens=100)
               .sampler.encode(module, [long], max_new_tokens=8)[0]) == 100  # a smaller rollout.max_prompt_tokens wins
    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens=512 leaves no room for the prompt"):
        RolloutCallback(rewards=[CountdownReward()], max_new_tokens=512).sampler.encode(module, [long], 512)
