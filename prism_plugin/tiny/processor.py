"""The tiny Qwen3-VL processor: Qwen2-VL image processor + Qwen3-VL video processor + tokenizer.

Patch 14 and merge 2 (a 28-pixel factor) with pixel bounds chosen so that a 56x56 image gives
4 visual tokens and a 112x112 image 16 — large enough to exercise the vision path, small enough
for CPU tests.
"""

from __future__ import annotations

from typing import Any

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]


def build_processor(tokenizer: Any) -> Any:
    """A ``Qwen3VLProcessor`` around ``tokenizer`` (its chat template is reused)."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    common = {
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
    }
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, **common)
    video_processor = Qwen3VLVideoProcessor(
        size={
            "shortest_edge": TEMPORAL_PATCH_SIZE * MIN_PIXELS,
            "longest_edge": TEMPORAL_PATCH_SIZE * MAX_PIXELS,
        },
        min_frames=2,
        max_frames=8,
        **common,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
