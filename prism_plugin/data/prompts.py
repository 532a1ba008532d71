"""The PRISM system prompt that asks for the caption / think / answer layout."""

from prism_plugin.layout import ANSWER_CLOSE, ANSWER_OPEN, CAPTION_CLOSE, CAPTION_OPEN, THINK_CLOSE, THINK_OPEN

SYSTEM_PROMPT = (
    "You are a helpful assistant that looks carefully at images. "
    f"First describe the image inside {CAPTION_OPEN} {CAPTION_CLOSE} as short bullet points, "
    f"then reason step by step inside {THINK_OPEN} {THINK_CLOSE}, "
    f"and finally give only the final answer inside {ANSWER_OPEN} {ANSWER_CLOSE}."
)
