"""The rollout engine ``prism_rollout_engine`` names, built for a ``prism_align`` run.

``hf``: :class:`~prism_plugin.rollout.HFRolloutEngine` on the policy itself. ``vllm``:
:class:`~prism_plugin.vllm_rollout.engine.VLLMRolloutEngine`, colocated on every rank, loading the run's
``model_name_or_path`` (an adapter run's first sync pushes the merged weights), in the run's precision,
with ``cutoff_len`` as its longest sequence and the images resized by the template's multimodal plugin.
"""

from __future__ import annotations

from typing import Any


def check_rollout_engine(args: Any) -> None:
    """Before anything loads: a run that selects vLLM without a supported vLLM stops with one line."""
    if args.prism_rollout_engine == "vllm":
        from prism_plugin.vllm_rollout.versions import require_vllm

        require_vllm()


def vllm_dtype(training_args: Any) -> str:
    """The dtype vLLM generates in: the run's bf16 / fp16, else the checkpoint's own."""
    return "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "auto"


def build_rollout_engine(args: Any, model_args: Any, data_args: Any, training_args: Any, tokenizer: Any,
                         processor: Any, template: Any) -> Any:
    """The engine of the run (call it after the policy is loaded: vLLM sizes its pool from what is left)."""
    if args.prism_rollout_engine != "vllm":
        from prism_plugin.rollout import HFRolloutEngine

        return HFRolloutEngine(tokenizer, chunk_size=args.prism_rollout_chunk_size)
    from prism_plugin.vllm_rollout.engine import VLLMRolloutEngine, VLLMSettings
    from prism_plugin.vllm_rollout.prompts import llamafactory_images, processor_pixels

    settings = VLLMSettings(
        model=model_args.model_name_or_path, gpu_memory_utilization=args.prism_vllm_gpu_memory_utilization,
        sleep_mode=args.prism_vllm_sleep_mode, enforce_eager=args.prism_vllm_enforce_eager,
        dtype=vllm_dtype(training_args), max_model_len=data_args.cutoff_len, seed=training_args.seed,
        mm_processor_kwargs=processor_pixels(processor) if processor is not None else {},
    )
    images = llamafactory_images(template.mm_plugin, processor)
    return VLLMRolloutEngine(processor if processor is not None else tokenizer, settings, images_fn=images)
