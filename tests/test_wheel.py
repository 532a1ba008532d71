"""A user who installs from a wheel: the configs and the tiny pipeline ship inside it, and ``prism-plugin init``
copies them into a folder of the user's choice, where the pipeline's relative paths work."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from tests.testing_utils import REPO


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("prism_plugin-*.whl")
    site = out / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def run_installed(site, *argv, cwd):
    code = "import sys; from prism_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_wheel_ships_every_config_and_the_tiny_pipeline(unpacked_wheel):
    shipped = unpacked_wheel / "prism_plugin" / "shipped"
    for config in (REPO / "yaml").rglob("*"):
        if config.is_file():
            assert (shipped / "yaml" / config.relative_to(REPO / "yaml")).read_bytes() == config.read_bytes()
    script = "examples/tiny_pipeline.sh"
    assert (shipped / script).read_bytes() == (REPO / script).read_bytes()
    assert (unpacked_wheel / "prism_plugin_hook.pth").is_file()


def test_init_copies_the_configs_where_the_pipeline_runs_from(unpacked_wheel, tmp_path):
    proc = run_installed(unpacked_wheel, "init", "my-prism", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["next"] == "cd my-prism && bash examples/tiny_pipeline.sh"
    folder = tmp_path / "my-prism"
    config = "yaml/prism_align_tiny.yaml"
    assert (folder / config).read_bytes() == (REPO / config).read_bytes()
    assert (folder / "examples" / "tiny_pipeline.sh").is_file()
    preset = run_installed(unpacked_wheel, "paths", "preset-gspo", cwd=tmp_path)
    assert preset.stdout.strip().startswith(str(unpacked_wheel / "prism_plugin" / "shipped" / "yaml"))
    again = run_installed(unpacked_wheel, "init", "my-prism", cwd=tmp_path)  # a deliberate mistake
    assert again.returncode == 1 and "already has yaml, examples; use --force" in again.stderr
    assert "Traceback" not in again.stderr
