"""Group normalisation and segment advantages against hand-computed values (Wang et al. 2026, §3)."""

import math

import pytest
import torch

from prism_plugin.advantage import fill_invalid_scores, group_normalize, segment_advantage

EPS = 1e-6
PRISM_WEIGHTS = {"caption": 0.5, "reasoning": 0.5}


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-6) -> None:
    assert actual.tolist() == pytest.approx(expected, abs=tol)


def test_group_normalize_unbiased_std_per_group():
    # group 0: [1, 2, 3] -> mean 2, unbiased std 1; group 1: [10, 14] -> mean 12, std sqrt(8)
    values = torch.tensor([1.0, 10.0, 2.0, 14.0, 3.0])
    out = group_normalize(values, torch.tensor([0, 1, 0, 1, 0]))
    s = math.sqrt(8.0)
    close(out, [-1 / (1 + EPS), -2 / (s + EPS), 0.0, 2 / (s + EPS), 1 / (1 + EPS)])


def test_group_normalize_singleton_uses_mean_zero_std_one():
    out = group_normalize(torch.tensor([5.0, 1.0, 3.0]), [7, 8, 8])
    close(out, [5 / (1 + EPS), -1.0 / (math.sqrt(2) + EPS), 1.0 / (math.sqrt(2) + EPS)])


def test_group_normalize_zero_variance_is_zero():
    close(group_normalize(torch.tensor([2.0, 2.0, 2.0]), [0, 0, 0]), [0.0, 0.0, 0.0])


def test_group_ids_need_not_be_contiguous_or_sorted():
    a = group_normalize(torch.tensor([1.0, 2.0, 4.0, 8.0]), [42, -3, 42, -3])
    b = group_normalize(torch.tensor([1.0, 4.0, 2.0, 8.0]), [0, 0, 1, 1])
    close(a, [b[0].item(), b[2].item(), b[1].item(), b[3].item()])


def test_fill_invalid_uses_group_valid_min_minus_one_and_zero_when_none_valid():
    scores = torch.tensor([3.0, 1.0, 99.0, 7.0, 5.0])
    valid = torch.tensor([True, True, False, False, False])
    out = fill_invalid_scores(scores, valid, [0, 0, 0, 1, 1])
    close(out, [3.0, 1.0, 0.0, -1.0, -1.0])


def test_segment_advantage_hand_computed_prism():
    # group 0: c=[1, 2, -] r=[0, 1, -], third invalid -> c~=[1,2,0], r~=[0,1,-1]
    # both normalise to [0, 1, -1] (mean 1 / 0, std 1) -> A = [0, 1, -1] - 1.5*[0,0,1]
    # group 1: one invalid rollout alone -> filled -1, normalised with mean 0, std 1 -> 0.5·(-1) + 0.5·(-1) - 1.5
    # (the authors' grpo_multi_reward gives -2.5 here; a group of >= 2 with no valid member gets -1.5)
    scores = {
        "caption": torch.tensor([1.0, 2.0, float("nan"), 0.5]),
        "reasoning": torch.tensor([0.0, 1.0, 3.0, 2.0]),
    }
    valid = torch.tensor([True, True, False, False])
    out = segment_advantage(scores, PRISM_WEIGHTS, valid, [0, 0, 0, 1])
    k = 1 / (1 + EPS)
    close(out, [0.0, k, -k - 1.5, -k - 1.5])
    assert out[3].item() == pytest.approx(-2.5, abs=1e-5)


def test_segment_advantage_weights_and_penalty_are_used():
    scores = {"caption": torch.tensor([0.0, 2.0, 4.0]), "reasoning": torch.tensor([4.0, 2.0, 0.0])}
    out = segment_advantage(scores, {"caption": 1.0, "reasoning": 0.25}, torch.ones(3, dtype=torch.bool), [0, 0, 0])
    k = 1 / (2 + EPS)  # std of [0,2,4] is 2
    close(out, [-2 * k + 0.25 * 2 * k, 0.0, 2 * k - 0.25 * 2 * k])


def test_all_invalid_group_gets_minus_penalty():
    scores = {"caption": torch.randn(4), "reasoning": torch.randn(4)}
    out = segment_advantage(scores, PRISM_WEIGHTS, torch.zeros(4, dtype=torch.bool), [0, 0, 0, 0], format_penalty=2.0)
    close(out, [-2.0] * 4)
    for scale in (True, False):  # an invalid rollout alone in its group: its filled -1 against mean 0
        alone = segment_advantage(scores, PRISM_WEIGHTS, torch.zeros(4, dtype=torch.bool), [0, 1, 2, 3], scale=scale)
        close(alone, [-(1 / (1 + EPS) if scale else 1.0) - 1.5] * 4)


def test_gad_single_response_segment_is_plain_group_normalisation():
    score = torch.tensor([0.3, -1.2, 2.5, 0.0, 1.0, 1.5])
    groups = [0, 0, 0, 1, 1, 1]
    out = segment_advantage({"response": score}, {"response": 1.0}, torch.ones(6, dtype=torch.bool), groups)
    close(out, group_normalize(score, groups).tolist())


def test_singleton_valid_group_uses_raw_scores():
    out = segment_advantage(
        {"caption": torch.tensor([3.0]), "reasoning": torch.tensor([-1.0])}, PRISM_WEIGHTS, torch.tensor([True]), [0]
    )
    close(out, [0.5 * 3 / (1 + EPS) - 0.5 / (1 + EPS)])


def test_mismatched_segment_names_are_rejected():
    with pytest.raises(ValueError, match="same segments"):
        segment_advantage({"caption": torch.zeros(2)}, {"reasoning": 1.0}, torch.ones(2, dtype=torch.bool), [0, 0])


def test_unscaled_advantages_only_centre_each_group():
    # near-equal scores stay near zero instead of being stretched to unit variance
    values = torch.tensor([0.50, 0.51, 0.49, 3.0, 1.0])
    close(group_normalize(values, [0, 0, 0, 1, 1], scale=False), [0.0, 0.01, -0.01, 1.0, -1.0])
    stretched = group_normalize(values, [0, 0, 0, 1, 1])
    assert abs(stretched[1].item()) > 0.99  # the scaled version: ±1 for a 0.01 difference


def test_segment_advantage_without_scaling_hand_computed():
    scores = {"caption": torch.tensor([1.0, 2.0, float("nan")]), "reasoning": torch.tensor([0.0, 0.4, 9.0])}
    valid = torch.tensor([True, True, False])
    # caption~ = [1, 2, 0] (invalid: group min - 1), mean 1 -> [0, 1, -1]
    # reasoning~ = [0, 0.4, -1], mean -0.2 -> [0.2, 0.6, -0.8]
    out = segment_advantage(scores, {"caption": 0.5, "reasoning": 0.5}, valid, [0, 0, 0], scale=False)
    close(out, [0.1, 0.8, -0.9 - 1.5])
