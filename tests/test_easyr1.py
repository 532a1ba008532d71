"""EasyR1 integration: reward file, format prompt, loss plugins, presets, launcher, converter.

Always run (no EasyR1 needed): the reward file loaded by path as EasyR1 loads it, the loss plugins
called with EasyR1's keyword sets, the presets against EasyR1's key list (tests/data), the
launcher's rewriting, the converter. With ``EASYR1_SRC`` (skipped otherwise; b44b311 or v0.3.2, whose
missing ``loss_type`` makes the native gspo cases strict expected failures): EasyR1's own reward manager,
loss parity with its ``core_algos``, its dataset on converted text-only rows, its config loader (needs
omegaconf 2.3), the setup hook on a fresh ``core_algos``; with ``ray`` importable too, the patch inside a
real Ray worker. Every test must leave the process as it found it (:func:`tests.easyr1_support.no_global_changes`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import yaml
from prism_plugin.data.records import DatasetRowError
from prism_plugin.easyr1 import hook, launcher, loss_plugin, paths
from prism_plugin.easyr1.convert import to_easyr1
from prism_plugin.layout import SYSTEM_PROMPT
from prism_plugin.losses import get_policy_loss
from prism_plugin.rewards import compute_score
from tests.easyr1_support import (
    POLICY_LOSS_KEYWORDS,
    batch_reward_manager,
    easyr1_reward_manager,
    easyr1_root,
    fresh_loss_modules,
    global_changes,
    global_state,
    import_easyr1,
    kept_environ,
    load_easyr1,
    no_global_changes,
    policy_loss_keywords,
    xfail_without_loss_type,
)

DATA = Path(__file__).resolve().parent / "data"
KEYS_HEAD = json.loads((DATA / "easyr1_config_keys_b44b311.json").read_text())
KEYS_V032 = json.loads((DATA / "easyr1_config_keys_v0.3.2.json").read_text())
PRESETS = {"grpo": "preset-grpo", "dapo": "preset-dapo", "gspo": "preset-gspo"}
DAPO_KWARGS = {"max_response_length": 8192, "overlong_buffer_length": 4096, "overlong_penalty_factor": 1.0}

GOOD = "<caption> two apples </caption>\n<think> 2 + 3 = 5 </think>\n<answer> 5 </answer>"
WRONG = "<caption> two apples </caption>\n<think> 2 + 2 = 4 </think>\n<answer> 4 </answer>"
BAD = "the answer is 5"


@pytest.fixture(autouse=True)
def _leaves_no_global_changes():
    with no_global_changes():
        yield


def test_global_change_guard_sees_leaks(monkeypatch):
    """The guard above catches what the launcher tests used to leave behind."""
    before = global_state()
    os.environ[loss_plugin.ENV_LOSS] = "prism_dapo"  # what launcher.run sets in its process
    try:
        assert global_changes(before) == [f"os.environ[{loss_plugin.ENV_LOSS!r}]"]
    finally:
        del os.environ[loss_plugin.ENV_LOSS]
    patched = types.ModuleType(hook.CORE_ALGOS)
    patched.compute_policy_loss = loss_plugin.make_dispatcher(lambda **kwargs: None)
    monkeypatch.setitem(sys.modules, hook.CORE_ALGOS, patched)
    monkeypatch.setitem(yaml.Dumper.yaml_representers, float, lambda dumper, value: None)
    problems = global_changes(before)
    assert f"{hook.CORE_ALGOS}.compute_policy_loss patched" in problems
    assert "yaml.Dumper representers" in problems
    assert not any(p.startswith("os.environ") for p in problems)


# --------------------------------------------------------------------------- reward file


def load_reward_module(name: str = "custom_reward_fn"):
    """The reward file, loaded exactly as EasyR1's AutoRewardManager loads it."""
    spec = importlib.util.spec_from_file_location(name, str(paths.path_of("reward")))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def easyr1_inputs(*responses: str, ground_truth: str = "5", length: int = 100) -> list[dict]:
    return [{"response": r, "response_length": length, "ground_truth": ground_truth} for r in responses]


@pytest.mark.transformers4
def test_reward_file_by_path_batch_contract():
    module = load_reward_module()
    assert module.REWARD_TYPE == "batch" and module.main is module.compute_score
    scores = module.compute_score(easyr1_inputs(GOOD, WRONG, BAD))
    assert [s["overall"] for s in scores] == pytest.approx([1.0, 0.2, 0.0])
    assert [s["accuracy"] for s in scores] == [1.0, 0.0, 0.0]
    assert [s["format"] for s in scores] == [1.0, 1.0, 0.0]
    assert all(set(s) == {"overall", "accuracy", "format", "overlong"} and s["overlong"] == 0.0 for s in scores)
    assert all(type(v) is float for s in scores for v in s.values())
    assert scores[0] | {"overlong": 0.0} == compute_score(GOOD, "5") | {"overlong": 0.0}


@pytest.mark.transformers4
def test_reward_file_dapo_overlong_kwargs():
    module = load_reward_module()
    reward_fn = functools.partial(module.compute_score, **DAPO_KWARGS)  # as EasyR1 binds reward_function_kwargs
    lengths = [4096, 6144, 8192, 9000]
    inputs = [{"response": GOOD, "response_length": n, "ground_truth": "5"} for n in lengths]
    scores = reward_fn(inputs)
    assert [s["overlong"] for s in scores] == pytest.approx([0.0, -0.5, -1.0, -1.0])
    assert [s["overall"] for s in scores] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert set(DAPO_KWARGS) <= set(inspect.signature(module.compute_score).parameters)
    with pytest.raises(ValueError, match="max_response_length"):
        module.compute_score(inputs, overlong_buffer_length=4096, overlong_penalty_factor=1.0)


@pytest.mark.transformers4
def test_format_prompt_keeps_image_markers():
    from jinja2 import Template

    text = paths.path_of("format-prompt").read_text(encoding="utf-8")
    content = "<image>\nHow many apples are there? <image> "
    rendered = Template(text.strip()).render(content=content)  # EasyR1's RLHFDataset renders it this way
    assert rendered == content.strip() + "\n\n" + SYSTEM_PROMPT
    assert rendered.count("<image>") == 2


@pytest.mark.transformers4
def test_paths_and_references():
    for name in paths.names():
        assert paths.path_of(name).is_absolute() and paths.path_of(name).is_file()
    assert paths.resolve_reference("prism://reward:compute_score") == f"{paths.path_of('reward')}:compute_score"
    assert paths.resolve_reference("${prism:reward}:compute_score") == f"{paths.path_of('reward')}:compute_score"
    assert paths.resolve_reference("${prism:format-prompt}") == str(paths.path_of("format-prompt"))
    assert paths.resolve_reference("./local.py:fn") == "./local.py:fn"
    assert paths.resolve_reference("${data.max_response_length}") == "${data.max_response_length}"
    assert [paths.has_reference(v) for v in ("prism://reward", "x${prism:reward}", "${oc.env:X}", "prism")] == [
        True, True, False, False]
    with pytest.raises(KeyError, match="known"):
        paths.resolve_reference("${prism:rewards}")
    with pytest.raises(KeyError, match="known"):
        paths.path_of("nope")


@pytest.mark.transformers4
def test_cli_paths(capsys):
    from prism_plugin.cli import main

    assert main(["paths", "reward"]) == 0
    assert capsys.readouterr().out.strip() == str(paths.path_of("reward"))


# --------------------------------------------------------------------------- loss plugins

HEAD_KWARGS = POLICY_LOSS_KEYWORDS["b44b311"]
V032_KWARGS = POLICY_LOSS_KEYWORDS["v0.3.2"]
EASYR1_METRICS = {"ppo_kl", "entropy_loss", "pg_clipfrac_higher", "pg_clipfrac_lower"}
# prism loss -> (EasyR1 settings: loss_type, loss_avg_mode, clip low/high), our registry call options
SETTINGS = {
    "prism_grpo": (("default", "token", 0.2, 0.2), {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0}),
    "prism_dapo": (("default", "token", 0.2, 0.28), {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0}),
    "prism_gspo": (("gspo", "seq", 3e-4, 4e-4), {"clip_low": 3e-4, "clip_high": 4e-4}),
    "prism_gspo_token": (("gspo_token", "seq", 3e-4, 4e-4), {"clip_low": 3e-4, "clip_high": 4e-4}),
}


def easyr1_batch(seed: int, spread: float, batch: int = 6, width: int = 9):
    """EasyR1-shaped tensors: (bs, T) log-probs, token-broadcast advantages, a right-padded mask."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, width, generator=gen, dtype=torch.float64) * 3
    new = old + torch.randn(batch, width, generator=gen, dtype=torch.float64) * spread
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float64)
    adv = torch.randn(batch, 1, generator=gen, dtype=torch.float64).expand(batch, width) * mask
    return new, old, adv, mask


def easyr1_kwargs(name: str, seed: int = 0, keyset=HEAD_KWARGS) -> dict:
    (loss_type, avg, low, high), _ = SETTINGS[name]
    new, old, adv, mask = easyr1_batch(seed, spread=0.01 if "gspo" in name else 0.3)
    full = {"old_log_probs": old, "log_probs": new.clone().requires_grad_(True), "advantages": adv,
            "response_mask": mask, "clip_ratio_low": low, "clip_ratio_high": high, "clip_ratio_dual": 3.0,
            "tau_positive": 1.0, "tau_negative": 1.05, "loss_type": loss_type, "loss_avg_mode": avg}
    return {k: full[k] for k in keyset}


@pytest.mark.parametrize("keyset", [HEAD_KWARGS, V032_KWARGS], ids=["b44b311", "v0.3.2"])
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.transformers4
def test_loss_plugin_easyr1_keywords(name, keyset):
    kwargs = easyr1_kwargs(name, keyset=keyset)
    loss, metrics = getattr(loss_plugin, name)(**kwargs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert kwargs["log_probs"].grad is not None and kwargs["log_probs"].grad.abs().sum() > 0
    assert EASYR1_METRICS <= set(metrics) and metrics["prism/loss_plugin"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())
    registry, agg = name.removeprefix("prism_"), {"token": "token-mean", "seq": "seq-mean-token-mean"}
    ref, _ = get_policy_loss(registry)(
        kwargs["log_probs"].detach(), kwargs["old_log_probs"], kwargs["advantages"], kwargs["response_mask"],
        agg_mode=agg[kwargs["loss_avg_mode"]], **SETTINGS[name][1],
    )
    torch.testing.assert_close(loss.detach(), ref)


@pytest.mark.transformers4
def test_dispatcher_selection(monkeypatch):
    calls = []

    def native(**kwargs):
        calls.append(kwargs["loss_type"])
        return torch.tensor(0.0), {"native": 1.0}

    dispatch = loss_plugin.make_dispatcher(native)
    monkeypatch.delenv(loss_plugin.ENV_LOSS, raising=False)
    assert dispatch(**easyr1_kwargs("prism_gspo"))[1] == {"native": 1.0} and calls == ["gspo"]
    assert dispatch(**{**easyr1_kwargs("prism_gspo"), "loss_type": "prism_gspo"})[1]["prism/loss_plugin"] == 1.0
    monkeypatch.setenv(loss_plugin.ENV_LOSS, "prism_dapo")
    assert dispatch(**easyr1_kwargs("prism_dapo"))[1]["prism/loss_plugin"] == 1.0 and calls == ["gspo"]
    monkeypatch.setenv(loss_plugin.ENV_LOSS, "prism_nope")
    with pytest.raises(ValueError, match="unknown prism loss type 'prism_nope'"):
        dispatch(**easyr1_kwargs("prism_dapo"))


# --------------------------------------------------------------------------- presets


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in KEYS_HEAD["free_dicts"]:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset(name: str) -> dict:
    return flatten(yaml.safe_load(paths.path_of(PRESETS[name]).read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.transformers4
def test_presets_use_only_easyr1_keys(name):
    keys = set(preset(name))
    known_head = set(KEYS_HEAD["keys"]) | set(KEYS_HEAD["free_dicts"])
    assert keys <= known_head, f"not EasyR1 b44b311 keys: {sorted(keys - known_head)}"
    unknown_v032 = keys - set(KEYS_V032["keys"]) - set(KEYS_V032["free_dicts"])
    assert unknown_v032 == ({"worker.actor.loss_type"} if name == "gspo" else set())


@pytest.mark.transformers4
def test_presets_paper_settings():
    common = {"data.max_prompt_length": 2048, "data.max_response_length": 8192, "data.rollout_batch_size": 32,
              "worker.rollout.n": 16, "worker.actor.optim.lr": 1e-6, "algorithm.disable_kl": True,
              "algorithm.use_kl_loss": False, "algorithm.adv_estimator": "grpo",
              "data.format_prompt": "${prism:format-prompt}",
              "worker.reward.reward_function": "${prism:reward}:compute_score",
              "data.image_key": "images", "trainer.save_freq": 100, "trainer.save_limit": 3,
              "trainer.logger": ["console"]}
    expected = {
        "grpo": {"worker.actor.clip_ratio_low": 0.2, "worker.actor.clip_ratio_high": 0.2,
                 "worker.actor.loss_avg_mode": "token", "algorithm.online_filtering": False},
        "dapo": {"worker.actor.clip_ratio_low": 0.2, "worker.actor.clip_ratio_high": 0.28,
                 "worker.actor.loss_avg_mode": "token", "algorithm.online_filtering": True,
                 "algorithm.filter_key": "accuracy", "worker.reward.reward_function_kwargs": DAPO_KWARGS},
        "gspo": {"worker.actor.loss_type": "gspo", "worker.actor.clip_ratio_low": 3e-4,
                 "worker.actor.clip_ratio_high": 4e-4, "worker.actor.loss_avg_mode": "seq",
                 "algorithm.online_filtering": False},
    }
    for name, settings in expected.items():
        flat = preset(name)
        for key, value in {**common, **settings}.items():
            assert flat[key] == value, (name, key)
        assert flat["worker.rollout.max_num_batched_tokens"] >= 2048 + 8192
        assert name == "gspo" or "worker.actor.loss_type" not in flat


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_loggers_work_offline_on_both_versions(name):
    loggers = preset(name)["trainer.logger"]
    assert set(loggers) <= set(KEYS_HEAD["loggers"]) & set(KEYS_V032["loggers"])  # else "… is not supported"
    assert "wandb" not in loggers  # EasyR1's default; wandb.init fails offline without a login


README_PLAIN_EASYR1 = ["data.format_prompt=/abs/prism_format.jinja", "worker.reward.reward_function=/abs/r.py:fn"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_stop_plain_easyr1_without_the_overrides(name):
    """Plain EasyR1 resolves the config as OmegaConf does: unresolvable ${prism:…} stops it, naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import UnsupportedInterpolationType

    config = OmegaConf.load(paths.path_of(PRESETS[name]))
    for given in ([], README_PLAIN_EASYR1[:1], README_PLAIN_EASYR1[1:]):
        merged = OmegaConf.merge(config, OmegaConf.from_cli(given))
        with pytest.raises(UnsupportedInterpolationType, match="prism"):
            OmegaConf.to_container(merged, resolve=True)
    resolved = OmegaConf.to_container(OmegaConf.merge(config, OmegaConf.from_cli(README_PLAIN_EASYR1)), resolve=True)
    assert resolved["data"]["format_prompt"] == "/abs/prism_format.jinja"
    assert resolved["worker"]["reward"]["reward_function"] == "/abs/r.py:fn"


# --------------------------------------------------------------------------- launcher rewriting


@pytest.mark.transformers4
def test_plan_cli_loss_rewrite(tmp_path):
    argv = ["worker.actor.loss_type=prism_gspo", "worker.reward.reward_function=prism://reward:compute_score",
            "data.train_files=x.parquet"]
    plan = launcher.plan_launch(argv, has_loss_type=True)
    assert plan.loss == "prism_gspo"
    assert plan.args == ["worker.actor.loss_type=gspo",
                         f"worker.reward.reward_function={paths.path_of('reward')}:compute_score",
                         "data.train_files=x.parquet"]
    old = launcher.plan_launch(argv, has_loss_type=False)  # v0.3.2: EasyR1 would reject the key
    assert old.loss == "prism_gspo" and not any(a.startswith(launcher.LOSS_KEY) for a in old.args)
    assert launcher.plan_launch(["worker.actor.loss_type=gspo"], has_loss_type=True).loss is None
    interpolated = launcher.plan_launch(["data.format_prompt=${prism:format-prompt}"], has_loss_type=True)
    assert interpolated.args == [f"data.format_prompt={paths.path_of('format-prompt')}"]
    with pytest.raises(ValueError, match="unknown prism loss"):
        launcher.plan_launch(["worker.actor.loss_type=prism_ppo"], has_loss_type=True)


@pytest.mark.transformers4
def test_plan_config_file_rewrite(tmp_path, monkeypatch):
    # EasyR1's verl.utils.py_functional registers a PyYAML float representer rounding 3e-4 to 0.0
    monkeypatch.setitem(yaml.Dumper.yaml_representers, float, lambda d, x: d.represent_scalar(
        "tag:yaml.org,2002:float", str(round(x, 3))))
    plan = launcher.plan_launch(["config=prism://preset-gspo", "worker.actor.loss_type=prism_gspo_token"],
                                has_loss_type=False, out_dir=tmp_path)
    assert plan.loss == "prism_gspo_token" and plan.args == [f"config={tmp_path / 'rlvr_gspo.yaml'}"]
    written = yaml.safe_load((tmp_path / "rlvr_gspo.yaml").read_text())
    assert "loss_type" not in written["worker"]["actor"]
    assert written["worker"]["reward"]["reward_function"] == f"{paths.path_of('reward')}:compute_score"
    assert written["data"]["format_prompt"] == str(paths.path_of("format-prompt"))
    assert written["worker"]["actor"]["clip_ratio_low"] == pytest.approx(3e-4)
    with pytest.raises(launcher.LaunchError, match="no loss_type option"):
        launcher.plan_launch(["config=prism://preset-gspo"], has_loss_type=False, out_dir=tmp_path)

    own = tmp_path / "own.yaml"
    own.write_text("worker:\n  actor:\n    loss_type: prism_dapo\n    clip_ratio_high: 0.28\n")
    plan = launcher.plan_launch([f"config={own}"], has_loss_type=True, out_dir=tmp_path / "out")
    assert plan.loss == "prism_dapo"
    assert yaml.safe_load(Path(plan.config_path).read_text())["worker"]["actor"]["loss_type"] == "default"


@pytest.mark.transformers4
def test_runtime_env_merge():
    easyr1_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN"}}
    merged = launcher.merge_runtime_env(easyr1_env, "prism_gspo")
    assert merged["worker_process_setup_hook"] == "prism_plugin.easyr1.hook.setup"
    assert merged["env_vars"] == {**easyr1_env["env_vars"], "PRISM_EASYR1_LOSS": "prism_gspo"}
    assert easyr1_env == {"env_vars": {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN"}}
    assert importlib.import_module(hook.HOOK.rsplit(".", 1)[0]).setup is hook.setup
    with pytest.raises(launcher.LaunchError, match="worker_process_setup_hook"):
        launcher.merge_runtime_env({"worker_process_setup_hook": "other.hook"}, "prism_gspo")


# --------------------------------------------------------------------------- converter


@pytest.mark.transformers4
def test_converter_round_trip(tiny_dir, tmp_path):
    src = tiny_dir / "data" / "rlvr.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    report = to_easyr1(src, tmp_path / "train.parquet")
    table = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert len(table) == len(rows) == len(report.records) and not report.skipped
    for row, out in zip(rows, table, strict=True):
        assert out["answer"] == str(row["answer"]).strip()
        assert out["prompt"].count("<image>") == len(out["images"]) == len(row["images"])
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in out["images"])
    embedded = pq.read_table(to_easyr1(src, tmp_path / "e.parquet", embed_images=True) and tmp_path / "e.parquet")
    first = embedded.to_pylist()[0]["images"][0]["bytes"]
    assert first == Path(table[0]["images"][0]).read_bytes()


@pytest.mark.transformers4
def test_converter_bad_rows(tiny_dir, tmp_path):
    good = json.loads((tiny_dir / "data" / "rlvr.jsonl").read_text().splitlines()[0])
    images = [str(tiny_dir / "data" / p) for p in good["images"]]
    bad = tmp_path / "bad.jsonl"
    lines = [
        {**good, "images": images},
        {k: v for k, v in {**good, "images": images}.items() if k != "answer"},
        {**good, "images": images, "prompt": "<image><image>" + good["prompt"]},
        {**good, "images": ["missing.png"]},
    ]
    bad.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    with pytest.raises(DatasetRowError) as err:
        to_easyr1(bad, tmp_path / "out.parquet")
    assert (err.value.path, err.value.row, err.value.field) == (str(bad), 2, "ground_truth")
    report = to_easyr1(bad, tmp_path / "out.parquet", skip_invalid=True)
    assert len(report.records) == 1
    assert [(e.row, e.field) for e in report.skipped] == [(2, "ground_truth"), (3, "prompt"), (4, "images[0]"),
                                                          (5, "<line>")]
    assert "1 rows kept, 4 skipped" in report.summary()


TEXT_ROWS = [{"prompt": "What is 2 + 3?", "answer": "5"}, {"question": "What is 1 + 1?", "ground_truth": 2}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_converter_text_only_rows_have_no_image_column(tiny_dir, tmp_path):
    src = write_jsonl(tmp_path / "text.jsonl", TEXT_ROWS)
    for embed in (False, True):
        to_easyr1(src, tmp_path / "text.parquet", embed_images=embed)
        table = pq.read_table(tmp_path / "text.parquet")
        assert table.column_names == ["prompt", "answer"]  # EasyR1 reads rows without the column as text-only
        assert table.to_pylist() == [{"prompt": "What is 2 + 3?", "answer": "5"},
                                     {"prompt": "What is 1 + 1?", "answer": "2"}]
    image_row = json.loads((tiny_dir / "data" / "rlvr.jsonl").read_text().splitlines()[0])
    image_row["images"] = [str(tiny_dir / "data" / p) for p in image_row["images"]]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [image_row, TEXT_ROWS[0]])
    to_easyr1(mixed, tmp_path / "mixed.parquet")
    table = pq.read_table(tmp_path / "mixed.parquet")
    assert table.column_names == ["prompt", "images", "answer"]
    assert [len(images) for images in table.column("images").to_pylist()] == [len(image_row["images"]), 0]


@pytest.mark.transformers4
def test_cli_to_easyr1(tiny_dir, tmp_path, capsys):
    from prism_plugin.cli import main

    out = tmp_path / "rlvr.parquet"
    assert main(["data", "to-easyr1", str(tiny_dir / "data" / "rlvr.jsonl"), str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["rows"] == pq.read_table(out).num_rows and result["images"] == "paths"
    assert "--embed-images" in captured.err and "every node" in captured.err  # the multi-node hint
    assert main(["data", "to-easyr1", str(tiny_dir / "data" / "rlvr.jsonl"), str(out), "--embed-images"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["images"] == "bytes" and not captured.err
    text = write_jsonl(tmp_path / "text.jsonl", TEXT_ROWS)
    assert main(["data", "to-easyr1", str(text), str(tmp_path / "text.parquet")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["images"] is None and not captured.err


@pytest.mark.transformers4
def test_cli_to_easyr1_names_a_line_that_is_not_utf8_or_skips_and_counts_it(tmp_path, capsys):
    from prism_plugin.cli import main

    src = tmp_path / "text.jsonl"
    latin = json.dumps({"prompt": "Caf\u00e9: 2 + 3?", "answer": "5"}, ensure_ascii=False).encode("latin-1")
    src.write_bytes(json.dumps(TEXT_ROWS[0]).encode() + b"\n" + latin + b"\n" + json.dumps(TEXT_ROWS[1]).encode())
    message = f"{src}, row 2, field '<line>': not UTF-8 text (byte 0xe9 at column 16); save the file as UTF-8"
    out = tmp_path / "text.parquet"
    assert main(["data", "to-easyr1", str(src), str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"prism-plugin data to-easyr1: error: {message}\n" and not out.exists()
    assert main(["data", "to-easyr1", str(src), str(out), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert f"2 rows kept, 1 skipped\n  {message}" in captured.out
    assert json.loads(captured.out.strip().splitlines()[-1])["skipped"] == 1 and pq.read_table(out).num_rows == 2


# --------------------------------------------------------------------------- with EasyR1 (EASYR1_SRC)


@pytest.fixture(scope="module")
def easyr1():
    """EasyR1's checkout root (its config and reward modules importable on CPU), else skip."""
    root = easyr1_root()
    try:
        load_easyr1(root)
    except ImportError as exc:
        pytest.skip(f"EasyR1 config modules not importable here: {exc}")
    return root


@pytest.fixture()
def fresh_core_algos(easyr1):
    """A freshly imported ``verl.trainer.core_algos`` to patch; modules and ``$PRISM_EASYR1_LOSS`` restored after."""
    with fresh_loss_modules() as core_algos:
        yield core_algos


class _CharTokenizer:
    """decode() of code points: enough for EasyR1's reward manager."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids if int(i) > 0)


class _Batch:
    """The parts of EasyR1's DataProto its reward manager reads."""

    def __init__(self, batch: dict, non_tensor_batch: dict) -> None:
        self.batch, self.non_tensor_batch = batch, non_tensor_batch

    def __len__(self) -> int:
        return len(self.non_tensor_batch["ground_truth"])


def test_reward_through_easyr1_manager(easyr1):
    import numpy as np

    function = easyr1_reward_manager(easyr1)
    config = function.RewardConfig(reward_function=f"{paths.path_of('reward')}:compute_score",
                                   reward_function_kwargs={**DAPO_KWARGS, "max_response_length": 60,
                                                           "overlong_buffer_length": 20})
    config.post_init()
    manager = batch_reward_manager(function)(config, _CharTokenizer())
    responses = [GOOD, WRONG, BAD]
    width = max(map(len, responses))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, text in enumerate(responses):
        ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
        mask[i, : len(text)] = 1
    data = _Batch({"responses": ids, "response_mask": mask}, {"ground_truth": np.array(["5"] * 3, dtype=object)})
    reward, metrics = manager.compute_reward(data)
    expected = [compute_score(t, "5", response_length=len(t), max_response_length=60, overlong_buffer=20,
                              overlong_penalty=1.0) for t in responses]
    assert [reward[i, len(t) - 1].item() for i, t in enumerate(responses)] == pytest.approx(
        [e["overall"] for e in expected])
    assert reward.sum().item() == pytest.approx(sum(e["overall"] for e in expected))
    assert metrics["accuracy"] == [1.0, 0.0, 0.0] and metrics["overlong"] == pytest.approx(
        [e["overlong"] for e in expected])
    assert any(e["overlong"] < 0 for e in expected)


def test_text_only_rows_through_easyr1_dataset(easyr1, tokenizer, tmp_path):
    pytest.importorskip("qwen_vl_utils", reason="qwen-vl-utils (an EasyR1 requirement) is not installed")
    pq_path = tmp_path / "text.parquet"
    to_easyr1(write_jsonl(tmp_path / "text.jsonl", TEXT_ROWS), pq_path)
    flat = preset("grpo")
    options = {"prompt_key": flat["data.prompt_key"], "answer_key": flat["data.answer_key"],
               "image_key": flat["data.image_key"], "max_prompt_length": flat["data.max_prompt_length"],
               "format_prompt": str(paths.path_of("format-prompt")), "filter_overlong_prompts_workers": 1}
    dataset_cls = import_easyr1("verl.utils.dataset", easyr1).RLHFDataset
    dataset = dataset_cls(str(pq_path), tokenizer, None, **options)  # a text model: no processor
    assert len(dataset) == 2
    example = dataset[0]
    prompt = tokenizer.decode(example["raw_prompt_ids"])
    assert example["ground_truth"] == "5" and "What is 2 + 3?" in prompt and SYSTEM_PROMPT in prompt
    assert "multi_modal_data" not in example
    # with an images column (even empty) EasyR1 takes its multimodal branch, which needs a processor
    with_column = pq.read_table(pq_path).append_column("images", pa.array([[], []], pa.list_(pa.string())))
    pq.write_table(with_column, tmp_path / "with_column.parquet")
    with pytest.raises(AttributeError, match="apply_chat_template"):
        dataset_cls(str(tmp_path / "with_column.parquet"), tokenizer, None, **options)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_loss_parity_with_easyr1(fresh_core_algos, name, seed, request):
    keywords = policy_loss_keywords(fresh_core_algos)
    xfail_without_loss_type(request, keywords, SETTINGS[name][0][0])
    native_kwargs = easyr1_kwargs(name, seed, keyset=keywords)
    plugin_kwargs = {**native_kwargs, "log_probs": native_kwargs["log_probs"].detach().clone().requires_grad_(True)}
    native_loss, native_metrics = fresh_core_algos.compute_policy_loss(**native_kwargs)
    loss, metrics = getattr(loss_plugin, name)(**plugin_kwargs)
    native_loss.backward()
    loss.backward()
    torch.testing.assert_close(loss, native_loss, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(plugin_kwargs["log_probs"].grad, native_kwargs["log_probs"].grad, rtol=1e-6, atol=1e-9)
    assert native_kwargs["log_probs"].grad.abs().sum() > 0
    for key in EASYR1_METRICS:
        assert metrics[key] == pytest.approx(native_metrics[key], rel=1e-6, abs=1e-9), key


def test_setup_hook_patches_fresh_core_algos(fresh_core_algos, monkeypatch):
    keywords = policy_loss_keywords(fresh_core_algos)
    original = fresh_core_algos.compute_policy_loss
    dp_actor = types.ModuleType(hook.DP_ACTOR)  # stands in for an already imported dp_actor (needs ray/GPU libs)
    dp_actor.compute_policy_loss = original
    monkeypatch.setitem(sys.modules, hook.DP_ACTOR, dp_actor)
    monkeypatch.setenv(loss_plugin.ENV_LOSS, "prism_gspo")
    hook.setup()
    hook.setup()  # idempotent
    patched = fresh_core_algos.compute_policy_loss
    assert patched is not original and patched.__wrapped__ is original and dp_actor.compute_policy_loss is patched
    assert hook.patch_status() | {"core_algos_file": None} == {
        "active": True, "core_algos": True, "dp_actor": True, "loss": "prism_gspo", "core_algos_file": None}
    _, metrics = patched(**easyr1_kwargs("prism_gspo", keyset=keywords))  # EasyR1 passes loss_type=gspo: env wins
    assert metrics["prism/loss_plugin"] == 1.0
    monkeypatch.delenv(loss_plugin.ENV_LOSS)
    native = patched(**easyr1_kwargs("prism_grpo", keyset=keywords))[1]  # no selection: EasyR1's own loss
    assert "prism/loss_plugin" not in native and EASYR1_METRICS <= set(native)


def test_launcher_run_with_stub_ray(fresh_core_algos, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prism_plugin.easyr1"])
    calls = {}

    class StubRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            calls["runtime_env"] = kwargs["runtime_env"]

        def remote(self, **options):  # runs "remote" functions in this process
            return lambda fn: types.SimpleNamespace(remote=lambda: fn())

        def get(self, value, timeout=None):
            return value

    ray = StubRay()

    def easyr1_main():  # what EasyR1's main does first: start Ray with its runtime_env
        calls["argv"] = list(sys.argv[1:])
        ray.init(runtime_env={"env_vars": {"NCCL_DEBUG": "WARN"}})
        return "trained"

    logs = []
    argv = ["config=prism://preset-dapo", "worker.actor.loss_type=prism_dapo"]
    assert launcher.run(argv, easyr1_main=easyr1_main, ray=ray, log=logs.append) == "trained"  # detects loss_type
    native = ["worker.actor.loss_type=default"] if "loss_type" in policy_loss_keywords(fresh_core_algos) else []
    assert calls["argv"][1:] == native  # v0.3.2 would reject the key: dropped
    assert calls["runtime_env"]["env_vars"] == {"NCCL_DEBUG": "WARN", "PRISM_EASYR1_LOSS": "prism_dapo"}
    assert calls["runtime_env"]["worker_process_setup_hook"] == hook.HOOK
    assert any("active in Ray worker" in line for line in logs)
    assert os.environ[loss_plugin.ENV_LOSS] == "prism_dapo"  # the launcher's process state; the fixture undoes it


def test_presets_through_easyr1_config_loader(easyr1, tmp_path, monkeypatch):
    import omegaconf
    from omegaconf import OmegaConf
    from omegaconf.errors import UnsupportedInterpolationType

    if tuple(int(x) for x in omegaconf.__version__.split(".")[:2]) >= (2, 4):
        pytest.skip(f"omegaconf {omegaconf.__version__}: EasyR1's config needs omegaconf 2.3 (Tuple[str] logger)")
    config_module = load_easyr1(easyr1)
    # the launcher runs with EasyR1 imported, i.e. with its rounding YAML float representer registered
    py_functional = import_easyr1("verl.utils.py_functional", easyr1)
    monkeypatch.setitem(yaml.Dumper.yaml_representers, float, py_functional.float_representer)
    has_loss_type = launcher.easyr1_has_loss_type()
    readme_overrides = [f"data.format_prompt={paths.path_of('format-prompt')}",
                        f"worker.reward.reward_function={paths.path_of('reward')}:compute_score"]
    for name, ref in PRESETS.items():
        if name != "gspo" or has_loss_type:  # plain EasyR1 (no launcher), as its main() loads the config
            plain = OmegaConf.merge(OmegaConf.structured(config_module.PPOConfig()), OmegaConf.load(paths.path_of(ref)))
            with pytest.raises(UnsupportedInterpolationType, match=r"(?s)prism.*full_key: data\.format_prompt"):
                OmegaConf.to_object(plain)
            config = OmegaConf.to_object(OmegaConf.merge(plain, OmegaConf.from_cli(readme_overrides)))
            config.deep_post_init()
            assert config.data.format_prompt == str(paths.path_of("format-prompt"))
            assert config.worker.reward.reward_function == str(paths.path_of("reward"))
        argv = [f"config=prism://{ref}", "worker.actor.model.model_path=/tmp/model"]
        if name == "gspo" and not has_loss_type:  # v0.3.2: the preset's native gspo needs the prism loss
            with pytest.raises(launcher.LaunchError, match="no loss_type option"):
                launcher.plan_launch(argv, has_loss_type=False, out_dir=tmp_path / "refused")
            argv.append("worker.actor.loss_type=prism_gspo")
        plan = launcher.plan_launch(argv, has_loss_type=has_loss_type, out_dir=tmp_path / name)
        merged = OmegaConf.merge(OmegaConf.structured(config_module.PPOConfig()), OmegaConf.load(plan.config_path),
                                 OmegaConf.from_cli(plan.args[1:]))
        config = OmegaConf.to_object(merged)
        config.deep_post_init()
        assert config.worker.reward.reward_function == str(paths.path_of("reward"))
        assert config.worker.reward.reward_function_name == "compute_score"
        assert config.data.format_prompt == str(paths.path_of("format-prompt"))
        assert config.worker.rollout.response_length == 8192 and config.worker.actor.optim.lr == pytest.approx(1e-6)
        trainer = config.trainer
        assert (trainer.save_freq, trainer.save_limit, list(trainer.logger)) == (100, 3, ["console"])
        if has_loss_type:
            assert config.worker.actor.loss_type == {"gspo": "gspo"}.get(name, "default")
        else:
            assert not hasattr(config.worker.actor, "loss_type") and plan.loss == {"gspo": "prism_gspo"}.get(name)
        if name == "gspo":  # the rewritten config (JSON) survives EasyR1's rounding YAML float representer
            assert (config.worker.actor.clip_ratio_low, config.worker.actor.clip_ratio_high) == (3e-4, 4e-4)
        if name == "dapo":
            assert config.algorithm.filter_key == "accuracy" and config.worker.actor.clip_ratio_high == 0.28
            assert config.worker.reward.reward_function_kwargs == DAPO_KWARGS


def test_patch_active_inside_ray_worker(fresh_core_algos, easyr1, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (EasyR1 runs its trainer on Ray)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(easyr1), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(ray, "init", ray.init)  # restored after the launcher wraps it
    monkeypatch.setattr(sys, "argv", ["prism_plugin.easyr1"])
    keywords = policy_loss_keywords(fresh_core_algos)

    def worker_loss():
        from verl.trainer import core_algos

        return core_algos.compute_policy_loss(**easyr1_kwargs("prism_gspo", keyset=keywords))[1]

    def easyr1_main():
        with kept_environ():  # a local Ray leaves PYTHONBREAKPOINT, RAY_* … in this process
            ray.init(num_cpus=1, include_dashboard=False, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "true"}})
            try:
                return ray.get(ray.remote(worker_loss).remote(), timeout=120)
            finally:
                ray.shutdown()

    metrics = launcher.run(["worker.actor.loss_type=prism_gspo"], easyr1_main=easyr1_main, log=lambda line: None)
    assert metrics["prism/loss_plugin"] == 1.0


@pytest.mark.transformers4
def test_probe_fails_loudly_when_worker_unpatched():
    unpatched = {"active": False, "core_algos": False, "dp_actor": None, "loss": None, "pid": 1}
    ray = types.SimpleNamespace(remote=lambda **o: lambda fn: types.SimpleNamespace(remote=lambda: unpatched),
                                get=lambda value, timeout=None: value)
    with pytest.raises(launcher.LaunchError, match="not active in a Ray worker .*silently"):
        launcher.probe_worker(ray, "prism_gspo")
