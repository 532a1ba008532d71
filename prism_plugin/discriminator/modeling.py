"""``PrismDiscriminator``: a transformers backbone + a scalar score head read at the last valid token."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from prism_plugin.compat import rope_index
from prism_plugin.discriminator.config import PrismDiscriminatorConfig
from prism_plugin.discriminator.experts import write_hub_layout
from prism_plugin.discriminator.routing import MASK_KWARG, RouterControl

Segments = str | Sequence[str] | None


@dataclass
class PrismDiscriminatorOutput(ModelOutput):
    """``scores``: (B,) float32, one per sequence; ``aux_loss``: the router load-balancing loss (unscaled;
    a trainer adds ``router_aux_coef * aux_loss``); ``last_token_state``: (B, H) the hidden state each
    score is read from; ``past_key_values``: the backbone's cache."""

    scores: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    last_token_state: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Cache | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


def last_valid_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (B, L) mask (left or right padding)."""
    mask = attention_mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("every sequence needs at least one valid token")
    length = mask.shape[-1]
    return length - 1 - mask.flip(-1).int().argmax(dim=-1)


class PrismDiscriminator(PreTrainedModel):
    """Scores a sequence (prompt ⊕ segment) with ``head(dropout(h_last))`` on top of a transformers backbone.

    The backbone is built with ``AutoModel.from_config(config.backbone_config)`` (Qwen3-VL-MoE,
    Qwen3-MoE, or a dense Qwen3-VL / Qwen3). ``segments`` (one name, or one per row) picks the
    head and, in ``dedicated`` mode, the experts each row may route to.
    """

    config_class = PrismDiscriminatorConfig
    config: PrismDiscriminatorConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: PrismDiscriminatorConfig) -> None:
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        self.head_dropout = nn.Dropout(config.head_dropout)
        hidden = config.backbone_hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, 1, bias=False) for name in config.head_names})
        self.routing = RouterControl(self.backbone)
        if config.is_moe and not self.routing:
            raise RuntimeError(f"no MoE router found in the {type(self.backbone).__name__} backbone")
        self.post_init()

    @classmethod
    def from_backbone(cls, config: PrismDiscriminatorConfig, backbone: nn.Module) -> PrismDiscriminator:
        """A discriminator around an already loaded ``backbone`` (no second copy of its weights is made); the
        heads are initialised as usual, on the backbone's device and dtype."""
        with torch.device("meta"):
            model = cls(config)
        model.backbone = backbone
        model.routing = RouterControl(backbone)
        reference = next(backbone.parameters())
        model.heads = nn.ModuleDict({name: nn.Linear(config.backbone_hidden_size, 1, bias=False,
                                                     device=reference.device, dtype=reference.dtype)
                                     for name in config.head_names})
        for head in model.heads.values():
            nn.init.normal_(head.weight, mean=0.0, std=config.head_init_std)
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if any(module is head for head in self.heads.values()):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.head_init_std)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """transformers' ``save_pretrained``, with fused experts written in the hub layout, which transformers
        4.57 and 5.x both load (:func:`prism_plugin.discriminator.experts.write_hub_layout`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.config.is_moe and kwargs.get("is_main_process", True):
            text = self.config.backbone_text_config
            write_hub_layout(save_directory, int(text.hidden_size), int(text.moe_intermediate_size))

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    # ------------------------------------------------------------------ helpers

    def _segment_list(self, segments: Segments, batch: int) -> list[str] | None:
        if segments is None:
            if self.config.expert_mode == "dedicated":
                raise ValueError("expert_mode='dedicated' needs `segments` (one name or one per row)")
            return None
        if isinstance(segments, str):
            return [segments] * batch
        segments = list(segments)
        if len(segments) != batch:
            raise ValueError(f"got {len(segments)} segment names for a batch of {batch}")
        return segments

    def expert_mask(self, segments: Segments, batch: int, device: torch.device | None = None) -> torch.Tensor | None:
        """(B, num_experts) bool: the experts each row may route to; None when routing is unrestricted."""
        names = self._segment_list(segments, batch)
        if names is None or self.config.expert_mode == "shared" or not self.config.is_moe:
            return None
        mask = torch.zeros(batch, self.config.num_experts, dtype=torch.bool, device=device)
        for row, name in enumerate(names):
            mask[row, self.config.allowed_experts(name)] = True
        return mask

    def position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of a full (uncached) batch and each row's next free position.

        Qwen3-VL: the backbone's own 3-axis M-RoPE positions (``get_rope_index``), shape (3, B, L);
        text backbones: 0.. over the valid tokens, shape (B, L). The second tensor (B,) is
        ``max position + 1``: where a continuation of that row starts.
        """
        if self.config.is_vision:
            positions, _ = rope_index(self.backbone, input_ids, attention_mask, image_grid_thw)
            valid = attention_mask.bool().unsqueeze(0)
            next_pos = positions.masked_fill(~valid, -1).amax(dim=(0, 2)) + 1
            return positions, next_pos
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, attention_mask.long().sum(-1)

    # ------------------------------------------------------------------ forward

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        segments: Segments = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, list[torch.Tensor]]:
        """Run the backbone with the routing restricted per row; returns (backbone output, router logits)."""
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[0], ref.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=ref.device)
        if position_ids is None:
            if past_key_values is not None and past_key_values.get_seq_length() > 0:
                raise ValueError("pass position_ids when continuing from past_key_values")
            if input_ids is None:
                raise ValueError("pass position_ids with inputs_embeds")
            position_ids, _ = self.position_ids(input_ids, attention_mask, image_grid_thw)
        backbone_kwargs: dict[str, Any] = dict(kwargs)
        if self.config.is_vision:
            backbone_kwargs.update(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
        elif pixel_values is not None:
            raise ValueError("this discriminator has a text-only backbone; it cannot take pixel_values")
        allowed = self.expert_mask(segments, batch, ref.device)
        if allowed is not None:
            backbone_kwargs[MASK_KWARG] = allowed  # reaches every decoder layer, also when it is recomputed
        with self.routing.record() as logits:
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                return_dict=True,
                **backbone_kwargs,
            )
        return out, list(logits)

    def score_hidden(self, hidden: torch.Tensor, segments: Segments, dropout: bool | None = None) -> torch.Tensor:
        """Scores (B,) float32 from last-token hidden states (B, H): dropout + the row's head.

        ``dropout`` defaults to the training mode; ``False`` reads the eval-mode score of the same
        hidden states (the head's dropout is the only train/eval difference of the model).
        """
        names = self._segment_list(segments, hidden.shape[0])
        if dropout if dropout is not None else self.training:
            hidden = nn.functional.dropout(hidden, self.head_dropout.p, training=True)
        if len(self.heads) == 1:
            head = next(iter(self.heads.values()))
            return head(hidden).squeeze(-1).float()
        head_names = list(self.heads)
        all_scores = torch.cat([self.heads[n](hidden) for n in head_names], dim=-1)
        which = torch.tensor([head_names.index(self.config.head_for(n)) for n in names], device=hidden.device)
        return all_scores.gather(-1, which[:, None]).squeeze(-1).float()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        segments: Segments = None,
        use_cache: bool = False,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> PrismDiscriminatorOutput:
        """Score each sequence at its last valid token.

        ``attention_mask`` covers the cached tokens too when ``past_key_values`` is given (then
        ``position_ids`` are required; :mod:`prism_plugin.discriminator.segment_forward` builds them).
        ``aux_loss`` is computed when ``output_router_logits`` (default: in training, MoE backbones).
        """
        kwargs.pop("labels", None)
        kwargs.pop("output_hidden_states", None)
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[0], ref.shape[1]
        if attention_mask is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=ref.device)
        out, logits = self.encode(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            segments=segments,
            use_cache=use_cache,
            **kwargs,
        )
        current_mask = attention_mask[:, -length:]
        hidden = out.last_hidden_state
        last = hidden[torch.arange(batch, device=hidden.device), last_valid_index(current_mask)]
        scores = self.score_hidden(last, segments)
        if output_router_logits is None:
            output_router_logits = self.training and self.config.is_moe
        aux_loss = None
        if output_router_logits and logits:
            from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

            text = self.config.backbone_text_config
            aux_loss = load_balancing_loss_func(
                tuple(logits), self.config.num_experts, int(text.num_experts_per_tok), current_mask
            )
        return PrismDiscriminatorOutput(
            scores=scores,
            aux_loss=aux_loss,
            last_token_state=last,
            last_hidden_state=hidden,
            past_key_values=out.past_key_values if use_cache else None,
            router_logits=tuple(logits) if output_router_logits else None,
        )

    # ------------------------------------------------------------------ drop-in use

    def score_texts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        images: Sequence[Any] | None = None,
        *,
        processor: Any = None,
        batch_size: int = 16,
    ) -> dict[str, torch.Tensor]:
        """Per-segment scores (clipped to ``config.score_clip``; NaN where invalid) and ``valid`` for text
        responses in the PRISM layout; see :func:`prism_plugin.discriminator.rendering.score_texts`."""
        from prism_plugin.discriminator.rendering import score_texts

        return score_texts(self, prompts, responses, images, processor=processor, batch_size=batch_size)
