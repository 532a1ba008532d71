"""A policy checkpoint and its rollout engine, for the samplers outside training (``evaluate``,
``data make-pairs``): ``hf`` (transformers ``generate`` on the loaded policy) or ``vllm``.

With ``vllm`` the engine loads the checkpoint itself and no weights are synced, so a full checkpoint is
never loaded by transformers; a LoRA adapter directory is merged on its base model on the CPU once and
pushed into the engine (built on the base model) by the first ``load_policy``. The engine has the GPU to
itself here: no sleep mode, ``gpu_memory_utilization`` 0.9 by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENGINES = ("hf", "vllm")
STANDALONE_MEMORY = 0.9


@contextmanager
def policy_and_engine(policy_dir: str | Path, engine: str = "hf", *, device: str | None = None, seed: int = 0,
                      gpu_memory_utilization: float = STANDALONE_MEMORY) -> Iterator[tuple[Any, Any, bool, Any]]:
    """``(policy, processor, vision, engine)`` for ``policy_dir``; ``policy`` is None where the vLLM engine
    loaded the weights itself. The engine is closed on exit (another one may follow in this process)."""
    from prism_plugin.errors import UserError
    from prism_plugin.policy import load_policy, load_processor, policy_config

    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "hf":
        from prism_plugin.rollout import HFRolloutEngine

        policy, processor, vision = load_policy(policy_dir, device=device)
        yield policy, processor, vision, HFRolloutEngine(getattr(processor, "tokenizer", processor))
        return
    from prism_plugin.vllm_rollout.engine import VLLMRolloutEngine, VLLMSettings
    from prism_plugin.vllm_rollout.prompts import processor_pixels
    from prism_plugin.vllm_rollout.versions import require_vllm

    require_vllm("--engine vllm")
    base, config, is_adapter = policy_config(policy_dir)
    vision = hasattr(config, "vision_config")
    policy = None
    if is_adapter:
        policy, processor, vision = load_policy(policy_dir, device="cpu")
    else:
        processor = load_processor(policy_dir, vision)
    tokenizer_dir = policy_dir if (Path(policy_dir) / "tokenizer_config.json").is_file() else base
    settings = VLLMSettings(model=str(base), tokenizer=str(tokenizer_dir), sleep_mode=False, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization,
                            mm_processor_kwargs=processor_pixels(processor) if vision else {})
    rollout_engine = VLLMRolloutEngine(processor, settings)
    try:
        yield policy, processor, vision, rollout_engine
    finally:
        rollout_engine.close()
