"""Named shims for the two transformers lines prism-plugin runs on: 4.57 (EasyR1) and 5.x (LLaMA-Factory).

Each shim decides from the object it is handed (a signature, a class attribute), never from a
version number, and is tested under both lines (``pytest -m transformers4`` in a 4.57 environment).
Everything else in the package is written once against what both lines share.

- :func:`rope_index_takes_token_types` / :func:`rope_index`: Qwen3-VL's ``get_rope_index`` takes the
  image/video token types as ``mm_token_type_ids`` (5.x) or finds the image tokens itself (4.57).
- :func:`processor_tokenizer_class`: the tokenizer class a processor insists on (4.57's
  ``Qwen3VLProcessor`` accepts only ``Qwen2Tokenizer(Fast)``; 5.x's accepts any tokenizer).
"""

from __future__ import annotations

import inspect
from typing import Any

TOKEN_TYPES_KWARG = "mm_token_type_ids"


def rope_index_takes_token_types(model: Any) -> bool:
    """Whether ``model`` (a Qwen3-VL model, or a PEFT model that wraps one) expects ``mm_token_type_ids`` next
    to the input ids, in ``get_rope_index`` and so in ``forward`` / ``generate`` (transformers 5.x)."""
    if hasattr(model, "get_base_model"):  # a PEFT model: ask the model it wraps
        model = model.get_base_model()
    get_rope_index = getattr(model, "get_rope_index", None)
    if get_rope_index is None:
        inner = getattr(model, "model", None)
        get_rope_index = getattr(inner, "get_rope_index", None)
    if get_rope_index is None:
        return False
    return TOKEN_TYPES_KWARG in inspect.signature(get_rope_index).parameters


def token_types(input_ids: Any, config: Any) -> Any:
    """``mm_token_type_ids`` of ``input_ids``: 1 at image tokens, 2 at video tokens, 0 elsewhere."""
    image = (input_ids == config.image_token_id).int()
    video = getattr(config, "video_token_id", None)
    return image if video is None else image + 2 * (input_ids == video).int()


def rope_index(model: Any, input_ids: Any, attention_mask: Any, image_grid_thw: Any = None) -> tuple[Any, Any]:
    """Qwen3-VL's 3-axis M-RoPE positions (3, B, L) and rope deltas for ``input_ids``, on either line."""
    kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
    if rope_index_takes_token_types(model):
        kwargs[TOKEN_TYPES_KWARG] = token_types(input_ids, model.config)
    return model.get_rope_index(input_ids, **kwargs)


def processor_tokenizer_class(processor_class: type) -> str | None:
    """The fast tokenizer class ``processor_class`` insists on, or None when it takes any tokenizer.

    transformers 4.57 processors name their tokenizer classes (``Qwen3VLProcessor``: ``("Qwen2Tokenizer",
    "Qwen2TokenizerFast")``) and reject others with a TypeError; 5.x processors name none.
    """
    named = getattr(processor_class, "tokenizer_class", None)
    if not named:
        return None
    names = [named] if isinstance(named, str) else [n for n in named if n]
    if not names or "AutoTokenizer" in names:
        return None
    return next((n for n in names if n.endswith("Fast")), names[-1])
