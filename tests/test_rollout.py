"""``HFRolloutEngine`` (through ``prism_plugin.policy.sample``) on the tiny VL policy, on either transformers line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from prism_plugin.chat import chat_prompt_text
from prism_plugin.policy import load_policy, sample
from prism_plugin.rollout import VISION_SPECIAL_TOKENS, Sampling, end_of_turn_id

pytestmark = pytest.mark.transformers4


def test_greedy_rollout_is_transformers_generate_on_the_processor_inputs(tiny_dir: Path) -> None:
    """The engine builds its own ``generate`` inputs (M-RoPE token types where the line's Qwen3-VL takes them);
    greedy, it continues exactly as ``generate`` on what the processor gives."""
    model, processor, vision = load_policy(tiny_dir / "qwen3_vl_policy", device="cpu")
    image = next((tiny_dir / "data" / "images").glob("*.png"))
    record = SimpleNamespace(prompt="<image>How many red shapes are there?", images=(str(image),))
    rollouts, _ = sample(model, processor, vision, [record], num_samples=1,
                         sampling=Sampling(max_new_tokens=8, temperature=0))
    tokenizer = processor.tokenizer
    eot = end_of_turn_id(tokenizer)
    text = chat_prompt_text(tokenizer, "<image>How many red shapes are there?", 1, True)
    inputs = processor(text=[text], images=[Image.open(image)], return_tensors="pt")
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=eot,
                             pad_token_id=tokenizer.pad_token_id, suppress_tokens=suppress)
    reference = out[0, inputs["input_ids"].shape[1]:].tolist()
    if eot in reference:
        reference = reference[: reference.index(eot) + 1]
    got = rollouts.completions[0, : int(rollouts.mask[0].sum())].tolist()
    assert got == reference and len(got) > 0
