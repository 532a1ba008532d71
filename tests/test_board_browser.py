"""The PRISM stages in LlamaBoard, driven in a real browser: headless Debian Chromium through
``/usr/bin/chromedriver`` against ``llamafactory-cli webui`` on a loopback port (analytics off), started in a
temporary working directory (the board writes ``llamaboard_cache/`` and ``saves/`` there).

Skipped where Chromium or chromedriver is missing, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import yaml
from tests.webdriver import KEYS, Browser, free_port, wait_for

pytestmark = [pytest.mark.llamafactory, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CLI = str(Path(sys.executable).with_name("llamafactory-cli"))
RUN_STEPS = 2


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        message = f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true makes this a failure")
        pytest.skip(message)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):
    """A running ``llamafactory-cli webui`` (with the start-up hook) in a temporary working directory."""
    _browser_or_skip()
    work = tmp_path_factory.mktemp("board")
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "BROWSER": "true",  # launch(inbrowser=True) opens nothing
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the runner starts llamafactory-cli
    env.pop("FORCE_TORCHRUN", None)
    log = (work / "webui.log").open("w")
    server = subprocess.Popen([CLI, "webui"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: urllib.request.urlopen(url, timeout=5).status == 200, 180, "the board's page")
        yield url, work
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@pytest.fixture
def page(board, tmp_path: Path):
    url, work = board
    browser = Browser(CHROMEDRIVER, CHROMIUM, tmp_path, height=2700)  # the whole Train tab in one screenshot
    try:
        browser.get(url)
        ui = BoardPage(browser)
        wait_for(lambda: ui.has_label("Stage"), 60, "the Train tab")
        yield ui, work
    finally:
        browser.quit()


class BoardPage:
    """The board's fields found by their labels, set by typing as a user does."""

    FIND = """
        const [label, index] = arguments;
        const infos = Array.from(document.querySelectorAll('[data-testid="block-info"]'))
            .filter(e => e.textContent.trim() === label && e.offsetParent !== null);
        if (infos.length <= index) return false;
        const block = infos[index].closest('.block');
        const field = block.querySelector('input[type=number], input:not([type]), input[type=text], textarea');
        document.querySelectorAll('[data-test-field]').forEach(e => e.removeAttribute('data-test-field'));
        field.setAttribute('data-test-field', '1');
        return true;"""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def has_label(self, label: str) -> bool:
        return bool(self.browser.run(self.FIND, label, 0))

    def field(self, label: str) -> dict:
        wait_for(lambda: self.browser.run(self.FIND, label, 0), 30, f"field {label!r}")
        return self.browser.find("[data-test-field]")

    def set(self, label: str, value: str, commit: str = "tab") -> None:
        """Replace the field's text with ``value``; ``commit`` (enter for dropdowns) makes the board take it."""
        element = self.field(label)
        self.browser.click(element)
        self.browser.type(element, KEYS["ctrl"] + "a" + KEYS["ctrl"] + KEYS["backspace"] + value)
        self.browser.type(element, KEYS[commit])
        time.sleep(0.5)

    def choose(self, label: str, option: str) -> None:
        """Pick ``option`` from the dropdown ``label``."""
        self.set(label, option, commit="enter")
        wait_for(lambda: self.value(label) == option, 10, f"{label} = {option}")

    def options(self, label: str) -> list[str]:
        """The dropdown's options as listed when it is opened (the board fills some on focus)."""
        self.browser.click(self.field(label))
        time.sleep(1.5)
        found = self.browser.run("return Array.from(document.querySelectorAll('ul.options li'))"
                                 ".map(e => e.textContent.replace('✓', '').trim());")
        self.browser.type(self.field(label), KEYS["tab"])
        return found

    def value(self, label: str) -> str:
        self.field(label)
        return self.browser.run("return document.querySelector('[data-test-field]').value;")

    def click_button(self, text: str) -> None:
        self.browser.run("""Array.from(document.querySelectorAll('button'))
            .find(b => b.textContent.trim() === arguments[0] && b.offsetParent !== null).click();""", text)

    def open_accordion(self, label: str) -> None:
        self.browser.run("""Array.from(document.querySelectorAll('button.label-wrap'))
            .find(b => b.textContent.includes(arguments[0])).click();""", label)
        time.sleep(1)

    def output_text(self) -> str:
        """The text of the Train tab's output box (the Markdown under the buttons)."""
        return self.browser.run("""
            const info = Array.from(document.querySelectorAll('[data-testid="block-info"]'))
                .find(e => e.textContent.trim() === 'Output dir');
            const column = info.closest('.column');
            return Array.from(column.querySelectorAll('div.prose')).map(e => e.innerText).join('\\n');""")

    def toasts(self) -> str:
        return self.browser.run("return Array.from(document.querySelectorAll('.toast-body'))"
                                ".map(e => e.innerText).join('\\n');")

    def progress_label(self) -> str:
        return self.browser.run("""
            const info = Array.from(document.querySelectorAll('[data-testid="block-info"]'))
                .find(e => e.textContent.startsWith('Running ') && e.offsetParent !== null);
            return info ? info.textContent.trim() : '';""")

    def plot_image(self) -> str:
        return self.browser.run("""
            const img = Array.from(document.querySelectorAll('img'))
                .find(e => e.src.startsWith('data:image') && e.offsetParent !== null);
            return img ? img.naturalWidth + 'x' + img.naturalHeight : '';""")


def fill_alignment(ui: BoardPage, policy: Path, discriminator: Path, data_dir: Path) -> None:
    """A user's PRISM alignment setup for a run of :data:`RUN_STEPS` steps on the tiny models (CPU, fp32)."""
    ui.choose("Model name", "Custom")
    ui.set("Model path", str(policy))
    ui.choose("Finetuning method", "full")
    ui.choose("Chat template", "prism_qwen3_vl")
    ui.choose("Stage", "PRISM alignment")
    wait_for(lambda: ui.has_label("Discriminator folder"), 10, "the PRISM settings")
    ui.set("Data dir", str(data_dir))
    ui.set("Discriminator folder", str(discriminator), commit="enter")
    ui.set("Rollouts per prompt (G)", "2")
    ui.set("Max new tokens", "48")
    ui.set("Learning rate", "1e-4")
    ui.choose("Compute type", "fp32")
    ui.set("Batch size", "2")
    ui.set("Gradient accumulation", "1")
    ui.open_accordion("Extra configurations")
    ui.set("Logging steps", "1")
    ui.set("Extra arguments", json.dumps({"max_steps": RUN_STEPS, "dataloader_num_workers": 0, "seed": 0}))
    ui.open_accordion("Extra configurations")  # closed again


def preview_args(text: str) -> dict[str, str]:
    """``--key value`` pairs of the previewed ``llamafactory-cli train`` command."""
    return dict(re.findall(r"--(\w+) ([^\n\\]*?)\s*\\?$", text, flags=re.M))


def test_prism_alignment_runs_from_the_board(page, tiny_dir: Path, tiny_sft_run, tiny_discriminator_dir: Path,
                                             tmp_path: Path) -> None:
    ui, work = page
    policy = tiny_sft_run[0]
    fill_alignment(ui, policy, tiny_discriminator_dir, tiny_dir / "data")

    options = ui.options("Dataset")
    assert sorted(options) == ["prism_tiny_align", "prism_tiny_rlvr"], options  # its kinds only
    ui.set("Dataset", "prism_tiny_align", commit="enter")
    ui.browser.type(ui.field("Dataset"), KEYS["tab"])  # closes its list

    ui.click_button("Preview command")
    wait_for(lambda: "llamafactory-cli train" in ui.output_text(), 30, "the previewed command")
    previewed = preview_args(ui.output_text())
    assert previewed["stage"] == "prism_align"
    assert previewed["prism_num_generations"] == "2" and previewed["prism_discriminator"] == str(tiny_discriminator_dir)

    ui.click_button("Start")
    label = wait_for(ui.progress_label, 240, "the progress bar of the running PRISM run")
    assert re.match(rf"Running [0-9]+/{RUN_STEPS}: ", label), label
    wait_for(ui.plot_image, 60, "the curves of the running run")
    ui.browser.screenshot(tmp_path / "board_prism_running.png")
    wait_for(lambda: "Finished" in ui.output_text(), 300, "the end of the run")
    ui.browser.screenshot(tmp_path / "board_prism_finished.png")

    runs = list((work / "saves" / "Custom" / "full").iterdir())
    assert len(runs) == 1
    ran = yaml.safe_load((runs[0] / "training_args.yaml").read_text())
    for key in ("stage", "model_name_or_path", "dataset", "dataset_dir", "template", "finetuning_type"):
        assert previewed[key] == str(ran[key]), key
    for key in (k for k in ran if k.startswith("prism_")):
        assert previewed[key] == str(ran[key]), key
    assert {k for k in previewed if k.startswith("prism_")} == {k for k in ran if k.startswith("prism_")}
    log = [entry for line in (runs[0] / "trainer_log.jsonl").read_text().splitlines()
           if "loss" in (entry := json.loads(line))]  # the step logs (the last line is the run's summary)
    assert [entry["current_steps"] for entry in log] == list(range(1, RUN_STEPS + 1))
    assert all({"disc/loss", "valid_ratio", "policy/loss"} <= set(entry) for entry in log)  # the PRISM curves
    assert (runs[0] / "prism_run_complete.json").is_file()
    width, height = map(int, ui.plot_image().split("x"))
    assert height > width  # the loss panel and the PRISM panels under it


def test_bad_settings_get_the_boards_one_line_warning(page, tiny_dir: Path, tiny_sft_run,
                                                      tiny_discriminator_dir: Path) -> None:
    ui, work = page
    policy = tiny_sft_run[0]
    fill_alignment(ui, policy, policy, tiny_dir / "data")  # the policy folder given as the discriminator
    ui.set("Dataset", "prism_tiny_align", commit="enter")

    ui.click_button("Start")
    message = wait_for(lambda: "a PRISM discriminator is needed" in ui.output_text() and ui.output_text(), 30,
                       "the warning")
    assert f"{policy} is a 'qwen3_vl' model (a policy?)" in message
    assert "a PRISM discriminator is needed" in wait_for(ui.toasts, 10, "the warning toast")
    started = [run for run in (work / "saves" / "Custom" / "full").glob("*/training_args.yaml")
               if yaml.safe_load(run.read_text()).get("prism_discriminator") == str(policy)]
    assert started == []  # nothing was run

    ui.set("Discriminator folder", "", commit="enter")
    ui.click_button("Preview command")
    wait_for(lambda: "needs a discriminator folder" in ui.output_text(), 30, "the missing-discriminator warning")

    ui.set("Discriminator folder", str(tiny_discriminator_dir), commit="enter")
    ui.set("Rollouts per prompt (G)", "1")
    ui.click_button("Preview command")
    wait_for(lambda: "prism_num_generations must be >= 2; got 1" in ui.output_text(), 30, "the G < 2 warning")
    # the warnings are not tracebacks (the board's own save_config may race on fast input: not ours to judge)
    tracebacks = (work / "webui.log").read_text().split("Traceback (most recent call last):")[1:]
    assert not [t for t in tracebacks if "prism_plugin" in t or "runner.py" in t]
