"""``prism-plugin plan``: byte counts equal the state real models and optimisers hold, on the tiny models.

The single-process, non-DeepSpeed counts are checked against real state (LLaMA-Factory's own loader for
the policy, ``load_discriminator`` for the discriminator, one AdamW step on a dummy loss); the sharded
cases are divisions of those counts, checked on their own with hand-computed numbers.
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

import yaml
from prism_plugin.plan import PlanError, build_plan
from prism_plugin.plan.census import Census, Tensor
from prism_plugin.plan.rules import rollout_kv, shard, side_discriminator, trainer_model
from prism_plugin.plan.settings import RunSettings, ZeroSettings, prism_defaults

pytestmark = pytest.mark.llamafactory

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "model_configs"


def _write_yaml(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys), encoding="utf-8")
    return path


def _items(plan) -> dict[tuple[str, str], int]:
    return {(i.model, i.what): i.nbytes for i in plan.items}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _adamw_step(model: torch.nn.Module) -> dict[str, int]:
    """One AdamW step on a dummy loss over the trainable parameters; the bytes the model and optimiser hold."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    sum(p.float().sum() for p in trainable).backward()
    optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {
        "weights": _nbytes(model.parameters()) + _nbytes(model.buffers()),
        "gradients": _nbytes(p.grad for p in model.parameters() if p.grad is not None),
        "AdamW state": _nbytes(state),
    }


# ----------------------------------------------------------------------------- real state, single process


@pytest.fixture(scope="module")
def bf16_policy_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy saved in bfloat16 (its config says so), with its tokenizer and processor files."""
    from transformers import AutoModelForImageTextToText

    from prism_plugin.discriminator.upcycle import copy_processor_files

    out = tmp_path_factory.mktemp("bf16") / "policy"
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir / "qwen3_vl_policy", dtype=torch.bfloat16)
    model.save_pretrained(out)
    copy_processor_files(tiny_dir / "qwen3_vl_policy", out)
    return out


def _lf_policy_state(model_dir: Path, tmp_path: Path, finetuning: dict) -> dict[str, int]:
    """The policy as ``llamafactory-cli train`` loads it (its own argument parser and loader), after one step."""
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "dataset": "unused",
            "output_dir": str(tmp_path / "out"), "overwrite_output_dir": True, "report_to": "none", "bf16": False,
            **finetuning}
    model_args, _, _, finetuning_args, _ = get_train_args(args)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    return _adamw_step(load_model(tokenizer, model_args, finetuning_args, is_trainable=True))


@pytest.mark.parametrize(
    ("checkpoint", "finetuning"),
    [
        ("fp32", {"finetuning_type": "full"}),
        ("bf16", {"finetuning_type": "full"}),
        ("bf16", {"finetuning_type": "freeze", "freeze_trainable_layers": 1}),
        ("bf16", {"finetuning_type": "lora", "lora_rank": 4}),
        ("fp32", {"finetuning_type": "full", "freeze_vision_tower": False}),
    ],
)
def test_policy_counts_equal_llamafactory_state(
    checkpoint: str, finetuning: dict, tiny_dir: Path, bf16_policy_dir: Path, tmp_path: Path
) -> None:
    model_dir = tiny_dir / "qwen3_vl_policy" if checkpoint == "fp32" else bf16_policy_dir
    real = _lf_policy_state(model_dir, tmp_path, finetuning)
    config = _write_yaml(tmp_path / "sft.yaml", model_name_or_path=str(model_dir), stage="sft", bf16=False,
                         **finetuning)
    plan = _items(build_plan(config, 1, 80))
    assert {what: plan[("policy", what)] for what in real} == real
    assert ("policy", "DDP gradient buckets") not in plan


def test_frozen_parameters_keep_the_checkpoint_dtype(bf16_policy_dir: Path, tmp_path: Path) -> None:
    """Full tuning of a bf16 checkpoint: the vision tower stays bf16, the rest is upcast (LLaMA-Factory's rule)."""
    config = _write_yaml(tmp_path / "sft.yaml", model_name_or_path=str(bf16_policy_dir), stage="sft",
                         finetuning_type="full")
    policy = build_plan(config, 1, 80).models[0]
    frozen = [t for t in policy.params if not t.trainable]
    assert frozen and {t.dtype for t in frozen} == {torch.bfloat16}
    assert {t.dtype for t in policy.params if t.trainable} == {torch.bfloat16}  # as loaded; the rule upcasts
    assert _items(build_plan(config, 1, 80))[("policy", "gradients")] == 4 * policy.trainable_numel


def _align_yaml(tmp_path: Path, tiny_dir: Path, disc: Path, **keys) -> Path:
    base = {"model_name_or_path": str(tiny_dir / "qwen3_vl_policy"), "stage": "prism_align",
            "finetuning_type": "full", "prism_discriminator": str(disc), "per_device_train_batch_size": 2,
            "prism_num_generations": 4, "prism_max_new_tokens": 16, "bf16": False}
    return _write_yaml(tmp_path / "align.yaml", **(base | keys))


def _alignment_update_state(tiny_dir: Path, disc_dir: Path, compute_dtype: torch.dtype | None) -> dict[str, int]:
    """The bytes the alignment stage's discriminator holds after one real update (its scorer and updater,
    autocast to ``compute_dtype``): weights, gradients before the step, and AdamW state."""
    from transformers import AutoTokenizer

    from tests.test_prism_align import scorer_case

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    scorer, batch = scorer_case(tiny_dir, disc_dir, tokenizer)
    scorer.compute_dtype = compute_dtype
    model, grads = scorer.model, {}
    step = scorer.updater.optimizer.optimizer.step

    def record_then_step(*args, **kwargs):  # the gradients the optimiser steps with
        grads["bytes"] = _nbytes(p.grad for p in model.parameters() if p.grad is not None)
        return step(*args, **kwargs)

    scorer.updater.optimizer.optimizer.step = record_then_step
    scorer.update(batch, scorer.score(batch))
    state = scorer.updater.optimizer.optimizer.state
    return {"weights": _nbytes(model.parameters()) + _nbytes(model.buffers()), "gradients": grads["bytes"],
            "AdamW state": _nbytes(t for s in state.values() for t in s.values() if isinstance(t, torch.Tensor))}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_discriminator_counts_equal_the_alignment_state(bf16: bool, tiny_dir: Path, tiny_discriminator_dir: Path,
                                                        tmp_path: Path) -> None:
    """The discriminator as ``prism_align`` trains it without DeepSpeed: float32 master weights, gradients and
    AdamW state whether the run is fp32 or bf16 (bf16 autocasts the forwards: no second copy of the weights)."""
    real = _alignment_update_state(tiny_dir, tiny_discriminator_dir, torch.bfloat16 if bf16 else None)
    plan = _items(build_plan(_align_yaml(tmp_path, tiny_dir, tiny_discriminator_dir, bf16=bf16), 1, 80))
    assert {what: plan[("discriminator", what)] for what in real} == real
    assert ("discriminator", "fp32 master weights") not in plan


def test_prism_disc_trains_the_discriminator_as_the_trainer_model(tiny_discriminator_dir: Path, tmp_path: Path) -> None:
    from prism_plugin.discriminator.loading import load_discriminator

    real = _adamw_step(load_discriminator(str(tiny_discriminator_dir)))
    config = _write_yaml(tmp_path / "disc.yaml", model_name_or_path=str(tiny_discriminator_dir),
                         stage="prism_disc", finetuning_type="full", bf16=True)
    plan = _items(build_plan(config, 1, 80))
    assert {what: plan[("discriminator", what)] for what in real} == real


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_counts_equal_deepspeed_state(stage: int, tiny_dir: Path, tmp_path: Path) -> None:
    """One process, bf16, ZeRO-1/2: the plan's DeepSpeed rows equal what DeepSpeed itself holds."""
    pytest.importorskip("deepspeed")
    policy = tiny_dir / "qwen3_vl_policy"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               MASTER_PORT=str(29541 + stage))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "zero_state.py"), str(policy), str(tmp_path / "out"),
                           str(stage)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = json.loads(proc.stdout.strip().splitlines()[-1])
    (tmp_path / "ds.json").write_text(json.dumps({"bf16": {"enabled": "auto"},
                                                  "zero_optimization": {"stage": stage, "reduce_bucket_size": 1000}}))
    config = _write_yaml(tmp_path / "run.yaml", model_name_or_path=str(policy), stage="sft", finetuning_type="full",
                         bf16=True, deepspeed=str(tmp_path / "ds.json"))
    plan = _items(build_plan(config, 1, 80))
    assert {what: plan[("policy", what)] for what in real} == real
    assert plan[("policy", "ZeRO reduce buckets")] == 1000 * 2


# ----------------------------------------------------------------------------- rollout KV cache


def _cache_bytes(cache) -> int:
    return sum(_nbytes([layer.keys, layer.values]) for layer in cache.layers)


def test_kv_cache_equals_a_real_dynamic_cache(tiny_dir: Path, tiny_discriminator_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    plan = build_plan(_align_yaml(tmp_path, tiny_dir, tiny_discriminator_dir, prism_max_new_tokens=4,
                                  per_device_train_batch_size=1, prism_num_generations=2), 1, 80, prompt_tokens=5)
    per_token = plan.rollout.bytes_per_token
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir / "qwen3_vl_policy").eval()
    ids = torch.randint(0, 1200, (2, 7))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        assert _cache_bytes(cache) == per_token * 2 * 7
        prompt = ids[:, :5]
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                             min_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    # generate never feeds its last sampled token back: the cache holds prompt + new - 1 tokens; the plan
    # counts prompt + new, one token per sequence more.
    assert _cache_bytes(out.past_key_values) == per_token * 2 * (5 + 4 - 1)
    assert _items(plan)[("policy", "rollout KV cache")] == per_token * 2 * (5 + 4)


def test_paper_configs_sizes_and_kv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Qwen3-VL-4B policy and Qwen3-VL-2B upcycled to 4 experts (top-2): exact counts, 144 KiB/token in bf16;
    the shipped config (colocated vLLM, 0.3 of the card, sleep mode) fits 8 × 80 GiB in both phases, and so
    does its HF-engine variant; neither would with the policy loss's logits in one piece."""
    monkeypatch.chdir(REPO)
    configs = {"policy_config": str(FIXTURES / "qwen3_vl_4b"),
               "discriminator_config": str(FIXTURES / "qwen3_vl_2b" / "config.json")}
    plan = build_plan("yaml/prism_align.yaml", 8, 80, **configs)
    policy, disc = plan.models
    assert (policy.numel, policy.trainable_numel) == (4_437_815_808, 4_022_468_096)
    assert disc.numel == disc.trainable_numel == 5_298_657_280  # 5.30 B
    assert plan.rollout.bytes_per_token == 144 * 1024
    items = _items(plan)
    assert items[("policy", "vLLM pool")] == int(0.3 * 80 * 1024**3) and ("policy", "rollout KV cache") not in items
    assert items[("policy", "loss logits")] == 8 * 512 * 151_936 * 14
    kept = sum(n for (model, what), n in items.items() if what not in ("vLLM pool", "loss logits")) + 4 * 1024**3
    assert plan.peak("generation") == kept + items[("policy", "vLLM pool")]  # the logits are gone by then
    assert plan.peak("update") == kept + items[("policy", "loss logits")]  # the pool sleeps
    assert plan.fits and plan.total == plan.peak("generation") and (plan.largest.what == "vLLM pool")
    assert plan.batch.startswith("4 prompts × 16 rollouts = 64 rollouts per optimizer step over 8 ranks")
    shipped = yaml.safe_load((REPO / "yaml" / "prism_align.yaml").read_text())

    def variant(name: str, **keys) -> Any:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(shipped | keys))
        return build_plan(tmp_path / f"{name}.yaml", 8, 80, **configs)

    awake = variant("awake", prism_vllm_sleep_mode=False)  # the pool held through the update too
    assert awake.peak("update") == plan.peak("update") + items[("policy", "vLLM pool")] and awake.fits
    hf = variant("hf", prism_rollout_engine="hf")
    assert _items(hf)[("policy", "rollout KV cache")] == 8 * (1024 + 6144) * 144 * 1024
    assert hf.fits and not hf.phased and (hf.largest.model, hf.largest.what) == ("discriminator", "weights")
    unchunked = variant("whole", prism_logprob_chunk_size=None)
    assert _items(unchunked)[("policy", "loss logits")] == 8 * 6144 * 151_936 * 14
    assert not unchunked.fits and unchunked.largest.what == "loss logits"


# ----------------------------------------------------------------------------- rollout shape and batch


@pytest.mark.parametrize(
    ("keys", "sequences", "batch"),
    [
        ({}, 12, "6 prompts × 4 rollouts = 24 rollouts"),
        ({"prism_groups_across_ranks": True, "per_device_train_batch_size": 4}, 4, "2 prompts × 4 rollouts = 8"),
        ({"prism_groups_across_ranks": True, "per_device_train_batch_size": 4, "prism_rollout_chunk_size": 3}, 3,
         "2 prompts × 4 rollouts = 8"),
        ({"prism_rollout_chunk_size": 5}, 5, "6 prompts × 4 rollouts = 24 rollouts"),
    ],
)
def test_rollout_sequences_and_global_batch(
    keys: dict, sequences: int, batch: str, tiny_dir: Path, tiny_discriminator_dir: Path, tmp_path: Path
) -> None:
    base = {"per_device_train_batch_size": 3, "prism_num_generations": 4, "prism_max_new_tokens": 10}
    plan = build_plan(_align_yaml(tmp_path, tiny_dir, tiny_discriminator_dir, **(base | keys)), 2, 80,
                      prompt_tokens=6)
    assert plan.rollout.sequences == sequences
    assert _items(plan)[("policy", "rollout KV cache")] == sequences * 16 * plan.rollout.bytes_per_token
    assert plan.batch.startswith(batch) and "over 2 ranks" in plan.batch
    settings = base | keys  # the loss's forward: a micro-batch's rollouts, 10 positions (< one chunk) each
    rows = settings["per_device_train_batch_size"] * (1 if settings.get("prism_groups_across_ranks") else 4)
    vocab = plan.models[0].config.get_text_config().vocab_size
    assert _items(plan)[("policy", "loss logits")] == rows * 10 * vocab * 14


def test_prism_defaults_come_from_the_arguments_dataclass() -> None:
    from prism_plugin.arguments import PrismArguments

    defaults = prism_defaults()
    assert defaults["prism_num_generations"] == PrismArguments.__dataclass_fields__["prism_num_generations"].default
    assert defaults["prism_segments"] == ["caption", "reasoning"]
    assert defaults["prism_groups_across_ranks"] is False and defaults["prism_rollout_chunk_size"] is None


def test_max_chunk_is_the_largest_that_fits(tiny_dir: Path, tiny_discriminator_dir: Path, tmp_path: Path) -> None:
    config = _align_yaml(tmp_path, tiny_dir, tiny_discriminator_dir)
    roomy = build_plan(config, 1, 80, reserve_gib=0)
    per_sequence = roomy.rollout.tokens * roomy.rollout.bytes_per_token
    rest = roomy.total - _items(roomy)[("policy", "rollout KV cache")]
    budget = (rest + 5 * per_sequence + per_sequence // 2) / 1024**3  # room for 5.5 sequences
    plan = build_plan(config, 1, budget, reserve_gib=0)
    assert plan.max_chunk() == 5 and not plan.fits  # 8 sequences per call do not fit


# ----------------------------------------------------------------------------- sharding rules on their own


def _census(trainable_all: bool = False) -> Census:
    from transformers import Qwen3Config

    params = [Tensor(1000, torch.float32, True), Tensor(10, torch.float32, True),
              Tensor(500, torch.bfloat16, trainable_all)]
    return Census("m", "toy", "-", Qwen3Config(hidden_size=16, num_attention_heads=2, num_key_value_heads=1),
                  params, [Tensor(4, torch.float32)], kv_features=[8, 8], kv_weight=params[0])


def _settings(world: int, zero: ZeroSettings | None = None, half: torch.dtype | None = torch.bfloat16) -> RunSettings:
    return RunSettings(Path("x.yaml"), {}, "prism_align", world, half, False, zero, "ds.json", 1, 1, prism_defaults())


def _zero(stage: int, **kw) -> ZeroSettings:
    base = {"reduce_bucket_size": 1000, "overlap_comm": True, "contiguous_gradients": True, "offload_optimizer": False,
            "offload_param": False, "param_persistence_threshold": 100, "max_live_parameters": 10**9}
    return ZeroSettings(stage=stage, **(base | kw))


def _by_what(items) -> dict[str, int]:
    return {i.what: i.nbytes for i in items}


def test_shard_rounds_up() -> None:
    assert [shard(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_trainer_model_without_deepspeed() -> None:
    # trainable 1010 fp32 (upcast), frozen 500 bf16, 16 B of buffers, 2 trainable tensors
    single = _by_what(trainer_model(_census(), _settings(1), upcast_trainable=True))
    assert single == {"weights": 4040 + 1000 + 16, "gradients": 4040, "AdamW state": 8080 + 8}
    ddp = _by_what(trainer_model(_census(), _settings(2), upcast_trainable=True))
    assert ddp == single | {"DDP gradient buckets": 4040}


def test_trainer_model_under_zero() -> None:
    c = _census()
    z2 = _by_what(trainer_model(c, _settings(4, _zero(2)), upcast_trainable=True))
    assert z2 == {"weights": 1510 * 2 + 16, "fp32 master weights": 1010, "gradients": 505 + 1010,
                  "AdamW moments": 2020, "ZeRO reduce buckets": 2 * 1000 * 2}
    z1 = _by_what(trainer_model(c, _settings(4, _zero(1, overlap_comm=False)), upcast_trainable=True))
    assert z1 == z2 | {"gradients": 2020 + 1010, "ZeRO reduce buckets": 1000 * 2}
    z3 = _by_what(trainer_model(c, _settings(4, _zero(3)), upcast_trainable=True))
    # tensors of >= 100 elements are sharded (1000 -> 250, 500 -> 125), the 10-element one is replicated
    assert z3 == z2 | {"weights": (250 + 125 + 10) * 2 + 16, "ZeRO-3 live parameters": 1510 * 2}
    z3_offload = _by_what(trainer_model(c, _settings(4, _zero(3, offload_param=True)), upcast_trainable=True))
    assert z3_offload["weights"] == 10 * 2 + 16
    offload = _by_what(trainer_model(c, _settings(4, _zero(2, offload_optimizer=True)), upcast_trainable=True))
    assert offload == z2 | {"fp32 master weights": 0, "AdamW moments": 0, "gradients": 505}
    fp32 = _by_what(trainer_model(c, _settings(4, _zero(2), half=None), upcast_trainable=True))
    assert fp32 == {"weights": 1510 * 4 + 16, "fp32 master weights": 1010, "gradients": 1010, "AdamW moments": 2020,
                    "ZeRO reduce buckets": 2 * 1000 * 4}


def test_side_discriminator_sharding() -> None:
    c = _census(trainable_all=True)  # 1510 trainable, 3 tensors
    single_fp32 = _by_what(side_discriminator(c, _settings(1, half=None), trains=True))
    assert single_fp32 == {"weights": 1510 * 4 + 16, "gradients": 6040, "AdamW state": 12080 + 12}
    ddp = _by_what(side_discriminator(c, _settings(2), trains=True))  # bf16 autocast, ZeroRedundancyOptimizer
    assert ddp == {"weights": 1510 * 4 + 16, "gradients": 6040, "AdamW state": (12080 + 12) // 2}
    z2 = _by_what(side_discriminator(c, _settings(4, _zero(2)), trains=True))  # its own DeepSpeed engine
    assert z2 == {"weights": 1510 * 2 + 16, "fp32 master weights": 1510, "gradients": 755, "AdamW state": 3023}
    z3 = _by_what(side_discriminator(c, _settings(4, _zero(3)), trains=True))
    assert z3 == z2 | {"weights": 755 + 16}
    z1 = _by_what(side_discriminator(c, _settings(4, _zero(1)), trains=True))  # at least ZeRO-2 for the engine
    assert z1 == z2
    assert _by_what(side_discriminator(c, _settings(4, _zero(2)), trains=False)) == {"weights": 1510 * 4 + 16}


def test_rollout_kv_rule() -> None:
    c = _census()
    assert rollout_kv(c, _settings(1), sequences=3, tokens=10).nbytes == 3 * 10 * 16 * 2  # bf16 autocast
    # no mixed precision: the dtype the k_proj weight is held in (a trainable one is upcast to fp32)
    assert rollout_kv(c, _settings(1, half=None), sequences=3, tokens=10).nbytes == 3 * 10 * 16 * 4


# ----------------------------------------------------------------------------- command line


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "prism_plugin.cli", "plan", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def relative_run(tiny_dir: Path, tiny_discriminator_dir: Path, tmp_path: Path) -> Path:
    """A working directory whose YAML names the models and the DeepSpeed config by relative paths."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "policy").symlink_to(tiny_dir / "qwen3_vl_policy")
    (work / "models" / "disc").symlink_to(tiny_discriminator_dir)
    (work / "ds.json").write_text(json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}))
    _write_yaml(work / "run.yaml", model_name_or_path="models/policy", stage="prism_align", finetuning_type="full",
                prism_discriminator="models/disc", deepspeed="ds.json", bf16=True, prism_num_generations=4,
                prism_max_new_tokens=32, per_device_train_batch_size=2)
    return work


def test_cli_from_another_directory(relative_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run_cli(["run.yaml", "--gpus", "2", "--gpu-memory", "1", "--json"], relative_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    monkeypatch.chdir(relative_run)
    expected = build_plan("run.yaml", 2, 1).to_dict()
    assert result["items"] == expected["items"] and result["fits"] == expected["fits"]
    assert result["sharding"].startswith("DeepSpeed ZeRO-2") and result["precision"] == "bf16"
    assert {m["label"] for m in result["models"]} == {"policy", "discriminator"}
    text = _run_cli(["run.yaml", "--gpus", "2", "--gpu-memory", "1"], relative_run)
    assert text.returncode == 0 and "not counted: " in text.stdout
    assert "global batch: 4 prompts × 4 rollouts" in text.stdout


def test_cli_missing_discriminator_is_one_line(relative_run: Path) -> None:
    (relative_run / "models" / "disc").unlink()
    proc = _run_cli(["run.yaml", "--gpus", "2", "--gpu-memory", "80"], relative_run)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("prism-plugin plan: error: prism_discriminator: models/disc is neither a local path")
    assert "--discriminator-config PATH" in lines[0]


def test_bad_inputs_name_the_key(tiny_dir: Path, tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "a.yaml", model_name_or_path=str(tiny_dir / "qwen3_vl_policy"), stage="dpo")
    with pytest.raises(PlanError, match="stage: 'dpo' is not planned"):
        build_plan(config, 1, 80)
    config = _write_yaml(tmp_path / "b.yaml", model_name_or_path="nowhere/at/all", stage="sft")
    with pytest.raises(PlanError, match="model_name_or_path: nowhere/at/all not found.*--policy-config"):
        build_plan(config, 1, 80)
    config = _write_yaml(tmp_path / "c.yaml", model_name_or_path=str(tiny_dir / "qwen3_vl_policy"), stage="sft",
                         deepspeed="missing.json")
    with pytest.raises(PlanError, match="deepspeed: missing.json not found"):
        build_plan(config, 1, 80)
    with pytest.raises(PlanError, match="--policy-config: /no/such/dir not found"):
        build_plan(tmp_path / "b.yaml", 1, 80, policy_config="/no/such/dir")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("prism_logprob_chunk_size", -3, "prism_logprob_chunk_size must be at least 1; got -3"),
    ("prism_num_generations", "four", "prism_num_generations: expected int, got 'four'"),
    ("prism_groups_across_ranks", 1, "prism_groups_across_ranks: expected bool, got 1"),
    ("prism_score_reg_rows", "valdi", r"prism_score_reg_rows must be one of \('all', 'valid'\); got 'valdi'"),
])
def test_prism_values_are_checked_as_the_training_run_checks_them(key, value, message, tiny_dir: Path,
                                                                  tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "a.yaml", model_name_or_path=str(tiny_dir / "qwen3_vl_policy"), stage="sft",
                         **{key: value})
    with pytest.raises(PlanError, match=message):
        build_plan(config, 1, 80)
