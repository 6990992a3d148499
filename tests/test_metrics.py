"""The metrics of ALGORITHMS.md section 5 against hand-computed values and independent formulas,
the classes against their functional twins, and bad input (k > n, no samples, empty text)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from lightning_dsrl.metrics import (
    DistinctCorrect,
    DistinctN,
    DivAnswers,
    DivEqu,
    MeanAtK,
    PassAtK,
    PotentialAtK,
    RolloutMetrics,
    SelfBLEU,
    TokenEntropy,
    distinct_correct_mean,
    distinct_n,
    div_answers,
    div_equ,
    mean_at_k,
    pass_at_k_bootstrap,
    pass_at_k_curve,
    potential_at_k,
    self_bleu,
    token_entropy,
    tokenize,
)
from lightning_dsrl.rewards import CompositeReward, CountdownReward, MathReward
from lightning_dsrl.types import PromptRecord, RolloutBatch


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Independent formula: 1 - C(n - c, k) / C(n, k) in exact rationals."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# ------------------------------------------------------------------------------------------ pass@k
def test_pass_at_k_curve_edge_cases():
    # c = 0 is exactly 0 and c = n exactly 1 at every k; k = n is 1 as soon as one sample is correct
    n, c = torch.tensor([16, 16, 16]), torch.tensor([0, 16, 1])
    out = torch.stack([pass_at_k_curve(n[i : i + 1], c[i : i + 1]) for i in range(3)])
    assert out[0].tolist() == [0.0] * 5 and out[1].tolist() == [1.0] * 5
    assert out[2, -1].item() == 1.0  # k = n = 16, c = 1
    # c = 1: pass@k = k / n exactly (any k-subset holds the one correct sample with probability k/n)
    torch.testing.assert_close(out[2], torch.tensor([1, 2, 4, 8, 16], dtype=torch.float64) / 16)
    # the mean over the three problems
    torch.testing.assert_close(pass_at_k_curve(n, c), out.mean(0))


@pytest.mark.parametrize("c", [0, 1, 2, 7, 64, 128, 200, 250, 255, 256])
def test_pass_at_k_curve_is_exact_for_n_256(c):
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    curve = pass_at_k_curve(torch.tensor([256]), torch.tensor([c]), ks)
    expected = torch.tensor([float(exact_pass_at_k(256, c, k)) for k in ks], dtype=torch.float64)
    torch.testing.assert_close(curve, expected, rtol=1e-12, atol=1e-15)
    assert (curve >= 0).all() and (curve <= 1).all() and (curve.diff() >= 0).all()


def test_pass_at_k_metric_accumulates_like_the_functional_form():
    g = torch.Generator().manual_seed(0)
    n = torch.full((30,), 8)
    c = torch.randint(0, 9, (30,), generator=g)
    metric = PassAtK(bootstrap=300, seed=3)
    for part in torch.tensor_split(torch.arange(30), 4):
        metric.update(n[part], c[part])
    out = metric.compute()
    assert out["k"].tolist() == [1, 2, 4, 8] and int(out["problems"]) == 30
    torch.testing.assert_close(out["value"], pass_at_k_curve(n, c))
    low, high = pass_at_k_bootstrap(n, c, [1, 2, 4, 8], 300, 0.95, seed=3)
    torch.testing.assert_close(out["low"], low)
    torch.testing.assert_close(out["high"], high)
    assert (out["low"] <= out["value"]).all() and (out["value"] <= out["high"]).all()
    assert (out["high"] - out["low"] > 0).all()


def test_bootstrap_interval_ignores_problem_order_and_collapses_on_identical_problems():
    n, c = torch.full((40,), 4), torch.arange(40) % 5
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    a = pass_at_k_bootstrap(n, c, [1, 4], 200)
    b = pass_at_k_bootstrap(n[perm], c[perm], [1, 4], 200)
    torch.testing.assert_close(a, b)
    # every problem alike: every resample has the same mean, the interval is that value
    low, high = pass_at_k_bootstrap(torch.full((10,), 4), torch.full((10,), 1), [1, 2], 100)
    torch.testing.assert_close(low, torch.tensor([0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(high, low)


def test_pass_at_k_bad_input_raises_clearly():
    metric = PassAtK(ks=[1, 32])
    metric.update(torch.tensor([16, 16]), torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="pass@32 needs at least 32 samples per problem.*n = 16"):
        metric.compute()
    with pytest.raises(ValueError, match="no sample"):
        PassAtK().update(torch.tensor([4, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="0 <= c <= n"):
        PassAtK().update(torch.tensor([4]), torch.tensor([5]))
    with pytest.raises(ValueError, match="empty"):
        PassAtK().compute()


def test_mean_at_k():
    # (1/4 + 2/2 + 0/3) / 3 = 1.25 / 3: per problem, not per sample (that would be 3/9)
    expected = (1 / 4 + 2 / 2 + 0 / 3) / 3
    assert float(mean_at_k(torch.tensor([4, 2, 3]), torch.tensor([1, 2, 0]))) == pytest.approx(expected)
    metric = MeanAtK()
    metric.update(torch.tensor([4]), torch.tensor([1]))
    metric.update(torch.tensor([2, 3]), torch.tensor([2, 0]))
    assert float(metric.compute()) == pytest.approx(expected)


def test_potential_at_k_on_a_crafted_set():
    # 4 problems with n = 4: c = 0, 1, 2, 4; greedy fails the first two.
    # potential@1 = mean(0/4, 1/4) = 0.125
    # potential@2 = mean(0, 1 - C(3,2)/C(4,2) = 1 - 3/6) = 0.25
    # potential@4 = mean(0, 1) = 0.5
    # (problem 3, c = 2, is greedy-solved: it does not count, though its pass@1 = 0.5)
    n, c = torch.full((4,), 4), torch.tensor([0, 1, 2, 4])
    greedy = torch.tensor([False, False, True, True])
    expected = torch.tensor([0.125, 0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(potential_at_k(n, c, greedy), expected)
    metric = PotentialAtK()
    metric.update(n[:3], c[:3], greedy[:3])
    metric.update(n[3:], c[3:], greedy[3:])
    out = metric.compute()
    torch.testing.assert_close(out["value"], expected)
    assert int(out["problems"]) == 2
    # greedy solves everything: undefined, nan (RolloutMetrics says why)
    assert potential_at_k(n, c, torch.ones(4, dtype=torch.bool)).isnan().all()


# ------------------------------------------------------------------------------------------ diversity
def test_tokenize_splits_symbols():
    assert tokenize("(3+4)*2") == ["(", "3", "+", "4", ")", "*", "2"]
    assert tokenize("") == [] and tokenize("  \n") == []


def test_div_answers_by_hand():
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    answers = ["1+2", "1+2", "3*1", None, None, None, "a", "b"]
    # problem 0: 3 extracted, 2 distinct -> 100 * 2/3; problem 1: none extracted, left out; problem 2: 100
    expected = (100 * 2 / 3 + 100) / 2
    assert float(div_answers(group_ids, answers)) == pytest.approx(expected)
    metric = DivAnswers()
    metric.update(group_ids[:6], answers[:6])
    metric.update(group_ids[6:], answers[6:])
    assert float(metric.compute()) == pytest.approx(expected)
    assert math.isnan(float(div_answers(torch.tensor([0, 0]), [None, None])))


# three GSM8K-style solutions to each of three problems, as a model might write them
GSM8K_SOLUTIONS = [
    ("72", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"),
    ("72", "In May she sold 48 / 2 = 24 clips. In total 48 + 24 = 72.\n#### 72"),
    ("72", "Half of 48 is 24, and 24 + 48 = 72.\n#### 72"),
    ("5", "$\\frac{100}{2} = 50$, so she needs 100 - 50 - 15 - 30 = <<100-50-15-30=5>>5 more.\n#### 5"),
    ("5", "She needs 5 dollars.\n#### 5"),
    ("5", "Her grandparents give 15 x 2 = 30, so 50 + 15 + 30 = 95 and 100 - 95 = 5.\n#### 5"),
    ("3", "#### 3"),
    ("3", "The answer is 4.\n#### 4"),
    ("3", "#### 3"),
]


def test_div_equ_counts_the_equations_written_in_gsm8k_style_solutions():
    # problem 0: {48/2=24, 48+24=72} + {48/2=24, 48+24=72} (spacing is normalised) + {24+48=72}
    #   -> 5 equations, 3 distinct -> 100 * 3/5 = 60
    # problem 1: {\frac{100}{2}=50, 100-50-15-30=5} + {} + {15*2=30, 50+15+30=95, 100-95=5}
    #   -> 5 equations, 5 distinct -> 100
    # problem 2: no equation written -> left out;  div_equ = (60 + 100) / 2 = 80
    # answers: 72, 72, 72 -> 100/3; 5, 5, 5 -> 100/3; 3, 4, 3 -> 200/3;  div_answers = (400/3) / 3
    records = [PromptRecord("q", answer=gold) for gold, _ in GSM8K_SOLUTIONS]
    reward = MathReward()  # integer answers never reach the math-verify worker
    scored = CompositeReward([reward]).score_batch(records, [text for _, text in GSM8K_SOLUTIONS])
    assert scored.equations[:3] == [("48/2=24", "48+24=72"), ("48/2=24", "48+24=72"), ("24+48=72",)]
    assert scored.equations[4] == () and scored.equations[5] == ("15*2=30", "50+15+30=95", "100-95=5")
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert float(div_equ(group_ids, scored.equations)) == pytest.approx(80.0)
    assert float(div_answers(group_ids, scored.answers)) == pytest.approx(400 / 9)
    metric = DivEqu()
    metric.update(group_ids[:3], scored.equations[:3])
    metric.update(group_ids[3:], scored.equations[3:])
    assert float(metric.compute()) == pytest.approx(80.0)
    assert reward.verifier._worker is None
    with pytest.raises(TypeError, match="div_answers"):  # answers passed where equations are expected
        div_equ(group_ids, scored.answers)
    assert math.isnan(float(div_equ(torch.tensor([0, 0]), [None, ()])))


def test_div_equ_on_countdown_is_the_answer_ratio_as_before():
    # CountDown: a completion's one equation is its normal-form answer, so Div-Equ keeps its values
    # problem 0: (12-7)*3, (12-7)*3, 12+7-3, none -> 3 extracted, 2 distinct -> 100 * 2/3
    # problem 1: (12-7)*3 twice (the <think> work is not an answer) -> 100 * 1/2;  mean = 175/3
    record = PromptRecord("p", meta={"numbers": [3, 7, 12], "target": 15})
    completions = ["<answer>3*(12-7)</answer>", "<answer>(12-7)*3</answer>", "<answer>12+7-3</answer>", "none",
                   "<think>12 - 7 = 5, 5 * 3 = 15</think><answer>(12-7)*3</answer>", "<answer>3*(12-7)</answer>"]
    scored = CompositeReward([CountdownReward()]).score_batch([record] * 6, completions)
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1])
    assert float(div_equ(group_ids, scored.equations)) == pytest.approx(175 / 3)
    assert float(div_answers(group_ids, scored.answers)) == pytest.approx(175 / 3)


def test_distinct_n_by_hand():
    texts = ["x + x + x", "y", ""]
    # "x + x + x": 5 tokens, 2 distinct unigrams -> 0.4; bigrams (x,+) (+,x) (x,+) (+,x) -> 2/4 = 0.5
    # "y": one unigram -> 1.0, no bigram (left out); "": nothing (left out)
    assert float(distinct_n(texts, 1)) == pytest.approx((0.4 + 1.0) / 2)
    assert float(distinct_n(texts, 2)) == pytest.approx(0.5)
    metric = DistinctN(n=1)
    for text in texts:
        metric.update([text])
    assert float(metric.compute()) == pytest.approx(0.7)
    assert math.isnan(float(distinct_n(["", "a"], 3)))


def test_self_bleu_by_hand():
    # BLEU-2 of "a b c d" against "a b c e": unigram precision 3/4, bigram 2/3 (ab, bc match; cd not),
    # equal lengths -> brevity penalty 1; BLEU = sqrt(3/4 * 2/3) = sqrt(1/2); symmetric for the other
    group_ids = torch.tensor([0, 0])
    value = self_bleu(group_ids, ["a b c d", "a b c e"], n_gram=2)
    assert float(value) == pytest.approx(100 - 100 * math.sqrt(0.5))
    # identical responses: BLEU 1 -> diversity 0; disjoint: BLEU 0 -> 100; tokens are words and symbols
    assert float(self_bleu(torch.tensor([0, 0, 0]), ["(1+2)*3"] * 3)) == pytest.approx(0.0)
    assert float(self_bleu(torch.tensor([0, 0]), ["1+2", "3*4"])) == pytest.approx(100.0)
    # an empty response and a problem with one response are left out
    metric = SelfBLEU(n_gram=2)
    metric.update(torch.tensor([0, 0, 0, 1]), ["a b c d", "", "a b c e", "z"])
    assert float(metric.compute()) == pytest.approx(100 - 100 * math.sqrt(0.5))
    assert math.isnan(float(self_bleu(torch.tensor([0, 0, 1]), ["a b", "", "c"])))


def test_distinct_correct_by_hand():
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1])
    correct = torch.tensor([True, True, True, False, False, False])
    answers = ["1+2", "1+2", "2*3/2", "9", "1", None]
    # problem 0: correct answers {1+2, 2*3/2} -> 2; problem 1: none correct -> 0; mean 1.0
    assert float(distinct_correct_mean(group_ids, correct, answers)) == pytest.approx(1.0)
    metric = DistinctCorrect()
    metric.update(group_ids, correct, answers)
    assert float(metric.compute()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ entropy
def test_token_entropy_split_by_verdict():
    entropy = torch.tensor([[1.0, 2.0, 7.0], [3.0, 9.0, 9.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    correct = torch.tensor([True, False, True])
    # all: (1 + 2 + 3 + 5 + 5 + 5) / 6 = 21/6; correct (rows 0, 2): (1 + 2 + 15) / 5 = 18/5; incorrect: 3/1
    expected = torch.tensor([21 / 6, 18 / 5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(token_entropy(entropy, mask, correct), expected)
    metric = TokenEntropy()
    metric.update(entropy[:1], mask[:1], correct[:1])
    metric.update(entropy[1:], mask[1:], correct[1:])
    out = metric.compute()
    torch.testing.assert_close(torch.stack([out["all"], out["correct"], out["incorrect"]]), expected)
    none_correct = token_entropy(entropy, mask, torch.zeros(3, dtype=torch.bool))
    assert math.isnan(float(none_correct[1])) and float(none_correct[2]) == pytest.approx(21 / 6)


# ------------------------------------------------------------------------------------------ RolloutMetrics
def fake_rollout(group_ids, correct, completions, answers, length: int = 3, equations=()) -> RolloutBatch:
    n = len(completions)
    return RolloutBatch(
        prompt_ids=torch.zeros(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.bool),
        completion_ids=torch.zeros(n, length, dtype=torch.long),
        completion_mask=torch.ones(n, length, dtype=torch.bool),
        group_ids=torch.tensor(group_ids), rewards=torch.tensor(correct, dtype=torch.float32),
        correct=torch.tensor(correct), truncated=torch.zeros(n, dtype=torch.bool),
        completions=list(completions), answers=list(answers), equations=list(equations),
    )


def test_rollout_metrics_report_explains_every_undefined_value():
    metrics = RolloutMetrics(bootstrap=50)
    # two problems, 2 samples each, nothing correct, every completion empty, no answers
    rollout = fake_rollout([0, 0, 1, 1], [False] * 4, [""] * 4, [None] * 4)
    metrics.update(rollout, entropy=torch.ones(4, 3), greedy_correct=torch.tensor([True, True]))
    report = metrics.compute()
    undefined = {name for name, value in report.values.items() if value is None}
    assert undefined == {"div_equ", "div_answers", "distinct_1", "distinct_2", "distinct_3", "self_bleu",
                         "entropy_correct"}
    assert undefined | {"potential@k"} == set(report.notes)
    assert "greedy decoding solved every problem" in report.notes["potential@k"]
    assert report.values["greedy_accuracy"] == 1.0 and report.values["entropy_incorrect"] == 1.0
    assert report.passk["value"] == [0.0, 0.0] and report.passk["low"] == [0.0, 0.0]
    assert "NaN" not in json.dumps(report.to_dict())  # json.dumps writes float nan as NaN


def test_rollout_metrics_values_match_the_functional_forms():
    group_ids = [0, 0, 0, 1, 1, 1]
    correct = [True, False, True, False, False, True]
    texts = ["<answer>1+2</answer>", "<answer>3</answer>", "<answer>2+1</answer>", "x", "x y", "<answer>4*5</answer>"]
    answers = ["1+2", "3", "1+2", None, None, "4*5"]
    equations = [("1+2=3",), ("1+2=3", "3=3"), (), None, ("2*2=4",), ("4*5=20",)]
    metrics = RolloutMetrics(distinct_ns=(2,))
    rollout = fake_rollout(group_ids, correct, texts, answers, equations=equations)
    metrics.update(rollout, greedy_correct=torch.tensor([False, True]))
    report = metrics.compute()
    g = torch.tensor(group_ids)
    assert report.num_problems == 2 and report.samples_per_problem == 3
    assert report.passk["k"] == [1, 2, 3]
    assert report.passk["value"] == pytest.approx(pass_at_k_curve(torch.tensor([3, 3]), torch.tensor([2, 1])).tolist())
    assert report.potential["value"] == pytest.approx([2 / 3, 1.0, 1.0])  # problem 0 only: c = 2 of 3
    assert report.values["mean@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert report.values["div_equ"] == pytest.approx(float(div_equ(g, equations)))  # (100 * 2/3 + 100) / 2
    assert report.values["div_equ"] == pytest.approx(250 / 3)
    assert report.values["div_answers"] == pytest.approx(float(div_answers(g, answers)))
    assert report.values["distinct_2"] == pytest.approx(float(distinct_n(texts, 2)))
    assert report.values["self_bleu"] == pytest.approx(float(self_bleu(g, texts)))
    assert report.values["distinct_correct"] == pytest.approx(1.0)  # {1+2} and {4*5}
    assert "entropy" not in report.values  # not measured, not reported
