"""Shared test helpers: LLaMA-Factory configs from the shipped tiny YAMLs, and rollout batches built
from texts with the tiny tokenizer (the real split, no model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = {
    "sft": REPO / "yaml" / "sft_qwen3vl_tiny.yaml",
    "prism_disc": REPO / "yaml" / "prism_disc_warmup_tiny.yaml",
    "prism_align": REPO / "yaml" / "prism_align_tiny.yaml",
    "prism_rlvr": REPO / "yaml" / "prism_rlvr_tiny.yaml",
}


def lf_config(stage: str, tiny_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The shipped ``yaml/*_tiny.yaml`` of ``stage`` on the test's tiny build: its ``tiny/…`` paths point into
    ``tiny_dir``, ``output_dir`` replaces its own, and ``overrides`` replace keys (``None`` removes one).
    A path into the tiny pipeline's ``outputs/`` that the test did not override is an error."""
    config = yaml.safe_load(TINY_YAML[stage].read_text(encoding="utf-8"))
    config["output_dir"] = str(output_dir)
    config.update(overrides)
    for key, value in list(config.items()):
        if value is None:
            del config[key]
        elif isinstance(value, str) and value.startswith("tiny/"):
            config[key] = str(tiny_dir / value.removeprefix("tiny/"))
        elif isinstance(value, str) and value.startswith("outputs/"):
            raise ValueError(f"lf_config: {key}={value} comes from the tiny pipeline's outputs; pass {key}=…")
    return config


def rollout_batch(tokenizer: Any, texts: Sequence[str], prompts: Sequence[Any], group_size: int) -> Any:
    """A :class:`prism_plugin.scorers.RolloutBatch` of ``texts`` (rollout ``i`` answers prompt
    ``i // group_size``): each text tokenised as a policy would have generated it, then split."""
    from prism_plugin.rollout import Rollouts, end_of_turn_id
    from prism_plugin.scorers import RolloutBatch
    from prism_plugin.segment_split import split_segments

    eot = end_of_turn_id(tokenizer)
    sequences = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eot] for text in texts]
    rollouts = Rollouts.from_sequences(sequences, [i // group_size for i in range(len(texts))], eot,
                                       tokenizer.pad_token_id)
    split = split_segments(rollouts.completions, tokenizer, rollouts.mask, eos_token_ids=eot)
    return RolloutBatch(list(prompts), rollouts, split)


def align_prompt(teacher: Any = None, ground_truth: str | None = None, scorer_inputs: Any = None) -> Any:
    """An :class:`prism_plugin.scorers.AlignPrompt` with no policy rendering (for scorer tests)."""
    from prism_plugin.rollout import PolicyPrompt
    from prism_plugin.scorers import AlignPrompt

    return AlignPrompt(PolicyPrompt([]), teacher, ground_truth, 1, "test", scorer_inputs)


class ReplayEngine:
    """A :class:`prism_plugin.rollout.RolloutEngine` that answers each prompt with fixed completions: a
    trainer's rollouts known in advance (the same in one process and on two ranks)."""

    def __init__(self, tokenizer, answers: dict[tuple[int, ...], list[str]], offset: int = 0) -> None:
        """``offset``: where this engine starts in each prompt's answers when asked for one sample per copy of a
        prompt (a rank holding copies ``offset…`` of a group spread across ranks)."""
        from prism_plugin.rollout import end_of_turn_id

        self.tokenizer, self.answers, self.offset = tokenizer, answers, offset
        self.eot_id = end_of_turn_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id

    def load_policy(self, policy, version=None) -> None:
        pass

    def generate(self, prompts, num_samples, sampling):
        from prism_plugin.rollout import Rollouts

        if num_samples == 1:  # one rollout per copy: consecutive copies take consecutive answers
            seen: dict[tuple[int, ...], int] = {}
            texts = []
            for p in prompts:
                key = tuple(p.input_ids)
                texts.append([self.answers[key][self.offset + seen.get(key, 0)]])
                seen[key] = seen.get(key, 0) + 1
        else:
            texts = [self.answers[tuple(p.input_ids)][:num_samples] for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.eot_id]
               for group in texts for t in group]
        rows = [k for k in range(len(prompts)) for _ in range(num_samples)]
        return Rollouts.from_sequences(ids, rows, self.eot_id, self.tokenizer.pad_token_id)
