"""Shared fixtures: one tiny offline build (tokenizer, models, toy data) per test session.

Markers (``pyproject.toml``): ``transformers4`` tests also run in EasyR1's environment (transformers
4.57, no LLaMA-Factory) — ``pytest -m "transformers4 and not llamafactory" --no-skips`` there, where a
skipped test fails; ``llamafactory`` tests need LLaMA-Factory and are skipped where it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TINY_SEED = 0
TINY_NUM_EXAMPLES = 16
NO_SKIPS = "--no-skips"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(NO_SKIPS, action="store_true",
                     help="a skipped test (or module) fails: every selected test must run (the transformers 4.57 run)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``llamafactory`` (and those built on a Stage 1 run) skip where LLaMA-Factory is absent."""
    if importlib.util.find_spec("llamafactory") is not None:
        return
    skip = pytest.mark.skip(reason="needs LLaMA-Factory and its training stack (pip install -e '.[llamafactory]')")
    for item in items:
        if "llamafactory" in item.keywords or "tiny_sft_run" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if item.config.getoption(NO_SKIPS) and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but {NO_SKIPS} makes every skip a failure: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if collector.config.getoption(NO_SKIPS) and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped, but {NO_SKIPS} makes every skip a failure: " \
                          f"{_skip_reason(report)}"


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


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
