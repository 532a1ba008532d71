"""The rollout engine: one generate call site, prompt-major rollouts, chunking that changes memory, not results."""

from __future__ import annotations

import pytest
import torch


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


def test_the_package_has_one_generate_call_site():
    import re

    from tests.testing_utils import REPO

    sites = [f"{path.relative_to(REPO)}:{n}" for path in (REPO / "prism_plugin").rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"(?<!engine)\.generate\(", line)]
    assert len(sites) == 1 and sites[0].startswith("prism_plugin/rollout.py:"), sites  # engines call it, not samplers
