"""Rendering a PRISM prompt with a model's chat template: system prompt, ``<image>`` markers, images.

Used by every place that renders prompts outside LLaMA-Factory's template (the discriminator's
text scoring, and the samplers of ``align-preview``, ``make-pairs``, the drift monitor and
``evaluate``), so a prompt renders the same way wherever it is scored or sampled.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prism_plugin.errors import DatasetRowError
from prism_plugin.layout import IMAGE_MARKER, SYSTEM_PROMPT

ImageLike = Any  # a path, encoded bytes, or a PIL image


def load_images(images: ImageLike | Sequence[ImageLike] | None) -> list[Any]:
    """Images as RGB PIL images (paths are opened, bytes decoded); a missing file is a :class:`DatasetRowError`."""
    from PIL import Image

    if images is None:
        return []
    if isinstance(images, (str, Path, bytes)) or not isinstance(images, Sequence):
        images = [images]
    loaded = []
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            if not Path(image).is_file():
                raise DatasetRowError(None, None, f"images[{i}]", f"image file not found: {image}", "missing_image")
            with Image.open(image) as handle:
                loaded.append(handle.convert("RGB"))
        elif isinstance(image, bytes):
            with Image.open(io.BytesIO(image)) as handle:
                loaded.append(handle.convert("RGB"))
        else:
            loaded.append(image)
    return loaded


def user_content(prompt: str, num_images: int) -> list[dict[str, str]]:
    """Chat content items: ``<image>`` markers become image items (all images first if there is none)."""
    pieces = prompt.split(IMAGE_MARKER)
    if num_images and len(pieces) == 1:
        pieces = [""] * num_images + [prompt]
    elif len(pieces) - 1 != num_images:
        found = len(pieces) - 1
        raise DatasetRowError(None, None, "prompt", f"{found} {IMAGE_MARKER} markers for {num_images} images")
    content: list[dict[str, str]] = []
    for i, piece in enumerate(pieces):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def chat_prompt_text(
    tokenizer: Any, prompt: str, num_images: int, vision: bool, system_prompt: str = SYSTEM_PROMPT
) -> str:
    """The chat-rendered prompt (system prompt, user turn, generation prompt) as text.

    With ``vision`` the ``<image>`` markers become image items; without, they are dropped.
    """
    content: Any = user_content(prompt, num_images) if vision else prompt.replace(IMAGE_MARKER, "")
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
