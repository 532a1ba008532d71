"""LLaMA-Factory ``dataset_info.json`` entries for the files PRISM writes (the one home of their shape).

A PRISM stage's entry carries its kind under :data:`KIND_KEY` (LLaMA-Factory ignores keys it does not
know): LlamaBoard lists the datasets of the kind the chosen stage reads (:data:`STAGE_KINDS`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KIND_KEY = "prism_kind"
PAIRS, ALIGN, RLVR = "pairs", "align", "rlvr"  # warm-up pairs, alignment rows, RLVR rows (prompt + answer)
STAGE_KINDS = {"prism_disc": (PAIRS,), "prism_align": (ALIGN, RLVR)}  # prism_align reads RLVR rows with
# prism_reward: verifiable


def sharegpt_entry(file: str | Path) -> dict[str, Any]:
    """A multimodal sharegpt SFT set: ``messages`` (system / user with ``<image>`` markers / assistant) and
    ``images``; the file named by absolute path so the entry works from any ``dataset_dir``."""
    return {
        "file_name": str(Path(file).resolve()),
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }


def file_entry(file: str | Path, kind: str) -> dict[str, Any]:
    """A PRISM stage's file of ``kind`` (:data:`PAIRS` for ``prism_disc``, :data:`ALIGN` or :data:`RLVR` for
    ``prism_align``) by absolute path; those stages read it with :mod:`prism_plugin.data.records`."""
    if kind not in (PAIRS, ALIGN, RLVR):
        raise ValueError(f"unknown PRISM dataset kind {kind!r}; one of {PAIRS}, {ALIGN}, {RLVR}")
    return {"file_name": str(Path(file).resolve()), KIND_KEY: kind}


def register(dataset_dir: str | Path, name: str, entry: dict[str, Any]) -> Path:
    """Add (or replace) entry ``name`` of ``dataset_dir/dataset_info.json``, keeping the other entries; the file
    is replaced whole (written beside it, then renamed). Returns the file's path."""
    path = Path(dataset_dir) / "dataset_info.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not isinstance(info, dict):
        raise ValueError(f"{path} does not hold a JSON object of dataset entries")
    info[name] = entry
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path
