"""The PRISM response layout: validation and token-level segment boundaries.

A response is ``<caption>…</caption> <think>…</think> <answer>…</answer>`` with only
whitespace outside the tags. The *caption* (perception) segment is every token up to and
including the first token whose decoded prefix contains the full caption match; the
*reasoning* segment is the rest (think + answer + end-of-turn token).

The boundary is found in O(L): each token's decoded bytes come from a per-tokenizer table,
the caption match is located once in the response's bytes, and a cumulative byte count
gives the boundary token. Tokenizers without a byte-level decoder fall back to an exact
O(L log L) bisection over ``tokenizer.decode``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prism_plugin.layout import (  # noqa: F401  (re-exported: the public names of this module)
    CAPTION_PATTERN,
    LAYOUT_PATTERN,
    SEGMENT_NAMES,
    caption_match,
    is_valid,
    layout_parts,
)

_CAPTION_BYTES_RE = re.compile(CAPTION_PATTERN.encode(), re.DOTALL)


@dataclass(frozen=True)
class SegmentSplit:
    """Segments of one response, as half-open token index ranges into its ids.

    ``length`` counts the response tokens up to and including the first end-of-turn token
    (tokens after it belong to no segment). When no caption match exists, ``caption`` is
    empty and ``reasoning`` covers the whole response; ``valid`` is False then anyway.
    """

    valid: bool
    truncated: bool
    caption: tuple[int, int]
    reasoning: tuple[int, int]
    length: int
    text: str

    def span(self, segment: str) -> tuple[int, int]:
        """Token range of ``caption``, ``reasoning`` or the whole ``response``."""
        if segment == "response":
            return (0, self.length)
        if segment in SEGMENT_NAMES:
            return getattr(self, segment)
        raise KeyError(f"unknown segment {segment!r}; expected one of caption, reasoning, response")


@dataclass(frozen=True)
class SegmentBatch:
    """Segments of a padded batch of responses; masks are aligned with the input ids."""

    valid: torch.Tensor  # (B,) bool
    truncated: torch.Tensor  # (B,) bool
    boundary: torch.Tensor  # (B,) long: number of response tokens in the caption segment
    lengths: torch.Tensor  # (B,) long: response tokens up to and including the end-of-turn token
    caption_mask: torch.Tensor  # (B, L) bool
    reasoning_mask: torch.Tensor  # (B, L) bool
    texts: list[str]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.caption_mask | self.reasoning_mask

    def mask(self, segment: str) -> torch.Tensor:
        """Token mask of ``caption``, ``reasoning`` or the whole ``response``."""
        if segment == "response":
            return self.response_mask
        if segment in SEGMENT_NAMES:
            return getattr(self, f"{segment}_mask")
        raise KeyError(f"unknown segment {segment!r}; expected one of caption, reasoning, response")


class _ByteTable:
    """Decoded bytes of every token id, for tokenizers whose decoder is byte-level BPE.

    Stored as one byte blob plus per-id offsets and lengths, so a response's bytes are one
    vectorised gather. Special tokens (skipped when decoding) and unknown ids have no bytes.
    """

    def __init__(self, tokenizer: Any) -> None:
        byte_decoder = {ch: b for b, ch in _bytes_to_unicode().items()}
        vocab_size = len(tokenizer)
        special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        added = _added_tokens(tokenizer)
        pieces: list[bytes] = [b""] * vocab_size
        for token, idx in tokenizer.get_vocab().items():
            if idx >= vocab_size or idx in special_ids:
                continue
            if idx in added:
                content, special = added[idx]
                pieces[idx] = b"" if special else content.encode("utf-8")
            else:
                pieces[idx] = bytes(byte_decoder[ch] for ch in token if ch in byte_decoder)
        self.lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=vocab_size)
        self.offsets = np.cumsum(self.lengths) - self.lengths
        self.blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)

    def gather(self, ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The bytes of ``ids`` joined, and the cumulative byte count after each token."""
        known = (ids >= 0) & (ids < self.lengths.shape[0])
        safe = np.where(known, ids, 0)
        lens = np.where(known, self.lengths[safe], 0)
        ends = np.cumsum(lens)
        total = int(ends[-1]) if ends.size else 0
        shift = np.repeat(self.offsets[safe] - (ends - lens), lens)
        return self.blob[np.arange(total) + shift].tobytes(), ends


_TABLES: weakref.WeakKeyDictionary[Any, _ByteTable | None] = weakref.WeakKeyDictionary()


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte <-> printable-character map used by byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _added_tokens(tokenizer: Any) -> dict[int, tuple[str, bool]]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {idx: (str(tok), bool(getattr(tok, "special", False))) for idx, tok in decoder.items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        return False
    return type(backend.decoder).__name__ == "ByteLevel"


def _byte_table(tokenizer: Any) -> _ByteTable | None:
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _ByteTable(tokenizer) if _is_byte_level(tokenizer) else None
    try:
        _TABLES[tokenizer] = table
    except TypeError:
        pass
    return table


def _resolve_eos(tokenizer: Any, eos_token_ids: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        return frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)
    if isinstance(eos_token_ids, int):
        return frozenset([eos_token_ids])
    return frozenset(eos_token_ids)


def _response_length(ids: np.ndarray, eos: frozenset[int]) -> tuple[int, bool]:
    """Tokens up to and including the first end-of-turn token, and whether there was none."""
    if not eos:
        return len(ids), False
    hits = np.flatnonzero(np.isin(ids, np.fromiter(eos, dtype=np.int64)))
    return (int(hits[0]) + 1, False) if hits.size else (len(ids), True)


def _split_one(ids: np.ndarray, tokenizer: Any, eos: frozenset[int]) -> SegmentSplit:
    length, truncated = _response_length(ids, eos)
    ids = ids[:length]
    table = _byte_table(tokenizer)
    if table is not None:
        raw, ends = table.gather(ids)
        text = raw.decode("utf-8", errors="replace")
        match = _CAPTION_BYTES_RE.search(raw)
        boundary = 0 if match is None else int(np.searchsorted(ends, match.end(), side="left")) + 1
    else:
        id_list = ids.tolist()
        text = tokenizer.decode(id_list, skip_special_tokens=True)
        match = caption_match(text)
        boundary = 0 if match is None else _bisect_boundary(id_list, tokenizer, match.group(0))
    valid = not truncated and is_valid(text)
    return SegmentSplit(
        valid=valid,
        truncated=truncated,
        caption=(0, boundary),
        reasoning=(boundary, length),
        length=length,
        text=text,
    )


def _bisect_boundary(ids: list[int], tokenizer: Any, caption: str) -> int:
    """Smallest k such that decode(ids[:k]) contains ``caption`` (monotone in k)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if caption in tokenizer.decode(ids[:mid], skip_special_tokens=True):
            hi = mid
        else:
            lo = mid + 1
    return lo


def split_segments(
    token_ids: Sequence[int] | torch.Tensor,
    tokenizer: Any,
    attention_mask: torch.Tensor | None = None,
    *,
    eos_token_ids: int | Iterable[int] | None = None,
) -> SegmentSplit | SegmentBatch:
    """Split response token ids into caption and reasoning segments and check the layout.

    ``token_ids`` is one response (a list or 1-D tensor) -> :class:`SegmentSplit`, or a
    padded batch (2-D tensor, with ``attention_mask`` marking response tokens; left or
    right padding) -> :class:`SegmentBatch`. A response without an end-of-turn token
    (``eos_token_ids``, default the tokenizer's ``eos_token_id``; pass ``()`` to disable)
    is truncated and therefore invalid.
    """
    eos = _resolve_eos(tokenizer, eos_token_ids)
    if isinstance(token_ids, torch.Tensor) and token_ids.dim() == 2:
        return _split_batch(token_ids, tokenizer, attention_mask, eos)
    if isinstance(token_ids, torch.Tensor):
        if attention_mask is not None:
            token_ids = token_ids[attention_mask.bool()]
        return _split_one(token_ids.cpu().numpy().astype(np.int64), tokenizer, eos)
    return _split_one(np.asarray(token_ids, dtype=np.int64).reshape(-1), tokenizer, eos)


def _split_batch(
    token_ids: torch.Tensor, tokenizer: Any, attention_mask: torch.Tensor | None, eos: frozenset[int]
) -> SegmentBatch:
    batch, width = token_ids.shape
    ids_np = token_ids.cpu().numpy().astype(np.int64, copy=False)
    keep_np = np.ones((batch, width), dtype=bool) if attention_mask is None else attention_mask.cpu().numpy() != 0
    caption_mask = np.zeros((batch, width), dtype=bool)
    reasoning_mask = np.zeros((batch, width), dtype=bool)
    valid, truncated, boundary, lengths, texts = [], [], [], [], []
    for row in range(batch):
        positions = np.flatnonzero(keep_np[row])
        split = _split_one(ids_np[row, positions], tokenizer, eos)
        cut = split.caption[1]
        caption_mask[row, positions[:cut]] = True
        reasoning_mask[row, positions[cut : split.length]] = True
        valid.append(split.valid)
        truncated.append(split.truncated)
        boundary.append(cut)
        lengths.append(split.length)
        texts.append(split.text)
    return SegmentBatch(
        valid=torch.tensor(valid, dtype=torch.bool),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        boundary=torch.tensor(boundary, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.long),
        caption_mask=torch.from_numpy(caption_mask),
        reasoning_mask=torch.from_numpy(reasoning_mask),
        texts=texts,
    )

