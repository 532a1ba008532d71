"""A rendered :class:`~prism_plugin.rollout.PolicyPrompt` as the prompt vLLM takes.

``PolicyPrompt.input_ids`` hold the processor-expanded ids: every image is ``<|vision_start|>``, as many
``<|image_pad|>`` as the image has merged patches, ``<|vision_end|>``. vLLM wants the prompt with one
``<|image_pad|>`` per image and the images themselves; its own processor expands the placeholders again.
Handing it the expanded ids instead is what corrupts prompts or crashes M-RoPE (trl #6294, #6401), so
:class:`PromptConverter` collapses each run of image pads to one and checks that the collapsed ids,
expanded by the image grids the policy's processor computed (``mm_inputs["image_grid_thw"]``), give back
the policy's ids exactly. The images go to vLLM as LLaMA-Factory's plugin resized them (``images_fn``),
and the first time a prompt is seen the policy's own image processor is run on them to check that they
give the same grids — so vLLM, configured with the same min/max pixels (:func:`processor_pixels`),
expands them to the very ids the policy trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from prism_plugin.rollout import PolicyPrompt

IMAGE_PAD = "<|image_pad|>"

ImagesFn = Callable[[Sequence[Any]], list[Any]]


class PromptMismatchError(ValueError):
    """A prompt whose image placeholders do not match its images (a bug upstream, never sent to vLLM)."""


def collapse_image_pads(input_ids: Sequence[int], image_pad_id: int) -> list[int]:
    """``input_ids`` with every run of ``image_pad_id`` made one token (one placeholder per image)."""
    out: list[int] = []
    for token in input_ids:
        if token == image_pad_id and out and out[-1] == image_pad_id:
            continue
        out.append(int(token))
    return out


def expand_image_pads(input_ids: Sequence[int], image_pad_id: int, counts: Sequence[int]) -> list[int]:
    """The inverse of :func:`collapse_image_pads`: the ``k``-th placeholder repeated ``counts[k]`` times."""
    out: list[int] = []
    k = 0
    for token in input_ids:
        if token == image_pad_id:
            if k >= len(counts):
                raise PromptMismatchError(f"more image placeholders than images ({len(counts)})")
            out += [image_pad_id] * int(counts[k])
            k += 1
        else:
            out.append(int(token))
    if k != len(counts):
        raise PromptMismatchError(f"{k} image placeholder(s) for {len(counts)} image(s)")
    return out


def image_token_counts(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Image tokens per image: its patches (t × h × w) over the spatial merge (``merge_size``²)."""
    return [int(t * h * w) // (merge_size * merge_size) for t, h, w in image_grid_thw.tolist()]


def processor_pixels(processor: Any) -> dict[str, int]:
    """``min_pixels`` / ``max_pixels`` of the policy's image processor, for vLLM's ``mm_processor_kwargs``."""
    size = dict(getattr(getattr(processor, "image_processor", None), "size", None) or {})
    pixels = {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}
    return {key: int(value) for key, value in pixels.items() if value is not None}


def load_images_plain(images: Sequence[Any]) -> list[Any]:
    """Images as the samplers outside training load them (:func:`prism_plugin.chat.load_images`)."""
    from prism_plugin.chat import load_images

    return load_images(list(images))


def llamafactory_images(plugin: Any, processor: Any) -> ImagesFn:
    """Images as LLaMA-Factory's multimodal plugin hands them to the processor (read, resized to the run's
    ``image_max_pixels`` / ``image_min_pixels``, RGB)."""

    def regularize(images: Sequence[Any]) -> list[Any]:
        return plugin._regularize_images(
            list(images), image_max_pixels=getattr(processor, "image_max_pixels", 768 * 768),
            image_min_pixels=getattr(processor, "image_min_pixels", 32 * 32))["images"]

    return regularize


class PromptConverter:
    """PolicyPrompts → vLLM prompts (``prompt_token_ids`` and ``multi_modal_data``); see the module docstring.

    ``processor`` is the policy's processor (None or a tokenizer for a text policy); ``images_fn`` turns
    ``PolicyPrompt.images`` (paths or bytes) into the images the policy's processor saw.
    """

    def __init__(self, processor: Any, images_fn: ImagesFn = load_images_plain) -> None:
        tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2) or 2)
        pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD) if tokenizer is not None else None
        self.image_pad_id = pad if isinstance(pad, int) and pad != tokenizer.unk_token_id else None
        self.images_fn = images_fn

    def placeholder_ids(self, prompt: PolicyPrompt) -> list[int]:
        """The prompt's ids with one image placeholder per image, checked against the expanded ids."""
        if not prompt.images:
            return list(prompt.input_ids)
        if self.image_pad_id is None or "image_grid_thw" not in prompt.mm_inputs:
            raise PromptMismatchError("a prompt with images needs a vision processor and its image_grid_thw")
        counts = image_token_counts(prompt.mm_inputs["image_grid_thw"], self.merge_size)
        if len(counts) != len(prompt.images):
            raise PromptMismatchError(f"{len(prompt.images)} image(s) but {len(counts)} image grid(s)")
        collapsed = collapse_image_pads(prompt.input_ids, self.image_pad_id)
        if expand_image_pads(collapsed, self.image_pad_id, counts) != list(prompt.input_ids):
            raise PromptMismatchError("the prompt's image tokens do not match its image grids")
        return collapsed

    def images(self, prompt: PolicyPrompt) -> list[Any]:
        """The prompt's images as vLLM gets them, checked against the policy's image grids."""
        images = self.images_fn(prompt.images)
        if self.image_processor is not None:
            grid = self.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
            if not torch.equal(grid.cpu(), prompt.mm_inputs["image_grid_thw"].cpu()):
                raise PromptMismatchError(f"the images resize to grids {grid.tolist()}, the policy's prompt has "
                                          f"{prompt.mm_inputs['image_grid_thw'].tolist()}")
        return images

    def __call__(self, prompt: PolicyPrompt) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt_token_ids": self.placeholder_ids(prompt)}
        if prompt.images:
            request["multi_modal_data"] = {"image": self.images(prompt)}
        return request
