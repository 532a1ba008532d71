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
