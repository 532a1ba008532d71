"""The efficacy study's task: the tiny grid-counting set, its held-out split, and greedy evaluation.

Questions ask for the number of shapes of two colours (or all shapes) in a 4x4 grid; the teacher
answers ``<caption> red 3 green 0 blue 2 yellow 1 </caption> <think> red 3 + blue 2 = 5 </think>
<answer> 5 </answer>``. Evaluation decodes greedily and reports answer accuracy (the verifiable
reward's matcher), caption exact-match (perception) and reasoning consistency (the sum in the think
uses the rollout's own caption, is right, and is the answer) — the two halves PRISM scores separately.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prism_plugin.data.records import Segments

COUNT_RE = re.compile(r"([a-z]+) (\d+)")
SUM_RE = re.compile(r"^\s*((?:[a-z]+ \d+ \+ )*[a-z]+ \d+) = (\d+)\s*$")


@dataclass
class EvalRecord:
    """One held-out question: prompt, image path, gold answer, the true caption's counts and the teacher's
    response."""

    prompt: str
    images: tuple[str, ...]
    answer: str
    counts: dict[str, int]
    teacher: str = ""


def load_eval_records(align_file: str | Path, limit: int | None = None) -> list[EvalRecord]:
    """Held-out records from a tiny ``align.jsonl`` (teacher caption = the true counts)."""
    base = Path(align_file).parent
    records = []
    for line in Path(align_file).read_text(encoding="utf-8").splitlines()[:limit]:
        row = json.loads(line)
        images = tuple(str(base / p) if not Path(p).is_absolute() else p for p in row["images"])
        truth = caption_counts(row["teacher_caption"])
        teacher = Segments(row["teacher_caption"], row["teacher_cot"]).response  # joined as the policy writes it
        records.append(EvalRecord(row["prompt"], images, str(row["ground_truth"]), truth, teacher))
    return records


def caption_counts(caption: str) -> dict[str, int]:
    """``{colour: count}`` read from a caption segment (tags and all)."""
    body = caption.replace("<caption>", " ").replace("</caption>", " ")
    return {color: int(count) for color, count in COUNT_RE.findall(body)}


def reasoning_consistent(caption: str, reasoning: str) -> bool:
    """The think's sum uses the caption's counts, its arithmetic holds, and the answer is its total."""
    think = re.search(r"<think>(.*?)</think>", reasoning, re.DOTALL)
    answer = re.search(r"<answer>(.*?)</answer>", reasoning, re.DOTALL)
    if think is None or answer is None:
        return False
    match = SUM_RE.match(think.group(1))
    if match is None:
        return False
    terms = [(c, int(n)) for c, n in COUNT_RE.findall(match.group(1))]
    counts = caption_counts(caption)
    total = int(match.group(2))
    return (all(counts.get(c) == n for c, n in terms) and sum(n for _, n in terms) == total
            and answer.group(1).strip() == str(total))


def oracle_scores(rollouts: dict[str, list[str]], teacher: dict[str, list[str]], ground_truths: list) -> dict:
    """``prism_reward`` scorer for the oracle arm: caption = share of colours counted right (against the
    teacher's caption), reasoning = 1 when consistent with the rollout's own caption."""
    captions = []
    for mine, gold in zip(rollouts["caption"], teacher["caption"], strict=True):
        truth, seen = caption_counts(gold), caption_counts(mine)
        captions.append(sum(seen.get(c) == n for c, n in truth.items()) / max(len(truth), 1))
    reasoning = [float(reasoning_consistent(c, r)) for c, r in zip(rollouts["caption"], rollouts["reasoning"],
                                                                   strict=True)]
    return {"caption": captions, "reasoning": reasoning}


@torch.no_grad()
def evaluate(policy: Any, processor: Any, records: list[EvalRecord], *, batch_size: int = 256,
             max_new_tokens: int = 48) -> dict[str, float]:
    """Greedy answers for ``records``: accuracy, caption exact-match, reasoning consistency, valid layout."""
    from prism_plugin.layout import layout_parts
    from prism_plugin.policy import sample
    from prism_plugin.rewards import answers_match
    from prism_plugin.rollout import Sampling

    was_training = policy.training
    totals = {"accuracy": 0.0, "caption_exact": 0.0, "reasoning_consistent": 0.0, "valid": 0.0}
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        _, split = sample(policy, processor, True, batch, 1, Sampling(max_new_tokens, temperature=0.0))
        for record, text in zip(batch, split.texts, strict=True):
            parts = layout_parts(text)
            if parts is None:
                continue
            caption, think, answer = parts
            totals["valid"] += 1
            totals["accuracy"] += answers_match(answer.strip(), record.answer)
            totals["caption_exact"] += caption_counts(caption) == record.counts
            totals["reasoning_consistent"] += reasoning_consistent(
                caption, f"<think>{think}</think><answer>{answer}</answer>")
    policy.train(was_training)
    return {k: v / len(records) for k, v in totals.items()}
