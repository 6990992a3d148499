"""EntropyGRPO, R1ZeroDiv and PassAtKTraining on tiny fixed batches, with the arithmetic written out,
plus the equivalences that must hold (coefficient 0 == GRPO, k = 1 == GRPO on the verdict)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_dsrl import functional as F
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.objectives import GRPO, EntropyGRPO, PassAtKTraining, R1ZeroDiv
from lightning_dsrl.types import TrainBatch

LN = math.log


# token entropies of the fixed batch; (1, 1) is padding and must not count
ENTROPY = torch.tensor([[1.0, 2.0], [0.5, 9.9]])


def loss_and_grads(objective, batch, logp, entropy=None):
    """Loss, d loss / d logp and (if given) d loss / d entropy."""
    lp = logp.clone().requires_grad_()
    ent = entropy.clone().requires_grad_() if entropy is not None else None
    out = objective(batch, lp, ent)
    out.loss.backward()
    out.loss = out.loss.detach()
    return out, lp.grad, (ent.grad if ent is not None else None)


# ------------------------------------------------------------------ entropy regularisation
@pytest.mark.parametrize("coef", [0.1, -0.1])
def test_entropy_token_level_hand_computed(coef, fixed_batch):
    batch, logp = fixed_batch()
    grpo = GRPO(beta=0.0, scale_rewards="none")
    objective = EntropyGRPO(entropy_coef=coef, level="token", beta=0.0, scale_rewards="none")
    assert objective.needs_entropy
    batch = batch.replace(group_advantages=grpo.group_advantages(batch))
    base, base_grad, _ = loss_and_grads(grpo, batch, logp)
    out, grad, entropy_grad = loss_and_grads(objective, batch, logp, ENTROPY)
    # H = token mean over the 3 real tokens = (1 + 2 + .5) / 3 = 7/6; the term is -coef * 7/6
    assert float(out.loss) == pytest.approx(float(base.loss) - coef * 7 / 6, abs=1e-6)
    assert float(out.metrics["entropy_reg/term"]) == pytest.approx(-coef * 7 / 6, abs=1e-6)
    # d loss / d H(i,t) = -coef / 3 on real tokens, 0 on padding; the policy-gradient part is untouched
    torch.testing.assert_close(entropy_grad, torch.tensor([[-coef / 3, -coef / 3], [-coef / 3, 0.0]]))
    torch.testing.assert_close(grad, base_grad)


def test_entropy_sequence_level_hand_computed(fixed_batch):
    batch, logp = fixed_batch()
    objective = EntropyGRPO(entropy_coef=0.1, level="sequence", beta=0.0, scale_rewards="none")
    assert not objective.needs_entropy
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    # LL_old = [-2, -1]; A' = A - .1 * LL = [.5 + .2, -.5 + .1] = [.7, -.4]: every completion gets a bonus
    torch.testing.assert_close(objective.advantages(batch), torch.tensor([0.7, -0.4]))
    # the same as differential smoothing with gamma_p = c and gamma_n = -c (the sign pattern is the only difference)
    torch.testing.assert_close(objective.advantages(batch),
                               F.ds_advantages(batch.group_advantages, batch.correct, torch.tensor([-2.0, -1.0]), 0.1, -0.1))
    out = objective(batch, logp)
    assert float(out.metrics["entropy_reg/shaping"]) == pytest.approx((0.2 + 0.1) / 2)
    penalty = EntropyGRPO(entropy_coef=-0.1, level="sequence", logprob_reduction="mean", beta=0.0,
                          scale_rewards="none")
    # mean log-probs [-1, -1]; penalty: A' = A - .1 = [.4, -.6]
    torch.testing.assert_close(penalty.advantages(batch), torch.tensor([0.4, -0.6]))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_entropy_coef_zero_equals_grpo(level, fixed_batch):
    batch, logp = fixed_batch()
    grpo = GRPO(beta=0.05)
    objective = EntropyGRPO(entropy_coef=0.0, level=level, beta=0.05)
    assert not objective.needs_entropy
    batch = batch.replace(group_advantages=grpo.group_advantages(batch))
    a, grad_a, _ = loss_and_grads(grpo, batch, logp)
    b, grad_b, _ = loss_and_grads(objective, batch, logp, ENTROPY)
    assert float(a.loss) == pytest.approx(float(b.loss))
    torch.testing.assert_close(grad_a, grad_b)


# ------------------------------------------------------------------ R1-zero-Div
# sampled D_i = mean_t(-rho * logp):
#   seq 0 (correct): logp = -1 + ln 1.5 = -.5945349, -1 ; D_0 = (1.5 * .5945349 + 1 * 1) / 2 = .9459012
#   seq 1 (wrong):   logp = -1 + ln .5 = -1.6931472   ; D_1 = .5 * 1.6931472 = .8465736
D0 = (1.5 * (1 - LN(1.5)) + 1.0) / 2
D1 = 0.5 * (1 - LN(0.5))


# the paper's Eq. 12 divides the sum over positives by G = 2 (every completion), not by |P| = 1;
# normalizer=positives (the ablation) divides by |P|; over all samples both divide by 2
@pytest.mark.parametrize("apply_to,normalizer,term", [
    ("positive", "completions", -0.1 * D0 / 2),
    ("positive", "positives", -0.1 * D0),
    ("all", "completions", -0.1 * (D0 + D1) / 2),
    ("all", "positives", -0.1 * (D0 + D1) / 2),
])
def test_r1_zero_div_sampled_hand_computed(apply_to, normalizer, term, fixed_batch):
    batch, logp = fixed_batch()
    grpo = GRPO(beta=0.0, scale_rewards="none")
    objective = R1ZeroDiv(diversity_coef=0.1, apply_to=apply_to, normalizer=normalizer, beta=0.0,
                          scale_rewards="none")
    assert not objective.needs_entropy
    batch = batch.replace(group_advantages=grpo.group_advantages(batch))
    base = grpo(batch, logp)
    out = objective(batch, logp)
    assert float(out.loss) == pytest.approx(float(base.loss) + term, abs=1e-6)
    assert float(out.metrics["div/num_used"]) == (1 if apply_to == "positive" else 2)
    assert float(out.metrics["div/term"]) == pytest.approx(term, abs=1e-6)


def test_r1_zero_div_exact_estimator_hand_computed(fixed_batch):
    batch, logp = fixed_batch()
    objective = R1ZeroDiv(diversity_coef=0.1, estimator="exact", beta=0.0, scale_rewards="none")
    assert objective.needs_entropy
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    base = GRPO(beta=0.0, scale_rewards="none")(batch, logp)
    out, _, entropy_grad = loss_and_grads(objective, batch, logp, ENTROPY)
    # positive seq 0: D_0 = (1 + 2) / 2 = 1.5, G = 2 -> term -.1 * 1.5 / 2 = -.075;
    # d term / d H(0,t) = -.1 / 2 (mean over T = 2) / 2 (G) = -.025
    assert float(out.loss) == pytest.approx(float(base.loss) - 0.075, abs=1e-6)
    torch.testing.assert_close(entropy_grad, torch.tensor([[-0.025, -0.025], [0.0, 0.0]]))


def test_r1_zero_div_lambda_zero_equals_grpo(fixed_batch):
    batch, logp = fixed_batch()
    grpo = GRPO(beta=0.05)
    batch = batch.replace(group_advantages=grpo.group_advantages(batch))
    a, grad_a, _ = loss_and_grads(grpo, batch, logp)
    b, grad_b, _ = loss_and_grads(R1ZeroDiv(diversity_coef=0.0, beta=0.05), batch, logp)
    assert float(a.loss) == pytest.approx(float(b.loss))
    torch.testing.assert_close(grad_a, grad_b)


def test_r1_zero_div_without_positives_adds_nothing(fixed_batch):
    batch, logp = fixed_batch()
    batch = batch.replace(correct=torch.tensor([False, False]))
    objective = R1ZeroDiv(diversity_coef=0.1, beta=0.0)
    batch = batch.replace(group_advantages=objective.group_advantages(batch))
    assert float(objective(batch, logp).loss) == pytest.approx(float(GRPO(beta=0.0)(batch, logp).loss))


def test_r1_zero_div_gradient_raises_tokens_below_one_over_e():
    """At rho = 1 (one update per rollout) d loss / d logp(t) = lambda * (1 + logp) / T / |P|: one gradient
    step raises pi of the sampled tokens with pi < 1/e = .368 and lowers those above it."""
    probs = torch.tensor([0.1, 0.3, 0.5, 0.9])  # pi of the sampled token at each of 4 positions
    rest = (1 - probs) / 2  # two other tokens share the rest: rows are [p, rest, rest]
    logits = torch.log(torch.stack([probs, rest, rest], dim=-1)).requires_grad_()  # [4, 3]
    tokens = torch.zeros(1, 4, dtype=torch.long)
    batch = TrainBatch(
        prompt_ids=torch.ones(1, 1, dtype=torch.long), prompt_mask=torch.ones(1, 1, dtype=torch.bool),
        completion_ids=tokens, completion_mask=torch.ones(1, 4, dtype=torch.bool), group_ids=torch.tensor([0]),
        rewards=torch.tensor([1.0]), correct=torch.tensor([True]), truncated=torch.zeros(1, dtype=torch.bool),
        group_advantages=torch.zeros(1),  # isolate the diversity term: no policy-gradient signal
    )
    objective = R1ZeroDiv(diversity_coef=1.0, beta=0.0)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.view(4, 1)).view(1, 4)
    logp.retain_grad()
    batch = batch.replace(logp_old=logp.detach())
    objective(batch, logp).loss.backward()
    # lambda = 1, T = 4, G = |P| = 1
    torch.testing.assert_close(logp.grad, (1 + probs.log()).view(1, 4) / 4)
    with torch.no_grad():
        new = torch.softmax(logits - 0.5 * logits.grad, -1)[:, 0]
    assert (new > probs).tolist() == [True, True, False, False]


def test_r1_zero_div_micro_batches_add_up_to_the_minibatch_term(fixed_batch):
    batch, logp = fixed_batch()
    # two groups, four completions, two of them correct, in different micro-batches
    two = TrainBatch.concat([batch, batch])
    two = two.replace(group_advantages=GRPO().group_advantages(two))
    logp2 = torch.cat([logp, logp])
    objective = R1ZeroDiv(diversity_coef=0.1, beta=0.0)
    full = float(objective(two, logp2).loss)
    # micro-batches of one completion (consecutive rows): the normaliser (4 completions) comes from
    # the minibatch sizes
    parts = sum(float(objective(micro, logp2[i : i + 1]).loss) for i, micro in enumerate(two.micro_batches(1)))
    assert parts == pytest.approx(full, abs=1e-6)
    assert float(objective(two, logp2).metrics["div/num_used"]) == 2
    # the term: -lambda * (D0 + D0) / 4 completions
    assert full == pytest.approx(float(GRPO(beta=0.0)(two, logp2).loss) - 0.1 * 2 * D0 / 4, abs=1e-6)
    # the logged per-completion term, averaged over micro-batches by their sizes, is the minibatch term
    terms = [float(objective(micro, logp2[i : i + 1]).metrics.get("div/term", 0.0))
             for i, micro in enumerate(two.micro_batches(1))]
    assert sum(terms) / 4 == pytest.approx(-0.1 * 2 * D0 / 4, abs=1e-6)


# ------------------------------------------------------------------ pass@k training
def passk_batch() -> TrainBatch:
    # three groups of 4 (labels unsorted): one correct, all but one correct, two correct
    correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0], dtype=torch.bool)
    n = correct.numel()
    return TrainBatch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.bool),
        completion_ids=torch.ones(n, 2, dtype=torch.long), completion_mask=torch.ones(n, 2, dtype=torch.bool),
        group_ids=torch.tensor([7] * 4 + [2] * 4 + [5] * 4), rewards=correct.float() + 0.1,
        correct=correct, truncated=torch.zeros(n, dtype=torch.bool), logp_old=torch.full((n, 2), -1.0),
    )


def test_passk_training_hand_computed():
    batch = passk_batch()
    objective = PassAtKTraining(k=2, beta=0.0)
    advantages, group_metrics = objective.rollout_advantages(batch)
    # group 7: N=4, N_neg=3: R = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2; A_pos = 1, A_neg = (1/2 - 2/3)/(1/2) = -1/3
    # group 2: N_neg=1 < k: every pair holds a correct sample, R = 1, sigma = 0 -> all 0
    # group 5: N_neg=2: R = 1 - 1/6 = 5/6, sigma = sqrt(5)/6 = .372678;
    #          A_pos = (1/6)/sigma = .447214, A_neg = (1/6 - C(1,1)/C(3,1))/sigma = -.447214
    s = math.sqrt(5) / 6
    expected = [1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0, 1 / 6 / s, -1 / 6 / s, 1 / 6 / s, -1 / 6 / s]
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # the group statistics, once per rollout
    assert float(group_metrics["passk/group_reward"]) == pytest.approx((1 / 2 + 1 + 5 / 6) / 3)
    assert float(group_metrics["passk/zero_signal_groups"]) == pytest.approx(1 / 3)
    batch = batch.replace(group_advantages=advantages)
    out = objective(batch, batch.logp_old.clone())
    # rho = 1 and seq-mean-token-mean: loss = -mean_i A_i = -(1 - 1 + 0 + 0) / 12 = 0
    assert float(out.loss) == pytest.approx(0.0, abs=1e-6)


def test_passk_training_rejects_k_larger_than_the_group():
    objective = PassAtKTraining(k=8)
    objective.check(8)
    with pytest.raises(ConfigError, match=r"model\.objective\.k=8 is larger than rollout\.num_generations=4"):
        objective.check(4)
    with pytest.raises(ConfigError, match="model.objective.k"):
        PassAtKTraining(k=0)
    with pytest.raises(ConfigError, match="model.objective.k"):
        PassAtKTraining(k=5).group_advantages(passk_batch())


# ------------------------------------------------------------------ bad settings
def test_bad_settings_raise_one_clear_error():
    with pytest.raises(ConfigError, match="model.objective.diversity_coef"):
        R1ZeroDiv(diversity_coef=-0.01)
    with pytest.raises(ConfigError, match="model.objective.apply_to='positives'"):
        R1ZeroDiv(apply_to="positives")
    with pytest.raises(ConfigError, match="model.objective.estimator"):
        R1ZeroDiv(estimator="full")
    with pytest.raises(ConfigError, match="normalizer"):
        R1ZeroDiv(normalizer="group")
    with pytest.raises(ConfigError, match="model.objective.level"):
        EntropyGRPO(level="sentence")
    with pytest.raises(ConfigError, match="model.objective.beta"):
        PassAtKTraining(beta=-1.0)
    assert not R1ZeroDiv(beta=0.0).needs_reference and EntropyGRPO(beta=0.1).needs_reference
