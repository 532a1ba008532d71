"""The verifiable reward of Stage 3: format gate, answer accuracy, DAPO overlong shaping."""

from __future__ import annotations

from collections.abc import Iterable

from prism_plugin.layout import layout_parts

from .matchers import MAX_ANSWER_CHARS, answers_match

_LAYOUT_TAGS = ("<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>")

# The version of what :func:`compute_score` credits, raised whenever a verdict changes, so accuracies
# measured under different versions are not compared as if equal (``prism-plugin evaluate`` records it).
# 1: the first rule set. 2: the final answer is extracted first (the boxes decide, in the prediction and
# in a worked-solution gold); bare lists are sets, labelled parts match by label; a decimal comma is read
# against a non-integer decimal gold. 3: a leading concluding connective ("Therefore, …") is not a list part.
REWARD_VERSION = 3


def format_ok(response: str) -> bool:
    """The PRISM layout check of every stage (``prism_plugin.layout``), so RLVR and alignment agree."""
    return layout_parts(response) is not None


def extract_answer(response: str) -> str | None:
    """The stripped ``<answer>`` content of a layout-valid response, else None.

    It is the layout's answer group: a response that repeats ``</answer><answer>`` keeps the
    repeated tags inside its answer, and :func:`compute_score` gives an answer holding layout
    tags no accuracy — answering twice earns nothing.
    """
    parts = layout_parts(response)
    return None if parts is None else parts[2].strip()


def overlong_penalty_value(
    response_length: int, max_response_length: int, overlong_buffer: int, overlong_penalty: float
) -> float:
    """DAPO soft overlong punishment: 0 up to ``max - buffer`` tokens, then linear down to
    ``-overlong_penalty`` at ``max`` (clamped there). The one overlong shaping of the package: the
    EasyR1 reward file and ``prism_align``'s verifiable reward both use it."""
    if not 0 < overlong_buffer <= max_response_length:
        raise ValueError(f"overlong buffer must be in (0, max_response_length]; got buffer={overlong_buffer}, "
                         f"max_response_length={max_response_length}")
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
    answer = extract_answer(response)
    valid = answer is not None
    accuracy = 0.0
    if valid:
        if answer and len(answer) < MAX_ANSWER_CHARS and not any(tag in answer for tag in _LAYOUT_TAGS):
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
