"""``completion_log_probs``: the chunked output layer gives the full computation's log-probabilities and
gradients, while what autograd keeps for backward no longer grows with the vocabulary × length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from prism_plugin.chat import chat_prompt_text
from prism_plugin.compat import TOKEN_TYPES_KWARG, rope_index_takes_token_types, token_types
from prism_plugin.logprobs import completion_log_probs
from prism_plugin.policy import load_policy

pytestmark = pytest.mark.llamafactory  # the policy loss of prism_align, which runs in LLaMA-Factory's transformers 5


def _inputs(tiny_dir: Path, vision: bool, rows: int = 3, completion: int = 24):
    model, processor, is_vl = load_policy(tiny_dir / ("qwen3_vl_policy" if vision else "qwen3_policy"), device="cpu")
    assert is_vl == vision
    torch.manual_seed(0)
    tokenizer = getattr(processor, "tokenizer", processor)
    prompt = ("<image>" if vision else "") + "How many red shapes are there?"
    text = chat_prompt_text(tokenizer, prompt, 1 if vision else 0, True)
    if vision:
        image = Image.open(next((tiny_dir / "data" / "images").glob("*.png")))
        enc = processor(text=[text], images=[image], return_tensors="pt")
        mm = {key: enc[key].repeat(rows, 1) for key in ("pixel_values", "image_grid_thw")}
    else:
        enc = tokenizer([text], return_tensors="pt")
        mm = {}
    prompt_ids = enc["input_ids"].expand(rows, -1)
    completions = torch.randint(10, model.config.get_text_config().vocab_size, (rows, completion))
    ids = torch.cat([prompt_ids, completions], dim=1)
    if vision and rope_index_takes_token_types(model):
        mm[TOKEN_TYPES_KWARG] = token_types(ids, model.config).long()
    mask = torch.ones_like(ids)
    mask[-1, -5:] = 0  # a shorter row, right-padded
    starts = torch.full((rows,), prompt_ids.shape[1])
    return model, ids, mask, completion, mm, starts


@pytest.mark.parametrize("vision", [True, False], ids=["qwen3_vl", "qwen3"])
def test_chunked_log_probs_and_gradients_equal_the_full_logits(tiny_dir: Path, vision: bool) -> None:
    model, ids, mask, T, mm, starts = _inputs(tiny_dir, vision)
    head = model.get_output_embeddings()
    results = {}
    for chunk in (None, 1, 5, 23, 24, 512):
        model.zero_grad(set_to_none=True)
        lp = completion_log_probs(model, head, ids, mask, starts, T, 0.7, chunk, **mm)
        (lp * mask[:, -T:]).sum().backward()
        results[chunk] = (lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    want, want_grads = results[None]
    assert want.shape == (ids.shape[0], T) and bool((want <= 0).all())
    by_hand = torch.log_softmax(model(input_ids=ids, attention_mask=mask, **mm).logits[:, -T - 1:-1].float() / 0.7,
                                dim=-1).gather(-1, ids[:, -T:, None]).squeeze(-1)
    assert torch.allclose(want, by_hand.detach(), atol=1e-5)
    for chunk in (1, 5, 23, 24, 512):
        got, grads = results[chunk]
        assert torch.allclose(got, want, atol=1e-5), chunk
        assert grads.keys() == want_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, want_grads[name], atol=1e-5, rtol=1e-4), (chunk, name)


def _saved_vocab_sized_bytes(model: torch.nn.Module, fn, vocab: int) -> int:
    """Bytes of the logits-shaped activations (last dimension ``vocab``; the weights are not counted) autograd
    keeps for backward while ``fn`` runs, each storage counted once."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage().data_ptr()
        if tensor.dim() and tensor.shape[-1] == vocab and storage not in weights:
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


def test_chunking_keeps_no_full_logits_for_backward(tiny_dir: Path) -> None:
    model, ids, mask, T, mm, starts = _inputs(tiny_dir, vision=False, rows=4, completion=96)
    head = model.get_output_embeddings()
    rows, vocab = ids.shape[0], head.weight.shape[0]
    def log_probs(chunk):
        return lambda: completion_log_probs(model, head, ids, mask, starts, T, 0.7, chunk)

    full, chunked = (_saved_vocab_sized_bytes(model, log_probs(chunk), vocab) for chunk in (None, 8))
    assert full >= rows * T * vocab * 4  # the full path keeps (rows, T, vocab) fp32 logits for backward
    assert chunked == 0  # the chunked one keeps none: each chunk's logits are recomputed in backward


def test_a_model_whose_logits_are_not_its_head_is_refused(tiny_dir: Path) -> None:
    model, ids, mask, T, mm, starts = _inputs(tiny_dir, vision=False)
    scaled = torch.nn.Linear(*reversed(model.get_output_embeddings().weight.shape), bias=False)
    with torch.no_grad():
        scaled.weight.copy_(model.get_output_embeddings().weight * 3.0)  # a head the logits do not come from
    with pytest.raises(RuntimeError, match="prism_logprob_chunk_size: null"):
        completion_log_probs(model, scaled, ids, mask, starts, T, 1.0, 8)


def _group(model, processor, vision: bool, prompt: str, images: list, rows: int, completion: int, seed: int):
    from prism_plugin.llamafactory.align.trainer import RolloutGroup

    tokenizer = getattr(processor, "tokenizer", processor)
    text = chat_prompt_text(tokenizer, prompt, len(images), True)
    if images:
        enc = processor(text=[text], images=images, return_tensors="pt")
        mm = {key: enc[key].repeat(rows, 1) for key in ("pixel_values", "image_grid_thw")}
    else:
        enc, mm = (processor if vision else tokenizer)(text=[text], return_tensors="pt"), {}
    generator = torch.Generator().manual_seed(seed)
    completions = torch.randint(10, model.config.get_text_config().vocab_size, (rows, completion), generator=generator)
    mask = torch.ones_like(completions)
    mask[0, -3:] = 0
    return RolloutGroup(enc["input_ids"][0], completions, mask, mm, torch.zeros(rows))


@pytest.mark.parametrize("vision", [True, False], ids=["qwen3_vl", "qwen3"])
def test_packed_groups_give_each_group_its_own_log_probs(tiny_dir: Path, vision: bool) -> None:
    """Groups with prompts of different lengths (an image prompt beside a text-only one) in one right-padded
    forward: each row's log-probabilities and the gradients equal its group's own forward."""
    from prism_plugin.llamafactory.align.trainer import pack_groups

    model, processor, _ = load_policy(tiny_dir / ("qwen3_vl_policy" if vision else "qwen3_policy"), device="cpu")
    head = model.get_output_embeddings()
    image = Image.open(next((tiny_dir / "data" / "images").glob("*.png")))
    groups = [_group(model, processor, vision, "<image>How many red shapes?" if vision else "How many red shapes?",
                     [image] if vision else [], 3, 20, 0),
              _group(model, processor, vision, "Count every blue and green shape in the picture, please.", [], 2, 9, 1)]
    assert groups[0].prompt_ids.shape[0] != groups[1].prompt_ids.shape[0]

    def run(parts):
        model.zero_grad(set_to_none=True)
        packed = pack_groups(parts, 0, model)
        lp = completion_log_probs(model, head, packed.input_ids, packed.attention_mask, packed.completion_starts,
                                  packed.width, 0.7, 4, **packed.model_inputs)
        sizes = [g.completions.shape[0] for g in parts]
        out = [p[:, : g.completions.shape[1]] for p, g in zip(lp.split(sizes), parts, strict=True)]
        sum((o * g.completion_mask).sum() for o, g in zip(out, parts, strict=True)).backward()
        return [o.detach() for o in out], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    together, grads = run(groups)
    alone, alone_grads = [], {}
    for g in groups:
        (lp,), gr = run([g])
        alone.append(lp)
        for name, grad in gr.items():
            alone_grads[name] = alone_grads.get(name, 0) + grad
    for got, want, g in zip(together, alone, groups, strict=True):
        m = g.completion_mask.bool()
        assert torch.allclose(got[m], want[m], atol=1e-5)
    assert grads.keys() == alone_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, alone_grads[name], atol=1e-5, rtol=1e-4), name
