"""Run ``llamafactory-cli train`` on a config dict in a subprocess, as a user would (tests only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("llamafactory-cli"))


def llamafactory_train(config: dict, work: Path, **env: str) -> subprocess.CompletedProcess:
    """Write ``config`` as ``work/run.yaml`` (JSON is valid YAML) and run it offline; ``env`` adds variables
    (e.g. ``FORCE_TORCHRUN``). The venv's ``bin`` is on PATH so torchrun is found."""
    return _run("train", config, work, **env)


def llamafactory_export(config: dict, work: Path) -> subprocess.CompletedProcess:
    """``llamafactory-cli export`` of ``config`` (e.g. merging a LoRA adapter into its base), offline."""
    return _run("export", config, work)


def _run(command: str, config: dict, work: Path, **env: str) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "run.yaml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    full_env.pop("FORCE_TORCHRUN", None)
    full_env.update(env)
    return subprocess.run([CLI, command, str(path)], cwd=work, env=full_env, capture_output=True, text=True,
                          timeout=600)
