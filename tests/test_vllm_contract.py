"""The vLLM rollout engine's own code, without vLLM: the prompt contract (one placeholder per image + the images
↔ the policy's expanded ids) on the tiny Qwen3-VL policy's real processor and LLaMA-Factory's plugin, the
weights under vLLM's (checkpoint) names in whole blocks, LoRA merged and unmerged, the version gate and the
configuration keys. ``tests/test_vllm_engine.py`` runs the engine itself on a real vLLM."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from prism_plugin.errors import UserError
from prism_plugin.rollout import PolicyPrompt, Sampling
from prism_plugin.vllm_rollout import weights
from prism_plugin.vllm_rollout.engine import request_rows, sampling_kwargs
from prism_plugin.vllm_rollout.prompts import (
    IMAGE_PAD,
    PromptConverter,
    PromptMismatchError,
    collapse_image_pads,
    llamafactory_images,
    load_images_plain,
    processor_pixels,
)
from prism_plugin.vllm_rollout.versions import check_version


@pytest.fixture(scope="module")
def vl(tiny_dir):
    from prism_plugin.policy import load_policy

    return load_policy(tiny_dir / "qwen3_vl_policy", device="cpu")


def image_rows(tiny_dir, count=2):
    rows = [json.loads(line) for line in (tiny_dir / "data" / "align.jsonl").read_text().splitlines()]
    return [(row["prompt"], [str(tiny_dir / "data" / image) for image in row["images"]]) for row in rows[:count]]


# ---------------------------------------------------------------------- prompts


def test_prompt_with_images_goes_to_vllm_with_one_placeholder_per_image(vl, tiny_dir):
    from prism_plugin.policy import policy_prompt

    _, processor, _ = vl
    (text, images), (_, more) = image_rows(tiny_dir)
    prompt = policy_prompt(processor, True, "<image><image>" + text.replace("<image>", ""), images + more)
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert prompt.input_ids.count(pad) > 2  # the policy's ids: expanded
    request = PromptConverter(processor)(prompt)
    ids = request["prompt_token_ids"]
    assert ids.count(pad) == 2 and ids == collapse_image_pads(prompt.input_ids, pad)
    start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert [ids[i + 1] for i, token in enumerate(ids) if token == start] == [pad, pad]
    assert [image.size for image in request["multi_modal_data"]["image"]] == [image.size for image in
                                                                                load_images_plain(images + more)]


def test_text_prompt_is_its_ids(vl):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vl[1].tokenizer.name_or_path)
    prompt = PolicyPrompt([5, 6, 7])
    assert PromptConverter(tokenizer)(prompt) == {"prompt_token_ids": [5, 6, 7]}


def test_a_prompt_whose_image_tokens_do_not_match_its_images_is_refused(vl, tiny_dir):
    from prism_plugin.policy import policy_prompt

    _, processor, _ = vl
    text, images = image_rows(tiny_dir, 1)[0]
    prompt = policy_prompt(processor, True, text, images)
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    short = PolicyPrompt(prompt.input_ids[: prompt.input_ids.index(pad)] + prompt.input_ids[
        prompt.input_ids.index(pad) + 1 :], prompt.mm_inputs, prompt.images)
    with pytest.raises(PromptMismatchError, match="do not match its image grids"):
        PromptConverter(processor)(short)
    two = PolicyPrompt(prompt.input_ids, prompt.mm_inputs, prompt.images * 2)
    with pytest.raises(PromptMismatchError, match="2 image"):
        PromptConverter(processor)(two)


@pytest.mark.llamafactory
def test_llamafactory_prompts_send_the_images_its_plugin_resized(tiny_dir):
    """In training the policy's prompt comes from LLaMA-Factory's template and plugin, which resize images to
    ``image_max_pixels`` before the processor sees them; vLLM gets those resized images, and they give the
    policy's grids. The original images would not (the check catches it), nor the processor-expanded ids."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    from prism_plugin.data.records import load_align
    from prism_plugin.llamafactory.align.data import AlignEncoder

    policy = tiny_dir / "qwen3_vl_policy"
    loaded = load_tokenizer(ModelArguments(model_name_or_path=str(policy), image_max_pixels=64 * 64))
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="prism_qwen3_vl"))
    record = load_align(tiny_dir / "data" / "align.jsonl").records[0]
    prompt = AlignEncoder(template, tokenizer, processor, None, 4096, 16).policy_prompt(record)

    converter = PromptConverter(processor, llamafactory_images(template.mm_plugin, processor))
    request = converter(prompt)
    assert request["multi_modal_data"]["image"][0].size[0] * request["multi_modal_data"]["image"][0].size[1] <= 64 * 64
    pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert request["prompt_token_ids"].count(pad) == 1
    with pytest.raises(PromptMismatchError, match="resize to grids"):
        PromptConverter(processor)(prompt)  # the images as stored (112 × 112): other grids
    assert processor_pixels(processor) == {"min_pixels": processor.image_processor.size["shortest_edge"],
                                           "max_pixels": processor.image_processor.size["longest_edge"]}


# ---------------------------------------------------------------------- weights


def saved_keys(directory) -> set[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        return set(handle.keys())


def pushed(model, changing_only=False, bucket_bytes=1 << 30):
    """What push_weights hands vLLM: (bucket index, name, tensor copy)."""
    out: list[tuple[int, str, torch.Tensor]] = []

    def load(bucket):
        index = len({i for i, _, _ in out})
        out.extend((index, name, tensor.detach().clone()) for name, tensor in bucket)

    count = weights.push_weights(model, load, changing_only=changing_only, bucket_bytes=bucket_bytes)
    assert count == len(out)
    return out


@pytest.mark.parametrize("name", ["qwen3_policy", "qwen3_vl_policy"])
def test_weights_travel_under_the_checkpoint_names(tiny_dir, name):
    """vLLM's load_weights takes checkpoint names: the pushed names are exactly the saved checkpoint's keys."""
    from prism_plugin.policy import load_policy

    model = load_policy(tiny_dir / name, device="cpu")[0]
    names = [n for _, n, _ in pushed(model)]
    assert len(names) == len(set(names)) and set(names) == saved_keys(tiny_dir / name)


def test_buckets_hold_whole_blocks(vl):
    """vLLM fuses a layer's q/k/v (gate/up) and processes a fused layer once all parts came: a block never
    straddles two buckets, however small the bucket."""
    model = vl[0]
    buckets: dict[str, set[int]] = {}
    for index, name, _ in pushed(model, bucket_bytes=1):
        buckets.setdefault(weights.block_of(name), set()).add(index)
    assert all(len(indices) == 1 for indices in buckets.values())
    assert weights.block_of("model.language_model.layers.1.self_attn.q_proj.weight") == "model.language_model.layers.1"
    assert weights.block_of("lm_head.weight") == "lm_head"


def test_frozen_vision_tower_is_pushed_by_the_first_sync_only(vl):
    model = copy.deepcopy(vl[0])
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith("model.visual."))
    later = {n for _, n, _ in pushed(model, changing_only=True)}
    assert later and not any(n.startswith("model.visual.") for n in later)
    assert {n for _, n, _ in pushed(model)} - later == {n for n, _ in model.named_parameters()
                                                         if n.startswith("model.visual.")}


def test_lora_policy_pushes_merged_base_weights_and_is_unmerged_after(vl, tiny_dir):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(copy.deepcopy(vl[0]), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                             target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    sent = {name: tensor for _, name, tensor in pushed(policy)}
    assert set(sent) == saved_keys(tiny_dir / "qwen3_vl_policy")  # no lora_*, no base_model / base_layer names
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert all(torch.allclose(sent[name], merged[name], atol=1e-6) for name in sent)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(sent[q], vl[0].state_dict()[q])  # the adapter is in what was sent
    assert all(torch.allclose(p, before[n], atol=1e-6) for n, p in policy.named_parameters())  # unmerged
    later = {weights.block_of(n) for _, n, _ in pushed(policy, changing_only=True)}
    assert later == {"model.language_model.layers.0", "model.language_model.layers.1"}  # the adapted blocks


def test_checkpoint_names_undo_peft_and_load_time_renames():
    assert weights.checkpoint_name("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    assert weights.checkpoint_name("base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight") is None
    assert weights.checkpoint_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert weights.checkpoint_name("base_model.model.lm_head.original_module.weight") is None
    qwen25_vl = {"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}
    assert weights.checkpoint_name("model.visual.blocks.0.attn.qkv.weight", qwen25_vl) == \
        "visual.blocks.0.attn.qkv.weight"
    assert weights.checkpoint_name("model.language_model.layers.0.mlp.up_proj.weight", qwen25_vl) == \
        "model.layers.0.mlp.up_proj.weight"


# ---------------------------------------------------------------------- sampling requests


def test_copies_of_a_prompt_are_one_request_and_greedy_asks_one_sample_per_request():
    a, b = PolicyPrompt([1]), PolicyPrompt([2])
    assert request_rows([a, a, b], 2, greedy=False) == [[0, 0, 1, 1], [2, 2]]
    assert request_rows([a, b, a], 1, greedy=False) == [[0], [1], [2]]  # not consecutive: separate
    assert request_rows([a, b], 2, greedy=True) == [[0], [0], [1], [1]]


def test_sampling_keywords_match_the_hf_engine():
    kwargs = sampling_kwargs(Sampling(64, temperature=0.7, top_p=0.9, top_k=5), 4, 7, [11, 12], log_probs=True)
    assert kwargs == {"n": 4, "max_tokens": 64, "stop_token_ids": [7], "ignore_eos": True, "detokenize": False,
                      "skip_special_tokens": False, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
                      "logit_bias": {11: -100.0, 12: -100.0}, "logprobs": 0}
    greedy = sampling_kwargs(Sampling(8, temperature=0.0), 1, 7, [], log_probs=False)
    assert greedy["temperature"] == 0.0 and "top_k" not in greedy and "logit_bias" not in greedy


# ---------------------------------------------------------------------- versions and keys


@pytest.mark.parametrize("version", ["0.19.1", "0.24.0", "0.28.0", "0.28.1.dev5+gabc", "0.28.0+cpu"])
def test_supported_versions(version):
    check_version(version)


@pytest.mark.parametrize(("version", "message"), [
    (None, "needs vLLM 0.19.1 to 0.28.x, which is not installed"),
    ("0.19.0", "found 0.19.0"), ("0.29.0", "found 0.29.0"), ("1.0.0", "found 1.0.0")])
def test_unsupported_versions_are_one_line(version, message):
    with pytest.raises(UserError, match=message) as err:
        check_version(version)
    assert "\n" not in str(err.value) and "prism-plugin[vllm]" in str(err.value)


def test_keys_parse_without_vllm_and_a_run_selecting_it_stops_with_one_line(monkeypatch):
    from prism_plugin.arguments import PrismArguments
    from prism_plugin.errors import ConfigError
    from prism_plugin.llamafactory.rollout_engine import check_rollout_engine
    from prism_plugin.vllm_rollout import versions

    args = PrismArguments(prism_rollout_engine="vllm", prism_vllm_gpu_memory_utilization=0.4)
    monkeypatch.setattr(versions, "installed_version", lambda: None)
    with pytest.raises(UserError, match=r"^prism_rollout_engine: vllm needs vLLM 0\.19\.1 to 0\.28\.x"):
        check_rollout_engine(args)
    check_rollout_engine(PrismArguments())  # hf: nothing to check
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        PrismArguments(prism_rollout_engine="vlm")
    with pytest.raises(ConfigError, match="prism_vllm_gpu_memory_utilization"):
        PrismArguments(prism_vllm_gpu_memory_utilization=1.5)


def test_evaluate_with_vllm_missing_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    from prism_plugin.cli import main
    from prism_plugin.vllm_rollout import versions

    monkeypatch.setattr(versions, "installed_version", lambda: "0.30.0")
    argv = ["evaluate", "--model", str(tiny_dir / "qwen3_policy"), "--data", str(tiny_dir / "data" / "rlvr.jsonl"),
            "--out", str(tmp_path / "out"), "--engine", "vllm"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("prism-plugin evaluate: error: --engine vllm needs vLLM 0.19.1 to 0.28.x") and \
        "found 0.30.0" in err and "\n" not in err
