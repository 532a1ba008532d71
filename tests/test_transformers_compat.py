"""transformers 4.57 (EasyR1's line) and 5.x (LLaMA-Factory's): what one line writes, the other reads the same.

These tests run on either line. The other line's half runs in the other environment's interpreter
(``tests/compat_probe.py`` in a subprocess): ``$PRISM_OTHER_PYTHON``, else the checkout's ``.venv457``
(from a 5.x environment) or ``.venv`` (from a 4.57 one) — the two environments the README's test command
builds. Without it the cross-line tests skip (and fail under ``--no-skips``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from prism_plugin.llamafactory import patches
from prism_plugin.portable import make_portable, portable_config, set_tokenizer_class
from tests import compat_probe
from tests.testing_utils import REPO

pytestmark = pytest.mark.transformers4

MAJOR = int(transformers.__version__.split(".")[0])
OTHER_ENV = ".venv457" if MAJOR >= 5 else ".venv"
LOGIT_TOL = 1e-4  # the two lines' kernels differ in summation order


def _env(**extra: str) -> dict[str, str]:
    """A subprocess environment that imports this checkout's package, offline."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra}


@pytest.fixture(scope="session")
def other_python() -> Path:
    """The interpreter of the other transformers line."""
    given = os.environ.get("PRISM_OTHER_PYTHON")
    path = Path(given) if given else REPO / OTHER_ENV / "bin" / "python"
    if not path.is_file():
        if given:
            pytest.fail(f"PRISM_OTHER_PYTHON={given} is not an interpreter")
        pytest.skip(f"no other transformers line here: {path} is missing (set PRISM_OTHER_PYTHON)")
    version = subprocess.run([str(path), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, env=_env(), timeout=300, check=True).stdout.split()[-1]
    assert int(version.split(".")[0]) != MAJOR, f"{path} has transformers {version}, the same line as this one"
    return path


def probe_other(python: Path, *args: Any) -> Any:
    """``compat_probe`` on the other line; its result."""
    out = subprocess.run([str(python), "-m", "tests.compat_probe", *map(str, args)], capture_output=True, text=True,
                         cwd=REPO, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert int(reply["versions"]["transformers"].split(".")[0]) != MAJOR
    return reply["result"]


def assert_same(here: Any, there: Any, where: str = "") -> None:
    """Equal structures; floats within :data:`LOGIT_TOL`."""
    if isinstance(here, dict):
        assert isinstance(there, dict) and set(here) == set(there), where
        for key in here:
            assert_same(here[key], there[key], f"{where}.{key}")
    elif isinstance(here, list):
        assert isinstance(there, list) and len(here) == len(there), where
        for i, (a, b) in enumerate(zip(here, there, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(here, float):
        assert isinstance(there, float) and (abs(here - there) <= LOGIT_TOL or here != here and there != there), \
            (where, here, there)
    else:
        assert here == there, where


# --------------------------------------------------------------------------- start-up hook


def test_hook_is_silent_where_it_has_nothing_to_say() -> None:
    """Importing transformers and its Auto classes (the hook registers the discriminator then) prints nothing."""
    code = ("import transformers\nfrom transformers import AutoConfig, AutoModel, AutoTokenizer\n"
            "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
            "from prism_plugin.llamafactory import bootstrap\n"
            "print(bootstrap.fired, bootstrap.failed, AutoConfig.for_model('prism_discriminator').model_type)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.split() == ["['transformers.models.auto.modeling_auto']", "[]", "prism_discriminator"]


def _fake_llamafactory(root: Path, version: str, modules: dict[str, str]) -> Path:
    """A stand-in ``llamafactory`` package of ``version`` whose ``modules`` have the given source."""
    package = root / "llamafactory"
    for sub in ("", "extras", "hparams", "train", "data"):
        (package / sub).mkdir(parents=True, exist_ok=True)
        (package / sub / "__init__.py").write_text("")
    (package / "extras" / "env.py").write_text(f"VERSION = {version!r}\n")
    for name, source in modules.items():
        (package / (name.replace(".", "/") + ".py")).write_text(source)
    return root


def _import_in_fresh_process(root: Path, *modules: str) -> subprocess.CompletedProcess:
    code = "".join(f"import llamafactory.{m}\n" for m in modules)
    env = _env(PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_other_llamafactory_internals_get_one_line_naming_the_supported_version(tmp_path: Path) -> None:
    """Three patched modules lack their symbols: one line in all, naming the installed and supported versions."""
    root = _fake_llamafactory(tmp_path, "0.9.4", {"hparams.parser": "", "train.tuner": "", "data.template": ""})
    out = _import_in_fresh_process(root, "hparams.parser", "train.tuner", "data.template")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert "LLaMA-Factory 0.9.4" in lines[0] and "lacks _TRAIN_ARGS" in lines[0]
    assert f"prism-plugin supports {patches.supported_versions()}" in lines[0]
    assert patches.supported_versions() == "llamafactory==0.9.5"


def test_an_untested_llamafactory_version_gets_one_line(tmp_path: Path) -> None:
    template = "TEMPLATES = {}\ndef register_template(*args, **kwargs):\n    pass\n"
    root = _fake_llamafactory(tmp_path, "0.9.9", {"data.template": template})
    out = _import_in_fresh_process(root, "data.template")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "prism-plugin: LLaMA-Factory 0.9.9 is untested; prism-plugin supports llamafactory==0.9.5 "
        "(the PRISM stages may fail; LlamaBoard offers them only on a supported version)"
    ]


# --------------------------------------------------------------------------- portable folders (no other line)


def test_portable_config_has_both_lines_keys() -> None:
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2]}
    new = {"model_type": "qwen3_vl_moe", "text_config": {"num_local_experts": 4, "rope_parameters": rope}}
    text = portable_config(new)["text_config"]
    assert text["rope_theta"] == 5e6 and text["rope_scaling"] == {"rope_type": "default", "mrope_section": [4, 2, 2]}
    assert text["num_experts"] == 4 and text["rope_parameters"] == new["text_config"]["rope_parameters"]
    old = {"model_type": "qwen3", "rope_theta": 1e6, "rope_scaling": None}
    assert portable_config(old)["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    legacy_type = {"rope_theta": 1e4, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}}
    assert portable_config(legacy_type)["rope_parameters"] == {"rope_type": "mrope", "mrope_section": [2, 1, 1],
                                                                "rope_theta": 1e4}
    for config in (new, old, legacy_type):
        assert portable_config(portable_config(config)) == portable_config(config)  # idempotent
    assert portable_config({"vision_config": {"depth": 2}}) == {"vision_config": {"depth": 2}}


def test_make_portable_rewrites_only_what_the_older_line_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    assert make_portable(tmp_path) == ["config.json", "tokenizer_config.json"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((tmp_path / "config.json").read_text())["rope_theta"] == 1.0
    assert make_portable(tmp_path) == []
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
    assert make_portable(tmp_path) == [] and not set_tokenizer_class(tmp_path)  # a class both lines know


# --------------------------------------------------------------------------- make-tiny across lines


def test_tiny_folders_built_by_either_line_read_alike_on_both(tiny_dir: Path, other_python: Path,
                                                              tmp_path: Path) -> None:
    """A ``make_tiny`` build from this line and one from the other: every folder gives the same token ids,
    processor output, RoPE frequencies on both lines, and (same weights, either line) the same logits."""
    other_build = Path(probe_other(other_python, "make-tiny", tmp_path / "other"))
    here = {"here": compat_probe.folders(tiny_dir), "other": compat_probe.folders(other_build)}
    there = {"here": probe_other(other_python, "folders", tiny_dir),
             "other": probe_other(other_python, "folders", other_build)}
    assert_same(here, there)
    # Both builds tokenise and position alike (the VL weights differ: each line initialises its own way).
    assert here["here"]["tokenizer"] == here["other"]["tokenizer"]
    for key in ("qwen3_policy", "qwen3_vl_policy"):
        built_here, built_there = here["here"][key], here["other"][key]
        assert built_here["tokenizer"] == built_there["tokenizer"]
        assert built_here.get("processor_ids") == built_there.get("processor_ids")
        assert built_here["inv_freq"] == built_there["inv_freq"]
    assert here["here"]["qwen3_vl_policy"]["mrope_section"] == [4, 2, 2]


# --------------------------------------------------------------------------- discriminators across lines


def test_discriminators_saved_by_either_line_score_the_same_on_both(tiny_dir: Path, other_python: Path,
                                                                    tmp_path: Path) -> None:
    """Upcycled here and there (identical files), and one loaded, changed and saved again on each line: every
    folder scores the tiny rows the same on both lines (shared-prefix KV-cache scoring)."""
    from safetensors.torch import load_file

    here_dirs = compat_probe.upcycle(tiny_dir, tmp_path / "here")
    there_dirs = probe_other(other_python, "upcycle", tiny_dir, tmp_path / "there")
    for mine, theirs in zip(here_dirs, there_dirs, strict=True):
        a, b = load_file(Path(mine) / "model.safetensors"), load_file(Path(theirs) / "model.safetensors")
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), mine
    retrained = [compat_probe.retrain(Path(here_dirs[0]), tmp_path / "retrained-here"),
                 probe_other(other_python, "retrain", there_dirs[0], tmp_path / "retrained-there")]
    directories = [*here_dirs, *there_dirs, *retrained]
    here = compat_probe.discriminators(tiny_dir, [Path(d) for d in directories])
    there = probe_other(other_python, "discriminators", tiny_dir, *directories)
    assert_same(here, there)
    scores = [here[d] for d in directories]
    assert scores[0] != scores[-1]  # the retrained weights give other scores


# --------------------------------------------------------------------------- Stage 2 -> Stage 3 hand-over


@pytest.fixture(scope="module")
def aligned_policy(tiny_dir: Path, tiny_sft_run, tiny_discriminator_dir: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-parameter ``prism_align`` output (1 step) of the tiny SFT policy."""
    from tests.test_prism_align import run_align

    work = tmp_path_factory.mktemp("handover")
    out, _ = run_align(work, tiny_dir, tiny_sft_run[0], tiny_discriminator_dir, max_steps=1,
                       prism_max_new_tokens=32)
    return out


@pytest.mark.llamafactory
def test_aligned_policy_loads_on_the_other_line_with_the_same_ids_and_logits(aligned_policy: Path,
                                                                             other_python: Path,
                                                                             tiny_dir: Path) -> None:
    config = json.loads((aligned_policy / "config.json").read_text())
    assert config["text_config"]["rope_scaling"]["mrope_section"] == [4, 2, 2]  # 4.57's keys written too
    tokenizer_class = json.loads((aligned_policy / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert tokenizer_class == "PreTrainedTokenizerFast"
    image = next((tiny_dir / "data" / "images").glob("*.png"))
    here = compat_probe.policy(aligned_policy, image)
    there = probe_other(other_python, "policy", aligned_policy, image)
    assert_same(here, there)
    assert here["vision"] and len(here["ids"]) > 20
    # Its discriminator goes along: same scores on both lines.
    disc = aligned_policy / "discriminator"
    assert_same(compat_probe.discriminators(tiny_dir, [disc]), probe_other(other_python, "discriminators",
                                                                           tiny_dir, disc))


@pytest.mark.llamafactory
def test_merged_lora_policy_loads_on_the_other_line(tiny_dir: Path, other_python: Path, tmp_path: Path) -> None:
    """A LoRA SFT saves an adapter; ``llamafactory-cli export`` merges it, and the merged folder is what
    EasyR1 takes: same ids and logits on both lines."""
    from tests.lf_runs import llamafactory_export, llamafactory_train
    from tests.testing_utils import lf_config

    adapter = tmp_path / "lora"
    config = lf_config("sft", tiny_dir, adapter, finetuning_type="lora", lora_rank=4, lora_target="all",
                       max_steps=2, logging_steps=1, learning_rate=1e-2)
    proc = llamafactory_train(config, tmp_path / "train")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").is_file()
    merged = tmp_path / "merged"
    proc = llamafactory_export({
        "model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "adapter_name_or_path": str(adapter),
        "template": config["template"], "finetuning_type": "lora", "export_dir": str(merged),
    }, tmp_path / "export")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((merged / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    image = next((tiny_dir / "data" / "images").glob("*.png"))
    here = compat_probe.policy(merged, image)
    assert_same(here, probe_other(other_python, "policy", merged, image))
    base = compat_probe.policy(tiny_dir / "qwen3_vl_policy", image)
    assert here["ids"] == base["ids"] and here["logits"] != base["logits"]  # the adapter is merged in
