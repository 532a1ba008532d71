"""Tiny local models and data for tests and smoke runs, built offline and deterministically.

``make_tiny(out_dir, seed)`` writes, in a few seconds on CPU::

    out_dir/
      manifest.json          paths of everything below, the seed and the library versions
      tokenizer/             the byte-level BPE tokenizer alone (tokenizer.json, config, chat template)
      qwen3_vl_policy/       Qwen3VLForConditionalGeneration + tokenizer + processor configs
      qwen3_policy/          Qwen3ForCausalLM + tokenizer
      qwen3_vl_dense/        same architectures, other weights: to be upcycled into discriminators
      qwen3_dense/
      data/                  images/*.png, sft.json, align.jsonl, pairs.jsonl, rlvr.jsonl, eval.jsonl (held out),
                             val.jsonl (validation, for choosing settings), dataset_info.json

Same seed -> byte-identical tokenizer, weights, images and data files (image paths inside the
data files are relative to ``data/``; only ``manifest.json`` and ``dataset_info.json`` hold
absolute paths).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from prism_plugin.errors import check_at_least_one

MODEL_DIRS = {
    # name: (architecture, offset of the weight seed: policies 2*seed, dense models 2*seed + 1)
    "qwen3_vl_policy": ("qwen3_vl", 0),
    "qwen3_policy": ("qwen3", 0),
    "qwen3_vl_dense": ("qwen3_vl", 1),
    "qwen3_dense": ("qwen3", 1),
}
DEFAULT_NUM_EXAMPLES = 32

__all__ = ["DEFAULT_NUM_EXAMPLES", "MODEL_DIRS", "load_manifest", "make_tiny", "make_tiny_text_policy"]


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    import prism_plugin

    return {
        "prism_plugin": prism_plugin.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def make_tiny(out_dir: str | Path, seed: int = 0, num_examples: int = DEFAULT_NUM_EXAMPLES) -> dict[str, Any]:
    """Build tokenizer, the four tiny models and the toy dataset under ``out_dir``; returns the manifest.

    Sub-directories this function creates are replaced if they already exist.
    """
    from transformers.utils import logging as hf_logging

    from prism_plugin.tiny.data import SFT_DATASET_NAME, write_dataset
    from prism_plugin.tiny.models import build_model, save_model
    from prism_plugin.tiny.processor import build_processor
    from prism_plugin.tiny.tokenizer import build_tokenizer, save_tokenizer, special_token_ids

    check_at_least_one(("--num-examples", num_examples))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "data", *MODEL_DIRS):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)

    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, out / "tokenizer")
    # The processor gets its own tokenizer object: saving a processor stamps ``processor_class`` into
    # its tokenizer's config, which would make ``AutoProcessor`` on the text-only dirs look for an
    # image processor.
    processor = build_processor()

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        models = {}
        for name, (kind, offset) in MODEL_DIRS.items():
            model = build_model(kind, tokenizer, seed=2 * seed + offset)
            vl = kind == "qwen3_vl"
            models[name] = str(save_model(model, out / name, tokenizer, processor if vl else None))
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    data = write_dataset(out / "data", num_examples=num_examples, seed=seed)
    manifest: dict[str, Any] = {
        "seed": seed,
        "num_examples": num_examples,
        "root": str(out),
        "tokenizer": {
            "dir": str(out / "tokenizer"),
            "vocab_size": len(tokenizer),
            "eos_token": tokenizer.eos_token,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "special_token_ids": special_token_ids(tokenizer),
        },
        "models": models,
        "data": data,
        "sft_dataset_name": SFT_DATASET_NAME,
        "versions": _versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def make_tiny_text_policy(out_dir: str | Path, seed: int = 0, head_dim: int | None = None) -> Path:
    """One tiny text policy (``qwen3_policy``'s architecture and tokenizer, attention heads of ``head_dim``,
    by default :data:`~prism_plugin.tiny.models.VLLM_HEAD_DIM`) in ``out_dir``; needs no image processor,
    so it builds where torchvision does not import (vLLM's CPU test environment)."""
    from prism_plugin.tiny.models import VLLM_HEAD_DIM, build_model, save_model
    from prism_plugin.tiny.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model("qwen3", tokenizer, seed=2 * seed, head_dim=head_dim or VLLM_HEAD_DIM)
    return save_model(model, Path(out_dir), tokenizer, None)


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a previous ``make_tiny(out_dir)`` build."""
    return json.loads((Path(out_dir) / "manifest.json").read_text(encoding="utf-8"))
