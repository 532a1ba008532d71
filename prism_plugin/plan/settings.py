"""What a training YAML asks for, as far as per-GPU memory is concerned: stage, precision, sharding, batch.

The YAML is read as plain YAML (no LLaMA-Factory parser); relative paths in it resolve against the
working directory, LLaMA-Factory's rule. Defaults come from where they live: the ``prism_*`` keys from
:class:`prism_plugin.arguments.PrismArguments` (through :func:`prism_defaults` only), the
Trainer's keys from ``transformers.TrainingArguments``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PLANNED_STAGES = ("prism_align", "prism_disc", "sft")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PlanError(ValueError):
    """A mistake in the plan's inputs, reported as one line (no traceback)."""


def prism_defaults() -> dict[str, Any]:
    """Default of every ``prism_*`` key: PrismArguments' dataclass fields.

    The one place the planner reads PrismArguments, so a restructured arguments module changes one function.
    """
    from prism_plugin.arguments import PrismArguments

    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(PrismArguments):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def training_default(name: str) -> Any:
    """The default of one ``transformers.TrainingArguments`` field (read from the dataclass, not instantiated)."""
    from transformers import TrainingArguments

    field = TrainingArguments.__dataclass_fields__[name]
    return field.default


@dataclass(frozen=True)
class ZeroSettings:
    """The DeepSpeed ``zero_optimization`` block, with DeepSpeed's defaults and the Trainer's ``auto`` values."""

    stage: int
    reduce_bucket_size: int | str  # "auto": hidden_size² of the model (the Trainer fills it in)
    overlap_comm: bool
    contiguous_gradients: bool
    offload_optimizer: bool
    offload_param: bool
    param_persistence_threshold: int | str  # stage 3; "auto": 10 × hidden_size
    max_live_parameters: int

    def bucket_elements(self, hidden_size: int) -> int:
        """reduce_bucket_size in elements, ``auto`` resolved as the Trainer does (hidden_size²)."""
        return hidden_size * hidden_size if self.reduce_bucket_size == "auto" else int(self.reduce_bucket_size)

    def persistence_threshold(self, hidden_size: int) -> int:
        value = self.param_persistence_threshold
        return 10 * hidden_size if value == "auto" else int(value)


@dataclass(frozen=True)
class RunSettings:
    """The memory-relevant settings of one training YAML."""

    config_path: Path
    raw: dict[str, Any]
    stage: str
    world: int
    half: torch.dtype | None  # bf16 / fp16 (the Trainer's AMP, or DeepSpeed's cast); None: no mixed precision
    pure_bf16: bool  # LLaMA-Factory: trainable parameters stay in the checkpoint dtype (no fp32 upcast)
    zero: ZeroSettings | None  # None: no DeepSpeed (DDP when world > 1)
    deepspeed_path: str | None
    per_device_batch: int
    grad_accum: int
    prism: dict[str, Any]

    @property
    def finetuning_keys(self) -> dict[str, Any]:
        """The YAML's keys other than ``prism_*`` (LLaMA-Factory picks its own out of them)."""
        return {k: v for k, v in self.raw.items() if not k.startswith("prism_")}


def resolve_path(value: str, key: str) -> Path:
    """``value`` from the YAML as a path (relative to the working directory, LLaMA-Factory's rule)."""
    if not isinstance(value, str) or not value:
        raise PlanError(f"{key}: expected a path, got {value!r}")
    return Path(value).expanduser().resolve() if Path(value).is_absolute() else (Path.cwd() / value).resolve()


def check_prism_keys(prism: dict[str, Any]) -> None:
    """The training run's own checks of the ``prism_*`` values (:func:`~prism_plugin.arguments.
    prism_arguments`: types, which raw YAML does not enforce, then the values), as a plan error."""
    from prism_plugin.arguments import prism_arguments
    from prism_plugin.errors import ConfigError

    try:
        prism_arguments(prism)
    except ConfigError as err:
        raise PlanError(str(err)) from None


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise PlanError(f"{key}: expected true or false, got {value!r}")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{key}: expected a positive integer, got {value!r}")
    return value


def _deepspeed_config(raw: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    value = raw.get("deepspeed")
    if value is None:
        return None, None
    if isinstance(value, dict):
        return value, "<inline>"
    path = resolve_path(value, "deepspeed")
    if not path.is_file():
        raise PlanError(f"deepspeed: {value} not found (looked for {path}; relative paths resolve against the "
                        "working directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(value)
    except json.JSONDecodeError as err:
        raise PlanError(f"deepspeed: {path} is not valid JSON ({err.msg}, line {err.lineno})") from None


def _enabled(ds: dict[str, Any], name: str, yaml_value: bool) -> bool:
    """``bf16.enabled`` / ``fp16.enabled`` of a DeepSpeed config; ``auto`` takes the YAML's key."""
    value = (ds.get(name) or {}).get("enabled", False)
    if value == "auto":
        return yaml_value
    if bool(value) != yaml_value:
        raise PlanError(f"deepspeed: {name}.enabled is {value} but the YAML's {name} is {yaml_value}; "
                        "the Trainer refuses a mismatch (use \"auto\")")
    return bool(value)


def _zero_settings(ds: dict[str, Any]) -> ZeroSettings:
    zero = ds.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise PlanError(f"deepspeed: zero_optimization.stage must be 0-3, got {stage!r}")

    def offloaded(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

    overlap = zero.get("overlap_comm")
    return ZeroSettings(
        stage=stage,
        reduce_bucket_size=zero.get("reduce_bucket_size", 500_000_000),
        overlap_comm=(stage == 3) if overlap is None else bool(overlap),
        contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
        offload_optimizer=offloaded("offload_optimizer"),
        offload_param=offloaded("offload_param"),
        param_persistence_threshold=zero.get("stage3_param_persistence_threshold", 100_000),
        max_live_parameters=int(zero.get("stage3_max_live_parameters", 1_000_000_000)),
    )


def read_settings(config_path: str | Path, world: int) -> RunSettings:
    """Read a training YAML for ``world`` GPUs; a :class:`PlanError` names the bad key."""
    import yaml

    path = Path(config_path)
    if not path.is_file():
        raise PlanError(f"{config_path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PlanError(f"{config_path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{config_path}: expected a mapping of keys, got {type(raw).__name__}")
    stage = raw.get("stage", "sft")
    if stage not in PLANNED_STAGES:
        raise PlanError(f"stage: {stage!r} is not planned (supported: {', '.join(PLANNED_STAGES)})")
    for key in ("quantization_bit", "adapter_name_or_path"):
        if raw.get(key) is not None:
            raise PlanError(f"{key}: not supported by the planner (plan the run without it)")
    bf16 = _flag(raw.get("bf16", training_default("bf16")), "bf16")
    fp16 = _flag(raw.get("fp16", training_default("fp16")), "fp16")
    pure_bf16 = _flag(raw.get("pure_bf16", False), "pure_bf16")
    ds, ds_path = _deepspeed_config(raw)
    zero = None
    if ds is not None:
        bf16, fp16 = _enabled(ds, "bf16", bf16), _enabled(ds, "fp16", fp16)
        zero = _zero_settings(ds)
    if pure_bf16 and zero is not None and zero.stage == 3:
        raise PlanError("pure_bf16: LLaMA-Factory refuses it with DeepSpeed ZeRO-3")
    half = torch.bfloat16 if bf16 else torch.float16 if fp16 else None
    prism = prism_defaults()
    unknown = sorted(k for k in raw if k.startswith("prism_") and k not in prism)
    if unknown:
        raise PlanError(f"{', '.join(unknown)}: unknown prism_* key(s)")
    prism.update({k: v for k, v in raw.items() if k.startswith("prism_")})
    check_prism_keys(prism)
    return RunSettings(
        config_path=path.resolve(),
        raw=raw,
        stage=stage,
        world=_positive_int(world, "--gpus"),
        half=half,
        pure_bf16=pure_bf16,
        zero=zero,
        deepspeed_path=ds_path,
        per_device_batch=_positive_int(
            raw.get("per_device_train_batch_size", training_default("per_device_train_batch_size")),
            "per_device_train_batch_size",
        ),
        grad_accum=_positive_int(
            raw.get("gradient_accumulation_steps", training_default("gradient_accumulation_steps")),
            "gradient_accumulation_steps",
        ),
        prism=prism,
    )
