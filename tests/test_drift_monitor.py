"""The discriminator as a drift monitor in a stock ``stage: sft`` run, and the rollout path it shares
with ``prism-plugin align-preview``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.lf_runs import llamafactory_train

pytestmark = pytest.mark.llamafactory

DRIFT_KEYS = ("drift/valid_ratio", "drift/caption_gap", "drift/reasoning_gap", "drift/caption_policy_score",
              "drift/reasoning_policy_score", "drift/teacher_caption_score", "drift/teacher_reasoning_score")


def run_sft(work: Path, config: dict) -> tuple[Path, str]:
    """One real ``llamafactory-cli train`` of ``config`` in ``work``; returns output_dir and the log."""
    proc = llamafactory_train(config, work)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return Path(config["output_dir"]), log


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory, tiny_dir, tiny_sft_run, tiny_discriminator_dir) -> tuple[Path, str]:
    """20 more SFT steps from the stage-1 policy, with a drift check every 10 steps."""
    work = tmp_path_factory.mktemp("drift")
    config = {
        "model_name_or_path": str(tiny_sft_run[0]), "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "prism_tiny_sft", "dataset_dir": str(tiny_dir / "data"), "template": "prism_qwen3_vl",
        "cutoff_len": 512, "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
        "output_dir": str(work / "out"), "logging_steps": 10, "save_strategy": "no", "max_steps": 20,
        "per_device_train_batch_size": 8, "learning_rate": 1.0e-3, "bf16": False, "report_to": "none", "seed": 0,
        "prism_drift_monitor": str(tiny_discriminator_dir),
        "prism_drift_data": str(tiny_dir / "data" / "align.jsonl"),
        "prism_drift_every": 10, "prism_drift_num_prompts": 4, "prism_drift_num_generations": 4,
        "prism_drift_max_new_tokens": 80,
    }
    return run_sft(work, config)


def drift_entries(output_dir: Path) -> dict[int, dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if any(k.startswith("drift/") for k in e)}


def test_sft_run_logs_drift_every_n_steps_and_plots_it(drift_run):
    out, log = drift_run
    entries = drift_entries(out)
    assert sorted(entries) == [10, 20]  # every 10 steps; the last step's check is not repeated at 20
    # through the Trainer's own log: in the same entries as its loss, and seen by its callbacks' on_log (the
    # console printer writes each logs dict), which is where report_to integrations read them
    assert all("loss" in entry for entry in entries.values())
    printed = [line for line in log.splitlines() if "'drift/valid_ratio'" in line]
    assert len(printed) == 2 and all("'loss'" in line for line in printed)
    for step, entry in entries.items():
        for key in DRIFT_KEYS:
            assert key in entry and math.isfinite(entry[key]), (step, key, entry)
        assert 0.0 < entry["drift/valid_ratio"] <= 1.0
    assert "drift at step 10:" in log and "drift at step 20:" in log
    assert (out / "training_drift.png").stat().st_size > 0
    # the stock SFT logs are all still there
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [10, 20]


def test_sft_run_without_the_key_has_no_drift(tiny_sft_run):
    out, log = tiny_sft_run
    assert drift_entries(out) == {}
    assert not (out / "training_drift.png").exists()
    assert "drift at step" not in log


def test_missing_held_out_prompts_is_a_clear_error(tiny_discriminator_dir, tmp_path):
    from prism_plugin.llamafactory.drift import make_drift_monitor

    with pytest.raises(ValueError, match="prism_drift_monitor needs prism_drift_data"):
        make_drift_monitor({"stage": "sft", "prism_drift_monitor": str(tiny_discriminator_dir)})
    with pytest.raises(ValueError, match="prism_drift_monitor needs prism_drift_data"):
        make_drift_monitor(["--stage", "sft", "--prism_drift_monitor", str(tiny_discriminator_dir)])
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        make_drift_monitor({"prism_drift_monitor": str(tiny_discriminator_dir),
                            "prism_drift_data": str(tmp_path / "nowhere.jsonl")})


def test_prompts_render_as_the_prism_template_does(tiny_dir):
    """The monitor (and align-preview) render prompts like LLaMA-Factory's ``prism_qwen3_vl`` template."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    from prism_plugin.data.records import load_align
    from prism_plugin.policy import load_processor, policy_prompt

    policy = tiny_dir / "qwen3_vl_policy"
    loaded = load_tokenizer(ModelArguments(model_name_or_path=str(policy)))
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="prism_qwen3_vl"))
    record = load_align(tiny_dir / "data" / "align.jsonl").records[0]
    images = list(record.images)
    messages = template.mm_plugin.process_messages(
        [{"role": "user", "content": record.prompt}, {"role": "assistant", "content": ""}], images, [], [], processor
    )
    prompt_ids, response_ids = template.encode_oneturn(tokenizer, messages, None, None)
    prompt_ids, _ = template.mm_plugin.process_token_ids(prompt_ids, response_ids, images, [], [], tokenizer, processor)
    ours = policy_prompt(load_processor(policy, True), True, record.prompt, record.images)
    assert ours.input_ids == prompt_ids


def test_align_preview_cli(tiny_dir, tiny_sft_run, tiny_discriminator_dir, tmp_path, capsys):
    from prism_plugin.cli import main

    out = tmp_path / "preview.json"
    argv = ["align-preview", "--policy", str(tiny_sft_run[0]), "--discriminator", str(tiny_discriminator_dir),
            "--data", str(tiny_dir / "data" / "align.jsonl"), "--num-prompts", "2", "--num-generations", "2",
            "--max-new-tokens", "48", "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    rollouts, summary = result["rollouts"], result["summary"]
    assert [r["group"] for r in rollouts] == [0, 0, 1, 1]
    assert summary["prompts"] == 2 and summary["rollouts"] == 4
    assert summary["valid_ratio"] == pytest.approx(sum(r["valid"] for r in rollouts) / 4)
    assert set(summary["teacher_score"]) == {"caption", "reasoning"}
    for r in rollouts:
        assert math.isfinite(r["advantage"]) and 0 < r["tokens"] <= 48
        assert math.isfinite(r["caption_score"]) == r["valid"]
    lines = table.splitlines()
    assert lines[0].startswith("grp | valid | tokens | caption score | reasoning score | advantage")
    assert len(lines) == 1 + 4 + 2 and lines[-1].startswith(f"valid {summary['valid_ratio']:.0%} of 4 rollouts")


def test_align_preview_takes_a_runs_settings_and_refuses_a_misspelt_key(tiny_dir, tiny_sft_run,
                                                                        tiny_discriminator_dir, tmp_path, capsys):
    from prism_plugin.cli import main

    run = tmp_path / "run.yaml"
    run.write_text("stage: prism_align\ncutoff_len: 1024\nprism_num_generations: 3\nprism_max_new_tokens: 32\n"
                   "prism_score_reg_rows: valid\nprism_format_penalty: 2.0\n")
    out = tmp_path / "preview.json"
    argv = ["align-preview", "--policy", str(tiny_sft_run[0]), "--discriminator", str(tiny_discriminator_dir),
            "--data", str(tiny_dir / "data" / "align.jsonl"), "--num-prompts", "1", "--config", str(run),
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    settings = result["summary"]["settings"]
    assert settings["prism_score_reg_rows"] == "valid" and settings["prism_format_penalty"] == 2.0
    assert len(result["rollouts"]) == 3 and all(r["tokens"] <= 32 for r in result["rollouts"])
    capsys.readouterr()

    run.write_text("prism_num_generation: 3\n")
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"prism-plugin align-preview: error: {run}: unknown key 'prism_num_generation' "
        "(did you mean 'prism_num_generations'?)")


def test_drift_metrics_pair_each_sample_with_its_teacher(tokenizer):
    import torch

    from prism_plugin.llamafactory.drift import drift_metrics
    from prism_plugin.scorers import Scores
    from tests.testing_utils import align_prompt, rollout_batch

    good = "<caption> red 3 </caption>\n<think> 3 </think>\n<answer> 3 </answer>"
    batch = rollout_batch(tokenizer, [good, "<caption> red", good, good], [align_prompt(), align_prompt()], 2)
    assert batch.split.truncated.tolist() == [False, False, False, False]  # "<caption> red" ends its turn: invalid
    nan = float("nan")
    scores = Scores({"caption": torch.tensor([1.0, nan, 0.0, 2.0])}, torch.tensor([True, False, True, True]),
                    teacher={"caption": torch.tensor([3.0, 1.0])})
    metrics = drift_metrics(batch, scores)
    assert metrics["drift/valid_ratio"] == 0.75 and metrics["drift/truncated_ratio"] == 0.0
    assert metrics["drift/response_tokens"] == float(batch.split.lengths.float().mean())
    assert metrics["drift/teacher_caption_score"] == 2.0  # per prompt, not per sample
    assert metrics["drift/caption_policy_score"] == 1.0
    assert metrics["drift/caption_gap"] == pytest.approx(((3 - 1) + (1 - 0) + (1 - 2)) / 3)
    scores.valid[:] = False
    metrics = drift_metrics(batch, scores)
    assert metrics["drift/valid_ratio"] == 0.0 and "drift/caption_gap" not in metrics  # no NaN in the logs
    assert "drift/caption_policy_score" not in metrics and "drift/teacher_caption_score" in metrics


def test_checks_run_on_the_main_process_every_n_steps_and_at_the_last_step(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from prism_plugin.llamafactory.drift import DriftMonitorCallback

    class Counting(DriftMonitorCallback):
        calls: list[int]

        def measure(self, model, seed=0):
            self.calls.append(seed)
            return {"drift/valid_ratio": 0.5, "drift/caption_gap": 0.1}

    args = TrainingArguments(output_dir=str(tmp_path), seed=7, report_to="none")
    for main_process in (True, False):
        monitor = Counting("unused", [], every=10, num_generations=1, max_new_tokens=1)
        monitor.calls = []
        state = TrainerState(is_world_process_zero=main_process, max_steps=25)
        monitor._last_step = 10  # resumed from a checkpoint at step 10
        logged = {}
        for step in (10, 15, 20, 25):
            state.global_step = step
            control = monitor.on_step_end(args, state, TrainerControl(), model=None)
            pending = monitor.take_pending()
            assert control.should_log == bool(pending)  # a check asks for the step's log
            if pending:
                logged[step] = pending
        if main_process:
            assert monitor.calls == [7, 7] and sorted(logged) == [20, 25]  # same seed at every check
            assert logged[20]["drift/valid_ratio"] == 0.5 and "drift/seconds" in logged[20]
        else:
            assert monitor.calls == [] and logged == {}


def test_pending_metrics_join_the_next_trainer_log_only_while_the_run_lasts(tmp_path):
    from transformers import Trainer, TrainerState

    from prism_plugin.llamafactory.drift import DriftMonitorCallback
    from prism_plugin.llamafactory.trainer_log import log_through_trainer

    monitor = DriftMonitorCallback("unused", [], every=1, num_generations=1, max_new_tokens=1)
    seen = []

    class Recorder:
        state = TrainerState()
        args = SimpleNamespace(include_num_input_tokens_seen="no")
        control = None
        callback_handler = type("H", (), {"on_log": staticmethod(lambda a, s, c, logs: seen.append(dict(logs)))})()

    original = Trainer.log
    with log_through_trainer(monitor):
        monitor.pending = {"drift/valid_ratio": 0.25}
        Trainer.log(Recorder(), {"loss": 1.0})
        Trainer.log(Recorder(), {"loss": 2.0})
    assert Trainer.log is original
    assert [{k: v for k, v in logs.items() if k != "epoch"} for logs in seen] == [
        {"loss": 1.0, "drift/valid_ratio": 0.25}, {"loss": 2.0}]


def test_a_check_leaves_the_policy_and_the_random_stream_as_it_found_them(tiny_dir, tiny_sft_run,
                                                                          tiny_discriminator_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    from prism_plugin.data.records import load_align
    from prism_plugin.llamafactory.drift import DriftMonitorCallback

    policy = AutoModelForImageTextToText.from_pretrained(tiny_sft_run[0]).train()
    records = load_align(tiny_dir / "data" / "align.jsonl").records[:1]
    monitor = DriftMonitorCallback(tiny_discriminator_dir, records, every=1, num_generations=2, max_new_tokens=16,
                                   policy_source=tiny_sft_run[0])
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = monitor.measure(policy, seed=3)
    assert torch.equal(torch.get_rng_state(), rng) and policy.training
    assert first == monitor.measure(policy, seed=3)  # common random numbers: checks differ by the model only
