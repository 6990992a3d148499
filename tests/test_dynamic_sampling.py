"""DAPO's dynamic sampling (``rollout/dynamic.py``: ``refill``) with a scripted engine and reward, so which
groups carry signal is known: groups with all-equal rewards are dropped and replaced by groups for
fresh training prompts, reproducibly, until the batch is full or the retry limit is hit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_dsrl.char_tokenizer import build_char_tokenizer
from lightning_dsrl.data.datamodule import PromptDataset
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards import RewardModule
from lightning_dsrl.rollout import Generation, RolloutCallback, RolloutEngine
from lightning_dsrl.rollout.callback import training_records
from lightning_dsrl.rollout.dynamic import refill
from lightning_dsrl.types import PromptBatch, PromptRecord, RewardResult, RolloutBatch

TOKENIZER = build_char_tokenizer()


class ScriptedEngine(RolloutEngine):
    """Sample j of every prompt is the digit j repeated j + 1 times (so completions have different lengths)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []  # every prompt generated for, in order

    @property
    def prompts_generated(self) -> int:
        return len(self.prompts)

    def bind(self, module) -> None:
        pass

    def generate(self, prompt_ids, params) -> Generation:
        self.prompts += TOKENIZER.batch_decode(prompt_ids, skip_special_tokens=True)
        rows = [TOKENIZER(str(j) * (j + 1))["input_ids"] for _ in prompt_ids for j in range(params.n)]
        return Generation(token_ids=rows, finished=[True] * len(rows))


class LiveReward(RewardModule):
    """1 for the first sample ("0") of a prompt marked live, else 0: only live prompts have mixed verdicts.
    On a dead prompt the first sample still gets a format-like bonus of 0.1 (a reward spread without a
    correct completion: DAPO's accuracy filter drops such a group)."""

    name = "live_test"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        ok = bool(record.meta["live"]) and completion == "0"
        return RewardResult(1.0 if ok else 0.1 * (completion == "0"), correct=ok)


class AllRightReward(RewardModule):
    """Every completion correct: every group is all correct."""

    name = "all_right_test"
    is_verifier = True

    def score(self, record: PromptRecord, completion: str) -> RewardResult:
        return RewardResult(1.0, correct=True)


def records(live: set[int], n: int = 12) -> list[PromptRecord]:
    return [PromptRecord(prompt=f"p{i}", meta={"live": i in live}, uid=i) for i in range(n)]


def setup(max_resample_rounds: int = 3, batch: list[PromptRecord] | None = None, live: set[int] = frozenset({0, 3, 6, 9})):
    pool = records(set(live))
    callback = RolloutCallback(engine=ScriptedEngine(), rewards=[LiveReward()], num_generations=3,
                               dynamic_sampling=True, max_resample_rounds=max_resample_rounds)
    module = SimpleNamespace(tokenizer=TOKENIZER, device=torch.device("cpu"))
    first = callback.rollout(module, PromptBatch(batch or pool[:3]), callback.train_sampling, log_prefix=None)
    return callback, module, first, pool


def run_refill(callback: RolloutCallback, module, first: RolloutBatch, pool: list[PromptRecord], step: int):
    """``refill`` with the callback's sampler and settings, as its training hook calls it."""
    return refill(callback.sampler, module, first, pool, callback.train_sampling, step,
                  callback.dynamic.max_resample_rounds)


def test_refill_replaces_groups_without_signal():
    callback, module, first, pool = setup()
    # batch p0 (live), p1, p2 (dead): one group kept, two needed; 9 fresh prompts hold 3 live ones, and
    # 3 rounds of 3 prompts see all 9, so the batch always fills
    out, stats = run_refill(callback, module, first, pool, 0)
    assert out.num_groups == 3 and stats["rollout/dynamic_short"] == 0.0 and stats["rollout/dynamic_kept_groups"] == 3
    prompts = [out.prompts[i] for i in range(0, out.num_samples, 3)]
    assert prompts[0] == "p0" and set(prompts[1:]) <= {"p3", "p6", "p9"} and len(set(prompts)) == 3
    assert out.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # each group is what the engine gave its prompt, re-padded: "0", "11", "222"
    lengths = out.completion_mask.sum(-1).tolist()
    assert lengths == [1, 2, 3] * 3 and out.completion_ids.shape[1] == 3
    assert out.completions == ["0", "11", "222"] * 3 and out.rewards.tolist() == [1.0, 0.0, 0.0] * 3
    # rounds of 3 fresh prompts each; dropped: p1, p2, then every dead prompt drawn before the batch filled
    drawn = callback.engine.prompts[3:]
    assert len(set(drawn)) == len(drawn) and not set(drawn) & {"p0", "p1", "p2"}  # never a prompt twice
    assert stats["rollout/dynamic_rounds"] == len(drawn) / 3
    dead = [p for p in drawn if p not in {"p3", "p6", "p9"}]
    # the dead groups have a reward spread (0.1, 0, 0) but no correct completion: dropped all the same
    assert stats["rollout/dynamic_dropped_groups"] == 2 + len(dead)
    assert stats["rollout/dynamic_dropped_all_correct"] == 0.0


def test_refill_drops_all_correct_groups_and_counts_them():
    pool = records(set())
    callback = RolloutCallback(engine=ScriptedEngine(), rewards=[AllRightReward()], num_generations=3,
                               dynamic_sampling=True, max_resample_rounds=1)
    module = SimpleNamespace(tokenizer=TOKENIZER, device=torch.device("cpu"))
    first = callback.rollout(module, PromptBatch(pool[:3]), callback.train_sampling, log_prefix=None)
    out, stats = run_refill(callback, module, first, pool, 0)
    assert out is first  # nothing with mixed verdicts anywhere
    assert stats["rollout/dynamic_dropped_groups"] == stats["rollout/dynamic_dropped_all_correct"] == 6.0


def test_refill_draws_from_this_ranks_share_of_the_training_set():
    pool = records(set())
    loader = SimpleNamespace(dataset=PromptDataset(pool))
    shares = [training_records(SimpleNamespace(train_dataloader=loader, global_rank=r, world_size=3))
              for r in range(3)]
    assert [[r.uid for r in share] for share in shares] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


@pytest.mark.parametrize("objective,says", [
    ("DSGRPO", "gamma_p=0.5 spreads all-correct groups"), ("EntropyGRPO", "entropy_coef=0.001"),
    ("R1ZeroDiv", "diversity_coef=0.01"), ("GRPO", None), ("PassAtKTraining", None),
])
def test_dynamic_sampling_says_what_it_drops_for_objectives_that_learn_from_such_groups(objective, says, caplog):
    from lightning_dsrl import objectives

    kwargs = {"gamma_p": 0.5, "gamma_n": 0.5} if objective == "DSGRPO" else {}
    module = SimpleNamespace(objective=getattr(objectives, objective)(**kwargs), policy=None)
    callback = RolloutCallback(engine=ScriptedEngine(), rewards=[LiveReward()], dynamic_sampling=True)
    with caplog.at_level("WARNING"):
        callback.on_fit_start(SimpleNamespace(world_size=1), module)
    warned = [r.getMessage() for r in caplog.records if "dynamic_sampling" in r.getMessage()]
    if says is None:
        assert not warned
    else:
        assert len(warned) == 1 and says in warned[0] and objective in warned[0]


def test_refill_is_reproducible_for_a_step_and_seed():
    def drawn(step: int) -> list[str]:
        torch.manual_seed(0)
        callback, module, first, pool = setup()
        out, _ = run_refill(callback, module, first, pool, step)
        return out.prompts

    assert drawn(5) == drawn(5)
    assert len({tuple(drawn(step)) for step in range(6)}) > 1  # the draw depends on the step


def test_refill_short_batch_keeps_what_has_signal():
    # only p0 is live: two rounds of fresh prompts find nothing, the batch stays at 1 group
    callback, module, first, pool = setup(max_resample_rounds=2, live={0})
    out, stats = run_refill(callback, module, first, pool, 0)
    assert out.num_groups == 1 and out.prompts == ["p0"] * 3
    assert stats == {"rollout/dynamic_dropped_groups": 2.0 + 6.0, "rollout/dynamic_rounds": 2.0,
                     "rollout/dynamic_short": 1.0, "rollout/dynamic_kept_groups": 1.0,
                     "rollout/dynamic_dropped_all_correct": 0.0}
    assert callback.engine.prompts_generated == 3 + 2 * 3


def test_refill_without_any_signal_returns_the_original_batch():
    callback, module, first, pool = setup(max_resample_rounds=1, live=set())
    out, stats = run_refill(callback, module, first, pool, 0)
    assert out is first and stats["rollout/dynamic_short"] == 1.0 and stats["rollout/dynamic_kept_groups"] == 0.0


def test_refill_with_zero_rounds_only_drops_and_stops_when_prompts_run_out():
    callback, module, first, pool = setup(max_resample_rounds=0)
    out, stats = run_refill(callback, module, first, pool, 0)
    assert out.prompts == ["p0"] * 3 and stats["rollout/dynamic_rounds"] == 0.0
    assert callback.engine.prompts_generated == 3
    callback, module, first, pool = setup(max_resample_rounds=3)
    out, stats = run_refill(callback, module, first, pool[:3], 0)  # no fresh prompt left to draw
    assert out.num_groups == 1 and stats["rollout/dynamic_rounds"] == 1.0 and stats["rollout/dynamic_short"] == 1.0


def test_training_records_come_from_the_train_dataloader():
    pool = records(set())
    trainer = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=PromptDataset(pool)), global_rank=0,
                              world_size=1)
    assert training_records(trainer) == pool
    with pytest.raises(ConfigError, match="rollout.dynamic_sampling"):
        training_records(SimpleNamespace(train_dataloader=None))
    with pytest.raises(ConfigError, match="rollout.max_resample_rounds"):
        RolloutCallback(rewards=[LiveReward()], max_resample_rounds=-1)


def test_concat_repads_and_keeps_groups_apart():
    def batch(width_p: int, width_c: int, label: int) -> RolloutBatch:
        return RolloutBatch(
            prompt_ids=torch.full((2, width_p), 7), prompt_mask=torch.ones(2, width_p, dtype=torch.bool),
            completion_ids=torch.full((2, width_c), 9), completion_mask=torch.ones(2, width_c, dtype=torch.bool),
            group_ids=torch.tensor([label, label]), rewards=torch.tensor([1.0, 0.0]),
            correct=torch.tensor([True, False]), truncated=torch.zeros(2, dtype=torch.bool),
            sampler_logp=torch.full((2, width_c), -1.0), completions=[f"{label}a", f"{label}b"],
            reward_parts={"r": torch.tensor([1.0, 0.0])},
        )

    out = RolloutBatch.concat([batch(1, 3, 4), batch(2, 1, 4)], pad_id=0)
    assert out.group_ids.tolist() == [0, 0, 1, 1]  # equal labels from different batches stay apart
    assert out.prompt_ids.tolist() == [[0, 7], [0, 7], [7, 7], [7, 7]]  # prompts padded on the left
    assert out.prompt_mask[:, 0].tolist() == [False, False, True, True]
    assert out.completion_ids.tolist()[2:] == [[9, 0, 0], [9, 0, 0]]  # completions padded on the right
    assert out.completion_mask.sum(-1).tolist() == [3, 3, 1, 1]
    assert out.sampler_logp[2].tolist() == [-1.0, 0.0, 0.0]
    assert out.completions == ["4a", "4b", "4a", "4b"] and out.reward_parts["r"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_a_concatenated_rollout_gives_the_same_logprobs_as_its_parts(tiny_model_dir):
    """What refill returns goes through the module like any rollout (prompt sharing per group included)."""
    from lightning_dsrl.data import CountdownTask
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.rewards import CountdownReward

    module = RLModule(name_or_path=tiny_model_dir, objective=None)
    module.configure_model()
    callback = RolloutCallback(rewards=[CountdownReward()], num_generations=2, max_new_tokens=6)
    pool = CountdownTask(num_train=2, num_val=1, max_number=99, max_target=900, seed=1).records("train")
    short = [PromptRecord(prompt="N: 1 2\nT: 3\n", meta=pool[0].meta), PromptRecord(prompt="T: 9\n", meta=pool[1].meta)]
    torch.manual_seed(0)
    parts = [callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
             for records in (pool, short)]
    assert parts[0].prompt_ids.shape[1] > parts[1].prompt_ids.shape[1]  # the second part is re-padded
    joined = RolloutBatch.concat(parts, pad_id=module.tokenizer.pad_token_id)
    with torch.no_grad():
        together, _ = module.scorer.logprobs(module.policy, joined)
        for part, rows in zip(parts, (slice(0, 4), slice(4, 8))):
            alone, _ = module.scorer.logprobs(module.policy, part)
            torch.testing.assert_close(together[rows, : alone.shape[1]], alone, atol=1e-5, rtol=1e-5)
