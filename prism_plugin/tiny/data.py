"""The toy counting dataset, written in the formats every PRISM stage consumes.

Files under ``data/`` (all image paths are RELATIVE TO ``data/``, e.g. ``images/0003.png``, so the
files are byte-identical wherever they are built; LLaMA-Factory resolves them through
``media_dir``, which defaults to ``dataset_dir`` = ``data/``; EasyR1 through ``data.image_dir``):

- ``sft.json``      LLaMA-Factory sharegpt list: ``messages`` (system / user ``<image>question`` /
                    assistant PRISM response) and ``images``.
- ``align.jsonl``   ``prompt``, ``images``, ``teacher_caption``, ``teacher_cot``, ``ground_truth``.
- ``pairs.jsonl``   discriminator warm-up: ``prompt``, ``image``, teacher and (plausible but wrong)
                    student caption / cot.
- ``rlvr.jsonl``    ``prompt``, ``images``, ``answer``.
- ``eval.jsonl``    held-out prompts (other scenes, images ``images/eval_*.png``) in the alignment format,
                    for ``prism-plugin evaluate``.
- ``val.jsonl``     a validation split in the same format (scenes of its own, images ``images/val_*.png``),
                    for choosing settings: the tiny demo's evaluation never reads it, and choices made on it
                    never look at ``eval.jsonl``.
- ``dataset_info.json``  LLaMA-Factory entries ``prism_tiny_sft``, ``prism_tiny_pairs``,
  ``prism_tiny_align`` and ``prism_tiny_rlvr`` with absolute ``file_name``s, and ``prism_tiny_policy_pairs`` for
  ``policy_pairs.jsonl``, which this builder does not write: ``prism-plugin data make-pairs`` writes it from the
  SFT policy (the tiny pipeline's warm-up pairs of the teacher with the policy's own samples).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_plugin.data.dataset_info import ALIGN, PAIRS, RLVR, file_entry, sharegpt_entry
from prism_plugin.layout import SYSTEM_PROMPT, Segments, render_response
from prism_plugin.tiny.corpus import COLORS
from prism_plugin.tiny.images import Scene, draw_scene, random_scene, save_png

SFT_DATASET_NAME = "prism_tiny_sft"
PAIRS_DATASET_NAME = "prism_tiny_pairs"
ALIGN_DATASET_NAME = "prism_tiny_align"
RLVR_DATASET_NAME = "prism_tiny_rlvr"
POLICY_PAIRS_DATASET_NAME = "prism_tiny_policy_pairs"
POLICY_PAIRS_FILE = "policy_pairs.jsonl"  # written by `prism-plugin data make-pairs`, not by this builder
DEFAULT_NUM_EVAL = 32
DEFAULT_NUM_VAL = 64
VAL_SEED_OFFSET = 2_000_029  # the eval scenes use seed + 1_000_003, the training scenes the seed itself
IMAGE_DIR = "images"


@dataclass(frozen=True)
class Example:
    """One toy example: image path (relative to data/), question, teacher layout parts, answer."""

    image: str
    question: str
    caption: str
    reasoning: str
    answer: str
    counts: dict[str, int]
    asked: tuple[str, ...]  # colours the question sums over

    @property
    def prompt(self) -> str:
        return f"<image>{self.question}"

    @property
    def response(self) -> str:
        return render_response(self.caption, self.reasoning, self.answer)

    @property
    def teacher(self) -> Segments:
        return Segments.from_response(self.response)


def caption_text(counts: dict[str, int]) -> str:
    """``red 3 green 0 blue 2 yellow 1``: every colour with its count, in a fixed order."""
    return " ".join(f"{color} {counts[color]}" for color in COLORS)


def sum_text(counts: dict[str, int], colors: tuple[str, ...], total: int | None = None) -> str:
    """``red 3 + blue 2 = 5`` (``total`` overrides the right-hand side, for wrong arithmetic)."""
    value = sum(counts[c] for c in colors) if total is None else total
    return " + ".join(f"{c} {counts[c]}" for c in colors) + f" = {value}"


def make_example(index: int, scene: Scene, rng: random.Random, prefix: str = "") -> Example:
    """A question about ``scene``: the sum of two colours, or (one time in four) of all shapes."""
    counts = scene.counts()
    if rng.random() < 0.25:
        asked = tuple(COLORS)
        question = "How many shapes are there in total?"
    else:
        asked = tuple(sorted(rng.sample(COLORS, 2), key=COLORS.index))
        question = f"How many {asked[0]} and {asked[1]} shapes are there?"
    return Example(
        image=f"{IMAGE_DIR}/{prefix}{index:04d}.png",
        question=question,
        caption=caption_text(counts),
        reasoning=sum_text(counts, asked),
        answer=str(sum(counts[c] for c in asked)),
        counts=counts,
        asked=asked,
    )


def student_segments(example: Example, rng: random.Random) -> Segments:
    """A plausible but wrong (caption, cot): a miscounted colour carried into the sum, or bad arithmetic."""
    counts = dict(example.counts)
    if rng.random() < 0.5:
        color = rng.choice(example.asked)
        counts[color] = max(0, counts[color] + rng.choice((-1, 1))) if counts[color] else 1
        reasoning, answer = sum_text(counts, example.asked), str(sum(counts[c] for c in example.asked))
    else:
        other = rng.choice([c for c in COLORS if c not in example.asked] or list(COLORS))
        counts[other] += 1  # a miscount that does not change the answer…
        wrong = int(example.answer) + rng.choice((-1, 1, 2)) if example.answer != "0" else 1
        reasoning, answer = sum_text(counts, example.asked, wrong), str(wrong)  # …plus an arithmetic slip
    return Segments.from_response(render_response(caption_text(counts), reasoning, answer))


def build_examples(data_dir: Path, num_examples: int, seed: int, prefix: str = "") -> list[Example]:
    """Draw and save ``num_examples`` scenes under ``data_dir/images`` (file names ``{prefix}NNNN.png``) and
    return their examples."""
    rng = random.Random(seed)
    examples = []
    for index in range(num_examples):
        scene = random_scene(rng)
        example = make_example(index, scene, rng, prefix)
        save_png(draw_scene(scene), data_dir / example.image)
        examples.append(example)
    return examples


def _align_row(ex: Example) -> dict[str, Any]:
    """A held-out row in the alignment format (``eval.jsonl``, ``val.jsonl``)."""
    return {"prompt": ex.prompt, "images": [ex.image], "teacher_caption": ex.teacher.caption,
            "teacher_cot": ex.teacher.reasoning, "ground_truth": ex.answer}


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_dataset(data_dir: Path, num_examples: int, seed: int, num_eval: int = DEFAULT_NUM_EVAL,
                  num_val: int = DEFAULT_NUM_VAL) -> dict[str, str]:
    """Build images and every dataset file under ``data_dir``; returns {name: absolute path}."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    examples = build_examples(data_dir, num_examples, seed)
    held_out = build_examples(data_dir, num_eval, seed + 1_000_003, prefix="eval_")
    validation = build_examples(data_dir, num_val, seed + VAL_SEED_OFFSET, prefix="val_")
    student_rng = random.Random(seed + 1)

    sft = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": ex.prompt},
                {"role": "assistant", "content": ex.response},
            ],
            "images": [ex.image],
        }
        for ex in examples
    ]
    align = [
        {
            "prompt": ex.prompt,
            "images": [ex.image],
            "teacher_caption": ex.teacher.caption,
            "teacher_cot": ex.teacher.reasoning,
            "ground_truth": ex.answer,
        }
        for ex in examples
    ]
    pairs = []
    for ex in examples:
        student = student_segments(ex, student_rng)
        pairs.append(
            {
                "prompt": ex.prompt,
                "image": ex.image,
                "teacher_caption": ex.teacher.caption,
                "teacher_cot": ex.teacher.reasoning,
                "student_caption": student.caption,
                "student_cot": student.reasoning,
            }
        )
    rlvr = [{"prompt": ex.prompt, "images": [ex.image], "answer": ex.answer} for ex in examples]
    evaluation = [_align_row(ex) for ex in held_out]

    paths = {
        "sft": _write_json(data_dir / "sft.json", sft),
        "align": _write_jsonl(data_dir / "align.jsonl", align),
        "pairs": _write_jsonl(data_dir / "pairs.jsonl", pairs),
        "rlvr": _write_jsonl(data_dir / "rlvr.jsonl", rlvr),
        "eval": _write_jsonl(data_dir / "eval.jsonl", evaluation),
        "val": _write_jsonl(data_dir / "val.jsonl", [_align_row(ex) for ex in validation]),
    }
    paths["policy_pairs"] = data_dir / POLICY_PAIRS_FILE
    paths["dataset_info"] = _write_json(data_dir / "dataset_info.json", dataset_info(paths))
    out = {name: str(path) for name, path in paths.items() if name != "policy_pairs"}
    out["data_dir"] = str(data_dir)
    out["images_dir"] = str(data_dir / IMAGE_DIR)
    return out


def dataset_info(paths: dict[str, Path]) -> dict[str, Any]:
    """LLaMA-Factory ``dataset_info.json``: the SFT set as multimodal sharegpt; the PRISM stages' files
    (``prism_tiny_pairs`` and ``prism_tiny_policy_pairs`` for ``prism_disc``, ``prism_tiny_align`` for
    ``prism_align``, ``prism_tiny_rlvr`` for its verifiable-reward RLVR run) by file name."""
    return {
        PAIRS_DATASET_NAME: file_entry(paths["pairs"], PAIRS),
        ALIGN_DATASET_NAME: file_entry(paths["align"], ALIGN),
        RLVR_DATASET_NAME: file_entry(paths["rlvr"], RLVR),
        POLICY_PAIRS_DATASET_NAME: file_entry(paths["policy_pairs"], PAIRS),
        SFT_DATASET_NAME: sharegpt_entry(paths["sft"]),
    }
