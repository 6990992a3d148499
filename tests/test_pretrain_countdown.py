"""``scripts/pretrain_countdown.py``: data never touches the held-out problems, the skew is what
it says, and (slow) a short pretraining run lowers the loss and saves a loadable model."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_countdown", ROOT / "scripts" / "pretrain_countdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL_TASK = ["--max-number", "9", "--num-train", "150", "--num-val", "30"]  # 3 numbers in 1..9: 400+ problems


@pytest.mark.parametrize("pool", ["train", "space", "all"])
def test_training_problems_exclude_the_held_out_split(pool):
    script = _script()
    args = script.parse_args(SMALL_TASK + ["--pool", pool])
    sft, rl_train, val = script.sft_problems(args)
    key = lambda p: (tuple(sorted(p[0])), p[1])  # noqa: E731  (numbers as a multiset, target)
    assert len(val) == 30 and len(rl_train) == 150
    assert not {key(p) for p in sft} & {key(p) for p in val}
    assert len({key(p) for p in sft}) == len(sft)  # no problem twice
    # every pool holds the RL train split as the RL run shows it (same order of the numbers)
    assert sft[:150] == rl_train == script.rl_task(args).problems()[:150]
    if pool == "train":
        assert len(sft) == 150
    else:  # the rest of the space: >= 2 solutions like the task ("space") or any ("all")
        assert len(sft) > 150
        assert any(len(p[2]) == 1 for p in sft) == (pool == "all")


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


@pytest.mark.slow
def test_short_pretraining_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    script = _script()
    out = tmp_path / "model"
    metrics = script.main(SMALL_TASK + ["--output", str(out), "--steps", "60", "--batch-size", "32",
                                        "--hidden", "32", "--layers", "1", "--heads", "2", "--warmup", "5",
                                        "--eval-problems", "8", "--eval-samples", "4", "--threads", "1"])
    losses = metrics["losses"]
    assert len(losses) == 60
    # an untrained model is near uniform over 101 tokens (ln 101 = 4.6); learning the fixed
    # "<answer>...</answer>" frame alone brings the mean well below half of that
    assert sum(losses[:5]) / 5 > 3.5
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert set(metrics["eval"]) >= {"pass@1", "pass@4", "distinct_correct", "top_solution_share"}
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == 32 and len(tokenizer) == 101
    assert (out / "base_metrics.json").is_file() and (out / "README.md").is_file()
