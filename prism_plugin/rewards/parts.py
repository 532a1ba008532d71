"""Multi-part answers: how an answer splits into parts, and when two lists of parts agree.

- A bare list is a set of answers: parts joined by ',', ';', '、' (and their full-width forms),
  "or" / "and" (或 / 和), ``\\quad``, ``\\text{and}`` / ``\\text{or}``, or wrapped in set braces
  ``\\{…\\}``. Order does not matter, duplicates are ignored, and every element on each side
  must match one on the other.
- Numbered items (``(1) a (2) b``, ``1. a 2. b``) are ordered.
- Parts that all carry a label (``a = 2, b = 7``, ``a_3 = 5``), each label once, match by
  label when the other side is labelled the same way; an unlabelled list against a labelled
  gold is read in the gold's order.
- One ``a \\pm b`` is the set {a + b, a - b}.
- Brackets, parentheses and braces protect their contents: a tuple ``(3, 4)`` is one ordered
  part, and ``(1, 2), (2, 1)`` a set of two tuples. A comma between a digit and exactly three
  digits is a thousands separator ("1,000"); a LaTeX ``\\,`` / ``\\;`` is a space.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .normalize import clean_latex, matching_brace, split_assignment, unicode_clean

MAX_PARTS = 32

_OPEN, _CLOSE = "([{", ")]}"
_NUMBERED_RE = re.compile(r"(?:^|(?<=\s))(?:\((\d{1,2})\)|(\d{1,2})[.)](?=\s))\s*")
# a run of separators: punctuation, the words "and" / "or" between spaces, \quad, \text{and}
_SEP = r"[,;、]|\\q?quad(?![A-Za-z])|\\(?:text|mathrm)\s*\{\s*(?:and|or)\s*\}|(?<=\s)(?:and|or)(?=\s)|或|和"
_SEP_RUN_RE = re.compile(rf"(?:\s*(?:{_SEP})\s*)+")
_HAS_SEP_RE = re.compile(r"[,;、]|\\q?quad|\\(?:text|mathrm)\s*\{\s*(?:and|or)\s*\}|\s(?:and|or)\s|或|和")
_SEP_START = set(",;、 \t\n\\或和")
_SET_BRACES_RE = re.compile(r"^(?:\\left\s*)?\\\{")
_PM_RE = re.compile(r"\\pm(?![A-Za-z])|±")

Match = Callable[[str, str], bool]


@dataclass(frozen=True)
class AnswerParts:
    """The parts of an answer; ``ordered`` for numbered items, whose order counts."""

    parts: tuple[str, ...]
    ordered: bool = False


def _split_numbered(text: str) -> list[str] | None:
    """``(1) a (2) b`` or ``1. a 2. b`` -> [a, b] when the items are numbered 1, 2, … from the start."""
    markers = list(_NUMBERED_RE.finditer(text))
    if len(markers) < 2 or markers[0].start() != 0:
        return None
    chosen: list[re.Match[str]] = []
    for m in markers:
        if int(m.group(1) or m.group(2)) == len(chosen) + 1:
            chosen.append(m)
    if len(chosen) < 2:
        return None
    bounds = [m.start() for m in chosen[1:]] + [len(text)]
    return [text[m.end() : end].strip().rstrip(";,、").strip() for m, end in zip(chosen, bounds, strict=True)]


def _is_thousands_comma(text: str, i: int) -> bool:
    """The ',' at ``i`` sits between a digit and exactly three digits ("1,000", not "1,0000")."""
    return (
        i > 0
        and text[i - 1].isdigit()
        and len(text[i + 1 : i + 4]) == 3
        and text[i + 1 : i + 4].isdigit()
        and (i + 4 >= len(text) or not text[i + 4].isdigit())
    )


def _split_top_level(text: str) -> list[str]:
    """Split at runs of separators outside brackets, braces and parentheses."""
    parts: list[str] = []
    depth = start = i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in ",;:! ":  # a LaTeX space, not a separator
            i += 2
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and ch in _SEP_START and not (ch == "," and _is_thousands_comma(text, i)):
            m = _SEP_RUN_RE.match(text, i)
            if m is not None and m.end() > i:
                parts.append(text[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _unwrap_set_braces(text: str) -> str:
    """``\\{1, 2\\}`` / ``\\left\\{1, 2\\right\\}`` -> ``1, 2`` when the braces hold the whole answer."""
    m = _SET_BRACES_RE.match(text)
    if m is None:
        return text
    close = matching_brace(text, m.end() - 1)
    if close != len(text) - 1 or text[close - 1] != "\\":
        return text
    inner = text[m.end() : close - 1].strip()
    inner = inner.removesuffix("\\right").rstrip()
    return inner or text


def _expand_plus_minus(text: str) -> list[str]:
    """``a \\pm b`` -> [``a + b``, ``a - b``] for exactly one ± sign; else [text]."""
    signs = _PM_RE.findall(text)
    if len(signs) != 1:
        return [text]
    return [_PM_RE.sub("+", text), _PM_RE.sub("-", text)]


@lru_cache(maxsize=65536)
def answer_parts(text: str) -> AnswerParts:
    """The parts of an answer (see the module docstring); one part when it is not a list."""
    text = unicode_clean(text).strip()
    numbered = _split_numbered(text)
    if numbered is not None:
        return AnswerParts(tuple(numbered), ordered=True)
    text = _unwrap_set_braces(text)
    parts = _split_top_level(text) if _HAS_SEP_RE.search(text) else [text]
    if len(parts) == 1 and ("\\pm" in text or "±" in text):
        parts = _expand_plus_minus(parts[0])
    return AnswerParts(tuple(parts))


def split_parts(text: str) -> tuple[str, ...]:
    """The parts of a multi-part answer as strings (see :func:`answer_parts`)."""
    return answer_parts(text).parts


def _label(part: str) -> tuple[str, str] | None:
    return split_assignment(clean_latex(part))


def _labelled(parts: tuple[str, ...]) -> dict[str, str] | None:
    """{label: value} when every part is ``label = value`` and no label repeats; else None."""
    out: dict[str, str] = {}
    for part in parts:
        split = _label(part)
        if split is None or split[0] in out:
            return None
        out[split[0]] = split[1]
    return out


def _set_match(pred: tuple[str, ...], gold: tuple[str, ...], match: Match) -> bool:
    """Every prediction part matches some gold part and every gold part is matched (duplicates ignored)."""
    covered = [False] * len(gold)
    for p in pred:
        order = [j for j in range(len(gold)) if not covered[j]] + [j for j in range(len(gold)) if covered[j]]
        hit = next((j for j in order if match(p, gold[j])), None)
        if hit is None:
            return False
        covered[hit] = True
    return all(covered[j] or any(match(p, g) for p in pred) for j, g in enumerate(gold))


def _ordered_match(pred: tuple[str, ...], gold: tuple[str, ...], match: Match) -> bool:
    """Parts one-to-one in order; where both parts of a pair carry a label, the labels agree."""
    if len(pred) != len(gold):
        return False
    for p, g in zip(pred, gold, strict=True):
        p_label, g_label = _label(p), _label(g)
        if p_label is not None and g_label is not None and p_label[0] != g_label[0]:
            return False
        if not match(p, g):
            return False
    return True


def parts_agree(pred: AnswerParts, gold: AnswerParts, match: Match) -> bool:
    """Do two multi-part answers agree, part by part through ``match`` (see the module docstring)?"""
    if len(pred.parts) > MAX_PARTS or len(gold.parts) > MAX_PARTS:
        return False
    if not all(pred.parts) or not all(gold.parts):
        return False
    gold_labels = _labelled(gold.parts)
    if gold_labels is not None:
        pred_labels = _labelled(pred.parts)
        if pred_labels is not None:
            return pred_labels.keys() == gold_labels.keys() and all(
                match(pred_labels[k], gold_labels[k]) for k in gold_labels
            )
        return _ordered_match(pred.parts, gold.parts, match)
    if gold.ordered:
        return _ordered_match(pred.parts, gold.parts, match)
    return _set_match(pred.parts, gold.parts, match)
