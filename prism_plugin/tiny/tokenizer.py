"""A Qwen-style byte-level BPE tokenizer trained from scratch on the embedded corpus.

Same pipeline shape as Qwen's (split regex + ByteLevel pre-tokenizer, ByteLevel decoder, the
Qwen special tokens after the BPE vocab, ChatML chat template) but no NFC normaliser, so every
string round-trips exactly. The PRISM layout tags stay ordinary BPE text, as in Qwen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from prism_plugin.tiny.corpus import corpus_lines

BPE_VOCAB_SIZE = 1280
MODEL_MAX_LENGTH = 4096

# Qwen2.5 / Qwen3 / Qwen3-VL special tokens, in Qwen's order (ids follow the BPE vocab).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# What saved tokenizer folders name: the class transformers 4.57 and 5.x both load tokenizer.json verbatim with.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2's pre-tokenisation regex: `>` may merge with the newlines after it (`>\n`).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, with Qwen-VL's rendering of image / video content items.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def train_backend(vocab_size: int = BPE_VOCAB_SIZE) -> Tokenizer:
    """Train the raw `tokenizers` BPE model (deterministic: no randomness in BPE training)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_tokenizer(vocab_size: int = BPE_VOCAB_SIZE, tokenizer_class: str = TOKENIZER_CLASS) -> Any:
    """The trained tokenizer wrapped as a transformers fast tokenizer with the chat template.

    ``tokenizer_class`` is the generic fast class on purpose: transformers 5 rebuilds the
    pipeline of ``Qwen2Tokenizer`` from its own code (adding an NFC normaliser), whereas the
    generic class loads ``tokenizer.json`` verbatim, in transformers 4.57 and 5.x alike. Another
    fast class (``Qwen2TokenizerFast``, which transformers 4.57's ``Qwen3VLProcessor`` insists on) wraps
    the same pipeline; saved folders name :data:`TOKENIZER_CLASS` whatever object wrote them.
    """
    import transformers

    cls = getattr(transformers, tokenizer_class)
    tokenizer = cls(
        tokenizer_object=train_backend(vocab_size),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: Any, out_dir: str | Path) -> Path:
    """Save ``tokenizer`` into ``out_dir`` with ``tokenizer_class`` :data:`TOKENIZER_CLASS` (see
    :func:`build_tokenizer`), so transformers 4.57 and 5.x load the same pipeline from it."""
    from prism_plugin.portable import set_tokenizer_class

    tokenizer.save_pretrained(out_dir)
    set_tokenizer_class(out_dir, TOKENIZER_CLASS)
    return Path(out_dir)


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """Id of every Qwen special token in ``tokenizer``."""
    return {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
