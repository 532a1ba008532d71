"""The PRISM stages in LlamaBoard without a browser: the hook's board patch, its checks, dataset kinds, the
trainer log it draws from, and what the board's Abort (SIGABRT) leaves (tests/test_board_browser.py drives
the page itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from prism_plugin.llamafactory import patches
from prism_plugin.llamafactory.board import runs as board_runs
from prism_plugin.llamafactory.board import text as board_text
from tests.testing_utils import lf_config

pytestmark = pytest.mark.llamafactory

PROBE = """
import json
import llamafactory.webui.interface as interface
from llamafactory.extras.constants import TRAINING_STAGES
from llamafactory.webui.locales import LOCALES
from prism_plugin.llamafactory import bootstrap
demo = interface.create_ui()  # the whole page, built as `llamafactory-cli webui` builds it
tab = next(b for b in demo.blocks.values() if type(b).__name__ == "Tab" and b.label == "Train")
order = [type(c).__name__ for c in tab.children][:3]
print(json.dumps({"fired": bootstrap.fired, "failed": bootstrap.failed, "stages": list(TRAINING_STAGES),
                  "locales": {k: sorted(v) for k, v in LOCALES.items() if k.startswith("prism_")},
                  "order": order}))
"""


def run_probe(tmp_path: Path, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_board_offers_the_prism_stages_with_text_in_every_language(tmp_path):
    probe = run_probe(tmp_path)
    assert probe["failed"] == [] and "llamafactory.webui.interface" in probe["fired"]
    assert probe["stages"][-2:] == ["PRISM discriminator warm-up", "PRISM alignment"]
    assert probe["locales"] == {name: sorted(board_text.LANGUAGES) for name in board_text.locales()}
    assert probe["order"] == ["Row", "Accordion", "Row"]  # the PRISM accordion under the stage row (stock: 3 rows)


def test_kill_switch_keeps_the_stock_board(tmp_path):
    probe = run_probe(tmp_path, PRISM_PLUGIN_DISABLE="1")
    assert probe["stages"] == ["Supervised Fine-Tuning", "Reward Modeling", "PPO", "DPO", "KTO", "Pre-Training"]
    assert probe["locales"] == {} and probe["fired"] == []


def test_an_untested_llamafactory_keeps_the_stock_board_with_one_line(monkeypatch):
    monkeypatch.setattr(patches, "llamafactory_version", lambda: "0.9.9")
    with pytest.raises(patches.UnsupportedLlamaFactoryError,
                       match=r"LlamaBoard of LLaMA-Factory 0\.9\.9 is untested.*llamafactory==0\.9\.5"):
        patches.patch_board(ModuleType("llamafactory.webui.interface"))


def test_a_missing_symbol_patches_nothing():
    from prism_plugin.llamafactory.board import components as board

    symbols = {"llamafactory.webui.interface": ("create_train_tab",), "llamafactory.webui.runner": ("Runner.nope",)}
    with pytest.raises(patches.UnsupportedLlamaFactoryError,
                       match=r"lacks llamafactory\.webui\.interface\.create_train_tab, llamafactory\.webui\.runner"
                             r"\.Runner\.nope; the PRISM stages are not in the board"):
        board.install(ModuleType("llamafactory.webui.interface"), symbols)
    from llamafactory.extras.constants import TRAINING_STAGES

    assert "PRISM alignment" not in TRAINING_STAGES


ALERTS = {key: texts["en"] for key, texts in board_text.alerts().items()}


def align_args(tiny_dir: Path, **keys) -> dict:
    args = {"stage": "prism_align", "model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "finetuning_type": "full",
            "dataset": "prism_tiny_align", "prism_reward": "discriminator", "prism_num_generations": 2}
    return {**args, **keys}


def test_checks_name_the_problem_in_one_line(tiny_dir, tiny_discriminator_dir):
    info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())
    disc, policy = str(tiny_discriminator_dir), str(tiny_dir / "qwen3_vl_policy")
    assert board_runs.check_args(align_args(tiny_dir, prism_discriminator=disc), info, ALERTS) is None
    assert board_runs.check_args(align_args(tiny_dir), info, ALERTS) == ALERTS["err_prism_no_discriminator"]
    assert board_runs.check_args(align_args(tiny_dir, prism_reward="verifiable", dataset="prism_tiny_rlvr"), info,
                                 ALERTS) is None
    message = board_runs.check_args(align_args(tiny_dir, prism_discriminator=policy), info, ALERTS)
    assert message.startswith(f"a PRISM discriminator is needed; {policy} is a 'qwen3_vl' model (a policy?)")
    message = board_runs.check_args(align_args(tiny_dir, prism_discriminator=disc, prism_num_generations=1), info,
                                    ALERTS)
    assert message.startswith("prism_num_generations must be >= 2; got 1")
    message = board_runs.check_args(align_args(tiny_dir, prism_discriminator=disc, prism_num_generation=4), info,
                                    ALERTS)
    assert message == "unknown keys: 'prism_num_generation' (did you mean 'prism_num_generations'?)"
    message = board_runs.check_args(align_args(tiny_dir, prism_discriminator=disc, dataset="prism_tiny_pairs"), info,
                                    ALERTS)
    assert message == "Dataset prism_tiny_pairs holds warm-up pair rows; prism_align reads alignment rows or RLVR rows."
    message = board_runs.check_args(align_args(tiny_dir, prism_discriminator=disc, model_name_or_path=disc), info,
                                    ALERTS)
    assert message == ALERTS["err_prism_policy_is_discriminator"].format(path=disc)
    assert "\n" not in message

    warmup = {"stage": "prism_disc", "model_name_or_path": disc, "finetuning_type": "full",
              "dataset": "prism_tiny_pairs"}
    assert board_runs.check_args(warmup, info, ALERTS) is None
    assert board_runs.check_args({**warmup, "finetuning_type": "lora"}, info, ALERTS) == ALERTS["err_prism_disc_full"]
    assert board_runs.check_args({**warmup, "model_name_or_path": policy}, info, ALERTS).startswith(
        "model path: a PRISM discriminator is needed")


def test_fields_become_prism_keys_and_extra_arguments_win():
    fields = {"prism_discriminator": " saves/d ", "prism_reward": "discriminator", "prism_policy_loss": "dapo",
              "prism_num_generations": 4.0, "prism_max_new_tokens": 64, "prism_temperature": 0.7,
              "prism_disc_learning_rate": "2e-6"}
    args = board_runs.add_prism_args({"stage": "prism_align", "include_num_input_tokens_seen": True}, fields,
                                     {"prism_num_generations": 8})
    assert args == {"stage": "prism_align", "prism_discriminator": "saves/d", "prism_reward": "discriminator",
                    "prism_policy_loss": "dapo", "prism_num_generations": 8, "prism_max_new_tokens": 64,
                    "prism_temperature": 0.7, "prism_disc_learning_rate": 2e-6}
    assert board_runs.add_prism_args({"stage": "prism_disc"}, fields, {}) == {"stage": "prism_disc"}
    with pytest.raises(ValueError, match="discriminator learning rate must be a number; got 'fast'"):
        board_runs.add_prism_args({"stage": "prism_align"}, {**fields, "prism_disc_learning_rate": "fast"}, {})


def test_datasets_are_listed_by_kind(tiny_dir):
    info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())
    assert board_runs.datasets_of_stage(info, "prism_align") == ["prism_tiny_align", "prism_tiny_rlvr"]
    assert board_runs.datasets_of_stage(info, "prism_disc") == ["prism_tiny_pairs", "prism_tiny_policy_pairs"]
    assert board_runs.prism_datasets(info) == {"prism_tiny_align", "prism_tiny_rlvr", "prism_tiny_pairs",
                                               "prism_tiny_policy_pairs"}


def test_trainer_log_keeps_every_metric(tmp_path):
    from prism_plugin.llamafactory.log_callback import PrismLogCallback

    callback = PrismLogCallback("prism_align")
    args = SimpleNamespace(should_save=True, output_dir=str(tmp_path))
    callback._create_thread_pool(str(tmp_path))
    callback._reset(max_steps=2)
    for step in (1, 2):
        state = SimpleNamespace(global_step=step, num_input_tokens_seen=0, log_history=[
            {"loss": 0.5 * step, "learning_rate": 1e-4, "epoch": step / 2, "disc/accuracy": 0.25 * step,
             "caption/score_gap": 1.0 - step / 10, "step": step}])
        callback.on_log(args, state, None)
    callback._close_thread_pool()
    entries = board_runs.read_trainer_log(tmp_path)
    assert [(e["current_steps"], e["loss"], e["lr"], e["disc/accuracy"], e["caption/score_gap"]) for e in entries] \
        == [(1, 0.5, 1e-4, 0.25, 0.9), (2, 1.0, 1e-4, 0.5, 0.8)]
    figure = board_runs.curves_figure(entries, "prism_align")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "score gap (teacher − policy)", "discriminator"]


def test_the_boards_abort_stops_after_the_step_and_leaves_a_resumable_folder(tiny_dir, tiny_discriminator_dir,
                                                                             tmp_path):
    """The board's Abort (SIGABRT to the process tree, LlamaBoard's ``abort_process``) on a live PRISM run: the
    step under way ends, a checkpoint is saved, the run is not marked finished, and the board's note says so."""
    from llamafactory.webui.common import abort_process

    out = tmp_path / "out"
    config = lf_config("prism_align", tiny_dir, out, model_name_or_path=str(tiny_dir / "qwen3_vl_policy"),
                       prism_discriminator=str(tiny_discriminator_dir), prism_max_new_tokens=16, max_steps=30,
                       logging_steps=1, save_strategy="no", overwrite_output_dir=None)
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    env = {**os.environ, "LLAMABOARD_ENABLED": "1", "LLAMABOARD_WORKDIR": str(out), "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("FORCE_TORCHRUN", None)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("llamafactory-cli")), "train", "run.yaml"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not board_runs.read_trainer_log(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    abort_process(proc.pid)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 134, stderr[-3000:]
    step = board_runs.read_trainer_log(out)[-1]["current_steps"]
    assert f"prism_align: stopped by SIGABRT after step {step}; checkpoint {out}/checkpoint-{step} is saved" in stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}"]
    assert not (out / "prism_run_complete.json").exists() and not (out / "model.safetensors").exists()
    note = board_runs.abort_note(out, ALERTS["info_prism_aborted"])
    assert f"{out} is left as a kill leaves it: its last complete checkpoint (checkpoint-{step}), not marked " \
           "finished" in note
