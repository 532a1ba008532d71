"""Stage prism_align: the alignment game as a real LLaMA-Factory run from the tiny SFT policy."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.lf_runs import llamafactory_train


def failure_excerpt(log: str) -> str:
    """The lines that say why a run failed (any rank), then the log's tail."""
    markers = ("Error", "error:", "terminate", "Traceback", "Aborted", "what()")
    causes = [line for line in log.splitlines() if any(m in line for m in markers)]
    return "\n".join(causes[:40]) + "\n...\n" + log[-3000:]


def run_align(tmp_path: Path, tiny_dir: Path, policy: Path, disc: Path, env_extra: dict | None = None,
              **overrides) -> tuple[Path, list[dict]]:
    out = Path(overrides.pop("output_dir", tmp_path / "align"))
    config = {
        "model_name_or_path": str(policy), "stage": "prism_align", "do_train": True, "finetuning_type": "full",
        "prism_discriminator": str(disc), "prism_num_generations": 4, "prism_max_new_tokens": 96,
        "prism_disc_learning_rate": 1e-3, "dataset": "prism_tiny_align", "dataset_dir": str(tiny_dir / "data"),
        "template": "prism_qwen3_vl", "cutoff_len": 1024, "output_dir": str(out), "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "per_device_train_batch_size": 2, "learning_rate": 1e-4,
        "max_steps": 3, "bf16": False, "seed": 0, "overwrite_output_dir": True,
    }
    config.update(overrides)
    proc = llamafactory_train(config, tmp_path, **(env_extra or {}))
    log = proc.stdout + proc.stderr
    (tmp_path / "run.log").write_text(log)
    assert proc.returncode == 0, failure_excerpt(log)
    (out / "run.log").write_text(log)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return out, [entry for entry in history if "policy/skipped" in entry]


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


def test_resume_restores_policy_and_discriminator_state(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    out, _ = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, max_steps=2,
                       save_strategy="steps", save_steps=1)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "discriminator" / "model.safetensors").is_file()
    assert (checkpoint / "discriminator" / "prism_disc_state.pt").is_file()
    resumed, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, max_steps=3,
                               output_dir=tmp_path / "resumed", resume_from_checkpoint=str(checkpoint))
    log = (resumed / "run.log").read_text()
    assert f"resuming the discriminator from {checkpoint / 'discriminator'}" in log
    assert f"discriminator optimiser state restored from {checkpoint}" in log
    assert "Resuming training from checkpoint with epoch 0 and global step 2" in log
    assert [step["step"] for step in steps] == [1, 2, 3]  # the checkpoint's history, then step 3


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
    assert "non-finite discriminator scores" in (out / "run.log").read_text()


def test_align_under_torchrun_with_two_processes(tmp_path, tiny_dir, tiny_sft_run, tiny_discriminator_dir):
    out, steps = run_align(tmp_path, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, max_steps=2,
                           per_device_train_batch_size=1,
                           env_extra={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    log = (out / "run.log").read_text()
    assert "world size: 2" in log
    assert len(steps) == 2 and all(s["policy/skipped"] == 0.0 for s in steps)
    assert (out / "discriminator" / "model.safetensors").is_file()


def _disc_loss_case(tiny_dir, tiny_discriminator_dir):
    """A bare trainer over the tiny discriminator, 2 prompts × G = 3 rollouts (4 valid), for ``_disc_loss``."""
    from transformers import AutoModel

    from prism_plugin.data.records import load_pairs
    from prism_plugin.discriminator.texts import TextScorer
    from prism_plugin.llamafactory.align_data import AlignItem
    from prism_plugin.llamafactory.align_trainer import AlignSettings, PrismAlignTrainer
    from prism_plugin.llamafactory.pairs import PairEncoder

    disc = AutoModel.from_pretrained(tiny_discriminator_dir).eval()
    encoder = PairEncoder(TextScorer(disc), ["caption", "reasoning"], cutoff_len=1024)
    records = load_pairs(tiny_dir / "data" / "pairs.jsonl").records[:2]
    items, students = [], []
    for record in records:
        feat = encoder.encode(record, "pairs.jsonl")
        items.append(AlignItem([], {}, feat.prompt, feat.teacher, None, record.row, "pairs.jsonl"))
        other = encoder.segment_ids(records[1 - records.index(record)].student, "student")
        students += [feat.student, other, feat.student]  # G = 3 rollouts per prompt
    valid = torch.tensor([True, False, True, True, True, False])
    trainer = PrismAlignTrainer.__new__(PrismAlignTrainer)
    trainer.settings = AlignSettings(segment_weights={"caption": 0.5, "reasoning": 0.5}, num_generations=3)
    trainer.segments, trainer.discriminator = ["caption", "reasoning"], disc
    trainer.disc_tokenizer = encoder.scorer.tokenizer
    return trainer, items, students, valid


def test_discriminator_loss_with_shared_teacher_rows_equals_per_pair_rows(tiny_dir, tiny_discriminator_dir):
    """The update scores each group's teacher once; the loss must equal scoring a teacher row per rollout."""
    from prism_plugin.llamafactory.pairs import PairCollator, PairFeatures
    from prism_plugin.losses import discriminator_loss

    trainer, items, students, valid = _disc_loss_case(tiny_dir, tiny_discriminator_dir)
    disc = trainer.discriminator
    with torch.no_grad():
        loss, metrics, _ = trainer._disc_loss(items, students, valid)
        pairs = [PairFeatures(items[i // 3].disc_prompt, items[i // 3].teacher, students[i], i)
                 for i in range(6) if valid[i]]
        scores = disc(**PairCollator(["caption", "reasoning"], trainer.disc_tokenizer.pad_token_id)(pairs)).scores
        scores = scores.view(-1, 2, 2)
        ref, ref_metrics = discriminator_loss({"caption": scores[:, 0, 0], "reasoning": scores[:, 1, 0]},
                                              {"caption": scores[:, 0, 1], "reasoning": scores[:, 1, 1]},
                                              torch.ones(4, dtype=torch.bool))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert metrics["caption/accuracy"] == ref_metrics["caption/accuracy"]
    assert metrics["num_pairs"] == 4


def test_discriminator_update_through_the_prefix_equals_full_forwards(tiny_dir, tiny_discriminator_dir):
    """In train mode with gradients, ``_disc_loss`` through the shared prefix (prompt and image encoded once
    per group) gives the loss and parameter gradients of one full forward over every (prompt ⊕ segment) row;
    its router aux loss (distinct tokens) is finite, positive and trains the routers."""
    trainer, items, students, valid = _disc_loss_case(tiny_dir, tiny_discriminator_dir)
    disc = trainer.discriminator
    disc.train()
    disc.head_dropout.p = 0.0
    results = {}
    for reuse in (False, True):
        trainer.disc_reuse_prefix = reuse
        disc.zero_grad(set_to_none=True)
        loss, metrics, aux = trainer._disc_loss(items, students, valid)
        loss.backward(retain_graph=True)
        grads = {n: p.grad.clone() for n, p in disc.named_parameters() if p.grad is not None}
        disc.zero_grad(set_to_none=True)
        aux.backward()
        router_grads = [p.grad for n, p in disc.named_parameters() if n.endswith("mlp.gate.weight")]
        results[reuse] = (loss.detach(), metrics, aux.detach(), grads, router_grads)
    full, fast = results[False], results[True]
    assert fast[0].item() == pytest.approx(full[0].item(), abs=1e-5)
    assert fast[1]["accuracy"] == full[1]["accuracy"] and fast[1]["num_pairs"] == 4
    # The tiny model's last deepstack level only reaches image-position outputs after the last layer: a zero
    # gradient on the full path, none on the prefix path (its prompt outputs are never read).
    only_full = set(full[3]) - set(fast[3])
    assert set(fast[3]) <= set(full[3]) and all(not full[3][n].any() for n in only_full), only_full
    for name, grad in fast[3].items():
        assert torch.allclose(grad, full[3][name], atol=1e-5), (name, (grad - full[3][name]).abs().max())
    for aux, router_grads in ((full[2], full[4]), (fast[2], fast[4])):
        assert torch.isfinite(aux) and aux > 0
        assert router_grads and all(g is not None and g.abs().max() > 0 for g in router_grads)
    assert trainer.disc_reuse_prefix and type(trainer).disc_reuse_prefix  # the default is the prefix path


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


def test_batch_accuracy_counts_ties_as_half_and_ignores_invalid_and_teacher_copies():
    from types import SimpleNamespace

    from prism_plugin.llamafactory.align_trainer import AlignSettings, PrismAlignTrainer

    trainer = object.__new__(PrismAlignTrainer)
    trainer.settings = AlignSettings(segment_weights={"caption": 0.5, "reasoning": 0.5}, num_generations=2)
    trainer.segments = ["caption", "reasoning"]
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    scores = {  # two prompts × two rollouts; the last rollout is invalid (its NaN scores must not count)
        "caption": torch.tensor([0.0, 1.0, 2.0, float("nan")]), "teacher_caption": torch.tensor([1.0, 1.0]),
        "reasoning": torch.tensor([-1.0, 3.0, 0.0, float("nan")]), "teacher_reasoning": torch.tensor([2.0, 0.5]),
    }
    valid = torch.tensor([True, True, True, False])
    # caption: teacher 1 > 0 (1), 1 == 1 (½), 1 < 2 (0); reasoning: 2 > -1 (1), 2 < 3 (0), 0.5 > 0 (1)
    assert trainer._batch_accuracy(scores, valid) == pytest.approx(3.5 / 6)
    assert trainer._batch_accuracy(scores, torch.zeros(4, dtype=torch.bool)) is None
    # rollout 1's caption and rollout 0's reasoning repeat the teacher's: no comparison, left out
    differs = {"caption": torch.tensor([True, False, True, False]),
               "reasoning": torch.tensor([False, True, True, False])}
    assert trainer._batch_accuracy(scores, valid, differs) == pytest.approx((1 + 0 + 0 + 1) / 4)
    none_differ = {"caption": torch.zeros(4, dtype=torch.bool), "reasoning": torch.zeros(4, dtype=torch.bool)}
    assert trainer._batch_accuracy(scores, valid, none_differ) is None


def test_rollouts_repeating_the_teacher_are_found_by_token_ids():
    from types import SimpleNamespace

    from prism_plugin.llamafactory.align_trainer import AlignSettings, PrismAlignTrainer

    trainer = object.__new__(PrismAlignTrainer)
    trainer.settings = AlignSettings(segment_weights={"caption": 0.5, "reasoning": 0.5}, num_generations=2)
    trainer.segments = ["caption", "reasoning"]
    items = [SimpleNamespace(teacher={"caption": [5, 6, 7], "reasoning": [8, 9]}),
             SimpleNamespace(teacher={"caption": torch.tensor([1, 2]), "reasoning": torch.tensor([3])})]
    students = [{"caption": torch.tensor([5, 6, 7]), "reasoning": torch.tensor([8])},
                {"caption": [5, 6], "reasoning": [8, 9]},
                {"caption": [1, 2], "reasoning": [3]},
                {}]
    valid = torch.tensor([True, True, True, False])
    differs = trainer._differs_from_teacher(items, students, valid)
    assert differs["caption"].tolist() == [False, True, False, False]
    assert differs["reasoning"].tolist() == [True, False, False, False]
