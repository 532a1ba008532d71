"""Sparse upcycling: a dense Qwen3-VL / Qwen3 checkpoint -> an MoE ``PrismDiscriminator`` directory.

Every text-layer MLP becomes ``num_experts`` experts, each the dense MLP plus i.i.d.
N(0, noise_std²) noise; routers are N(0, router_std²); top-k weights are renormalised, so with
``noise_std=0`` the MoE computes exactly the dense function. Vision tower, embeddings, attention and
norms are copied. ``num_experts=0`` keeps the dense backbone (the "dense discriminator" ablation).

Noise and heads are drawn from the seed alone, the experts in one canonical layout and then written in
the layout the installed transformers holds (:func:`prism_plugin.discriminator.experts.expert_tensors`):
the same dense model and seed give the same discriminator on transformers 4.57 and 5.x.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from prism_plugin.discriminator.config import (
    PrismDiscriminatorConfig,
    default_expert_groups,
    default_shared_experts,
)
from prism_plugin.discriminator.experts import FUSED_GATE_UP, expert_tensors
from prism_plugin.errors import ConfigError
from prism_plugin.layout import SEGMENT_NAMES
from prism_plugin.portable import make_portable

# Tokenizer / processor files copied next to the weights (whatever of these the dense dir has).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
DENSE_TO_MOE = {"qwen3_vl": "qwen3_vl_moe", "qwen3": "qwen3_moe"}
_MLP_KEY = re.compile(r"^(?P<prefix>.*layers\.(?P<layer>\d+)\.mlp)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


def moe_backbone_config(dense: Any, num_experts: int, top_k: int, aux_coef: float) -> Any:
    """The MoE twin of a dense Qwen3-VL / Qwen3 config: same sizes, every layer sparse."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if dense.model_type not in DENSE_TO_MOE:
        raise ValueError(f"cannot upcycle a {dense.model_type!r} model; supported: {sorted(DENSE_TO_MOE)}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..num_experts ({num_experts}), got {top_k}")
    moe = {
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": dense.get_text_config().intermediate_size,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "router_aux_loss_coef": aux_coef,
    }
    data = dense.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        data.pop(key, None)
    cls = CONFIG_MAPPING[DENSE_TO_MOE[dense.model_type]]
    if dense.model_type == "qwen3_vl":
        text = {k: v for k, v in data.pop("text_config").items() if k != "model_type"}
        vision = {k: v for k, v in data.pop("vision_config").items() if k != "model_type"}
        return cls(text_config=text | moe, vision_config=vision, **data)
    return cls(**(data | moe | {"norm_topk_prob": True, "output_router_logits": False}))


def dense_backbone(dense_path: str | Path) -> tuple[Any, Any]:
    """The dense checkpoint's config and backbone (its language/vision model without the LM head), float32.

    Loaded with the checkpoint's own head class (``AutoModelForImageTextToText`` / ``AutoModelForCausalLM``)
    and its ``.model`` taken: transformers 4.57's ``AutoModel`` does not map a Qwen3-VL checkpoint's
    ``model.`` prefix and would leave the backbone randomly initialised. Any backbone weight missing
    from the checkpoint is an error.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from prism_plugin.policy import is_vision_config

    config = AutoConfig.from_pretrained(dense_path)
    model_class = AutoModelForImageTextToText if is_vision_config(config) else AutoModelForCausalLM
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(dense_path, dtype=torch.float32, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [key for key in info["missing_keys"] if not key.startswith("lm_head.")]
    if missing:
        raise ValueError(f"{dense_path} lacks weights of its {config.model_type!r} backbone: {missing[:5]}")
    return config, model.model


def _is_moe_mlp(prefix: str, target: dict[str, torch.Tensor]) -> bool:
    """Whether the backbone holds experts (fused or per expert) at the dense MLP ``prefix``."""
    return f"{prefix}.{FUSED_GATE_UP}" in target or f"{prefix}.experts.0.gate_proj.weight" in target


def _upcycled_state(
    dense_state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    noise_std: float,
    router_std: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Backbone state for the MoE: copies, experts = dense MLP + noise, routers N(0, router_std²)."""
    state: dict[str, torch.Tensor] = {}
    mlps: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in dense_state.items():
        match = _MLP_KEY.match(key)
        if match and _is_moe_mlp(match["prefix"], target):
            mlps.setdefault(match["prefix"], {})[match["proj"]] = value
        else:
            state[key] = value.clone()
    for prefix, proj in sorted(mlps.items()):
        router = target[f"{prefix}.gate.weight"]
        num = router.shape[0]
        gate_up = torch.cat([proj["gate_proj"], proj["up_proj"]], dim=0).expand(num, -1, -1).clone()
        down = proj["down_proj"].expand(num, -1, -1).clone()
        if noise_std > 0:
            gate_up += torch.randn(gate_up.shape, generator=generator) * noise_std
            down += torch.randn(down.shape, generator=generator) * noise_std
        state.update(expert_tensors(prefix, gate_up, down, target))
        state[f"{prefix}.gate.weight"] = torch.randn(router.shape, generator=generator) * router_std
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise RuntimeError(f"upcycling key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k, v in state.items() if v.shape != target[k].shape]
    if wrong:
        raise RuntimeError(f"upcycling shape mismatch: {wrong[:5]}")
    return state


def copy_processor_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer / processor files of ``src`` into ``dst``; returns the copied names."""
    copied = []
    for name in PROCESSOR_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def check_upcycle_settings(num_experts: int, top_k: int, noise_std: float, router_std: float, expert_mode: str,
                           num_shared_experts: int, segments: list[str]) -> None:
    """A :class:`ConfigError` naming the ``prism-plugin upcycle`` option of a value out of range, before any model
    is read (each would otherwise stop the run later with a traceback, or be silently ignored)."""
    if num_experts < 0:
        raise ConfigError(f"--num-experts must be >= 0 (0 keeps the dense backbone); got {num_experts}")
    if noise_std < 0 or router_std < 0:
        raise ConfigError(f"--noise-std and --router-std must be >= 0; got {noise_std} and {router_std}")
    if expert_mode not in ("shared", "dedicated"):
        raise ConfigError(f"--expert-mode must be 'shared' or 'dedicated'; got {expert_mode!r}")
    if num_experts == 0:
        if expert_mode != "shared":
            raise ConfigError("a dense (--num-experts 0) discriminator supports --expert-mode shared only")
        return
    if not 1 <= top_k <= num_experts:
        raise ConfigError(f"--top-k must be in 1..{num_experts} (each token is routed to top-k of the --num-experts "
                          f"{num_experts} experts); got {top_k}")
    if expert_mode == "shared":
        if num_shared_experts:
            raise ConfigError(f"--num-shared-experts {num_shared_experts} applies to --expert-mode dedicated only")
        return
    if num_experts < len(segments):
        raise ConfigError(f"--expert-mode dedicated gives each of the {len(segments)} segments its own experts: "
                          f"--num-experts must be >= {len(segments)}; got {num_experts}")
    per = (num_experts - num_shared_experts) // len(segments)
    if num_shared_experts < 0 or per < 1:
        raise ConfigError(f"--num-shared-experts must be in 0..{num_experts - len(segments)}: --num-experts "
                          f"{num_experts} leave at least one own expert to each of the {len(segments)} segments; "
                          f"got {num_shared_experts}")
    if per + num_shared_experts < top_k:
        raise ConfigError(f"--top-k {top_k} is more than the {per + num_shared_experts} experts a segment may use "
                          f"(its own {per} + {num_shared_experts} shared)")


def upcycle(
    dense_path: str | Path,
    out_dir: str | Path,
    num_experts: int = 4,
    top_k: int = 2,
    noise_std: float = 0.01,
    router_std: float = 0.02,
    expert_mode: str = "shared",
    seed: int = 0,
    *,
    segments: list[str] | None = None,
    num_shared_experts: int = 0,
    router_aux_loss_coef: float = 0.01,
) -> Path:
    """Build a discriminator from the dense model at ``dense_path`` and save it (with its tokenizer /
    processor files) to ``out_dir``; returns ``out_dir``.

    ``expert_mode="dedicated"`` splits the non-shared experts evenly among ``segments``
    (default caption, reasoning); the last ``num_shared_experts`` experts are usable by all.
    ``num_experts=0``: no upcycling, the dense backbone is copied as is.
    """
    from prism_plugin.discriminator.modeling import PrismDiscriminator

    dense_path, out_dir = Path(dense_path), Path(out_dir)
    segments = list(segments or SEGMENT_NAMES)
    check_upcycle_settings(num_experts, top_k, noise_std, router_std, expert_mode, num_shared_experts, segments)
    dense_config, dense = dense_backbone(dense_path)
    dense_state = dense.state_dict()
    if num_experts > 0:
        backbone_config = moe_backbone_config(dense_config, num_experts, top_k, router_aux_loss_coef)
    else:
        backbone_config = dense_config
    groups = shared = None
    if expert_mode == "dedicated":
        groups = default_expert_groups(segments, num_experts, num_shared_experts)
        shared = default_shared_experts(num_experts, num_shared_experts)
    config = PrismDiscriminatorConfig(
        backbone_config=backbone_config,
        segments=segments,
        expert_mode=expert_mode,
        expert_groups=groups,
        shared_experts=shared,
        router_aux_loss_coef=router_aux_loss_coef,
    )
    with torch.random.fork_rng(devices=[]):  # the backbone's throw-away init; the caller's RNG state is left alone
        torch.manual_seed(seed)
        model = PrismDiscriminator(config).to(torch.float32)
    target = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    generator = torch.Generator().manual_seed(seed)
    state = _upcycled_state(dense_state, target, noise_std, router_std, generator)
    model.backbone.load_state_dict(state, strict=True)
    # The heads' N(0, head_init_std²) init from the seed alone: how a transformers version's own init consumes
    # the global RNG does not change the discriminator.
    heads = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(model.heads):
            model.heads[name].weight.normal_(0.0, config.head_init_std, generator=heads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_processor_files(dense_path, out_dir)
    make_portable(out_dir)
    return out_dir
