"""The PRISM response layout as text: validation and the three tagged parts (torch-free).

``<caption>…</caption> <think>…</think> <answer>…</answer>``, only whitespace outside the
tags. Token-level segmentation lives in :mod:`prism_plugin.format`.
"""

from __future__ import annotations

import re

LAYOUT_PATTERN = r"^\s*<caption>(.*?)</caption>\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$"
CAPTION_PATTERN = r"<caption>.*?</caption>"

_LAYOUT_RE = re.compile(LAYOUT_PATTERN, re.DOTALL)
_CAPTION_RE = re.compile(CAPTION_PATTERN, re.DOTALL)
_OPEN_RE = re.compile(r"\s*<caption>")
_CAPTION_THINK_RE = re.compile(r"</caption>\s*<think>")
_THINK_ANSWER_RE = re.compile(r"</think>\s*<answer>")
_END_RE = re.compile(r"</answer>\s*\Z")


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


def layout_parts_reference(text: str) -> tuple[str, str, str] | None:
    """The reference's check, ``LAYOUT_PATTERN`` as one regex (tests compare :func:`layout_parts` with it)."""
    match = _LAYOUT_RE.match(text)
    return None if match is None else match.groups()


def caption_match(text: str) -> re.Match[str] | None:
    """The first ``<caption>…</caption>`` match in ``text`` (tags included), or None."""
    return _CAPTION_RE.search(text)
