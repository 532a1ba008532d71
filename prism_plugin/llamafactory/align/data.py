"""Alignment prompts as model inputs: the policy's prompt rendered by the LLaMA-Factory template, plus
whatever the run's scorer needs of the row (the discriminator's own rendering and teacher ids, or a
ground truth), validated once at load time.

The policy's prompt is rendered exactly as in SFT: the run's ``template`` and its multimodal plugin
(image tokens expanded, pixel inputs from the policy's processor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prism_plugin.data.records import DatasetRowError, LoadReport, PromptRecord, load_and_encode, load_prompts
from prism_plugin.errors import encoder_rejects
from prism_plugin.rollout import PolicyPrompt
from prism_plugin.scorers import AlignPrompt, Scorer


class AlignEncoder:
    """Encodes :class:`PromptRecord` rows; a prompt that leaves no room for ``max_new_tokens`` is an error."""

    def __init__(self, template: Any, tokenizer: Any, processor: Any, scorer: Scorer, cutoff_len: int,
                 max_new_tokens: int) -> None:
        self.template, self.tokenizer, self.processor = template, tokenizer, processor
        self.scorer, self.cutoff_len, self.max_new_tokens = scorer, cutoff_len, max_new_tokens

    def policy_prompt(self, record: PromptRecord) -> PolicyPrompt:
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
            mm_inputs = {k: v for k, v in mm.items() if isinstance(v, torch.Tensor) and k != "mm_token_type_ids"}
        return PolicyPrompt(list(prompt_ids), mm_inputs, tuple(images))

    def encode(self, record: PromptRecord, path: str) -> AlignPrompt:
        """The row as model inputs; a row the template's plugin or the scorer cannot encode, or too long a
        prompt, is a :class:`DatasetRowError` at ``path`` and the record's row."""
        with encoder_rejects("LLaMA-Factory's multimodal plugin", path, record.row, bool(record.images)):
            prompt = self.policy_prompt(record)
        if len(prompt.input_ids) + self.max_new_tokens > self.cutoff_len:
            raise DatasetRowError(
                path, record.row, "prompt",
                f"{len(prompt.input_ids)} prompt tokens + prism_max_new_tokens {self.max_new_tokens} exceed "
                f"cutoff_len {self.cutoff_len}", "too_long",
            )
        item = AlignPrompt(prompt, record.teacher, record.ground_truth, record.row, path)
        item.scorer_inputs = self.scorer.prepare(record, path)
        return item


def encode_align(files: list[Path], encoder: AlignEncoder, skip_invalid: bool, media_dir: str | None,
                 teacher: str = "required") -> tuple[list[AlignPrompt], list[LoadReport]]:
    """Load, validate and encode every alignment file; a bad row raises unless ``skip_invalid``.
    ``teacher="ignored"`` reads RLVR rows (the verifiable reward needs no demonstration)."""

    def load(path: Path, **kwargs: Any) -> LoadReport:
        return load_prompts(path, teacher=teacher, **kwargs)

    return load_and_encode(files, load, encoder.encode, skip_invalid, media_dir, "alignment prompts")
