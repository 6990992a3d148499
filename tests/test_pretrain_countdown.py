"""``scripts/pretrain_countdown.py``: the data never touches the held-out splits, the skew is what
it says, the wrong examples make the mistake they name in the share asked for, and (slow) a short
pretraining run lowers the loss and saves a loadable model with its card and figures."""

from __future__ import annotations

import importlib.util
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from lightning_dsrl.char_tokenizer import build_char_tokenizer
from lightning_dsrl.rewards.countdown import check, normalize_expression

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_countdown", ROOT / "scripts" / "pretrain_countdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 3 numbers in 1..9: 400+ problems with >= 2 solutions
SMALL_TASK = ["--max-number", "9", "--num-train", "150", "--num-val", "30", "--num-test", "40"]
key = lambda p: (tuple(sorted(p[0])), p[1])  # noqa: E731  (numbers as a multiset, target)


@pytest.mark.parametrize("pool", ["train", "space", "all"])
def test_training_problems_exclude_the_held_out_splits(pool):
    script = _script()
    args = script.parse_args(SMALL_TASK + ["--pool", pool])
    sft, splits = script.sft_problems(args)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [150, 30, 40]
    held_out = {key(p) for p in splits["val"] + splits["test"]}
    assert len(held_out) == 70 and not {key(p) for p in sft} & held_out
    assert len({key(p) for p in sft}) == len(sft)  # no problem twice
    # the splits are the RL task's, and the pool starts with its train split as the RL run shows it
    task = script.rl_task(args)
    assert [(n, t) for n, t, _ in splits["test"]] == [(tuple(r.meta["numbers"]), r.meta["target"])
                                                      for r in task.records("test")]
    assert sft[:150] == splits["train"] == task.problems()[:150]
    if pool == "train":
        assert len(sft) == 150
    else:  # the rest of the space: >= 2 solutions like the task ("space") or any ("all")
        assert len(sft) > 150
        assert any(len(p[2]) == 1 for p in sft) == (pool == "all")


def test_too_many_held_out_problems_is_one_clear_error():
    script = _script()
    with pytest.raises(SystemExit, match="--num-train \\+ --num-val \\+ --num-test = 5180"):
        script.sft_problems(script.parse_args(SMALL_TASK[:-1] + ["5000"]))


def test_doctests():
    import doctest

    assert doctest.testmod(_script()).failed == 0


def test_solution_weights_are_zipf_in_a_random_order():
    script = _script()
    # skew 1 over 3 solutions: 1, 1/2, 1/3 normalised by 11/6 -> 6/11, 3/11, 2/11 in some order
    weights = script.solution_weights(3, 1.0, random.Random(0))
    assert sorted(weights) == pytest.approx([2 / 11, 3 / 11, 6 / 11])
    orders = {tuple(script.solution_weights(3, 1.0, random.Random(s))) for s in range(20)}
    assert len(orders) > 1  # the preferred solution differs between problems
    assert script.solution_weights(4, 0.0, random.Random(0)) == [0.25] * 4


def _numbers(expression: str) -> list[int]:
    return sorted(int(x) for x in re.findall(r"\d+", expression))


def test_each_mistake_is_the_one_it_names():
    script = _script()
    sft, _ = script.sft_problems(script.parse_args(SMALL_TASK))
    rng = random.Random(0)
    seen = Counter()
    for numbers, target, solutions in sft[:150]:
        solution = solutions[0]
        for kind in script.MISTAKES:
            wrong = script.corrupt(solution, numbers, target, kind, rng)
            if wrong is None:  # only where the kind has nothing to change
                assert (kind == "repeat" and len(set(numbers)) == 1) or kind == "slip"
                continue
            outcome = script.classify(f"<answer>{wrong}</answer>", numbers, target)
            seen[kind, outcome] += 1
            assert normalize_expression(wrong) == wrong  # written like the correct solutions
            assert not check(f"<answer>{wrong}</answer>", list(numbers), target)
            before, after = Counter(_numbers(solution)), Counter(_numbers(wrong))
            if kind == "shift":  # one number moved by 1-3: not in the list, or now one too many
                assert outcome in ("foreign", "repeat")
                (old,), (new,) = before - after, after - before
                assert 1 <= abs(new - old) <= 3
            elif kind == "repeat":  # another number of the list in place of one
                assert outcome == "repeat" and set(after) <= set(numbers)
                assert sum((before - after).values()) == 1
            else:  # the same numbers, a wrong value
                assert outcome == "value" and before == after
    assert seen["shift", "foreign"] > 100 and seen["repeat", "repeat"] > 100 and seen["slip", "value"] > 100


@pytest.mark.parametrize("kinds", [("shift",), ("shift", "repeat", "slip")])
def test_the_sampler_mixes_in_the_share_of_mistakes_asked_for(kinds):
    script = _script()
    sft, splits = script.sft_problems(script.parse_args(SMALL_TASK))
    tokenizer = build_char_tokenizer()
    sampler = script.PairSampler(sft, tokenizer, 1.0, seed=0, wrong_fraction=0.4, wrong_kinds=kinds, mix_seed=0)
    examples = sampler.draw(6000)
    kind_counts = Counter(kind for _, _, kind in examples)
    assert kind_counts == sampler.counts
    # a binomial share of 6000 draws: 0.4 +- 0.02 is over 3 standard deviations (0.0063)
    assert sum(v for k, v in kind_counts.items() if k != "correct") / 6000 == pytest.approx(0.4, abs=0.02)
    for kind in kinds:  # the kinds come in equal shares (a "repeat" that cannot apply falls back to another)
        assert kind_counts[kind] / 6000 == pytest.approx(0.4 / len(kinds), abs=0.025)
    expected = {"correct": {"correct"}, "shift": {"foreign", "repeat"}, "repeat": {"repeat"}, "slip": {"value"}}
    for index, text, kind in examples:
        numbers, target, solutions = sft[index]
        assert script.classify(f"<answer>{text}</answer>", numbers, target) in expected[kind]
        assert (text in solutions) == (kind == "correct")
    # the mistakes have their own generator: the problems and solutions drawn are those of a clean stream
    clean = script.PairSampler(sft, tokenizer, 1.0, seed=0).draw(6000)
    assert [i for i, _, _ in examples] == [i for i, _, _ in clean]
    assert all(t == c for (_, t, k), (_, c, _) in zip(examples, clean) if k == "correct")
    # no example of a held-out problem
    held_out = {key(p) for p in splits["val"] + splits["test"]}
    assert not {key(sft[i]) for i, _, _ in examples} & held_out
    # a batch: the completion is labelled, the prompt is not
    ids, mask, labels = sampler.batch(4)
    assert ids.shape == labels.shape == mask.shape and (labels[mask == 0] == -100).all()
    assert tokenizer.decode(labels[0][labels[0] != -100]).startswith("<answer>")


@pytest.mark.slow
def test_short_pretraining_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    script = _script()
    out = tmp_path / "model"
    metrics = script.main(SMALL_TASK + ["--output", str(out), "--steps", "60", "--batch-size", "32",
                                        "--hidden", "32", "--layers", "1", "--heads", "2", "--warmup", "5",
                                        "--eval-problems", "8", "--eval-samples", "4", "--threads", "1",
                                        "--wrong-fraction", "0.5", "--wrong-kinds", "shift", "slip"])
    losses = metrics["losses"]
    assert len(losses) == 60
    # an untrained model is near uniform over 101 tokens (ln 101 = 4.6); learning the fixed
    # "<answer>...</answer>" frame alone brings the mean well below half of that
    assert sum(losses[:5]) / 5 > 3.5
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert sum(metrics["data_mix"].values()) == 60 * 32 and set(metrics["data_mix"]) == {"correct", "shift", "slip"}
    assert set(metrics["eval"]) == {"test", "val", "train"}
    for ev in metrics["eval"].values():
        assert ev["problems"] == 8 and set(ev) >= {"pass@1", "pass@4", "ci95", "distinct_correct", "outcomes"}
        assert sum(ev["outcomes"].values()) == pytest.approx(1.0, abs=1e-3) and len(ev["correct_per_problem"]) == 8
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == 32 and len(tokenizer) == 101
    assert (out / "base_metrics.json").is_file() and (out / "base_passk.png").stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "50% of the examples made wrong" in card and "| test (held out) | 8 |" in card
