"""What scores a batch of rollouts in the alignment step: one protocol, three scorers.

- :class:`DiscriminatorScorer` — the PRISM discriminator (per segment, against the teacher); it
  trains too, through its :class:`~prism_plugin.discriminator.updater.DiscriminatorUpdater`;
- :class:`VerifiableScorer` — the rule-based answer reward on the whole response (GRPO / RLVR);
- :class:`FileScorer` — a user's ``FILE.py:FUNCTION`` scoring layout-valid rollouts per segment.

The step reads the same for each (``prepare`` at data load, ``score``, ``update``); rule scorers
do not train, so their ``update`` does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch

from prism_plugin.data.records import DatasetRowError, PromptRecord
from prism_plugin.layout import Segments
from prism_plugin.rollout import PolicyPrompt, Rollouts
from prism_plugin.segment_split import SegmentBatch

SegmentTexts = dict[str, list[str]]
ScoreFunction = Callable[[SegmentTexts, SegmentTexts, list], dict[str, Sequence[float]]]


@dataclass
class AlignPrompt:
    """One prompt of the alignment set: rendered for the policy, with what scorers need of its row."""

    policy: PolicyPrompt
    teacher: Segments | None
    ground_truth: str | None
    row: int
    source: str
    scorer_inputs: Any = None  # what the scorer's ``prepare`` made of the row (e.g. the discriminator's prompt)


@dataclass
class RolloutBatch:
    """One batch of rollouts after the layout split: what every scorer sees."""

    prompts: Sequence[AlignPrompt]
    rollouts: Rollouts
    split: SegmentBatch  # of the completions, on the policy's own ids

    @property
    def group_index(self) -> torch.Tensor:
        return self.rollouts.prompt_index

    @property
    def texts(self) -> list[str]:
        return self.split.texts

    @cached_property
    def rewards(self) -> dict[str, torch.Tensor] | None:
        """The verifiable reward's ``overall`` and ``accuracy`` per rollout (None unless every prompt has a
        ground truth): computed once per batch for the scorer and the metrics alike."""
        golds = [prompt.ground_truth for prompt in self.prompts]
        if any(gold is None for gold in golds):
            return None
        from prism_plugin.rewards import compute_score

        results = [compute_score(text, golds[int(k)]) for text, k in zip(self.texts, self.group_index, strict=True)]
        return {key: torch.tensor([r[key] for r in results], dtype=torch.float32) for key in ("overall", "accuracy")}


@dataclass
class Scores:
    """A scorer's verdict on a batch: per-segment rollout scores and which rollouts the advantage
    treats as valid (the others get the format penalty); a discriminator adds its teacher scores."""

    rollout: dict[str, torch.Tensor]  # segment -> (N,), NaN where not scored
    valid: torch.Tensor  # (N,) bool
    teacher: dict[str, torch.Tensor] | None = None  # segment -> (prompts,)
    compared: dict[str, torch.Tensor] | None = None  # segment -> (N,) bool: a rollout segment unlike the teacher's

    def finite(self) -> bool:
        """No NaN / inf among the scores the advantage and the discriminator use."""
        used = [values[self.valid] for values in self.rollout.values()]
        used += list((self.teacher or {}).values())
        return all(bool(torch.isfinite(v).all()) for v in used)


class Scorer(Protocol):
    """Scores rollouts per segment; see the module docstring."""

    segments: list[str]

    def prepare(self, record: PromptRecord, source: str) -> Any:
        """Per-prompt inputs made once at data load; :class:`DatasetRowError` for a row it cannot use."""

    def score(self, batch: RolloutBatch) -> Scores:
        """Scores of every rollout of ``batch``."""

    def update(self, batch: RolloutBatch, scores: Scores, enabled: bool = True) -> dict[str, float]:
        """Train on the batch (learned scorers); ``enabled=False`` counts the batch without training."""

    def save(self, directory: str, main: bool = True) -> None:
        """Save what a checkpoint must hold to resume (nothing for rules); called on every rank, ``main`` writes."""

    def load_state(self, directory: str) -> bool:
        """Restore what :meth:`save` wrote; False when there is nothing."""


class _RuleScorer:
    """A scorer that does not train."""

    def update(self, batch: RolloutBatch, scores: Scores, enabled: bool = True) -> dict[str, float]:
        return {}

    def save(self, directory: str, main: bool = True) -> None:
        return None

    def load_state(self, directory: str) -> bool:
        return False


class VerifiableScorer(_RuleScorer):
    """The verifiable reward's ``overall`` (:func:`prism_plugin.rewards.compute_score`) of each whole
    response; the reward gates the format itself, so every rollout counts as valid for the advantage.
    ``overlong = (max_new_tokens, buffer, penalty)`` adds DAPO's soft overlong punishment (by tokens)."""

    segments = ["response"]

    def __init__(self, overlong: tuple[int, int, float] | None = None) -> None:
        self.overlong = overlong

    def penalties(self, batch: RolloutBatch) -> torch.Tensor | None:
        """The overlong punishment of each rollout (None when shaping is off)."""
        if not self.overlong:
            return None
        from prism_plugin.rewards import overlong_penalty_value

        limit, buffer, penalty = self.overlong
        return torch.tensor([overlong_penalty_value(int(n), limit, buffer, penalty)
                             for n in batch.rollouts.lengths], dtype=torch.float32)

    def prepare(self, record: PromptRecord, source: str) -> None:
        if record.ground_truth is None:
            raise DatasetRowError(source, record.row, "ground_truth", "prism_reward: verifiable needs a ground truth",
                                  "missing_field")

    def score(self, batch: RolloutBatch) -> Scores:
        overall = batch.rewards["overall"]
        penalties = self.penalties(batch)
        reward = overall if penalties is None else overall + penalties
        return Scores({"response": reward}, torch.ones(len(batch.texts), dtype=torch.bool))


def load_score_function(path: str, name: str) -> ScoreFunction:
    """Import ``name`` from the Python file ``path`` (EasyR1's ``reward_function`` convention); clear errors."""
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


class FileScorer(_RuleScorer):
    """A user's ``FUNCTION(rollouts, teachers, ground_truths) -> {segment: scores}`` from ``FILE.py``:
    ``rollouts`` / ``teachers`` map each segment to the texts of the layout-valid rollouts and of their
    prompts' teachers; rollouts outside the layout get the format penalty as with the discriminator."""

    def __init__(self, function: ScoreFunction, segments: Sequence[str], spec: str = "") -> None:
        self.function, self.segments, self.spec = function, list(segments), spec

    def prepare(self, record: PromptRecord, source: str) -> None:
        if record.teacher is None:
            raise DatasetRowError(source, record.row, "teacher_caption", "a prism_reward scorer file needs the "
                                  "teacher demonstration", "missing_field")

    def score(self, batch: RolloutBatch) -> Scores:
        valid = batch.split.valid.clone()
        out = {name: torch.full((len(batch.texts),), float("nan")) for name in self.segments}
        rows = [i for i in range(len(batch.texts)) if valid[i]]
        if rows:
            parts = [Segments.from_response(batch.texts[i]) for i in rows]
            teachers = [batch.prompts[int(batch.group_index[i])] for i in rows]
            rollouts = {name: [p.get(name) for p in parts] for name in self.segments}
            teacher = {name: [t.teacher.get(name) for t in teachers] for name in self.segments}
            result = self.function(rollouts, teacher, [t.ground_truth for t in teachers])
            for name in self.segments:
                values = list(result.get(name, ())) if isinstance(result, dict) else []
                if len(values) != len(rows):
                    raise ValueError(f"prism_reward {self.spec}: expected {len(rows)} {name!r} scores, "
                                     f"got {len(values)}")
                out[name][torch.tensor(rows)] = torch.tensor([float(v) for v in values])
        return Scores(out, valid)
