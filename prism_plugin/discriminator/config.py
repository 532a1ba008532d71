"""``PrismDiscriminatorConfig``: the backbone config (nested) plus the head and expert-mode settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from prism_plugin.layout import SEGMENT_NAMES
from prism_plugin.portable import portable_config, write_portable_config

EXPERT_MODES = ("shared", "dedicated")
SEGMENT_FORMATS = ("continuation", "turn")
SHARED_HEAD = "score"
MOE_MODEL_TYPES = ("qwen3_vl_moe", "qwen3_moe")
VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


class PrismDiscriminatorConfig(PretrainedConfig):
    """A scalar-score discriminator over a transformers backbone (Qwen3-VL(-MoE), Qwen3(-MoE)).

    Fields:
      backbone_config: the backbone's own config (a dict is turned into one via its ``model_type``).
      segments: segment types this discriminator scores (``caption``/``reasoning``; ``response`` for GAD).
      expert_mode: ``shared`` (one MoE and one head for every segment, the reference) or ``dedicated``
        (each segment routes only among ``expert_groups[segment]`` + ``shared_experts``; one head per segment).
      expert_groups / shared_experts: expert indices per segment type / usable by every segment (dedicated).
      head_dropout, head_init_std: the score head's dropout (training only) and N(0, std²) init.
      router_aux_loss_coef: weight of the load-balancing loss a trainer adds (``out.aux_loss``).
      score_clip: scores are clipped to ±score_clip where they are used as rewards (``score_texts``, CLI).
      max_length: longest prompt + segment accepted by ``score_texts``/the CLI (None: the backbone's limit).
      segment_format: how a segment is put after its prompt to be scored — ``continuation`` (the policy's own
        tokens after the generation prompt, read at the segment's last token: prism-plugin's discriminators) or
        ``turn`` (the segment text as a whole assistant turn, ``…<|im_end|>\n``, read at that last newline: the
        authors' warm-up, kept by imported discriminators so their scores stay the authors').
      system_prompt: the system prompt prompts are rendered with (None: prism-plugin's PRISM system prompt).

    A plain ``__init__`` (not transformers 5's dataclass fields), so the class is the same on transformers
    4.57 and 5.x; :meth:`save_pretrained` writes the backbone's settings in both lines' keys (RoPE, expert
    count: :func:`prism_plugin.portable.portable_config`), and so does loading, so a discriminator saved by
    either line loads in the other.
    """

    model_type = "prism_discriminator"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: dict | PretrainedConfig | None = None,
        segments: list[str] | None = None,
        expert_mode: Literal["shared", "dedicated"] = "shared",
        expert_groups: dict[str, list[int]] | None = None,
        shared_experts: list[int] | None = None,
        head_dropout: float = 0.1,
        head_init_std: float = 0.02,
        router_aux_loss_coef: float = 0.01,
        score_clip: float | None = 10.0,
        max_length: int | None = None,
        segment_format: Literal["continuation", "turn"] = "continuation",
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(backbone_config, dict):
            data = portable_config(backbone_config)
            model_type = data.pop("model_type", None)
            if model_type is None:
                raise ValueError("backbone_config needs a 'model_type'")
            backbone_config = CONFIG_MAPPING[model_type](**data)
        elif backbone_config is None:
            backbone_config = CONFIG_MAPPING["qwen3"]()
        super().__init__(**kwargs)
        # Set after the base class: transformers 4.57's __init__ also sets a (generation) ``max_length``.
        self.backbone_config = backbone_config
        self.segments = list(segments) if segments else list(SEGMENT_NAMES)
        self.expert_mode = expert_mode
        self.expert_groups = {k: list(v) for k, v in expert_groups.items()} if expert_groups is not None else None
        self.shared_experts = list(shared_experts or [])
        self.head_dropout = head_dropout
        self.head_init_std = head_init_std
        self.router_aux_loss_coef = router_aux_loss_coef
        self.score_clip = score_clip
        self.max_length = max_length
        self.segment_format = segment_format
        self.system_prompt = system_prompt
        self.validate_experts()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """transformers' ``save_pretrained``, then the backbone's settings in both lines' keys."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_portable_config(Path(save_directory) / "config.json")

    # ------------------------------------------------------------------ derived properties

    @property
    def backbone_text_config(self) -> PretrainedConfig:
        """The backbone's language-model config (the backbone itself for text-only backbones)."""
        return self.backbone_config.get_text_config()

    @property
    def backbone_hidden_size(self) -> int:
        return self.backbone_text_config.hidden_size

    @property
    def is_moe(self) -> bool:
        return self.backbone_config.model_type in MOE_MODEL_TYPES

    @property
    def is_vision(self) -> bool:
        return self.backbone_config.model_type in VL_MODEL_TYPES

    @property
    def num_experts(self) -> int:
        return int(getattr(self.backbone_text_config, "num_experts", 0) or 0) if self.is_moe else 0

    @property
    def head_names(self) -> list[str]:
        """Names of the score heads: one shared head, or one per segment type (dedicated)."""
        return [SHARED_HEAD] if self.expert_mode == "shared" else list(self.segments)

    def head_for(self, segment: str) -> str:
        """The head that scores ``segment``."""
        if self.expert_mode == "shared":
            return SHARED_HEAD
        if segment not in self.segments:
            raise KeyError(f"segment {segment!r} has no head; this discriminator scores {self.segments}")
        return segment

    def allowed_experts(self, segment: str) -> list[int] | None:
        """Experts ``segment`` may route to (None: all of them, i.e. no mask)."""
        if self.expert_mode == "shared" or not self.is_moe:
            return None
        if segment not in self.expert_groups:
            raise KeyError(f"segment {segment!r} has no expert group; groups: {sorted(self.expert_groups)}")
        return sorted(set(self.expert_groups[segment]) | set(self.shared_experts))

    def validate_experts(self) -> None:
        """Check mode, groups and shared experts against the backbone (clear errors at construction)."""
        if self.segment_format not in SEGMENT_FORMATS:
            raise ValueError(f"segment_format must be one of {SEGMENT_FORMATS}, got {self.segment_format!r}")
        if self.expert_mode not in EXPERT_MODES:
            raise ValueError(f"expert_mode must be one of {EXPERT_MODES}, got {self.expert_mode!r}")
        if self.expert_mode == "shared":
            return
        if not self.is_moe:
            raise ValueError(
                f"expert_mode='dedicated' needs an MoE backbone ({', '.join(MOE_MODEL_TYPES)}); "
                f"got {self.backbone_config.model_type!r}"
            )
        if not self.expert_groups:
            raise ValueError("expert_mode='dedicated' needs expert_groups {segment: [expert ids]}")
        missing = [s for s in self.segments if s not in self.expert_groups]
        if missing:
            raise ValueError(f"expert_groups has no group for segments {missing}")
        num, top_k = self.num_experts, int(self.backbone_text_config.num_experts_per_tok)
        for segment, group in self.expert_groups.items():
            ids = set(group) | set(self.shared_experts)
            bad = [i for i in ids if not 0 <= i < num]
            if bad:
                raise ValueError(f"expert ids {bad} of segment {segment!r} are outside 0..{num - 1}")
            if len(ids) < top_k:
                raise ValueError(
                    f"segment {segment!r} may use {len(ids)} experts (group + shared) but top_k is {top_k}"
                )


def default_expert_groups(segments: list[str], num_experts: int, num_shared: int = 0) -> dict[str, list[int]]:
    """Split ``num_experts - num_shared`` experts evenly into one contiguous group per segment.

    The last ``num_shared`` experts are the shared ones (see :func:`default_shared_experts`).
    """
    per = (num_experts - num_shared) // len(segments)
    if per < 1:
        raise ValueError(f"{num_experts} experts ({num_shared} shared) cannot be split among segments {segments}")
    return {name: list(range(i * per, (i + 1) * per)) for i, name in enumerate(segments)}


def default_shared_experts(num_experts: int, num_shared: int) -> list[int]:
    """The last ``num_shared`` expert ids."""
    return list(range(num_experts - num_shared, num_experts))
