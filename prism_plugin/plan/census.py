"""Models built on the meta device from their configs, counted tensor by tensor (no weights are read).

The policy is built as LLaMA-Factory 0.9.5 loads it (``AutoModelForImageTextToText`` for image-text
configs, else ``AutoModelForCausalLM``, in the checkpoint's dtype) and LLaMA-Factory's own
``init_adapter`` marks what trains (``finetuning_type`` full / freeze / lora, ``freeze_vision_tower`` …;
LoRA adapters are real PEFT modules on the meta model). Discriminators are :class:`PrismDiscriminator`
instances; a dense Qwen3-VL / Qwen3 config is upcycled first with
:func:`prism_plugin.discriminator.upcycle.moe_backbone_config`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prism_plugin.plan.settings import PlanError

DENSE_TYPES = ("qwen3_vl", "qwen3")
MOE_TYPES = ("qwen3_vl_moe", "qwen3_moe")


@dataclass(frozen=True)
class Tensor:
    """One parameter (or buffer) of a meta model: its size, the dtype it was built in, and whether it trains."""

    numel: int
    dtype: torch.dtype
    trainable: bool = False


@dataclass
class Census:
    """What one model holds, counted on its meta instance."""

    label: str
    architecture: str
    source: str
    config: Any
    params: list[Tensor]
    buffers: list[Tensor]
    kv_features: list[int] = field(default_factory=list)  # per text layer: k_proj + v_proj output features
    kv_weight: Tensor | None = None  # a text k_proj weight: the dtype rollouts' keys/values are computed in
    notes: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.params)

    @property
    def trainable_numel(self) -> int:
        return sum(t.numel for t in self.params if t.trainable)

    @property
    def hidden_size(self) -> int:
        return int(self.config.get_text_config().hidden_size)


# ----------------------------------------------------------------------------- configs


def load_config(path: Path, key: str, flag: str) -> Any:
    """A transformers config from a directory or a ``config.json`` file; a one-line error naming key and flag."""
    from transformers import AutoConfig

    import prism_plugin.discriminator  # noqa: F401  (registers prism_discriminator)

    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PlanError(f"{key}: {path} is not valid JSON ({err.msg}, line {err.lineno})") from None
        model_type = data.pop("model_type", None) if isinstance(data, dict) else None
        if model_type is None:
            raise PlanError(f"{key}: {path} has no model_type; pass {flag} with a transformers config.json")
        try:
            return AutoConfig.for_model(model_type, **data)
        except ValueError as err:
            raise PlanError(f"{key}: {path}: {str(err).splitlines()[0]}") from None
    if not (path / "config.json").is_file():
        raise PlanError(f"{key}: {path} has no config.json; pass {flag} PATH (a model directory or config.json)")
    return AutoConfig.from_pretrained(path)


def find_config(value: str | None, key: str, flag: str, override: str | None, hint: str) -> tuple[Any, str]:
    """The config named by ``override`` (a command-line flag) or else by the YAML's ``key``.

    A YAML value that is not a local path is looked up in the local Hugging Face cache only (no download).
    """
    from prism_plugin.plan.settings import resolve_path

    if override is not None:
        path = Path(override).expanduser().resolve()
        if not path.exists():
            raise PlanError(f"{flag}: {override} not found")
        return load_config(path, flag, flag), str(override)
    if value is None:
        raise PlanError(f"{key}: not set in the YAML; pass {flag} PATH ({hint})")
    path = resolve_path(value, key)
    if path.exists():
        return load_config(path, key, flag), value
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):  # a hub id: the local cache only
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(value, local_files_only=True), value
        except OSError:
            raise PlanError(f"{key}: {value} is neither a local path (relative to {Path.cwd()}) nor in the local "
                            f"Hugging Face cache; pass {flag} PATH ({hint})") from None
    raise PlanError(f"{key}: {value} not found (relative to {Path.cwd()}); pass {flag} PATH ({hint})")


def checkpoint_dtype(config: Any, source: Path | None) -> tuple[torch.dtype, str | None]:
    """The dtype ``from_pretrained(dtype="auto")`` gives: the config's dtype, its text config's, the first
    floating tensor of a ``*.safetensors`` file beside it, else float32 (returned with a note)."""
    for cfg in (config, config.get_text_config()):
        dtype = getattr(cfg, "dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if isinstance(dtype, torch.dtype):
            return dtype, None
    if source is not None and source.is_dir():
        from safetensors import safe_open

        for weights in sorted(source.glob("*.safetensors")):
            with safe_open(str(weights), framework="pt") as handle:
                for name in handle.keys():
                    dtype = handle.get_slice(name).get_dtype()
                    if dtype in ("BF16", "F16", "F32"):
                        return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype], None
    return torch.float32, f"{config.model_type}: no dtype in the config; float32 assumed"


# ----------------------------------------------------------------------------- meta models


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' and LLaMA-Factory's info logging while models are built."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    lf_logger = logging.getLogger("llamafactory")
    lf_level = lf_logger.level
    hf_logging.set_verbosity_error()
    lf_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        lf_logger.setLevel(lf_level)


def _attention_kv(model: torch.nn.Module) -> tuple[list[int], torch.nn.Parameter | None]:
    """Per decoder layer, the output features of its ``self_attn.k_proj`` + ``v_proj`` (what one token caches)."""
    features, first = [], None
    for name, module in model.named_modules():
        if name.endswith("self_attn") and hasattr(module, "k_proj") and hasattr(module, "v_proj"):
            features.append(int(module.k_proj.weight.shape[0]) + int(module.v_proj.weight.shape[0]))
            first = first if first is not None else module.k_proj.weight
    return features, first


def _tensors(model: torch.nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    params = [Tensor(p.numel(), p.dtype, p.requires_grad) for p in model.parameters()]
    buffers = [Tensor(b.numel(), b.dtype) for b in model.buffers()]
    return params, buffers


def _policy_class(config: Any) -> Any:
    """The Auto class LLaMA-Factory's loader picks for ``config`` (image-text first, else causal LM)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if type(config) in AutoModelForImageTextToText._model_mapping.keys():
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def _lf_arguments(keys: dict[str, Any], model_path: str) -> tuple[Any, Any]:
    """LLaMA-Factory's ModelArguments / FinetuningArguments from the YAML's keys they declare."""
    import dataclasses

    from llamafactory.hparams import FinetuningArguments, ModelArguments

    ft_fields = {f.name for f in dataclasses.fields(FinetuningArguments)} - {"stage"}
    ft_keys = {k: v for k, v in keys.items() if k in ft_fields}
    # pure_bf16 here only stops init_adapter from casting the meta model: the plan's rules apply the upcast.
    ft_keys["pure_bf16"] = True
    try:
        return ModelArguments(model_name_or_path=model_path), FinetuningArguments(**ft_keys)
    except (AssertionError, ValueError, TypeError) as err:
        raise PlanError(f"finetuning keys: {err}") from None


def policy_census(config: Any, source: str, yaml_keys: dict[str, Any], label: str = "policy") -> Census:
    """The policy as LLaMA-Factory holds it for training, built on the meta device."""
    try:
        from llamafactory.model.adapter import init_adapter
    except ImportError:
        raise PlanError(
            "planning the policy needs LLaMA-Factory (pip install 'prism-plugin[llamafactory]')"
        ) from None
    dtype, note = checkpoint_dtype(config, Path(source) if Path(source).exists() else None)
    model_args, finetuning_args = _lf_arguments(yaml_keys, source)
    with _quiet(), torch.device("meta"):
        model = _policy_class(config).from_config(config, dtype=dtype)
        features, k_weight = _attention_kv(model)
        try:
            model = init_adapter(config, model, model_args, finetuning_args, is_trainable=True)
        except (ValueError, NotImplementedError) as err:
            raise PlanError(f"finetuning_type {finetuning_args.finetuning_type}: {err}") from None
    params, buffers = _tensors(model)
    census = Census(
        label=label, architecture=type(model).__name__, source=source, config=config, params=params, buffers=buffers,
        kv_features=features, kv_weight=Tensor(k_weight.numel(), k_weight.dtype, k_weight.requires_grad),
        notes=[note] if note else [],
    )
    kind = finetuning_args.finetuning_type
    census.notes.append(f"finetuning_type {kind}, freeze_vision_tower {finetuning_args.freeze_vision_tower}")
    return census


def discriminator_config(config: Any, num_experts: int, top_k: int) -> tuple[Any, str]:
    """A :class:`PrismDiscriminatorConfig` for ``config`` (ours, an MoE backbone, or a dense one to upcycle)."""
    from prism_plugin.discriminator.config import PrismDiscriminatorConfig
    from prism_plugin.discriminator.upcycle import moe_backbone_config

    if config.model_type == "prism_discriminator":
        return config, "PRISM discriminator config"
    if config.model_type in MOE_TYPES:
        return PrismDiscriminatorConfig(backbone_config=config), f"{config.model_type} backbone + score head"
    if config.model_type in DENSE_TYPES:
        if num_experts == 0:
            return PrismDiscriminatorConfig(backbone_config=config), f"dense {config.model_type} (not upcycled)"
        try:
            backbone = moe_backbone_config(config, num_experts, top_k, aux_coef=0.01)
        except ValueError as err:
            raise PlanError(f"--upcycle-top-k: {err}") from None
        return PrismDiscriminatorConfig(backbone_config=backbone), (
            f"{config.model_type} upcycled to {num_experts} experts, top-{top_k}"
        )
    supported = ", ".join(("prism_discriminator", *MOE_TYPES, *DENSE_TYPES))
    raise PlanError(f"discriminator: a {config.model_type!r} config cannot be planned (supported: {supported})")


def discriminator_census(
    config: Any, source: str, num_experts: int, top_k: int, label: str = "discriminator"
) -> Census:
    """A PRISM discriminator (every parameter trains, as ``load_discriminator`` leaves it), built on meta."""
    from prism_plugin.discriminator.modeling import PrismDiscriminator

    disc_config, how = discriminator_config(config, num_experts, top_k)
    if config.model_type in DENSE_TYPES:
        dtype, note = torch.float32, None  # `prism-plugin upcycle` writes float32 weights
    else:
        dtype, note = checkpoint_dtype(config, Path(source) if Path(source).exists() else None)
    with _quiet(), torch.device("meta"):
        model = PrismDiscriminator._from_config(disc_config, dtype=dtype)
    features, k_weight = _attention_kv(model)
    params, buffers = _tensors(model)
    return Census(
        label=label, architecture=f"PrismDiscriminator ({disc_config.backbone_config.model_type})", source=source,
        config=disc_config.backbone_config, params=params, buffers=buffers, kv_features=features,
        kv_weight=Tensor(k_weight.numel(), k_weight.dtype, k_weight.requires_grad) if k_weight is not None else None,
        notes=[how] + ([note] if note else []),
    )
