"""Which text of a prediction is its final answer: the ``\\boxed{…}`` answers decide.

A prediction that holds ``\\boxed{…}`` (or ``\\fbox{…}``) is judged by its boxes only, so an
explanation before the box ("We get $x=3$, so the count is $\\boxed{2}$.") does not count:

- against a gold of one part, the last box is the answer; but boxes joined only by
  separators ("\\boxed{3} or \\boxed{5}", "\\boxed{3}, \\boxed{5}") are a list of candidates,
  returned as one list, which no single-part gold matches;
- against a gold of several parts, all boxes together are one multi-part answer.

Without a box, a leading connective with its comma ("Therefore, the answer is 4", "So, x = 4",
"因此，4") is not a part of the answer (:func:`strip_lead_in`): only the words before a
first comma that are one of these connectives are dropped, so "5, which is prime" stays a list.

A box without a left-hand side adopts the label written just before it
(``a = \\boxed{2}`` -> ``a = 2``), so labelled parts keep their labels. A gold that holds
boxes (a worked solution) is read as the answer in all its boxes (:func:`gold_answer`).
"""

from __future__ import annotations

import re

from .normalize import canonical, matching_brace

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LABEL_BEFORE_RE = re.compile(
    r"(?<![A-Za-z\\])((?:[A-Za-z]{1,3}|\\[A-Za-z]+)(?:_\{?\w+\}?)?)\s*=\s*(?:\$|\\\(|\\\[)?\s*$"
)
# what may stand between the boxes of one list: punctuation, math delimiters, spacing, "and" / "or"
_LIST_GAP_RE = re.compile(
    r"(?:\s|[$,;.、&]|\\\\|\\[()\[\],;:! ]|\\q?quad(?![A-Za-z])|\\(?:text|mathrm)\s*\{\s*(?:and|or|,)?\s*\}"
    r"|\band\b|\bor\b|或|和)*"
)
# connectives that open a concluding sentence; only these, followed by a comma or colon, are dropped
_LEAD_IN_RE = re.compile(
    r"^\s*(?:therefore|thus|hence|so|finally|consequently|in conclusion|in summary|in total|overall|altogether"
    r"|因此|所以|故|综上(?:所述)?)\s*[,，:：]\s*",
    re.IGNORECASE,
)


def strip_lead_in(pred: str) -> str:
    """``pred`` without a leading concluding connective and its comma ("Therefore, x = 4" -> "x = 4")."""
    return _LEAD_IN_RE.sub("", pred, count=1)


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each outermost ``\\boxed{…}`` / ``\\fbox{…}``, in order."""
    found: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return found
        close = matching_brace(text, m.end() - 1)
        if close < 0:
            return found
        found.append((m.start(), close + 1, text[m.end() : close].strip()))
        pos = close + 1


def _boxed_items(text: str) -> tuple[list[str], list[str]]:
    """(contents, gaps): each outermost box's content, labelled when a label stands just before it,
    and the text before each box (less that label)."""
    items: list[str] = []
    gaps: list[str] = []
    previous_end = 0
    for start, end, content in _boxes(text):
        gap = text[previous_end:start]
        label = _LABEL_BEFORE_RE.search(gap) if "=" in gap and "=" not in content else None
        if label is not None:
            content = f"{label.group(1)} = {content}"
            gap = gap[: label.start()]
        items.append(content)
        gaps.append(gap)
        previous_end = end
    return items, gaps


def final_answer(pred: str, gold_parts: int) -> str:
    """The answer ``pred`` gives (see the module docstring); ``gold_parts`` is the gold's part count."""
    if "\\boxed" not in pred and "\\fbox" not in pred:
        return strip_lead_in(pred)
    items, gaps = _boxed_items(pred)
    if not items:
        return pred
    if len(items) == 1:
        return items[0]
    if gold_parts > 1:
        return ", ".join(items)
    if len({canonical(item) for item in items}) == 1:
        return items[-1]
    if all(_LIST_GAP_RE.fullmatch(gap) for gap in gaps[1:]):
        return ", ".join(items)  # a list of candidates: no single-part gold matches it
    return items[-1]


def gold_answer(gold: str) -> str:
    """A gold holding boxes (a worked solution) is the answer in its boxes, all boxes together."""
    if "\\boxed" not in gold and "\\fbox" not in gold:
        return gold
    items, _ = _boxed_items(gold)
    return ", ".join(items) if items else gold
