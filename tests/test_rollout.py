"""The rollout engine: one generate call site, prompt-major rollouts, chunking that changes memory, not results;
``HFRolloutEngine`` (through ``prism_plugin.policy.sample``) is ``generate`` on the processor's inputs on either
transformers line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from prism_plugin.chat import chat_prompt_text
from prism_plugin.policy import load_policy, sample
from prism_plugin.rollout import VISION_SPECIAL_TOKENS, Sampling, end_of_turn_id


@pytest.fixture(scope="module")
def vl_policy(tiny_sft_run):
    from prism_plugin.policy import load_policy

    return load_policy(tiny_sft_run[0], device="cpu")


def test_chunked_generation_gives_the_same_greedy_rollouts_in_more_calls(vl_policy, tiny_dir, monkeypatch):
    from prism_plugin.data.records import load_align
    from prism_plugin.policy import policy_prompt
    from prism_plugin.rollout import HFRolloutEngine, Sampling

    policy, processor, vision = vl_policy
    records = load_align(tiny_dir / "data" / "align.jsonl").records[:3]
    prompts = [policy_prompt(processor, vision, r.prompt, r.images) for r in records]
    calls = []
    generate = type(policy).generate
    monkeypatch.setattr(type(policy), "generate", lambda self, **kw: calls.append(kw["input_ids"].shape[0])
                        or generate(self, **kw))
    results = {}
    for chunk in (None, 2):
        engine = HFRolloutEngine(processor.tokenizer, chunk_size=chunk)
        engine.load_policy(policy)
        calls.clear()
        results[chunk] = engine.generate(prompts, 2, Sampling(48, temperature=0.0))
        results[f"calls {chunk}"] = list(calls)
    assert results["calls None"] == [6] and results["calls 2"] == [2, 2, 2]  # 3 prompts × 2 rollouts
    one, chunked = results[None], results[2]
    assert one.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(one.lengths, chunked.lengths)
    width = int(one.lengths.max())
    assert torch.equal(one.completions[:, :width] * one.mask[:, :width],
                       chunked.completions[:, :width] * chunked.mask[:, :width])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        HFRolloutEngine(processor.tokenizer, chunk_size=0)


def test_each_engine_has_one_generate_call_site():
    import re

    from tests.testing_utils import REPO

    sites = [f"{path.relative_to(REPO)}:{n}" for path in (REPO / "prism_plugin").rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"(?<!engine)\.generate\(", line)]
    engines = ["prism_plugin/rollout.py", "prism_plugin/vllm_rollout/engine.py"]  # HF generate, vLLM generate
    assert sorted(site.split(":")[0] for site in sites) == engines, sites  # engines call it, once; samplers never


@pytest.mark.transformers4
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
