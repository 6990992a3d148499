"""HF engine and rollout callback on the tiny model: shapes, EOS, padding, stop strings."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from lightning_dsrl.data import CountdownTask
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.module import RLModule
from lightning_dsrl.padding import pad_left, pad_right
from lightning_dsrl.rewards import CompositeReward, CountdownReward, FormatReward
from lightning_dsrl.rollout import HFEngine, RolloutCallback, Sampler, SamplingParams
from lightning_dsrl.types import PromptBatch


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    m = RLModule(name_or_path=tiny_model_dir)
    m.configure_model()
    return m


def test_padding_helpers():
    ids, mask = pad_left([[1, 2], [3]], pad=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[True, True], [False, True]]
    ids, mask = pad_right([[1, 2], [], [3]], pad=0)
    assert ids.tolist() == [[1, 2], [0, 0], [3, 0]] and mask.sum(-1).tolist() == [2, 0, 1]


def test_engine_returns_n_grouped_completions_cut_at_eos(module):
    engine = HFEngine(generation_batch_size=5)  # not a multiple of n: chunks cross group borders
    engine.bind(module)
    prompts = [module.tokenizer("Numbers: 1 2 3\nTarget: 6\n")["input_ids"], module.tokenizer("ab")["input_ids"]]
    torch.manual_seed(0)
    gen = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=12))
    assert len(gen.token_ids) == 6 and len(gen.finished) == 6
    eos = module.tokenizer.eos_token_id
    for ids, finished in zip(gen.token_ids, gen.finished):
        assert 1 <= len(ids) <= 12
        if finished:  # stopped by EOS: kept as the last token, nothing after it
            assert ids.index(eos) == len(ids) - 1
        else:  # ran out of budget: the whole budget, no EOS
            assert len(ids) == 12 and eos not in ids
    assert module.policy.training  # the engine restores train mode


@pytest.mark.parametrize("drop", [False, True])
def test_sampling_draws_what_generate_draws(module, monkeypatch, drop):
    """Same seed, same warpers: token for token ``generate``'s samples until a row is dropped; dropping
    stopped rows changes later draws (fewer rows sample) but never a row's own tokens before it."""
    from transformers import GenerationConfig

    import lightning_dsrl.rollout.hf as hf

    monkeypatch.setattr(hf, "DROP_STOPPED_AT", 0.1 if drop else 2.0)  # drop at the first stop, or never
    tok = module.tokenizer
    prompts = [tok(text)["input_ids"] for text in ("Numbers: 1 2 3\nTarget: 6\n", "ab")]
    params = SamplingParams(n=4, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=16)
    engine = HFEngine(generation_batch_size=8)
    engine.bind(module)
    torch.manual_seed(3)
    ours = engine.generate(prompts, params)
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts]).repeat_interleave(4, 0)
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=16,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    module.policy.eval()
    theirs = module.policy.generate(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(),
                                    generation_config=config)[:, width:].tolist()
    module.policy.train()
    cut = [row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row for row in theirs]
    lengths = [len(c) for c in cut]
    assert min(lengths) < 16 and any(not f for f in ours.finished), "rows stop at different steps"
    if drop:
        first_drop = min(lengths)
        assert [c[:first_drop] for c in cut] == [c[:first_drop] for c in ours.token_ids]
        assert ours.token_ids != cut
    else:
        assert ours.token_ids == cut
        assert ours.finished == [c[-1] == tok.eos_token_id for c in cut]


def test_chunks_keep_copies_together_and_respect_the_batch_size():
    engine = HFEngine(generation_batch_size=5)
    assert engine._chunks(3, 2) == [[(0, 2), (1, 2), (2, 1)], [(2, 1)]]
    assert engine._chunks(1, 12) == [[(0, 5)], [(0, 5)], [(0, 2)]]


def test_shared_prefill_gives_the_same_greedy_completions(module):
    prompts = [module.tokenizer(text)["input_ids"] for text in ("Numbers: 1 2 3\nTarget: 6\n", "ab", "xyz12")]
    outs = []
    for share in (False, True):
        engine = HFEngine(generation_batch_size=4, share_prompt_prefix=share)
        engine.bind(module)
        outs.append(engine.generate(prompts, SamplingParams(n=3, max_new_tokens=10, greedy=True)).token_ids)
    assert outs[0] == outs[1]


def test_greedy_is_deterministic(module):
    engine = HFEngine()
    engine.bind(module)
    prompt = [module.tokenizer("xyz")["input_ids"]]
    a = engine.generate(prompt, SamplingParams(n=2, max_new_tokens=8, greedy=True))
    b = engine.generate(prompt, SamplingParams(n=1, max_new_tokens=8, greedy=True))
    assert a.token_ids[0] == a.token_ids[1] == b.token_ids[0]


def test_stop_strings_end_completions(module):
    engine = HFEngine()
    engine.bind(module)
    prompt_text = "Numbers: 4"
    prompt = [module.tokenizer(prompt_text)["input_ids"]]
    free = engine.generate(prompt, SamplingParams(n=1, max_new_tokens=20, greedy=True))
    text = module.tokenizer.decode(free.token_ids[0], skip_special_tokens=True)
    stop = text[4:6]  # two characters the greedy continuation is known to produce
    stopped = engine.generate(prompt, SamplingParams(n=1, max_new_tokens=20, greedy=True, stop=[stop]))
    out = module.tokenizer.decode(stopped.token_ids[0], skip_special_tokens=True)
    # generate matches stop strings on prompt + completion, one character per token here
    expected_end = max(1, (prompt_text + text).find(stop) + len(stop) - len(prompt_text))
    assert out == text[:expected_end] and stopped.finished[0]


def test_stop_strings_match_like_generate_with_overhanging_tokens():
    """``StopStringCriteria``'s own examples: the stop string must overlap the last token, which may overhang."""

    class Words:
        vocab = ["st", "op", "stop", "opera", "las", "topper", "at", "sto", "pper", "x"]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.vocab[i] for i in ids)

    class Bound:
        tokenizer = Words()

    engine = HFEngine()
    engine.owner = Bound()
    w = {word: i for i, word in enumerate(Words.vocab)}

    def hits(*words, prompt=()):
        return engine._hits_stop([w[p] for p in prompt], [w[x] for x in words], tail=5, stop=["stop"])

    assert hits("st", "op") and hits("stop") and hits("st", "opera") and hits("sto", "pper") and hits("las", "topper")
    assert hits("op", prompt=("x", "st"))  # matched on prompt + completion, as generate does
    assert not hits("stop", "at") and not hits("st", "op", "at") and not hits("x") and not hits("x", prompt=("stop",))


def test_callback_builds_a_scored_rollout_batch(module):
    task = CountdownTask(num_numbers=3, max_number=10, num_train=8, num_val=2)
    records = task.records("train")[:3]
    callback = RolloutCallback(rewards=[CountdownReward(), FormatReward(weight=0.1)], num_generations=4,
                               max_new_tokens=10)
    torch.manual_seed(0)
    rollout = callback.rollout(module, PromptBatch(records), callback.train_sampling, log_prefix=None)
    n = 12
    assert rollout.num_samples == n and rollout.num_groups == 3
    assert rollout.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert rollout.prompt_ids.shape[0] == n and rollout.completion_ids.shape == rollout.completion_mask.shape
    assert rollout.completion_ids.shape[1] <= 10
    assert rollout.rewards.shape == rollout.correct.shape == rollout.truncated.shape == (n,)
    assert rollout.rewards.dtype == torch.float32 and rollout.correct.dtype == torch.bool
    # every prompt row is left-padded: its mask ends with True; completions are right-padded
    assert rollout.prompt_mask[:, -1].all()
    lengths = rollout.completion_mask.sum(-1)
    for i in range(n):
        assert rollout.completion_mask[i, : lengths[i]].all() and not rollout.completion_mask[i, lengths[i]:].any()
        assert bool(rollout.truncated[i]) == (lengths[i] == 10 and module.tokenizer.eos_token_id
                                              not in rollout.completion_ids[i].tolist())
    assert rollout.records[5] is records[1] and rollout.prompts[5] == records[1].prompt
    assert set(rollout.reward_parts) == {"countdown", "format"}
    # the verifier's equations travel with the batch (CountDown: the answer is the equation)
    assert rollout.equations == [(a,) if a is not None else () for a in rollout.answers] and len(rollout.equations) == n
    assert rollout.temperature == 1.0 and rollout.max_new_tokens == 10


def test_callback_truncates_long_prompts_and_rejects_bad_settings(module):
    callback = RolloutCallback(rewards=[FormatReward()], max_prompt_tokens=4)
    ids = callback.sampler.encode(module, CountdownTask(num_train=2, num_val=1, max_number=10).records("train"),
                                  max_new_tokens=64)
    assert all(len(i) == 4 for i in ids) and callback.sampler.prompts_truncated == 2
    with pytest.raises(ConfigError, match="rewards is empty"):
        RolloutCallback(rewards=[])
    with pytest.raises(ConfigError, match="temperature"):
        RolloutCallback(rewards=[FormatReward()], temperature=0)
    with pytest.raises(ConfigError, match=r"rollout.top_k=5: .* val_top_k"):
        RolloutCallback(rewards=[FormatReward()], top_k=5)
    with pytest.raises(ConfigError, match="rollout.val_top_k=-1"):
        RolloutCallback(rewards=[FormatReward()], val_top_k=-1)
    # truncation is for validation only, each with its own setting
    callback = RolloutCallback(rewards=[FormatReward()], val_top_p=0.9, val_top_k=5)
    assert (callback.val_sampling.top_p, callback.val_sampling.top_k) == (0.9, 5)
    assert (callback.train_sampling.top_p, callback.train_sampling.top_k) == (1.0, 0)


def test_the_sampler_runs_without_lightning(module):
    """The sampler alone, on an owner that is no LightningModule: a frozen rollout and what drawing it took."""
    owner = SimpleNamespace(policy=module.policy, tokenizer=module.tokenizer, device=torch.device("cpu"))
    sampler = Sampler(HFEngine(), CompositeReward([CountdownReward(), FormatReward(weight=0.1)]))
    records = CountdownTask(num_numbers=3, max_number=10, num_train=8, num_val=2).records("train")[:2]
    sampling = SamplingParams(n=3, max_new_tokens=6)
    torch.manual_seed(0)
    rollout, stats = sampler.sample(owner, records, sampling)
    assert rollout.num_groups == 2 and rollout.num_samples == 6 and rollout.sampling is sampling
    assert stats.generated_tokens == int(rollout.completion_mask.sum()) and stats.reward_errors == 0
    assert stats.prompts_truncated == 0 and stats.generate_seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rollout.rewards = torch.zeros(6)
