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


def build_processor() -> Any:
    """A ``Qwen3VLProcessor`` around its own tiny tokenizer (whose chat template it reuses).

    The tokenizer is of the class the processor accepts (:func:`prism_plugin.compat.processor_tokenizer_class`):
    any on transformers 5.x, ``Qwen2TokenizerFast`` on 4.57 — the same ``tokenizers`` pipeline either way.
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from prism_plugin.compat import processor_tokenizer_class
    from prism_plugin.tiny.tokenizer import TOKENIZER_CLASS, build_tokenizer

    tokenizer = build_tokenizer(tokenizer_class=processor_tokenizer_class(Qwen3VLProcessor) or TOKENIZER_CLASS)
    common = {
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
    }
    # min_pixels / max_pixels too: transformers 4.57's Qwen2VLImageProcessor ignores ``size`` (5.x reads both).
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
        **common,
    )
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
