"""Discriminator and policy losses against hand-computed values."""

import math

import pytest
import torch

from prism_plugin.advantage import dynamic_sampling_mask
from prism_plugin.discriminator.loss import discriminator_loss
from prism_plugin.losses import (
    aggregate_loss,
    get_policy_loss,
    policy_loss_names,
    register_policy_loss,
    unregister_policy_loss,
)

pytestmark = pytest.mark.transformers4


def nls(x: float) -> float:
    """-log(sigmoid(x))."""
    return math.log1p(math.exp(-x))


# --------------------------------------------------------------------------- discriminator


def test_discriminator_loss_hand_computed():
    teacher = {"caption": torch.tensor([1.0, 2.0]), "reasoning": torch.tensor([0.0, 0.0])}
    student = {"caption": torch.tensor([0.0, 3.0]), "reasoning": torch.tensor([1.0, -1.0])}
    loss, m = discriminator_loss(teacher, student, torch.tensor([True, True]))
    bt = (nls(1) + nls(-1)) / 2 * 2  # caption margins [1,-1], reasoning margins [-1,1]
    reg = (1 + 4 + 0 + 9 + 0 + 0 + 1 + 1) / 8
    assert loss.item() == pytest.approx(bt + 0.001 * reg, abs=1e-6)
    assert m["caption/accuracy"] == 0.5 and m["reasoning/accuracy"] == 0.5 and m["accuracy"] == 0.5
    assert m["caption/score_gap"] == pytest.approx(0.0)
    assert m["reasoning/teacher_score"] == 0.0 and m["reasoning/student_score"] == 0.0
    assert m["num_pairs"] == 2


def test_discriminator_loss_ignores_invalid_pairs_in_bradley_terry():
    teacher = {"caption": torch.tensor([1.0, 50.0]), "reasoning": torch.tensor([0.0, 50.0])}
    student = {"caption": torch.tensor([0.0, -50.0]), "reasoning": torch.tensor([1.0, -50.0])}
    loss, m = discriminator_loss(teacher, student, torch.tensor([True, False]), score_reg_coef=0.01,
                                 reg_rows="valid")
    expected = nls(1) + nls(-1) + 0.01 * (1 + 0 + 0 + 1) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["caption/accuracy"] == 1.0 and m["reasoning/accuracy"] == 0.0
    nan = {"caption": torch.tensor([1.0, float("nan")]), "reasoning": torch.tensor([0.0, float("nan")])}
    assert discriminator_loss(nan, student, torch.tensor([True, False]), 0.01, reg_rows="valid")[0].item() == (
        pytest.approx(expected, abs=1e-6))  # scores of unused rows may be anything


# The authors' update_critic on these inputs (their code, commit 6079044) gives the values below.


def test_scores_are_clipped_before_the_bradley_terry_loss():
    t_c = torch.tensor([12.0], requires_grad=True)
    teacher = {"caption": t_c, "reasoning": torch.tensor([1.0])}
    student = {"caption": torch.tensor([0.0]), "reasoning": torch.tensor([0.0])}
    loss, _ = discriminator_loss(teacher, student, torch.tensor([True]), clip=10.0)
    assert loss.item() == pytest.approx(nls(10) + nls(1) + 0.001 * (100 + 1 + 0 + 0) / 4, abs=1e-7)
    assert loss.item() == pytest.approx(0.3385571, abs=1e-7)
    loss.backward()
    assert t_c.grad.item() == 0.0  # past the clip: no gradient from either term
    unclipped, _ = discriminator_loss(teacher, student, torch.tensor([True]), clip=None)
    assert unclipped.item() == pytest.approx(0.3495178, abs=1e-7)


def test_a_batch_without_valid_pairs_trains_the_teacher_scores_up():
    t_c = torch.tensor([1.0], requires_grad=True)
    t_r = torch.tensor([1.0], requires_grad=True)
    loss, m = discriminator_loss({"caption": t_c, "reasoning": t_r},
                                 {"caption": torch.tensor([0.0]), "reasoning": torch.tensor([0.0])},
                                 torch.tensor([False]), clip=10.0)
    assert loss.item() == pytest.approx(0.01 * 2 * nls(1) + 0.001 * (1 + 1 + 0 + 0) / 4, abs=1e-7)
    assert loss.item() == pytest.approx(0.006765, abs=1e-6) and m["num_pairs"] == 0.0
    loss.backward()  # d/dt [0.01·(−log σ(t))] + d/dt [0.001·t²/4] at t = 1
    assert t_c.grad.item() == pytest.approx(-0.01 * (1 - math.exp(-nls(1))) + 0.0005, abs=1e-7)
    assert t_c.grad.item() == pytest.approx(-0.00219, abs=1e-5) and t_r.grad.item() == t_c.grad.item()


def test_the_regulariser_covers_every_row_by_default():
    teacher = {"caption": torch.tensor([1.0, 2.0]), "reasoning": torch.tensor([1.0, 2.0])}
    student = {"caption": torch.tensor([0.0, 3.0]), "reasoning": torch.tensor([0.0, 3.0])}
    valid = torch.tensor([True, False])
    authors, _ = discriminator_loss(teacher, student, valid, clip=10.0)
    assert authors.item() == pytest.approx(2 * nls(1) + 0.001 * (1 + 4 + 1 + 4 + 0 + 9 + 0 + 9) / 8, abs=1e-7)
    assert authors.item() == pytest.approx(0.6300234, abs=1e-7)
    valid_rows, _ = discriminator_loss(teacher, student, valid, clip=10.0, reg_rows="valid")
    assert valid_rows.item() == pytest.approx(0.6270234, abs=1e-7)


def test_discriminator_accuracy_counts_a_tie_as_one_half():
    teacher = {"caption": torch.tensor([1.0, 2.0, 0.5]), "reasoning": torch.tensor([0.0, 1.0, 1.0])}
    student = {"caption": torch.tensor([1.0, 1.0, 0.5]), "reasoning": torch.tensor([1.0, 1.0, 1.0])}
    _, m = discriminator_loss(teacher, student, torch.tensor([True, True, True]))
    assert m["caption/accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["reasoning/accuracy"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(3 / 6)


def test_discriminator_loss_gradient_pushes_teacher_up_student_down():
    t = torch.tensor([0.0], requires_grad=True)
    s = torch.tensor([0.0], requires_grad=True)
    loss, _ = discriminator_loss({"response": t}, {"response": s}, torch.tensor([True]), score_reg_coef=0.0)
    loss.backward()
    assert t.grad.item() == pytest.approx(-0.5) and s.grad.item() == pytest.approx(0.5)


def test_skip_without_valid_pairs_is_a_connected_zero():
    t = torch.tensor([3.0, 1.0], requires_grad=True)
    s = torch.tensor([2.0, 1.0], requires_grad=True)
    loss, m = discriminator_loss({"caption": t}, {"caption": s}, torch.tensor([False, False]), no_valid_pair="skip")
    assert loss.item() == 0.0 and m == {"num_pairs": 0.0}
    loss.backward()
    assert t.grad.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize(
    "mode, expected",
    [("token-mean", 10 / 4), ("seq-mean-token-mean", 3.0), ("seq-mean-token-sum", 5.0),
     ("seq-mean-token-sum-norm", (6 + 4) / 10 / 2)],
)
def test_aggregate_loss_modes(mode, expected):
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(loss, mask, mode, horizon=10).item() == pytest.approx(expected)


def test_dr_grpo_aggregation_divides_by_the_budget_not_the_padded_width():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    wider = torch.cat([loss, torch.zeros(2, 5)], dim=1), torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    narrow = aggregate_loss(loss, mask, "seq-mean-token-sum-norm", horizon=64)
    assert aggregate_loss(*wider, "seq-mean-token-sum-norm", horizon=64).item() == narrow.item() == 10 / 64 / 2
    with pytest.raises(ValueError, match="horizon"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")


def test_aggregate_loss_unknown_mode():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean")


# --------------------------------------------------------------------------- policy losses


def one_token(ratio: float, advantage: float):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    return lp, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1)


@pytest.mark.parametrize(
    "name, ratio, adv, expected, clipped",
    [
        ("grpo", 1.5, 1.0, -1.2, True),  # clipped at 1 + 0.2
        ("grpo", 1.1, 1.0, -1.1, False),
        ("grpo", 0.5, -1.0, 0.8, True),  # clipped at 1 - 0.2
        ("grpo", 1.25, 1.0, -1.2, True),
        ("dapo", 1.25, 1.0, -1.25, False),  # clip-higher 0.28 lets 1.25 through
        ("dapo", 1.5, 1.0, -1.28, True),
        ("dapo", 0.5, -1.0, 0.8, True),
    ],
)
def test_clipped_surrogate_hand_computed(name, ratio, adv, expected, clipped):
    loss, m = get_policy_loss(name)(*one_token(ratio, adv))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["clip_frac"] == (1.0 if clipped else 0.0)


def test_clipped_tokens_carry_no_gradient():
    lp, old, adv, mask = one_token(1.5, 1.0)
    loss, _ = get_policy_loss("grpo")(lp, old, adv, mask)
    loss.backward()
    assert lp.grad.item() == 0.0


def test_unclipped_gradient_is_minus_advantage_times_ratio():
    lp, old, adv, mask = one_token(1.1, 2.0)
    loss, _ = get_policy_loss("grpo")(lp, old, adv, mask)
    loss.backward()
    assert lp.grad.item() == pytest.approx(-2.0 * 1.1)


def test_dual_clip_bounds_negative_advantage_loss():
    loss, m = get_policy_loss("grpo")(*one_token(5.0, -1.0), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert m["dual_clip_frac"] == 1.0
    loss, _ = get_policy_loss("grpo")(*one_token(5.0, -1.0))
    assert loss.item() == pytest.approx(5.0)


def test_gspo_uses_sequence_mean_log_ratio_and_its_clip():
    # log-ratios 0.001 and -0.0002 -> mean 0.0004 -> s = e^0.0004 > 1 + 4e-4 -> clipped to 1.0004
    lp = torch.tensor([[0.001, -0.0002, 7.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    loss, m = get_policy_loss("gspo")(lp, old, torch.tensor([1.0], dtype=torch.float64), mask)
    assert loss.item() == pytest.approx(-1.0004, abs=1e-9)
    assert m["clip_frac"] == 1.0
    # inside the clip range: loss = -A * s exactly
    lp2 = torch.tensor([[0.0002, 0.0, 7.0]], dtype=torch.float64)
    loss2, _ = get_policy_loss("gspo")(lp2, old, torch.tensor([-2.0], dtype=torch.float64), mask)
    assert loss2.item() == pytest.approx(2.0 * math.exp(0.0001), abs=1e-9)


def test_gspo_token_equals_gspo_value_and_gradient_for_sequence_advantages():
    torch.manual_seed(0)
    base = torch.randn(4, 6) * 1e-4
    old = torch.randn(4, 6)
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    grads = []
    losses = []
    for name in ("gspo", "gspo_token"):
        lp = (old + base).clone().requires_grad_(True)
        loss, _ = get_policy_loss(name)(lp, old, adv, mask, clip_low=1.0, clip_high=1.0)
        loss.backward()
        losses.append(loss.item())
        grads.append(lp.grad)
    assert losses[0] == pytest.approx(losses[1], abs=1e-7)
    torch.testing.assert_close(grads[0], grads[1])


def test_registry_lists_and_rejects():
    assert {"grpo", "dapo", "gspo", "gspo_token"} <= set(policy_loss_names())
    with pytest.raises(KeyError, match="registered: "):
        get_policy_loss("nope")


def test_registering_a_variant_is_adding_a_function():
    @register_policy_loss("test_reinforce")
    def reinforce(log_probs, old_log_probs, advantages, mask, **_):
        return aggregate_loss(-advantages.unsqueeze(-1) * log_probs, mask), {}

    try:
        ones = torch.ones(1, 2)
        loss, _ = get_policy_loss("test_reinforce")(ones, ones, torch.tensor([2.0]), ones)
        assert loss.item() == -2.0
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("test_reinforce")(lambda *a, **k: None)
    finally:
        unregister_policy_loss("test_reinforce")
    assert "test_reinforce" not in policy_loss_names()


# --------------------------------------------------------------------------- DAPO helpers


def test_dynamic_sampling_keeps_only_groups_with_varying_metric():
    acc = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    keep = dynamic_sampling_mask(acc, [0, 0, 1, 1, 2, 2, 3])
    assert keep.tolist() == [False, False, False, False, True, True, False]
