"""Reference implementations the tests (and benchmarks) compare our fast paths against."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prism_plugin.layout import LAYOUT_PATTERN, caption_match

_LAYOUT_RE = re.compile(LAYOUT_PATTERN, re.DOTALL)


def layout_parts_reference(text: str) -> tuple[str, str, str] | None:
    """The layout check as the method defines it: ``LAYOUT_PATTERN`` as one lazy regex."""
    match = _LAYOUT_RE.match(text)
    return None if match is None else match.groups()


def reference_boundary(ids: Sequence[int], tokenizer: Any) -> int:
    """The authors' O(L^2) caption boundary: decode every prefix until it holds the caption match."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    match = caption_match(text)
    if match is None:
        return 0
    for k in range(1, len(ids) + 1):
        if match.group(0) in tokenizer.decode(list(ids[:k]), skip_special_tokens=True):
            return k
    return len(ids)
