"""The PRISM response layout as text: its tags, its validation and its two segments (torch-free).

A response is ``<caption>…</caption> <think>…</think> <answer>…</answer>`` with only whitespace
outside the tags (Wang et al. 2026, §3). The *caption* (perception) segment is
``<caption>…</caption>``, tags included; the *reasoning* segment is the rest of the response
(``<think>…</think>`` and ``<answer>…</answer>``). This module is the one home of the tags and of
splitting and joining segments as text, and of the system prompt that asks for the layout; token-level
segmentation lives in :mod:`prism_plugin.segment_split`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CAPTION_OPEN, CAPTION_CLOSE = "<caption>", "</caption>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
LAYOUT_TAGS = (CAPTION_OPEN, CAPTION_CLOSE, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
IMAGE_MARKER = "<image>"
"""Where an image goes in a prompt (LLaMA-Factory's and EasyR1's placeholder)."""

SEGMENT_NAMES = ("caption", "reasoning")
KNOWN_SEGMENTS = (*SEGMENT_NAMES, "response")
"""Segments a discriminator can score: the two PRISM segments, or the whole ``response`` (GAD)."""

_C0, _C1, _T0, _T1, _A0, _A1 = (re.escape(tag) for tag in LAYOUT_TAGS)
LAYOUT_PATTERN = rf"^\s*{_C0}(.*?){_C1}\s*{_T0}(.*?){_T1}\s*{_A0}(.*?){_A1}\s*$"
CAPTION_PATTERN = rf"{_C0}.*?{_C1}"

_CAPTION_RE = re.compile(CAPTION_PATTERN, re.DOTALL)
_CAPTION_SEGMENT_RE = re.compile(rf"^\s*{_C0}.*?{_C1}\s*$", re.DOTALL)
_REASONING_SEGMENT_RE = re.compile(rf"^\s*{_T0}.*?{_T1}\s*{_A0}.*?{_A1}\s*$", re.DOTALL)
_OPEN_RE = re.compile(rf"\s*{_C0}")
_CAPTION_THINK_RE = re.compile(rf"{_C1}\s*{_T0}")
_THINK_ANSWER_RE = re.compile(rf"{_T1}\s*{_A0}")
_END_RE = re.compile(rf"{_A1}\s*\Z")


def layout_parts(text: str) -> tuple[str, str, str] | None:
    """The (caption, think, answer) contents of a layout-valid ``text``, or None when invalid.

    Same answer and same groups as ``LAYOUT_PATTERN`` with its three lazy groups, found in
    one left-to-right pass: taking the earliest occurrence of each tag junction never rules
    out a match, and avoids the lazy pattern's per-character stepping on long responses.
    """
    start = _OPEN_RE.match(text)
    if start is None:
        return None
    first = _CAPTION_THINK_RE.search(text, start.end())
    if first is None:
        return None
    second = _THINK_ANSWER_RE.search(text, first.end())
    if second is None:
        return None
    end = _END_RE.search(text, second.end())
    if end is None:
        return None
    return text[start.end() : first.start()], text[first.end() : second.start()], text[second.end() : end.start()]


def is_valid(text: str) -> bool:
    """True iff ``text`` (special tokens already removed) follows the PRISM layout."""
    return layout_parts(text) is not None


def caption_match(text: str) -> re.Match[str] | None:
    """The first ``<caption>…</caption>`` match in ``text`` (tags included), or None."""
    return _CAPTION_RE.search(text)


def is_caption_segment(text: str) -> bool:
    """True iff ``text`` is one ``<caption>…</caption>`` segment (whitespace around it allowed)."""
    return _CAPTION_SEGMENT_RE.match(text) is not None


def is_reasoning_segment(text: str) -> bool:
    """True iff ``text`` is ``<think>…</think>`` followed by ``<answer>…</answer>``."""
    return _REASONING_SEGMENT_RE.match(text) is not None


@dataclass(frozen=True)
class Segments:
    """A response as its caption segment and its reasoning (think + answer) segment."""

    caption: str
    reasoning: str

    @property
    def response(self) -> str:
        """The whole response: the two segments joined by a newline, as a policy writes them."""
        return f"{self.caption.strip()}\n{self.reasoning.strip()}"

    def get(self, segment: str) -> str:
        """Text of ``caption``, ``reasoning`` or the whole ``response``."""
        if segment not in KNOWN_SEGMENTS:
            raise KeyError(f"unknown segment {segment!r}; expected one of {', '.join(KNOWN_SEGMENTS)}")
        return self.response if segment == "response" else getattr(self, segment)

    @classmethod
    def from_response(cls, text: str) -> Segments | None:
        """The segments of a layout-valid response, else None: the caption segment exactly as written,
        the reasoning segment the rest with its outer whitespace stripped."""
        parts = layout_parts(text)
        if parts is None:
            return None
        start = _OPEN_RE.match(text).end() - len(CAPTION_OPEN)
        end = start + len(CAPTION_OPEN) + len(parts[0]) + len(CAPTION_CLOSE)
        return cls(text[start:end], text[end:].strip())


def render_response(caption: str, reasoning: str, answer: str) -> str:
    """A response in the PRISM layout from the contents of its three parts (tags added here)."""
    return (
        f"{CAPTION_OPEN} {caption.strip()} {CAPTION_CLOSE}\n"
        f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE}\n"
        f"{ANSWER_OPEN} {answer.strip()} {ANSWER_CLOSE}"
    )


# The PRISM system prompt: it asks for the caption / think / answer layout.
SYSTEM_PROMPT = (
    "You are a helpful assistant that looks carefully at images. "
    f"First describe the image inside {CAPTION_OPEN} {CAPTION_CLOSE} as short bullet points, "
    f"then reason step by step inside {THINK_OPEN} {THINK_CLOSE}, "
    f"and finally give only the final answer inside {ANSWER_OPEN} {ANSWER_CLOSE}."
)
