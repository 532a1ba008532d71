"""Rule-based reward sources for ``stage: prism_align`` besides the discriminator (``prism_reward``).

- ``verifiable``: the rule-based answer reward (:func:`prism_plugin.rewards.compute_score`) on the whole
  response, group-normalised — GRPO with a verifiable reward, the RLVR stage inside LLaMA-Factory.
- ``FILE.py:FUNCTION``: a user scorer of layout-valid rollouts, per segment, against the teacher
  demonstration (e.g. an oracle on synthetic data, or a string-similarity reward); invalid rollouts get
  the format penalty exactly as with the discriminator.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from prism_plugin.layout import layout_parts

DISCRIMINATOR = "discriminator"
VERIFIABLE = "verifiable"
SegmentTexts = dict[str, list[str]]
ScoreFunction = Callable[[SegmentTexts, SegmentTexts, list], dict[str, Sequence[float]]]


def segment_texts(text: str) -> dict[str, str]:
    """``caption``, ``reasoning`` (think + answer) and ``response`` texts of a layout-valid response."""
    parts = layout_parts(text)
    if parts is None:
        raise ValueError("response is not in the <caption>/<think>/<answer> layout")
    caption, think, answer = parts
    reasoning = f"<think>{think}</think>\n<answer>{answer}</answer>"
    return {"caption": f"<caption>{caption}</caption>", "reasoning": reasoning, "response": text}


def check_reward_spec(spec: str) -> tuple[str, str] | None:
    """Validate a ``prism_reward`` value; ``(FILE.py, FUNCTION)`` for a scorer file, else None."""
    if spec in (DISCRIMINATOR, VERIFIABLE):
        return None
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name:
        raise ValueError(f"prism_reward must be 'discriminator', 'verifiable' or 'FILE.py:FUNCTION'; got {spec!r}")
    return path, name


def verifiable_rewards(texts: list[str], golds: list, group_size: int) -> dict[str, torch.Tensor] | None:
    """``overall`` and ``accuracy`` of :func:`compute_score` per rollout (rollout ``i`` answers prompt
    ``i // group_size``); None unless every prompt has a ground truth."""
    if any(gold is None for gold in golds):
        return None
    from prism_plugin.rewards import compute_score

    results = [compute_score(text, golds[i // group_size]) for i, text in enumerate(texts)]
    return {key: torch.tensor([r[key] for r in results], dtype=torch.float32) for key in ("overall", "accuracy")}


def load_score_function(spec: str) -> ScoreFunction:
    """Import ``FUNCTION`` from ``FILE.py`` (EasyR1's ``reward_function`` convention); clear errors."""
    parsed = check_reward_spec(spec)
    if parsed is None:
        raise ValueError(f"prism_reward {spec!r} names no scorer file")
    path, name = parsed
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prism_reward: no such file {file}")
    module_name = f"prism_reward_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up by name
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
        raise AttributeError(f"prism_reward: {file} has no function {name!r}")
    return function


class RuleScorer:
    """Scores a batch of rollouts without a discriminator. ``verifiable``: the whole-response reward of
    :func:`verifiable_rewards` (which gates format itself, so every rollout counts as valid);
    otherwise a scorer file's per-segment scores of the layout-valid rollouts."""

    def __init__(self, spec: str, segments: list[str]) -> None:
        self.spec = spec
        self.verifiable = spec == VERIFIABLE
        self.segments = ["response"] if self.verifiable else list(segments)
        self.function = None if self.verifiable else load_score_function(spec)

    def __call__(
        self, texts: list[str], valid: torch.Tensor, teachers: list[dict[str, str]], golds: list, group_size: int,
        rewards: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-segment scores (NaN where a rollout outside the layout is not scored), one per rollout;
        the verifiable reward reuses ``rewards`` when the caller already computed them."""
        if self.verifiable:
            rewards = rewards if rewards is not None else verifiable_rewards(texts, golds, group_size)
            return {"response": rewards["overall"]}
        rows = [i for i in range(len(texts)) if valid[i]]
        out = {name: torch.full((len(texts),), float("nan")) for name in self.segments}
        if not rows:
            return out
        parts = [segment_texts(texts[i]) for i in rows]
        rollouts = {name: [p[name] for p in parts] for name in self.segments}
        teacher = {name: [teachers[i // group_size][name] for i in rows] for name in self.segments}
        result = self.function(rollouts, teacher, [golds[i // group_size] for i in rows])
        for name in self.segments:
            values = list(result.get(name, ())) if isinstance(result, dict) else []
            if len(values) != len(rows):
                raise ValueError(
                    f"prism_reward {self.spec}: expected {len(rows)} {name!r} scores, got {len(values)}"
                )
            out[name][torch.tensor(rows)] = torch.tensor([float(v) for v in values])
        return out
