"""``prism_reward``: the verifiable reward (GRPO) and user segment scorers in place of the discriminator."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prism_plugin.layout import Segments
from prism_plugin.rewards import compute_score
from prism_plugin.scorers import FileScorer, VerifiableScorer, load_score_function
from tests.test_prism_align import run_align
from tests.testing_utils import align_prompt, rollout_batch

GOOD = "<caption> red 3 blue 2 </caption>\n<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>"
WRONG = "<caption> red 1 blue 2 </caption>\n<think> red 1 + blue 2 = 3 </think>\n<answer> 3 </answer>"
BROKEN = "<caption> red 3 </caption> 5"

SCORER_FILE = '''from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tally:  # a module-level dataclass needs its module registered while the file loads
    hits: int = 0

def caption_exact(rollouts, teacher, ground_truths):
    """1 when a rollout's caption equals its teacher's; reasoning: 1 when the answer is the ground truth."""
    return {
        "caption": [float(r.split() == t.split()) for r, t in zip(rollouts["caption"], teacher["caption"])],
        "reasoning": [float(f"<answer> {g} </answer>" in r) for r, g in zip(rollouts["reasoning"], ground_truths)],
    }

def wrong_length(rollouts, teacher, ground_truths):
    return {"caption": [1.0], "reasoning": [1.0]}
'''


def test_segments_split_the_layout_and_reject_other_text():
    parts = Segments.from_response(GOOD)
    assert parts.get("caption") == "<caption> red 3 blue 2 </caption>"
    assert parts.get("reasoning") == "<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>"
    assert parts.get("response") == GOOD
    assert Segments.from_response(BROKEN) is None


def test_verifiable_reward_is_compute_score_on_every_rollout(tokenizer):
    scorer = VerifiableScorer()
    assert scorer.segments == ["response"]
    texts = [GOOD, WRONG, BROKEN, GOOD]
    batch = rollout_batch(tokenizer, texts, [align_prompt(ground_truth="5"), align_prompt(ground_truth="3")], 2)
    scores = scorer.score(batch)
    expected = [compute_score(t, g)["overall"] for t, g in zip(texts, ["5", "5", "3", "3"], strict=True)]
    assert scores.rollout["response"].tolist() == pytest.approx(expected)
    assert expected == pytest.approx([1.0, 0.2, 0.0, 0.2])  # right, wrong answer in format, broken, wrong
    assert scores.valid.all()  # the reward gates the format itself
    assert batch.split.valid.tolist() == [True, True, False, True]  # ...while the layout check still sees it
    assert batch.rewards["accuracy"].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert scorer.score(batch).rollout["response"] is batch.rewards["overall"]  # computed once per batch
    no_truth = rollout_batch(tokenizer, texts, [align_prompt(ground_truth="5"), align_prompt()], 2)
    assert no_truth.rewards is None  # a prompt without ground truth


def test_verifiable_scorer_needs_a_ground_truth_per_row():
    from prism_plugin.data.records import DatasetRowError, PromptRecord

    with pytest.raises(DatasetRowError, match="rlvr.jsonl, row 3, field 'ground_truth'"):
        VerifiableScorer().prepare(PromptRecord("q", (), None, None, 3), "rlvr.jsonl")


def test_function_scorer_scores_valid_rollouts_against_their_own_teacher(tmp_path, tokenizer):
    (tmp_path / "scorers.py").write_text(SCORER_FILE)
    scorer = FileScorer(load_score_function(str(tmp_path / "scorers.py"), "caption_exact"), ["caption", "reasoning"])
    prompts = [align_prompt(Segments.from_response(GOOD), "5"), align_prompt(Segments.from_response(WRONG), "3")]
    scores = scorer.score(rollout_batch(tokenizer, [GOOD, WRONG, BROKEN, WRONG], prompts, 2))
    assert scores.rollout["caption"][[0, 1, 3]].tolist() == [1.0, 0.0, 1.0]
    assert scores.rollout["reasoning"][[0, 1, 3]].tolist() == [1.0, 0.0, 1.0]
    assert math.isnan(scores.rollout["caption"][2]) and math.isnan(scores.rollout["reasoning"][2])
    assert scores.valid.tolist() == [True, True, False, True]


def test_function_scorer_errors_name_the_problem(tmp_path, tokenizer):
    (tmp_path / "scorers.py").write_text(SCORER_FILE)
    scorer = FileScorer(load_score_function(str(tmp_path / "scorers.py"), "wrong_length"), ["caption", "reasoning"],
                        "scorers.py:wrong_length")
    batch = rollout_batch(tokenizer, [GOOD, GOOD], [align_prompt(Segments.from_response(GOOD), "5")], 2)
    with pytest.raises(ValueError, match="expected 2 'caption' scores, got 1"):
        scorer.score(batch)
    with pytest.raises(AttributeError, match="no function 'missing'"):
        load_score_function(str(tmp_path / "scorers.py"), "missing")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_score_function(str(tmp_path / "nope.py"), "f")


def test_prism_reward_key_is_validated():
    from prism_plugin.arguments import PrismArguments

    with pytest.raises(ValueError, match="prism_reward must be"):
        PrismArguments(prism_reward="oracle")
    with pytest.raises(ValueError, match="did you mean 'verifiable'"):
        PrismArguments(prism_reward="verifable")
    with pytest.raises(ValueError, match="FILE.py:FUNCTION"):
        PrismArguments(prism_reward="scorers:f")
    assert PrismArguments(prism_reward="my_scorer.py:score").prism_reward == "my_scorer.py:score"


def test_verifiable_reward_run_trains_the_policy_without_a_discriminator(tmp_path, tiny_dir, tiny_sft_run):
    policy = tiny_sft_run[0]
    out, steps = run_align(tmp_path, tiny_dir, policy, Path("unused"), prism_discriminator=None,
                           prism_reward="verifiable", max_steps=2)
    assert len(steps) == 2 and all("reward" in s and "response/student_score" in s for s in steps)
    for step in steps:  # the advantage is the group-normalised reward: mean 0 in every group
        assert step["advantage_mean"] == pytest.approx(0.0, abs=1e-5)
        assert step["response/student_score"] == pytest.approx(step["reward"])
        assert "disc/loss" not in step and "caption/teacher_score" not in step
    assert not (out / "discriminator").exists()
    before, after = load_file(str(policy / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "reward verifiable" in (out / "run.log").read_text()


def test_function_scorer_run_logs_per_segment_scores(tmp_path, tiny_dir, tiny_sft_run):
    (tmp_path / "scorers.py").write_text(SCORER_FILE)
    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], Path("unused"), prism_discriminator=None,
                           prism_reward=f"{tmp_path / 'scorers.py'}:caption_exact", max_steps=2)
    valid_steps = [s for s in steps if s["valid_ratio"] > 0]
    assert valid_steps, "the SFT policy should produce some layout-valid rollouts"
    for step in valid_steps:
        assert 0.0 <= step["caption/student_score"] <= 1.0 and 0.0 <= step["reasoning/student_score"] <= 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_arguments_derive_the_scored_segments_from_the_reward():
    from prism_plugin.arguments import PrismArguments

    args = PrismArguments(prism_scale_advantages=False, prism_reward="verifiable", prism_update_discriminator=True)
    assert args.segment_weights == {"response": 1.0}  # GRPO: one whole-response reward
    assert args.trains_discriminator is False  # nothing to update without a discriminator
    default = PrismArguments()
    assert default.prism_scale_advantages is True and default.segment_weights == {"caption": 0.5, "reasoning": 0.5}
    assert default.trains_discriminator is True


def test_overlong_shaping_adds_the_dapo_penalty_by_token_length(tokenizer):
    from prism_plugin.rewards import overlong_penalty_value

    texts = [GOOD, GOOD.replace("red 3 + blue 2", "red 3 + blue 2 + green 0 + yellow 0 + 0 + 0")]
    batch = rollout_batch(tokenizer, texts, [align_prompt(ground_truth="5")], 2)
    lengths = batch.rollouts.lengths.tolist()
    limit, buffer = lengths[0] + 8, 8  # the first ends where the buffer starts, the second inside it
    shaped = VerifiableScorer((limit, buffer, 1.0)).score(batch).rollout["response"]
    plain = VerifiableScorer().score(batch).rollout["response"]
    expected = [overlong_penalty_value(n, limit, buffer, 1.0) for n in lengths]
    assert expected[0] == 0.0 and expected[1] < 0.0
    assert (shaped - plain).tolist() == pytest.approx(expected)


def test_the_tiny_rlvr_config_runs_dapo_inside_llamafactory(tmp_path, tiny_dir, tiny_sft_run):
    """``yaml/prism_rlvr_tiny.yaml`` as shipped (2 steps): the verifiable reward, DAPO's clip-higher, dynamic
    sampling and overlong shaping; the layout-valid share is measured, not assumed."""
    from tests.lf_runs import llamafactory_train
    from tests.testing_utils import lf_config

    policy = tiny_sft_run[0]
    config = lf_config("prism_rlvr", tiny_dir, tmp_path / "rlvr", model_name_or_path=str(policy), max_steps=2,
                       logging_steps=1)
    proc = llamafactory_train(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "rlvr" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "policy/skipped" in e]
    assert len(steps) == 2
    for step in steps:
        assert {"dapo/dropped_groups", "dapo/sampling_rounds", "dapo/kept_groups", "reward"} <= set(step)
        assert 0.0 <= step["valid_ratio"] <= 1.0 and "disc/loss" not in step
    assert "policy loss dapo" in proc.stderr + proc.stdout
    kept = [s for s in steps if s["dapo/kept_groups"] > 0]
    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(tmp_path / "rlvr" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before) == bool(kept)
