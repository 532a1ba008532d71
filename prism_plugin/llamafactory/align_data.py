"""Alignment prompts as model inputs, for the policy (LLaMA-Factory template) and the discriminator.

The policy's prompt is rendered exactly as in SFT: the run's LLaMA-Factory ``template`` and its
multimodal plugin (image tokens expanded, pixel inputs from the policy's processor). The
discriminator renders the same prompt with its own processor, and the teacher demonstration is
tokenised once, like every student segment (see :class:`prism_plugin.llamafactory.pairs.PairEncoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prism_plugin.data.records import AlignRecord, DatasetRowError, LoadReport, load_align
from prism_plugin.discriminator.scoring import PromptInputs
from prism_plugin.llamafactory.align_rewards import segment_texts
from prism_plugin.llamafactory.pairs import PairEncoder, encode_files


@dataclass
class AlignItem:
    """One prompt of the alignment set, encoded for both models."""

    prompt_ids: list[int]
    mm_inputs: dict[str, torch.Tensor]
    disc_prompt: PromptInputs | None  # None without a discriminator
    teacher: dict[str, list[int]]
    ground_truth: str | None
    row: int
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


class AlignEncoder:
    """Encodes :class:`AlignRecord` rows; a prompt that leaves no room for ``max_new_tokens`` is an error."""

    def __init__(
        self, template: Any, tokenizer: Any, processor: Any, pairs: PairEncoder | None, cutoff_len: int,
        max_new_tokens: int, require_ground_truth: bool = False,
    ) -> None:
        """``pairs`` is None when no discriminator scores the rollouts (``prism_reward`` is a rule)."""
        self.template, self.tokenizer, self.processor = template, tokenizer, processor
        self.pairs, self.cutoff_len, self.max_new_tokens = pairs, cutoff_len, max_new_tokens
        self.require_ground_truth = require_ground_truth

    def policy_prompt(self, record: AlignRecord) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Prompt ids and multimodal inputs rendered by the LLaMA-Factory template, as in SFT."""
        images = list(record.images)
        plugin = self.template.mm_plugin
        messages = [{"role": "user", "content": record.prompt}, {"role": "assistant", "content": ""}]
        messages = plugin.process_messages(messages, images, [], [], self.processor)
        prompt_ids, _ = self.template.encode_oneturn(self.tokenizer, messages, None, None)
        prompt_ids, _ = plugin.process_token_ids(prompt_ids, None, images, [], [], self.tokenizer, self.processor)
        mm_inputs = {}
        if images:
            mm = plugin.get_mm_inputs(images, [], [], [len(images)], [0], [0], [prompt_ids], self.processor)
            mm_inputs = {k: v for k, v in mm.items() if isinstance(v, torch.Tensor)}
        return list(prompt_ids), mm_inputs

    def encode(self, record: AlignRecord, path: str) -> AlignItem:
        prompt_ids, mm_inputs = self.policy_prompt(record)
        if len(prompt_ids) + self.max_new_tokens > self.cutoff_len:
            raise DatasetRowError(
                path, record.row, "prompt",
                f"{len(prompt_ids)} prompt tokens + prism_max_new_tokens {self.max_new_tokens} exceed "
                f"cutoff_len {self.cutoff_len}",
            )
        if self.require_ground_truth and not record.ground_truth:
            raise DatasetRowError(path, record.row, "ground_truth", "prism_reward: verifiable needs a ground truth")
        if self.pairs is None:
            try:
                teacher_text = segment_texts(record.teacher.response)
            except ValueError as exc:
                raise DatasetRowError(path, record.row, "teacher_caption", f"teacher {exc}") from None
            return AlignItem(prompt_ids, mm_inputs, None, {}, record.ground_truth, record.row, path,
                             {"teacher_text": teacher_text})
        disc_prompt = self.pairs.scorer.render_prompt(record.prompt, list(record.images) or None)
        try:
            teacher = self.pairs.segment_ids(record.teacher, "teacher")
        except ValueError as exc:
            raise DatasetRowError(path, record.row, "teacher_caption", str(exc)) from None
        for name, ids in teacher.items():
            length = len(disc_prompt.input_ids) + len(ids)
            if length > self.cutoff_len:
                raise DatasetRowError(
                    path, record.row, "teacher_caption" if name == "caption" else "teacher_cot",
                    f"prompt + teacher {name} segment is {length} tokens, over cutoff_len {self.cutoff_len}",
                )
        return AlignItem(prompt_ids, mm_inputs, disc_prompt, teacher, record.ground_truth, record.row, path)


def encode_align(
    files: list[Path], encoder: AlignEncoder, skip_invalid: bool, media_dir: str | None
) -> tuple[list[AlignItem], list[LoadReport]]:
    """Load, validate and encode every alignment file; a bad row raises unless ``skip_invalid``."""
    return encode_files(files, load_align, encoder.encode, skip_invalid, media_dir, "alignment prompts")
