"""EasyR1 reward entry file: PRISM's rule reward in EasyR1's file contract.

EasyR1 loads rewards only from a file path (``worker.reward.reward_function=/abs/reward.py:compute_score``),
executing this file as a standalone module, so it imports the installed package absolutely and
keeps no state. ``REWARD_TYPE = "batch"``: EasyR1 calls :func:`compute_score` once per batch with
``[{"response", "response_length", "ground_truth"}, …]`` plus ``worker.reward.reward_function_kwargs``.
DAPO overlong shaping takes the keyword names of EasyR1's own DAPO example reward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prism_plugin.rewards import compute_score as _score_one

REWARD_NAME = "prism"
REWARD_TYPE = "batch"


def compute_score(
    reward_inputs: Sequence[Mapping[str, Any]],
    max_response_length: int | None = None,
    overlong_buffer_length: int = 0,
    overlong_penalty_factor: float = 0.0,
    accuracy_weight: float = 0.8,
    format_weight: float = 0.2,
) -> list[dict[str, float]]:
    """Score a batch: ``overall`` (the training reward), ``accuracy``, ``format`` and ``overlong``.

    ``overlong`` is always present (0.0 when shaping is off) so every batch logs the same metric
    keys. Shaping is on when ``overlong_buffer_length > 0`` and ``overlong_penalty_factor > 0``
    and then needs ``max_response_length`` (set it to ``data.max_response_length``).
    """
    shaping = overlong_buffer_length > 0 and overlong_penalty_factor > 0
    if shaping and not max_response_length:
        raise ValueError(
            "prism reward: overlong shaping (overlong_buffer_length > 0, overlong_penalty_factor > 0) needs "
            "max_response_length in worker.reward.reward_function_kwargs (= data.max_response_length)"
        )
    scores = []
    for item in reward_inputs:
        score = _score_one(
            item["response"],
            str(item["ground_truth"]),
            response_length=int(item["response_length"]),
            max_response_length=max_response_length,
            overlong_buffer=overlong_buffer_length if shaping else 0,
            overlong_penalty=overlong_penalty_factor if shaping else 0.0,
            accuracy_weight=accuracy_weight,
            format_weight=format_weight,
        )
        score.setdefault("overlong", 0.0)
        scores.append(score)
    return scores


# EasyR1 calls ``main`` when the reward path has no ``:function`` suffix.
main = compute_score
