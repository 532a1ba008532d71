"""Shared fixtures: one tiny offline build (tokenizer, models, toy data) per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TINY_SEED = 0
TINY_NUM_EXAMPLES = 16


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a ``make_tiny`` build (seed 0, 16 examples); see ``prism_plugin.tiny`` for the layout."""
    from prism_plugin.tiny import make_tiny

    out = tmp_path_factory.mktemp("tiny")
    make_tiny(out, seed=TINY_SEED, num_examples=TINY_NUM_EXAMPLES)
    return out


@pytest.fixture(scope="session")
def tiny_manifest(tiny_dir: Path) -> dict:
    """The build's ``manifest.json`` (model and data paths, token ids, versions)."""
    from prism_plugin.tiny import load_manifest

    return load_manifest(tiny_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    """The tiny byte-level BPE tokenizer, loaded with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_discriminator_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared-mode, 4-expert discriminator upcycled once from the tiny dense Qwen3-VL."""
    from prism_plugin.discriminator import upcycle

    out = tmp_path_factory.mktemp("disc") / "discriminator"
    upcycle(tiny_dir / "qwen3_vl_dense", out, num_experts=4, top_k=2, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_sft_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Stage 1 on the tiny default: a real ``llamafactory-cli train`` SFT (160 steps, PRISM template).

    Returns the output directory (the SFT policy) and the run's log. Tests that need a policy
    producing the layout (the alignment stage) start from it.
    """
    work = tmp_path_factory.mktemp("sft")
    out = work / "out"
    config = {
        "model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "stage": "sft", "do_train": True,
        "finetuning_type": "full", "dataset": "prism_tiny_sft", "dataset_dir": str(tiny_dir / "data"),
        "template": "prism_qwen3_vl", "cutoff_len": 512, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0, "output_dir": str(out), "logging_steps": 10, "save_strategy": "steps",
        "save_steps": 80, "max_steps": 160, "per_device_train_batch_size": 8, "learning_rate": 3.0e-3,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "bf16": False, "report_to": "none", "seed": 0,
    }
    from tests.lf_runs import llamafactory_train

    proc = llamafactory_train(config, work)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log
