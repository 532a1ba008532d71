"""The start-up hook patches the pinned, unmodified LLaMA-Factory in fresh interpreters."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

from prism_plugin.llamafactory import bootstrap, patches

pytestmark = pytest.mark.llamafactory

PROBE = """
import json
import llamafactory.hparams.parser as parser
import llamafactory.train.tuner as tuner
import llamafactory.data.template as template
from prism_plugin.llamafactory import bootstrap
ft = parser._TRAIN_ARGS[3]
print(json.dumps({
    "fired": sorted(bootstrap.fired),
    "failed": bootstrap.failed,
    "stages": list(ft.__dataclass_fields__["stage"].type.__args__),
    "prism_keys": sorted(k for k in ft.__dataclass_fields__ if k.startswith("prism_")),
    "wrapped": hasattr(tuner._training_function, "__prism_original__"),
    "templates": sorted(k for k in template.TEMPLATES if k.startswith("prism_")),
}))
"""


def run_probe(**env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hook_file_is_installed_at_site_packages_root():
    pth = Path(sysconfig.get_paths()["purelib"]) / "prism_plugin_hook.pth"
    assert pth.is_file()
    assert "prism_plugin.llamafactory.bootstrap" in pth.read_text()


def test_hooks_fire_in_a_fresh_interpreter_against_pinned_llamafactory():
    from llamafactory.extras.env import VERSION

    assert VERSION in patches.SUPPORTED_LLAMAFACTORY
    probe = run_probe()
    assert probe["failed"] == []
    assert probe["fired"] == sorted(set(bootstrap.TARGETS) - {"llamafactory.webui.interface"})  # no board loaded
    assert probe["stages"][-2:] == ["prism_disc", "prism_align"] and "sft" in probe["stages"]
    assert "prism_segments" in probe["prism_keys"]
    assert probe["wrapped"] is True
    assert probe["templates"] == ["prism_qwen3", "prism_qwen3_vl"]


def test_kill_switch_leaves_llamafactory_stock():
    probe = run_probe(PRISM_PLUGIN_DISABLE="1")
    assert probe["fired"] == [] and probe["wrapped"] is False and probe["prism_keys"] == []
    assert "prism_align" not in probe["stages"]


def test_cli_help_lists_the_prism_stages_and_keys():
    out = subprocess.run(
        [str(Path(sys.executable).with_name("llamafactory-cli")), "train", "--help"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "prism_disc,prism_align}" in out.stdout
    assert "--prism_segments" in out.stdout


def test_prism_keys_are_parsed_and_validated():
    from llamafactory.hparams.parser import _TRAIN_ARGS

    finetuning_cls = _TRAIN_ARGS[3]
    args = finetuning_cls(stage="prism_disc", prism_segments=["response"], prism_segment_weights=[1.0])
    assert args.segment_weights == {"response": 1.0}
    with pytest.raises(ValueError, match="one weight per segment"):
        finetuning_cls(stage="prism_disc", prism_segments=["caption", "reasoning"], prism_segment_weights=[1.0])
    with pytest.raises(ValueError, match="prism_segments must be"):
        finetuning_cls(stage="prism_disc", prism_segments=["perception"], prism_segment_weights=[1.0])
    with pytest.raises(ValueError, match="prism_drift_every must be at least 1; got 0"):
        finetuning_cls(stage="sft", prism_drift_every=0)


def test_unknown_yaml_keys_still_fail():
    from llamafactory.hparams.parser import _parse_train_args

    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        _parse_train_args({"stage": "prism_disc", "prism_no_such_key": 1, "model_name_or_path": "x",
                           "output_dir": "o"})


@pytest.mark.parametrize(
    "args, stage",
    [({"stage": "prism_align"}, "prism_align"), (["--stage", "prism_disc"], "prism_disc"),
     (["--stage=sft"], "sft"), (["--model_name_or_path", "m"], None), (None, None)],
)
def test_stage_of(args, stage):
    assert patches.stage_of(args) == stage


def test_changed_llamafactory_internals_name_the_supported_versions():
    fake = ModuleType("llamafactory.train.tuner")
    with pytest.raises(patches.UnsupportedLlamaFactoryError, match=r"lacks _training_function.*llamafactory==0\.9\.5"):
        patches.patch_tuner(fake)


def test_auto_classes_load_a_discriminator_in_a_fresh_process_without_importing_prism(tiny_discriminator_dir):
    code = (
        "import sys; from transformers import AutoModel; "
        f"m = AutoModel.from_pretrained({str(tiny_discriminator_dir)!r}); "
        "print(type(m).__name__, 'prism_plugin.discriminator' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["PrismDiscriminator", "True"]
