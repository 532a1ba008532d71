"""Our policy losses and group normalisation against trl 0.24 and EasyR1 on identical random tensors."""

import pytest
import torch

from prism_plugin.advantage import group_normalize
from prism_plugin.losses import get_policy_loss
from tests.easyr1_support import no_global_changes, policy_loss_keywords, xfail_without_loss_type
from tests.peers import easyr1_core_algos, trl_grpo_loss


@pytest.fixture(autouse=True)
def _leaves_no_global_changes():
    with no_global_changes():
        yield


def random_batch(seed: int, batch: int = 6, width: int = 9, spread: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, width, generator=gen, dtype=torch.float64) * 3
    new = old + torch.randn(batch, width, generator=gen, dtype=torch.float64) * spread
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float64)
    return new, old, adv, mask


def loss_and_grad(fn, new, *args, **kwargs):
    lp = new.clone().requires_grad_(True)
    loss = fn(lp, *args, **kwargs)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    return loss.detach(), lp.grad


# trl loss_type / settings  ->  our registry name / options
TRL_CASES = [
    ("grpo", {"loss_type": "grpo"}, "grpo", {"agg_mode": "seq-mean-token-mean"}),
    ("bnpo", {"loss_type": "bnpo"}, "grpo", {"agg_mode": "token-mean"}),
    # Dr. GRPO divides by the generation budget (trl: max_completion_length), not the batch's padded width
    ("dr_grpo", {"loss_type": "dr_grpo", "max_completion_length": 16}, "grpo",
     {"agg_mode": "seq-mean-token-sum-norm", "horizon": 16}),
    ("dapo", {"loss_type": "dapo", "epsilon_high": 0.28}, "dapo", {}),
    ("gspo", {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon_low": 3e-4,
              "epsilon_high": 4e-4}, "gspo", {}),
]


@pytest.mark.parametrize("case_id, trl_kwargs, ours, our_kwargs", TRL_CASES, ids=[c[0] for c in TRL_CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_matches_trl(case_id, trl_kwargs, ours, our_kwargs, seed):
    spread = 0.01 if case_id == "gspo" else 0.3
    new, old, adv, mask = random_batch(seed, spread=spread)
    trl_loss, trl_grad = loss_and_grad(trl_grpo_loss, new, old, adv, mask, **trl_kwargs)
    our_loss, our_grad = loss_and_grad(get_policy_loss(ours), new, old, adv, mask, **our_kwargs)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-9, atol=1e-12)
    assert (trl_grad != 0).any(), "a parity case where nothing moves proves nothing"


EASYR1_CASES = [
    # EasyR1 always applies its dual clip to negative advantages
    ("default", {"loss_type": "default", "loss_avg_mode": "token"}, "grpo", {"dual_clip": 3.0}),
    ("dapo", {"loss_type": "default", "loss_avg_mode": "token", "clip_ratio_high": 0.28}, "dapo", {"dual_clip": 3.0}),
    ("gspo", {"loss_type": "gspo", "loss_avg_mode": "seq", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4},
     "gspo", {}),
    ("gspo_token", {"loss_type": "gspo_token", "loss_avg_mode": "seq", "clip_ratio_low": 3e-4,
                    "clip_ratio_high": 4e-4}, "gspo_token", {}),
]


@pytest.mark.parametrize("case_id, easyr1_kwargs, ours, our_kwargs", EASYR1_CASES, ids=[c[0] for c in EASYR1_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_matches_easyr1(case_id, easyr1_kwargs, ours, our_kwargs, seed, request):
    core_algos = easyr1_core_algos()
    keywords = policy_loss_keywords(core_algos)
    xfail_without_loss_type(request, keywords, easyr1_kwargs["loss_type"])
    spread = 0.01 if case_id.startswith("gspo") else 1.5  # wide enough to hit the dual clip
    new, old, adv, mask = random_batch(seed, spread=spread)
    settings = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_dual": 3.0, "tau_positive": 1.0,
                "tau_negative": 1.0, **easyr1_kwargs}
    settings = {key: value for key, value in settings.items() if key in keywords}  # v0.3.2: no tau_*, loss_type

    def easyr1(lp, old_lp, adv_, mask_):
        return core_algos.compute_policy_loss(
            old_log_probs=old_lp, log_probs=lp, advantages=adv_[:, None].expand_as(lp), response_mask=mask_, **settings
        )

    ref_loss, ref_grad = loss_and_grad(easyr1, new, old, adv, mask)
    our_loss, our_grad = loss_and_grad(get_policy_loss(ours), new, old, adv, mask, **our_kwargs)
    torch.testing.assert_close(our_loss, ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(our_grad, ref_grad, rtol=1e-6, atol=1e-7)


def test_group_normalize_matches_easyr1_grpo_advantage():
    core_algos = easyr1_core_algos()
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(12, generator=gen)
    index = [0, 1, 2] * 4
    rewards = torch.zeros(12, 5)
    rewards[:, -1] = scores
    ref, _ = core_algos.compute_grpo_outcome_advantage(rewards, torch.ones(12, 5), index)
    torch.testing.assert_close(group_normalize(scores, index), ref[:, 0], rtol=1e-6, atol=1e-6)
