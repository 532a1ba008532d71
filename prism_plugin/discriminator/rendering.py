"""Drop-in scoring of text responses: render the PRISM prompt, tokenise, split segments, score.

A response is tokenised on its own and followed by the end-of-turn token, i.e. exactly the ids
a policy would have generated after the rendered prompt; its caption / reasoning spans come from
:func:`prism_plugin.segment_split.split_segments`, so scores match what the alignment stage computes from
the policy's own ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prism_plugin.chat import ImageLike, chat_prompt_text, load_images
from prism_plugin.data.records import DatasetRowError
from prism_plugin.discriminator.segment_forward import PromptInputs, SegmentQuery, score
from prism_plugin.errors import encoder_rejects
from prism_plugin.layout import SYSTEM_PROMPT, Segments
from prism_plugin.rollout import end_of_turn_id
from prism_plugin.segment_split import split_segments


@dataclass
class PreparedText:
    """One (prompt, response) rendered and split: what :func:`score_prepared` consumes."""

    prompt: PromptInputs
    segments: dict[str, list[int]] = field(default_factory=dict)  # empty when the layout is invalid
    valid: bool = False
    length: int = 0  # prompt + response tokens


class TextScorer:
    """Renders prompts with the PRISM system prompt and scores responses in the layout."""

    def __init__(self, model: Any, processor: Any = None, system_prompt: str | None = None) -> None:
        """``system_prompt`` defaults to the discriminator's own (``config.system_prompt``), else the PRISM one."""
        self.model = model
        self.vision = model.config.is_vision
        if processor is None:
            from transformers import AutoProcessor, AutoTokenizer

            source = model.config.name_or_path
            if not source:
                raise ValueError("pass a processor: this discriminator was not loaded from a directory")
            processor = AutoProcessor.from_pretrained(source) if self.vision else AutoTokenizer.from_pretrained(source)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.system_prompt = system_prompt or getattr(model.config, "system_prompt", None) or SYSTEM_PROMPT
        self.turn = getattr(model.config, "segment_format", "continuation") == "turn"
        self.eot = end_of_turn_id(self.tokenizer)
        self.turn_end = [self.eot, *self.tokenizer("\n", add_special_tokens=False)["input_ids"]]
        config = model.config
        self.max_length = config.max_length or int(config.backbone_text_config.max_position_embeddings)

    def render_prompt(self, prompt: str, images: ImageLike | Sequence[ImageLike] | None = None) -> PromptInputs:
        """Token ids (+ image tensors) of the chat-rendered prompt, generation prompt included.

        A text-only discriminator ignores images (the "text-only discriminator" ablation). A prompt or image the
        processor refuses is a :class:`DatasetRowError` with no location (the caller adds it).
        """
        loaded = load_images(images) if self.vision else []
        text = chat_prompt_text(self.tokenizer, prompt, len(loaded), self.vision, self.system_prompt)
        if not loaded:
            return PromptInputs(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with encoder_rejects("the discriminator's processor", None, None, True):
            enc = self.processor(text=[text], images=loaded, return_tensors="pt")
        return PromptInputs(enc["input_ids"][0], enc["pixel_values"], enc["image_grid_thw"])

    def tokenize_response(self, response: str) -> list[int]:
        """A response's ids as the policy would have generated them: tokenised alone, then end-of-turn."""
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        return ids if ids and ids[-1] == self.eot else [*ids, self.eot]

    def segment_ids(self, response: Segments | str, segments: Sequence[str]) -> dict[str, list[int]]:
        """Token ids of each of ``segments`` of one response; ValueError outside the layout or for an empty
        segment. Teacher and student sides go through here alike, so both are read at the same token.

        ``continuation`` discriminators: the response's ids as a policy generates them, split at the caption
        boundary. ``turn`` discriminators: each segment's text tokenised alone and closed as an assistant turn
        (``<|im_end|>\n``), as the authors' warm-up renders it.
        """
        text = response.response if isinstance(response, Segments) else response
        if self.turn:
            return self._turn_ids(response if isinstance(response, Segments) else text, segments)
        ids = self.tokenize_response(text)
        split = split_segments(ids, self.tokenizer, eos_token_ids=self.eot)
        if any(name != "response" for name in segments) and not split.valid:
            raise ValueError("response is not in the <caption>/<think>/<answer> layout")
        out = {}
        for name in segments:
            start, end = split.span(name)
            if end <= start:
                raise ValueError(f"{name} segment is empty")
            out[name] = ids[start:end]
        return out

    def _turn_ids(self, response: Segments | str, segments: Sequence[str]) -> dict[str, list[int]]:
        parts = response if isinstance(response, Segments) else Segments.from_response(response)
        if parts is None and any(name != "response" for name in segments):
            raise ValueError("response is not in the <caption>/<think>/<answer> layout")
        out = {}
        for name in segments:
            segment = (parts.get(name) if parts is not None else str(response)).strip()
            if not segment:
                raise ValueError(f"{name} segment is empty")
            out[name] = self.tokenizer(segment, add_special_tokens=False)["input_ids"] + self.turn_end
        return out

    def prepare(
        self, prompt: str, response: str, images: ImageLike | Sequence[ImageLike] | None = None
    ) -> PreparedText:
        """Render, tokenise and split one row; :class:`DatasetRowError` (no location) for rows that cannot be
        scored (a missing image, too long)."""
        inputs = self.render_prompt(prompt, images)
        ids = self.tokenize_response(response)
        length = len(inputs.input_ids) + len(ids)
        if length > self.max_length:
            raise DatasetRowError(None, None, "response", f"{length} tokens exceed max_length {self.max_length}",
                                  "too_long")
        split = split_segments(ids, self.tokenizer, eos_token_ids=self.eot)
        segments = {}
        if split.valid:
            segments = self.segment_ids(response, self.model.config.segments)
        return PreparedText(inputs, segments, split.valid, length)

    def score_prepared(
        self, rows: Sequence[PreparedText], batch_size: int = 16, clip: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-segment scores (NaN where the layout is invalid) and ``valid`` for prepared rows."""
        names = list(self.model.config.segments)
        valid = torch.tensor([r.valid for r in rows], dtype=torch.bool)
        out = {name: torch.full((len(rows),), float("nan")) for name in names}
        keep = [i for i, r in enumerate(rows) if r.valid]
        if keep:
            prompts = [rows[i].prompt for i in keep]
            queries = [SegmentQuery(k, name, rows[i].segments[name]) for k, i in enumerate(keep) for name in names]
            with torch.no_grad():
                values = score(self.model, prompts, queries, batch_size=batch_size, clip=clip).cpu()
            values = values.view(len(keep), len(names))
            for j, name in enumerate(names):
                out[name][keep] = values[:, j]
        out["valid"] = valid
        return out


def score_texts(
    model: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    images: Sequence[ImageLike | Sequence[ImageLike] | None] | None = None,
    *,
    processor: Any = None,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Scores of ``responses`` (text in the PRISM layout) to ``prompts``: ``{segment: (N,), "valid": (N,)}``.

    Invalid responses get NaN scores and ``valid=False``. Scores are clipped to ``config.score_clip``.
    Raises :class:`DatasetRowError` (with the row index) for a row that cannot be scored (missing image,
    over-long).
    """
    if len(prompts) != len(responses) or (images is not None and len(images) != len(prompts)):
        raise ValueError("prompts, responses (and images) must have the same length")
    if processor is None:  # reuse the processor loaded from the model's directory across calls
        scorer = getattr(model, "_prism_text_scorer", None) or TextScorer(model)
        model._prism_text_scorer = scorer
    else:
        scorer = TextScorer(model, processor)
    rows = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        try:
            rows.append(scorer.prepare(prompt, response, images[i] if images is not None else None))
        except DatasetRowError as err:
            raise err.at(None, i) from None
    was_training = model.training
    model.eval()
    try:
        return scorer.score_prepared(rows, batch_size=batch_size, clip=model.config.score_clip)
    finally:
        model.train(was_training)
