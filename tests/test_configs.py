"""The shipped LLaMA-Factory configs parse with LLaMA-Factory's own argument parser, and the key tables of
``yaml/README.md`` are the argument dataclasses' fields (the EasyR1 presets have their own tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_align_distributed import free_port
from tests.testing_utils import REPO

pytestmark = pytest.mark.llamafactory

LLAMAFACTORY_CONFIGS = sorted(p for p in (REPO / "yaml").glob("*.yaml") if not p.name.startswith("rlvr_"))

PARSE = """
import json, sys, yaml
from llamafactory.hparams import get_train_args
config = yaml.safe_load(open(sys.argv[1]))
config.update(output_dir=sys.argv[2], use_cpu=True)  # the paper configs ask for bf16 GPUs: parse them on the CPU
model, data, training, finetuning, generating = get_train_args(config)
print(json.dumps({"stage": finetuning.stage, "deepspeed": training.deepspeed,
                  "prism": {k: getattr(finetuning, k) for k in vars(finetuning) if k.startswith("prism_")}}))
"""


@pytest.mark.parametrize("config", LLAMAFACTORY_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses_with_llamafactory(config, tmp_path):
    """``get_train_args`` on the file as shipped (only ``output_dir`` and ``use_cpu`` set), under a one-rank
    distributed launch as the DeepSpeed configs require: unknown keys, wrong types and our own checks all fail here."""
    env = {**os.environ, "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PARSE, str(config), str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_stage = "sft" if config.name.startswith("sft_") else (
        "prism_disc" if "disc" in config.name else "prism_align")  # prism_rlvr_tiny is prism_align, verifiable
    assert parsed["stage"] == expected_stage
    if parsed["deepspeed"]:
        assert (REPO / parsed["deepspeed"]).is_file()  # relative to the repository root, where commands run


def test_key_tables_in_yaml_readme_are_the_argument_fields():
    from prism_plugin.arguments import key_tables

    readme = (REPO / "yaml" / "README.md").read_text(encoding="utf-8")
    assert key_tables() in readme, "regenerate with: python -m prism_plugin.arguments"


def test_every_shipped_config_has_a_heading_and_command_in_examples_readme():
    readme = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    for config in (REPO / "yaml").glob("*.yaml"):
        assert f"yaml/{config.name}" in readme, config.name


def test_readme_test_command_is_exactly_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    command = readme[next(i for i, line in enumerate(readme) if line.startswith("# (b)")) + 1]
    ci = [line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci == [command]


def test_moved_modules_import_at_their_old_paths():
    """Modules moved into the stage folders (and renamed for what they do) import at their old paths too, as
    the very same modules."""
    import importlib

    from prism_plugin import MOVED_MODULES

    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from prism_plugin.llamafactory.align_trainer import PrismAlignTrainer
    from prism_plugin.llamafactory.disc_workflow import run_prism_disc

    assert PrismAlignTrainer.__module__ == "prism_plugin.llamafactory.align.trainer"
    assert run_prism_disc.__module__ == "prism_plugin.llamafactory.disc.workflow"
