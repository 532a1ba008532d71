"""A policy checkpoint outside training: load it (full or LoRA adapter), render its prompts, sample it.

The samplers of ``align-preview``, ``make-pairs``, the drift monitor and ``evaluate`` use
:func:`sample` — prompts rendered with the PRISM system prompt and the policy's chat template
(the same ids as the ``prism_qwen3_vl`` / ``prism_qwen3`` LLaMA-Factory templates), completions
from a :class:`prism_plugin.rollout.RolloutEngine`, split into segments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prism_plugin.errors import DatasetRowError, UserError, encoder_rejects
from prism_plugin.rollout import HFRolloutEngine, PolicyPrompt, RolloutEngine, Rollouts, Sampling


def is_vision_config(config: Any) -> bool:
    """Whether a model config describes a vision-language model (it has a vision tower)."""
    return hasattr(config, "vision_config")


def load_processor(source: str | Path, vision: bool, **kwargs: Any) -> Any:
    """What renders prompts for a policy: its processor (vision) or tokenizer (text)."""
    from transformers import AutoProcessor, AutoTokenizer

    return (AutoProcessor if vision else AutoTokenizer).from_pretrained(source, **kwargs)


def policy_device(device: str | None = None) -> str:
    """The torch device a policy runs on: ``device`` checked (a clear error for a malformed one, or for CUDA
    where there is none), or by default ``cuda`` when available, else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: no CUDA device is available here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


class NotAPolicyError(UserError, ValueError):
    """A directory that holds something other than a policy (a PRISM discriminator, an encoder …)."""


def policy_config(policy_dir: str | Path) -> tuple[str | Path, Any, bool]:
    """Where the policy in ``policy_dir`` loads its weights from (the directory, or a LoRA adapter's base
    model), its config, and whether ``policy_dir`` is an adapter; reads configs only, so every policy of
    a command can be checked before the first one loads. A missing directory, a PRISM discriminator or
    any model that does not generate text is a clear error."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise FileNotFoundError(f"policy directory not found: {policy_dir}")
    adapter = policy_dir / "adapter_config.json"
    base: str | Path = policy_dir
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
        if not base:
            raise NotAPolicyError(f"LoRA adapter {policy_dir}: adapter_config.json names no base_model_name_or_path")
    elif not (policy_dir / "config.json").is_file():
        raise NotAPolicyError(f"{policy_dir} is not a policy: it has neither config.json nor adapter_config.json")
    local = Path(base) / "config.json"
    if local.is_file():
        from prism_plugin.discriminator.authors import is_authors_discriminator

        if json.loads(local.read_text()).get("model_type") == "prism_discriminator" or is_authors_discriminator(base):
            raise NotAPolicyError(f"{base} is a PRISM discriminator, not a policy: give a policy checkpoint "
                                  "(e.g. the SFT output) or a LoRA adapter directory")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        what = f"the base model of LoRA adapter {policy_dir}" if adapter.is_file() else str(base)
        raise NotAPolicyError(f"cannot read the config of {what}: {str(err).splitlines()[0]}") from err
    vision = is_vision_config(config)
    if type(config) not in (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING if vision else MODEL_FOR_CAUSAL_LM_MAPPING):
        raise NotAPolicyError(f"{base} is a {config.model_type!r} model, not a policy that generates text")
    return base, config, adapter.is_file()


def load_policy(policy_dir: str | Path, device: str | None = None) -> tuple[Any, Any, bool]:
    """The policy in ``policy_dir``, its processor, and whether it has vision.

    A LoRA adapter directory (``adapter_config.json``, as ``finetuning_type: lora`` saves it) is
    loaded on its base model (``base_model_name_or_path``) and merged; its own tokenizer files are
    used when present, else the base model's. What is not a policy is a clear error (:func:`policy_config`).
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    policy_dir = Path(policy_dir)
    base, config, is_adapter = policy_config(policy_dir)
    vision = is_vision_config(config)
    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = model_class.from_pretrained(base, dtype=torch.float32)
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, policy_dir).merge_and_unload()
    has_own_tokenizer = (policy_dir / "tokenizer_config.json").is_file()
    processor = load_processor(policy_dir if has_own_tokenizer else base, vision)
    model.to(policy_device(device)).eval()
    return model, processor, vision


def policy_prompt(processor: Any, vision: bool, prompt: str, images: Sequence[Any] = ()) -> PolicyPrompt:
    """``prompt`` (``<image>`` markers) rendered with the PRISM system prompt and the policy's chat template; what
    the processor refuses is a :class:`DatasetRowError` (see :func:`prism_plugin.errors.encoder_rejects`)."""
    from prism_plugin.chat import chat_prompt_text, load_images

    tokenizer = getattr(processor, "tokenizer", processor)
    loaded = load_images(list(images)) if vision else []
    text = chat_prompt_text(tokenizer, prompt, len(loaded), vision)
    if not loaded:
        return PolicyPrompt(tokenizer(text, add_special_tokens=False)["input_ids"])
    with encoder_rejects("the policy's processor", None, None, True):
        encoded = processor(text=[text], images=loaded, return_tensors="pt")
    mm = {k: v for k, v in encoded.items() if k in ("pixel_values", "image_grid_thw")}
    return PolicyPrompt(encoded["input_ids"][0].tolist(), mm, tuple(images))


def render_prompts(processor: Any, vision: bool, records: Sequence[Any]) -> list[PolicyPrompt]:
    """Each record (``.prompt``, ``.images``) rendered for the policy; a row its processor rejects is a
    :class:`DatasetRowError` at the record's file and row."""
    prompts = []
    for record in records:
        try:
            prompts.append(policy_prompt(processor, vision, record.prompt, record.images))
        except DatasetRowError as err:
            raise err.at(getattr(record, "path", None), record.row) from err.__cause__
    return prompts


def sample_prompts(policy: Any, tokenizer: Any, prompts: Sequence[PolicyPrompt], num_samples: int,
                   sampling: Sampling, engine: RolloutEngine | None = None) -> tuple[Rollouts, Any]:
    """``num_samples`` completions per rendered prompt from ``engine`` (the HF engine by default) and their
    segment split (:class:`prism_plugin.segment_split.SegmentBatch`, prompt-major), found on the policy's own ids."""
    from prism_plugin.segment_split import split_segments

    engine = engine or HFRolloutEngine(tokenizer)
    engine.load_policy(policy)
    rollouts = engine.generate(prompts, num_samples, sampling)
    split = split_segments(rollouts.completions, tokenizer, rollouts.mask,
                           eos_token_ids=getattr(engine, "eot_id", None))
    return rollouts, split


def sample(
    policy: Any, processor: Any, vision: bool, records: Sequence[Any], num_samples: int, sampling: Sampling,
    engine: RolloutEngine | None = None,
) -> tuple[Rollouts, Any]:
    """``num_samples`` completions per record (``.prompt``, ``.images``), and their segment split
    (:func:`render_prompts`, then :func:`sample_prompts`)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return sample_prompts(policy, tokenizer, render_prompts(processor, vision, records), num_samples, sampling, engine)
