"""Tiny random-weight Qwen3-VL and Qwen3 models, saved self-contained for offline loading.

Each model directory holds config, safetensors weights, tokenizer files, chat template,
generation config and (for Qwen3-VL) the processor configs, so ``AutoModel*``,
``AutoTokenizer`` and ``AutoProcessor`` all work on it without a hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism_plugin.portable import make_portable, portable_config, set_tokenizer_class
from prism_plugin.rollout import VISION_SPECIAL_TOKENS
from prism_plugin.tiny.processor import MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE
from prism_plugin.tiny.tokenizer import EOS_TOKEN, PAD_TOKEN, TOKENIZER_CLASS

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
# vLLM's CPU attention takes head sizes 32 to 256: the text policy vLLM's tests load has heads of 32.
VLLM_HEAD_DIM = 32
# Interleaved M-RoPE over head_dim / 2 = 8 frequencies: t, h, w sections (h, w take every 3rd).
MROPE_SECTION = [4, 2, 2]
VISION_HIDDEN = 32
VISION_DEPTH = 2
VISION_HEADS = 2
# One deepstack feature per vision layer, injected into the first len(...) of the 2 text layers.
DEEPSTACK_INDEXES = [0, 1]


def _text_kwargs(tokenizer: Any, head_dim: int = HEAD_DIM) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": head_dim,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }


def qwen3_config(tokenizer: Any, head_dim: int = HEAD_DIM) -> Any:
    """A 2-layer, hidden-64 ``Qwen3Config`` over ``tokenizer``'s vocabulary (attention heads of ``head_dim``)."""
    from transformers import Qwen3Config

    rope = portable_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}})
    return Qwen3Config(**_text_kwargs(tokenizer, head_dim), **rope, tie_word_embeddings=False)


def qwen3_vl_config(tokenizer: Any) -> Any:
    """A ``Qwen3VLConfig``: the 2-layer text model above plus a depth-2, hidden-32 vision tower."""
    from transformers import Qwen3VLConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in VISION_SPECIAL_TOKENS}
    text = _text_kwargs(tokenizer) | portable_config({
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": MROPE_SECTION,
            "mrope_interleaved": True,
        },
    })
    vision = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": 2 * VISION_HIDDEN,
        "num_heads": VISION_HEADS,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": HIDDEN,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": DEEPSTACK_INDEXES,
    }
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        # Also at top level: HF Trainer compares the tokenizer's ids with ``model.config``'s.
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def generation_config(tokenizer: Any, *, vision: bool) -> Any:
    """Greedy by default; stops at ``<|im_end|>`` or ``<|endoftext|>``.

    The VL config also suppresses the vision special tokens: a random policy that samples
    ``<|image_pad|>`` makes the next forward fail ("Image features and image tokens do not match").
    """
    from transformers import GenerationConfig

    kwargs: dict[str, Any] = {
        "eos_token_id": [tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)],
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": False,
    }
    if vision:
        kwargs["suppress_tokens"] = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    return GenerationConfig(**kwargs)


def build_model(kind: str, tokenizer: Any, seed: int, head_dim: int = HEAD_DIM) -> Any:
    """A freshly initialised model of ``kind`` (``qwen3_vl`` or ``qwen3``), float32, eval mode; ``head_dim``
    sets the text model's attention head size (:data:`VLLM_HEAD_DIM` for a model vLLM's CPU build runs)."""
    import torch
    from transformers import Qwen3ForCausalLM, Qwen3VLForConditionalGeneration

    if kind == "qwen3_vl":
        if head_dim != HEAD_DIM:
            raise ValueError("the tiny qwen3_vl model's head size is fixed (its M-RoPE sections depend on it)")
        config, cls = qwen3_vl_config(tokenizer), Qwen3VLForConditionalGeneration
    elif kind == "qwen3":
        config, cls = qwen3_config(tokenizer, head_dim), Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected 'qwen3_vl' or 'qwen3'")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    model.generation_config = generation_config(tokenizer, vision=kind == "qwen3_vl")
    return model


def save_model(model: Any, out_dir: Path, tokenizer: Any, processor: Any | None) -> Path:
    """Save ``model`` with its tokenizer (and processor) into ``out_dir``; returns the directory.

    The folder reads the same under transformers 4.57 and 5.x: RoPE in both lines' config keys and
    ``tokenizer_class`` the generic fast class (:func:`prism_plugin.portable.make_portable`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out_dir)
    else:
        tokenizer.save_pretrained(out_dir)
    set_tokenizer_class(out_dir, TOKENIZER_CLASS)
    make_portable(out_dir)
    return out_dir
