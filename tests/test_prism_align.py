"""Stage prism_align: the alignment game as a real LLaMA-Factory run from the tiny SFT policy."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.lf_runs import llamafactory_train
from tests.testing_utils import align_prompt, lf_config, rollout_batch

pytestmark = pytest.mark.llamafactory


def failure_excerpt(log: str) -> str:
    """The lines that say why a run failed (any rank), then the log's tail."""
    markers = ("Error", "error:", "terminate", "Traceback", "Aborted", "what()")
    causes = [line for line in log.splitlines() if any(m in line for m in markers)]
    return "\n".join(causes[:40]) + "\n...\n" + log[-3000:]


def run_align(tmp_path: Path, tiny_dir: Path, policy: Path, disc: Path, env_extra: dict | None = None,
              **overrides) -> tuple[Path, list[dict]]:
    """A real ``llamafactory-cli train`` of the shipped ``yaml/prism_align_tiny.yaml`` (3 steps, G = 4, 96 new
    tokens by default); returns the output directory and the log entries of the policy updates."""
    out = Path(overrides.pop("output_dir", tmp_path / "align"))
    settings = {"model_name_or_path": str(policy), "prism_discriminator": str(disc), "prism_max_new_tokens": 96,
                "prism_disc_learning_rate": 1e-3, "prism_policy_epochs": 1, "logging_steps": 1, "max_steps": 3}
    config = lf_config("prism_align", tiny_dir, out, **{**settings, **overrides})
    proc = llamafactory_train(config, tmp_path, **(env_extra or {}))
    log = proc.stdout + proc.stderr
    (tmp_path / "run.log").write_text(log)
    assert proc.returncode == 0, failure_excerpt(log)
    (out / "run.log").write_text(log)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return out, [entry for entry in history if "policy/skipped" in entry]


def changed_parameters(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """(names that changed, names that did not) between two state dicts."""
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    return changed, [k for k in before if k not in changed]


def test_align_updates_policy_and_discriminator_and_logs_the_game(tmp_path, tiny_dir, tiny_sft_run,
                                                                   tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    policy = tiny_sft_run[0]
    out, steps = run_align(tmp_path, tiny_dir, policy, tiny_discriminator_dir, prism_policy_epochs=2)
    assert len(steps) == 3
    fresh = [steps[0], steps[2]]  # with 2 policy epochs, steps 1 and 3 sample new rollouts; step 2 reuses them
    for key in ("valid_ratio", "response_length", "advantage_mean", "caption/teacher_score", "reasoning/teacher_score",
                "reward", "disc/skipped", "disc/batch_accuracy", "policy/gated"):
        assert all(key in step for step in fresh) and key not in steps[1], key
    assert all(step["policy/gated"] == 0.0 for step in fresh)  # prism_min_disc_accuracy defaults to 0: never
    assert all("policy/clip_frac" in step and "policy/ratio_mean" in step for step in steps)
    assert any(step["valid_ratio"] > 0 for step in fresh), "the SFT policy should produce some layout-valid rollouts"
    updated = [step for step in fresh if step["disc/skipped"] == 0.0]
    assert updated and all("disc/loss" in s and "disc/caption/accuracy" in s for s in updated)
    # second pass over a batch of rollouts: the ratio moves away from 1
    assert any(step["policy/ratio_max"] > 1.0 or step["policy/ratio_min"] < 1.0 for step in steps)

    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert any(not torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))
    assert (out / "discriminator" / "processor_config.json").is_file()
    assert (out / "prism_data_report.json").is_file()


def test_align_with_a_fixed_scorer_and_one_epoch(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir,
                           prism_update_discriminator=False, prism_segments=["response"],
                           prism_segment_weights=[1.0], max_steps=2)
    assert all("disc/loss" not in step for step in steps)
    assert all(step["policy/ratio_mean"] == pytest.approx(1.0) for step in steps)
    assert all(step["nonfinite_skips/scores"] == 0.0 for step in steps)  # one on-policy step per batch
    assert all("response/teacher_score" in step for step in steps)  # GAD: one whole-response segment
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert all(torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))


def test_align_without_discriminator_is_a_clear_error(tmp_path, tiny_dir):
    config = {"model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "stage": "prism_align", "do_train": True,
              "dataset": "prism_tiny_align", "dataset_dir": str(tiny_dir / "data"), "template": "prism_qwen3_vl",
              "output_dir": str(tmp_path / "o"), "report_to": "none"}
    proc = llamafactory_train(config, tmp_path)
    assert proc.returncode != 0
    assert "needs `prism_discriminator: DIR`" in proc.stderr


def test_non_finite_scores_skip_the_updates(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    broken = AutoModel.from_pretrained(tiny_discriminator_dir)
    with torch.no_grad():
        for head in broken.heads.values():
            head.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "nan_disc")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        if (tiny_discriminator_dir / name).is_file():
            (tmp_path / "nan_disc" / name).write_bytes((tiny_discriminator_dir / name).read_bytes())
    policy = tiny_sft_run[0]
    out, steps = run_align(tmp_path, tiny_dir, policy, tmp_path / "nan_disc", max_steps=2)
    assert all(step["policy/skipped"] == 1.0 for step in steps)
    assert steps[-1]["nonfinite_skips/scores"] == 2.0
    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing moved, nothing became NaN
    assert "non-finite scores on some rank; this batch trains nothing" in (out / "run.log").read_text()


def test_align_under_torchrun_with_two_processes(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, max_steps=2,
                           per_device_train_batch_size=1,
                           env_extra={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    log = (out / "run.log").read_text()
    assert "world size: 2" in log
    assert len(steps) == 2 and all(s["policy/skipped"] == 0.0 for s in steps)
    assert (out / "discriminator" / "model.safetensors").is_file()


GOOD = "<caption> red 3 blue 2 </caption>\n<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>"


def scorer_case(tiny_dir, disc_dir, tokenizer, *, update=True, **keys):
    """A DiscriminatorScorer (with an updater) over the tiny discriminator and a batch of 2 prompts × G = 3:
    each prompt's teacher, another prompt's student, and a rollout outside the layout."""
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.data.records import PromptRecord, load_pairs
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.loss import DiscriminatorLoss
    from prism_plugin.discriminator.rendering import TextScorer
    from prism_plugin.discriminator.rollout_scorer import DiscriminatorScorer
    from prism_plugin.discriminator.updater import DiscriminatorOptimization, DiscriminatorUpdater

    torch.manual_seed(0)
    disc = load_discriminator(disc_dir)
    disc.head_dropout.p = 0.0  # scores comparable with eval-mode forwards
    args = PrismArguments(**{"prism_disc_learning_rate": 1e-3, **keys})
    loss = DiscriminatorLoss(args.prism_score_reg_coef, 10.0, args.prism_score_reg_rows, args.prism_no_valid_pair,
                             0.01)
    updater = DiscriminatorUpdater(disc, loss, DiscriminatorOptimization.from_args(args)) if update else None
    scorer = DiscriminatorScorer(TextScorer(disc), list(args.prism_segments), policy_tokenizer=tokenizer,
                                 cutoff_len=1024, loss=loss, updater=updater)
    records = load_pairs(tiny_dir / "data" / "pairs.jsonl").records[:2]
    prompts, texts = [], []
    for k, record in enumerate(records):
        row = PromptRecord(record.prompt, record.images, None, record.teacher, record.row)
        prompts.append(align_prompt(record.teacher, None, scorer.prepare(row, "pairs.jsonl")))
        texts += [record.teacher.response, records[1 - k].student.response, "<caption> red 1 </caption> five"]
    return scorer, rollout_batch(tokenizer, texts, prompts, 3)


def full_forward_scores(disc, prompt, segments: list[list[int]], names: list[str]) -> torch.Tensor:
    """Scores of (prompt ⊕ segment) rows, one full forward each (the reference)."""
    from prism_plugin.discriminator.segment_forward import SegmentQuery, score

    return score(disc, [prompt], [SegmentQuery(0, n, ids) for n, ids in zip(names, segments, strict=True)],
                 reuse_prefix=False)


def test_discriminator_scorer_scores_rollouts_and_teachers_as_full_forwards(tiny_dir, tiny_discriminator_dir,
                                                                           tokenizer):
    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, update=False)
    scores = scorer.score(batch)
    assert scores.valid.tolist() == [True, True, False, True, True, False]
    assert scorer.pending_update(batch) is None  # no updater: an eval-mode forward without gradients
    disc = scorer.model
    with torch.no_grad():
        for k, item in enumerate(p.scorer_inputs for p in batch.prompts):
            teacher = full_forward_scores(disc, item.prompt, [item.teacher["caption"], item.teacher["reasoning"]],
                                          ["caption", "reasoning"])
            assert scores.teacher["caption"][k] == pytest.approx(float(teacher[0]), abs=1e-5)
            assert scores.teacher["reasoning"][k] == pytest.approx(float(teacher[1]), abs=1e-5)
            # rollout 3k repeats the teacher: the policy's own ids score exactly like the teacher's
            assert scores.rollout["caption"][3 * k] == pytest.approx(float(teacher[0]), abs=1e-5)
    assert torch.isnan(scores.rollout["caption"][2]) and torch.isnan(scores.rollout["reasoning"][5])
    # a rollout repeating its teacher's segment token for token is no comparison
    assert scores.compared["caption"].tolist() == [False, True, False, False, True, False]


def test_scoring_forward_in_train_mode_gives_the_eval_scores(tiny_dir, tiny_discriminator_dir, tokenizer):
    """The update batch's scoring forward runs in train mode with gradients and gives the advantages the same
    scores as an eval-mode forward: the head's dropout is the only train/eval difference of the model."""
    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer)
    scorer.model.head_dropout.p = 0.5
    trained = scorer.score(batch)
    pending = scorer.pending_update(batch)
    assert pending is not None and pending.scores.requires_grad
    frozen_scorer, _ = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, update=False)
    frozen = frozen_scorer.score(batch)
    for name in ("caption", "reasoning"):
        torch.testing.assert_close(trained.teacher[name], frozen.teacher[name], rtol=0, atol=1e-5)
        torch.testing.assert_close(trained.rollout[name], frozen.rollout[name], rtol=0, atol=1e-5, equal_nan=True)


def test_discriminator_update_is_the_authors_loss_over_valid_pairs_and_invalid_halves(tiny_dir,
                                                                                      tiny_discriminator_dir,
                                                                                      tokenizer):
    """One update's loss equals the Bradley–Terry loss of full forwards over (teacher, rollout) rows: every
    valid rollout, and every invalid rollout split at half its length for the regulariser."""
    from prism_plugin.discriminator.loss import discriminator_loss

    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer)
    disc = scorer.model
    before = {n: p.detach().clone() for n, p in disc.named_parameters()}
    teacher_rows, student_rows, valid = {"caption": [], "reasoning": []}, {"caption": [], "reasoning": []}, []
    disc.train()
    with torch.no_grad():
        for i in range(6):
            item = batch.prompts[i // 3].scorer_inputs
            ids = batch.rollouts.completions[i, : int(batch.split.lengths[i])].tolist()
            cut = int(batch.split.boundary[i]) if batch.split.valid[i] else len(ids) // 2
            student = full_forward_scores(disc, item.prompt, [ids[:cut], ids[cut:]], ["caption", "reasoning"])
            teacher = full_forward_scores(disc, item.prompt, [item.teacher["caption"], item.teacher["reasoning"]],
                                          ["caption", "reasoning"])
            for j, name in enumerate(("caption", "reasoning")):
                teacher_rows[name].append(teacher[j])
                student_rows[name].append(student[j])
            valid.append(bool(batch.split.valid[i]))
        reference, _ = discriminator_loss({k: torch.stack(v) for k, v in teacher_rows.items()},
                                          {k: torch.stack(v) for k, v in student_rows.items()},
                                          torch.tensor(valid), 0.001, clip=10.0)
    scores = scorer.score(batch)
    metrics = scorer.update(batch, scores)
    assert metrics["disc/skipped"] == 0.0 and 0.0 <= metrics["disc/accuracy"] <= 1.0
    assert metrics["disc/loss"] == pytest.approx(float(reference), abs=1e-5)
    changed = [n for n, p in disc.named_parameters() if not torch.equal(before[n], p.detach())]
    assert "heads.score.weight" in changed and any(".mlp.gate." in n for n in changed)  # head and routers train


@pytest.mark.parametrize("reg_rows", ["all", "valid"])
def test_align_preview_takes_the_loss_a_training_step_takes(tiny_dir, tiny_discriminator_dir, tokenizer, reg_rows):
    """``align-preview``'s dry run scores a batch and computes the discriminator loss as the step's update does
    (the same rows and settings; head dropout is off in both here), and trains nothing."""
    dry, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, update=False, prism_score_reg_rows=reg_rows)
    before = {n: p.detach().clone() for n, p in dry.model.named_parameters()}
    scores, metrics = dry.dry_run(batch)
    assert all(torch.equal(before[n], p) for n, p in dry.model.named_parameters())
    step, step_batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, prism_score_reg_rows=reg_rows)
    step_scores = step.score(step_batch)
    trained = step.update(step_batch, step_scores)
    assert trained["disc/skipped"] == 0.0
    assert metrics["disc/loss"] == pytest.approx(trained["disc/loss"], abs=1e-5)
    assert metrics["disc/score_reg"] == pytest.approx(trained["disc/score_reg"], abs=1e-6)
    for name in scores.rollout:
        torch.testing.assert_close(scores.rollout[name], step_scores.rollout[name], equal_nan=True)
    assert dry.dry_run(batch)[1] == metrics  # no dropout, no sampling: the dry run is deterministic
    # the invalid rollouts' halves join the regulariser with reg_rows: all, and only then
    other = "valid" if reg_rows == "all" else "all"
    contrast, contrast_batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, update=False,
                                           prism_score_reg_rows=other)
    assert contrast.dry_run(contrast_batch)[1]["disc/score_reg"] != pytest.approx(metrics["disc/score_reg"])


def test_a_batch_with_no_valid_rollout_still_raises_the_teacher_scores(tiny_dir, tiny_discriminator_dir, tokenizer):
    """The authors' rule for a batch with no valid pair: 0.01·(−log σ(mean teacher score)) per segment plus
    the regulariser, so the teacher's scores rise while the policy writes nothing valid."""
    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, prism_disc_learning_rate=1e-2)
    invalid = rollout_batch(tokenizer, ["<caption> red 1 </caption> five"] * 6, batch.prompts, 3)
    first = scorer.score(invalid)
    assert not first.valid.any()
    metrics = scorer.update(invalid, first)
    assert metrics["disc/skipped"] == 0.0 and "disc/score_reg" in metrics
    after = scorer.score(invalid)
    assert all(float(after.teacher[s].mean()) > float(first.teacher[s].mean()) for s in ("caption", "reasoning"))
    skip_scorer, _ = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer, prism_no_valid_pair="skip",
                                 prism_score_reg_rows="valid")
    assert skip_scorer.update(invalid, skip_scorer.score(invalid))["disc/skipped"] == 1.0


def test_batch_accuracy_counts_ties_as_half_and_ignores_invalid_and_teacher_copies():
    from prism_plugin.llamafactory.align.trainer import batch_accuracy
    from prism_plugin.scorers import Scores

    group = torch.tensor([0, 0, 1, 1])  # two prompts × two rollouts; the last rollout is invalid (NaN scores)
    rollout = {"caption": torch.tensor([0.0, 1.0, 2.0, float("nan")]),
               "reasoning": torch.tensor([-1.0, 3.0, 0.0, float("nan")])}
    teacher = {"caption": torch.tensor([1.0, 1.0]), "reasoning": torch.tensor([2.0, 0.5])}
    valid = torch.tensor([True, True, True, False])
    everything = {name: torch.ones(4, dtype=torch.bool) for name in rollout}
    # caption: teacher 1 > 0 (1), 1 == 1 (½), 1 < 2 (0); reasoning: 2 > -1 (1), 2 < 3 (0), 0.5 > 0 (1)
    assert batch_accuracy(Scores(rollout, valid, teacher, everything), group) == pytest.approx(3.5 / 6)
    assert batch_accuracy(Scores(rollout, torch.zeros(4, dtype=torch.bool), teacher, everything), group) is None
    # rollout 1's caption and rollout 0's reasoning repeat the teacher's: no comparison, left out
    differs = {"caption": torch.tensor([True, False, True, False]),
               "reasoning": torch.tensor([False, True, True, False])}
    assert batch_accuracy(Scores(rollout, valid, teacher, differs), group) == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert batch_accuracy(Scores(rollout, valid), group) is None  # a rule scorer has no teacher scores


def test_policy_loss_options_keep_the_losses_own_settings_unless_set():
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.llamafactory.align.trainer import policy_loss_options

    dapo = policy_loss_options(PrismArguments(prism_policy_loss="dapo"))
    assert (dapo["clip_low"], dapo["clip_high"], dapo["agg_mode"]) == (0.2, 0.28, "token-mean")
    gspo = policy_loss_options(PrismArguments(prism_policy_loss="gspo"))
    assert (gspo["clip_low"], gspo["clip_high"], gspo["agg_mode"]) == (3e-4, 4e-4, "seq-mean-token-mean")
    grpo = policy_loss_options(PrismArguments())
    assert (grpo["clip_low"], grpo["clip_high"], grpo["agg_mode"]) == (0.2, None, "token-mean")
    custom = policy_loss_options(PrismArguments(prism_policy_loss="gspo", prism_clip_high=1e-3,
                                                prism_loss_agg_mode="seq-mean-token-sum-norm",
                                                prism_max_new_tokens=512))
    assert (custom["clip_low"], custom["clip_high"], custom["agg_mode"]) == (3e-4, 1e-3, "seq-mean-token-sum-norm")
    assert custom["horizon"] == 512  # Dr. GRPO divides by the generation budget
    with pytest.raises(ValueError, match="did you mean 'grpo'"):
        PrismArguments(prism_policy_loss="grpp")


# Loaded as ``sitecustomize`` in the run's processes: records every PeftModelForCausalLM.generate call
# (the wrapper's class, whether its LoRA layers are active and their B matrices trained, what is trainable).
GENERATE_PROBE = """
import json, os, sys

class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft.peft_model":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    run = spec.loader.exec_module

                    def exec_module(module, run=run):
                        run(module)
                        cls = module.PeftModelForCausalLM
                        generate = cls.generate

                        def probed(self, *args, **kwargs):
                            from peft.tuners.tuners_utils import BaseTunerLayer

                            layers = [m for m in self.modules() if isinstance(m, BaseTunerLayer)]
                            trained = any(p.abs().max() > 0 for n, p in self.named_parameters() if "lora_B" in n)
                            trainable = [n for n, p in self.named_parameters() if p.requires_grad]
                            with open(os.environ["PRISM_GENERATE_PROBE"], "a") as f:
                                f.write(json.dumps({"wrapper": type(self).__name__, "lora_layers": len(layers),
                                                    "enabled": not any(m.disable_adapters for m in layers),
                                                    "trained": bool(trained), "trainable": trainable}) + "\\n")
                            return generate(self, *args, **kwargs)

                        cls.generate = probed

                    spec.loader.exec_module = exec_module
                    return spec
        return None

sys.meta_path.insert(0, _Finder())
"""


def test_align_with_a_lora_policy(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    probe_dir, calls = tmp_path / "probe", tmp_path / "generate_calls.jsonl"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(GENERATE_PROBE)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")])),
           "PRISM_GENERATE_PROBE": str(calls)}
    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, env_extra=env,
                           finetuning_type="lora", lora_target="all", lora_rank=4, learning_rate=1e-2,
                           prism_policy_epochs=2, max_steps=3)
    assert "Fine-tuning method: LoRA" in (out / "run.log").read_text()
    # one generate call per fresh batch (steps 1 and 3), through the PEFT wrapper with its LoRA layers on;
    # the second one samples from the adapter trained by steps 1 and 2
    generated = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [g["wrapper"] for g in generated] == ["PeftModelForCausalLM"] * 2
    assert all(g["lora_layers"] > 0 and g["enabled"] for g in generated)
    assert [g["trained"] for g in generated] == [False, True]
    assert all(g["trainable"] and all(".lora_A." in n or ".lora_B." in n for n in g["trainable"]) for g in generated)
    assert len(steps) == 3 and all(s["policy/skipped"] == 0.0 for s in steps)
    fresh = [steps[0], steps[2]]
    assert all("valid_ratio" in s for s in fresh) and any(s["valid_ratio"] > 0 for s in fresh)
    # step 2 reuses step 1's rollouts: their old log-probs came from the adapter before its first update
    assert steps[1]["policy/ratio_max"] > 1.0 or steps[1]["policy/ratio_min"] < 1.0
    # the adapter is what the run saves, not the full policy
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero: the adapter was trained
    assert all(torch.isfinite(v).all() for v in adapter.values())
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert any(not torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install 'prism-plugin[deepspeed]')")
def test_align_with_deepspeed_zero2_on_two_processes(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    """The repository's ZeRO-2 config under torchrun (DeepSpeed's CPU accelerator, gloo): the policy's optimiser
    state is partitioned over the two ranks, the discriminator keeps its own AdamW, both models train.
    About 50 s on 2 CPU cores once DeepSpeed's CPU communication op is built (its first build: ~2 min more)."""
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    ds_config = Path(__file__).resolve().parents[1] / "yaml" / "deepspeed" / "ds_z2_config.json"
    policy = tiny_sft_run[0]
    out, steps = run_align(tmp_path, tiny_dir, policy, tiny_discriminator_dir, deepspeed=str(ds_config), max_steps=2,
                           per_device_train_batch_size=1, save_strategy="steps", save_steps=2,
                           env_extra={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "DS_ACCELERATOR": "cpu"})
    assert "world size: 2" in (out / "run.log").read_text()
    assert len(steps) == 2 and all(s["policy/skipped"] == 0.0 for s in steps)
    zero = out / "checkpoint-2" / "global_step2"
    assert sorted(p.name for p in zero.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert (out / "checkpoint-2" / "discriminator" / "prism_disc_state.pt").is_file()
    # the discriminator is a DeepSpeed engine of its own: its optimiser state is partitioned over the ranks too
    disc_zero = out / "checkpoint-2" / "discriminator" / "deepspeed" / "discriminator"
    assert sorted(p.name for p in disc_zero.glob("*optim_states.pt")) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"] or sorted(
        p.name for p in disc_zero.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert "disc/grad_norm" in steps[-1] and steps[-1]["disc/skipped"] == 0.0
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert any(not torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))


def test_policy_updates_are_gated_on_discriminator_accuracy(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    """prism_min_disc_accuracy: a batch on which the discriminator does not rank the teacher above enough fresh
    rollouts trains the discriminator but not the policy."""
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401

    policy = tiny_sft_run[0]
    out, _ = run_align(tmp_path, tiny_dir, policy, tiny_discriminator_dir, prism_min_disc_accuracy=1.0, max_steps=2)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "valid_ratio" in entry]
    assert len(steps) == 2
    for step in steps:  # the untrained tiny discriminator is far from ranking every teacher first
        assert 0.0 <= step["disc/batch_accuracy"] < 1.0 and step["policy/gated"] == 1.0
        assert "policy/loss" not in step and step["disc/skipped"] == 0.0
    before = load_file(str(policy / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before), "a gated batch must not move the policy"
    disc_before = AutoModel.from_pretrained(tiny_discriminator_dir)
    disc_after = AutoModel.from_pretrained(out / "discriminator")
    assert any(not torch.equal(a, b) for a, b in zip(disc_before.parameters(), disc_after.parameters(), strict=True))




def text_trainer(tiny_dir, tmp_path, answers_by_question: dict[str, list[str]], **keys):
    """A PrismAlignTrainer on the tiny text policy whose rollouts are fixed texts (verifiable reward, G = 2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from prism_plugin.arguments import PrismArguments
    from prism_plugin.layout import Segments
    from prism_plugin.llamafactory.align.trainer import PrismAlignTrainer
    from prism_plugin.policy import policy_prompt
    from prism_plugin.scorers import AlignPrompt, VerifiableScorer
    from tests.testing_utils import ReplayEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "qwen3_policy")
    prompts = {q: AlignPrompt(policy_prompt(tokenizer, False, q), Segments.from_response(GOOD), "5", k + 1, "test")
               for k, q in enumerate(answers_by_question)}
    engine = ReplayEngine(tokenizer, {tuple(p.policy.input_ids): answers_by_question[q] for q, p in prompts.items()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to="none", use_cpu=True,
                             seed=0)
    prism = PrismArguments(prism_reward="verifiable", prism_num_generations=2, prism_max_new_tokens=64, **keys)
    trainer = PrismAlignTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_dir / "qwen3_policy"), args=args,
                                train_dataset=list(prompts.values()), data_collator=lambda b: b,
                                processing_class=tokenizer, prism_args=prism, scorer=VerifiableScorer(), engine=engine)
    return trainer, prompts


WRONG_4 = GOOD.replace("= 5", "= 4").replace("<answer> 5", "<answer> 4")


def test_dynamic_sampling_drops_groups_without_signal_and_refills(tiny_dir, tmp_path):
    answers = {"varies A": [GOOD, WRONG_4], "all right": [GOOD, GOOD], "all wrong": [WRONG_4, WRONG_4],
               "varies B": [WRONG_4, GOOD]}
    trainer, prompts = text_trainer(tiny_dir, tmp_path, answers, prism_dynamic_sampling=True)
    batch, signal, metrics = trainer.sample([prompts["varies A"], prompts["all right"]])
    assert signal and metrics["dapo/kept_groups"] == 2.0 and metrics["dapo/sampling_rounds"] >= 1
    assert metrics["dapo/dropped_groups"] == 1.0 + metrics["dapo/sampling_rounds"] - 1  # one refill per round
    assert batch.prompts[0] is prompts["varies A"] and batch.prompts[1] in (prompts["varies A"], prompts["varies B"])
    rewards = batch.rewards["overall"].view(2, 2)
    assert all(row.max() > row.min() for row in rewards)  # every kept group carries a signal
    from prism_plugin.scorers import RolloutBatch

    fresh = RolloutBatch(batch.prompts, batch.rollouts, batch.split)  # the carried-over rewards are the batch's own
    assert all(torch.equal(batch.rewards[key], fresh.rewards[key]) for key in ("overall", "accuracy"))
    assert batch.rollouts.completions.shape[0] == 4 and batch.split.valid.all()

    none, _ = text_trainer(tiny_dir, tmp_path, {k: answers[k] for k in ("all right", "all wrong")},
                           prism_dynamic_sampling=True, prism_max_sampling_rounds=2)
    batch, signal, metrics = none.sample(list(none.train_dataset))
    assert not signal and metrics == {"dapo/dropped_groups": 2.0 + 2 * 2, "dapo/sampling_rounds": 2.0,
                                      "dapo/kept_groups": 0.0}
    micro = none.rollout_step(list(none.train_dataset))
    assert not micro.trains and len(micro) == 2  # still joins the update (zero loss) with its rollouts


def test_dapo_keys_need_the_verifiable_reward():
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="set prism_reward: verifiable"):
        PrismArguments(prism_dynamic_sampling=True)
    with pytest.raises(ConfigError, match="prism_overlong_buffer must be in"):
        PrismArguments(prism_reward="verifiable", prism_overlong_buffer=10_000, prism_max_new_tokens=64)
