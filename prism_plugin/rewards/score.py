"""The verifiable reward of Stage 3: format gate, answer accuracy, DAPO overlong shaping."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .matchers import MAX_ANSWER_CHARS, answers_match

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAGS = ("<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>")


def format_ok(response: str) -> bool:
    """The PRISM layout (``format.is_valid``) with every tag exactly once.

    The layout regex alone accepts ``<answer>1</answer><answer>2</answer>`` (its lazy
    groups stretch over the repeated tags); a response that answers twice is rejected.
    """
    from prism_plugin.format import is_valid  # imported lazily: the module pulls in torch

    return is_valid(response) and all(response.count(tag) == 1 for tag in _TAGS)


def extract_answer(response: str) -> str | None:
    """The stripped ``<answer>`` content, or None when there is no answer tag pair."""
    m = _ANSWER_RE.search(response)
    return None if m is None else m.group(1).strip()


def overlong_penalty_value(
    response_length: int, max_response_length: int, overlong_buffer: int, overlong_penalty: float
) -> float:
    """DAPO soft overlong punishment: 0 up to ``max - buffer`` tokens, then linear down to
    ``-overlong_penalty`` at ``max`` (clamped there)."""
    expected = max_response_length - overlong_buffer
    exceed = response_length - expected
    if exceed <= 0:
        return 0.0
    return -overlong_penalty * min(exceed / overlong_buffer, 1.0)


def compute_score(
    response: str,
    ground_truth: str,
    *,
    equivalent_answers: Iterable[str] | None = None,
    response_length: int | None = None,
    max_response_length: int | None = None,
    overlong_buffer: int = 0,
    overlong_penalty: float = 0.0,
    accuracy_weight: float = 0.8,
    format_weight: float = 0.2,
) -> dict[str, float]:
    """Rule-based reward of one decoded response (special tokens removed).

    Invalid layout -> 0; empty or >= 1024-char answer -> ``format_weight``; otherwise
    ``accuracy_weight * accuracy + format_weight``, accuracy 1 when the answer matches the
    ground truth or any of ``equivalent_answers``. With ``overlong_buffer > 0`` and
    ``overlong_penalty > 0`` the DAPO overlong penalty (from ``response_length`` tokens) is
    added to ``overall`` for every response, well-formed or not, and returned as
    ``overlong``.
    """
    valid = format_ok(response)
    accuracy = 0.0
    if valid:
        answer = extract_answer(response) or ""
        if answer and len(answer) < MAX_ANSWER_CHARS:
            golds = [ground_truth, *(equivalent_answers or ())]
            accuracy = 1.0 if any(answers_match(answer, gold) for gold in golds if gold) else 0.0
        overall = accuracy_weight * accuracy + format_weight
    else:
        overall = 0.0
    scores = {"overall": overall, "accuracy": accuracy, "format": 1.0 if valid else 0.0}
    if overlong_buffer > 0 and overlong_penalty > 0:
        if response_length is None or max_response_length is None:
            raise ValueError("overlong shaping needs response_length and max_response_length")
        penalty = overlong_penalty_value(response_length, max_response_length, overlong_buffer, overlong_penalty)
        scores["overlong"] = penalty
        scores["overall"] = overall + penalty
    return scores
