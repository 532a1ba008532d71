"""LLaMA-Factory ``dataset_info.json`` entries for the files PRISM writes (the one home of their shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def file_entry(file: str | Path) -> dict[str, Any]:
    """A PRISM stage's file (warm-up pairs for ``prism_disc``, alignment rows for ``prism_align``) by absolute
    path; those stages read it with :mod:`prism_plugin.data.records`."""
    return {"file_name": str(Path(file).resolve())}
