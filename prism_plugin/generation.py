"""What every place that samples from a policy agrees on: the end-of-turn token, the vision tokens a
policy must never sample, and which completion tokens count (torch-free: works on the tensors it gets)."""

from __future__ import annotations

from typing import Any

END_OF_TURN = "<|im_end|>"
# Sampled by a policy, these break the image-feature bookkeeping of Qwen-VL models.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def end_of_turn_id(tokenizer: Any) -> int:
    """Id of ``<|im_end|>`` (the end-of-turn token a policy emits), else the tokenizer's eos id."""
    idx = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return int(idx) if isinstance(idx, int) and idx != tokenizer.unk_token_id else int(tokenizer.eos_token_id)


def vision_suppress_ids(tokenizer: Any) -> list[int]:
    """Ids of the vision special tokens this tokenizer has (for ``generate(suppress_tokens=...)``)."""
    ids = tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS))
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]


def completion_mask(completions: Any, eot_id: int) -> Any:
    """(B, T) long mask: 1 up to and including each row's first end-of-turn token, 0 after it."""
    is_eot = completions == eot_id
    return ((is_eot.cumsum(-1) - is_eot.long()) == 0).long()
