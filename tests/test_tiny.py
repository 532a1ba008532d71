"""The tiny offline builder: determinism, tokenizer, models, processor, toy data, LLaMA-Factory SFT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import Qwen3VLModel

from prism_plugin.compat import rope_index_takes_token_types
from prism_plugin.rollout import VISION_SPECIAL_TOKENS
from prism_plugin.tiny import MODEL_DIRS, make_tiny
from prism_plugin.tiny.corpus import COLORS
from prism_plugin.tiny.images import GRID, IMAGE_SIZE, RGB
from prism_plugin.tiny.tokenizer import SPECIAL_TOKENS, TOKENIZER_CLASS

from .conftest import TINY_NUM_EXAMPLES, TINY_SEED

pytestmark = pytest.mark.transformers4

LAYOUT_RE = re.compile(r"^\s*<caption>.*?</caption>\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
LAYOUT_TAGS = ("<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>")
DATA_FILES = ("sft.json", "align.jsonl", "pairs.jsonl", "rlvr.jsonl", "eval.jsonl", "val.jsonl")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _deterministic_files(root: Path) -> list[Path]:
    """Every built file that must not depend on where it was built (relative paths)."""
    files = [Path("tokenizer/tokenizer.json"), Path("tokenizer/tokenizer_config.json")]
    for name in MODEL_DIRS:
        files += [Path(name) / f for f in ("model.safetensors", "config.json", "generation_config.json")]
        files += [Path(name) / "tokenizer.json"]
    files += [Path("data") / f for f in DATA_FILES]
    files += sorted(p.relative_to(root) for p in (root / "data" / "images").glob("*.png"))
    return files


def _vl_inputs(model_dir: Path, size: int = IMAGE_SIZE, question: str = "How many red shapes are there?"):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", (size, size), (220, 40, 40))
    return processor, processor(images=[image], text=[text], return_tensors="pt")


# --------------------------------------------------------------------------- build & determinism


def test_manifest_lists_everything(tiny_dir: Path, tiny_manifest: dict) -> None:
    assert tiny_manifest["seed"] == TINY_SEED and tiny_manifest["num_examples"] == TINY_NUM_EXAMPLES
    assert set(tiny_manifest["models"]) == set(MODEL_DIRS)
    for path in tiny_manifest["models"].values():
        assert (Path(path) / "model.safetensors").is_file()
        assert (Path(path) / "generation_config.json").is_file()
        assert (Path(path) / "chat_template.jinja").is_file()
    for key in ("sft", "align", "pairs", "rlvr", "dataset_info"):
        assert Path(tiny_manifest["data"][key]).is_file()
    assert {"torch", "transformers", "tokenizers", "prism_plugin"} <= set(tiny_manifest["versions"])
    policy = Path(tiny_manifest["models"]["qwen3_vl_policy"])
    # the processor's settings: one file (transformers 5.x) or one per sub-processor (4.57)
    assert (policy / "processor_config.json").is_file() or (policy / "preprocessor_config.json").is_file()


def test_same_seed_is_byte_identical_other_seed_differs(tiny_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_tiny(again, seed=TINY_SEED, num_examples=TINY_NUM_EXAMPLES)
    files = _deterministic_files(tiny_dir)
    assert len(files) > 20
    for rel in files:
        assert (tiny_dir / rel).read_bytes() == (again / rel).read_bytes(), rel

    other = tmp_path / "other"
    make_tiny(other, seed=TINY_SEED + 1, num_examples=TINY_NUM_EXAMPLES)
    for name in MODEL_DIRS:
        rel = Path(name) / "model.safetensors"
        assert (tiny_dir / rel).read_bytes() != (other / rel).read_bytes(), rel
    for name in DATA_FILES:
        assert (tiny_dir / "data" / name).read_bytes() != (other / "data" / name).read_bytes(), name
    # The tokenizer does not depend on the seed (same embedded corpus).
    assert (tiny_dir / "tokenizer/tokenizer.json").read_bytes() == (other / "tokenizer/tokenizer.json").read_bytes()


def test_tokenizer_is_identical_across_processes(tiny_dir: Path, tmp_path: Path) -> None:
    """Rust hash maps are seeded per process: training must still give the same vocab and merges."""
    code = (
        "import sys; from prism_plugin.tiny.tokenizer import build_tokenizer; "
        "build_tokenizer().save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=os.environ | {"PYTHONHASHSEED": "123"})
    assert (tmp_path / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer/tokenizer.json").read_bytes()


def test_policy_and_dense_weights_differ(tiny_dir: Path) -> None:
    for arch in ("qwen3_vl", "qwen3"):
        policy = (tiny_dir / f"{arch}_policy/model.safetensors").read_bytes()
        dense = (tiny_dir / f"{arch}_dense/model.safetensors").read_bytes()
        assert policy != dense


def test_cli_make_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prism_plugin.cli import main

    assert main(["make-tiny", str(tmp_path / "cli"), "--seed", "3", "--num-examples", "2"]) == 0
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["num_examples"] == 2
    assert len(_read_jsonl(tmp_path / "cli/data/rlvr.jsonl")) == 2
    assert "manifest" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([]) == 2


# --------------------------------------------------------------------------- tokenizer

ROUND_TRIP = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n",
    "<caption> red 3 green 0 blue 2 yellow 1 </caption>\n<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>",
    "图中有三个红色的方块。答案是五。",
    "日本語と한국어 mixed with English",
    "emoji 🙂👍🏽🎉 and a family 👨‍👩‍👧‍👦 and flags 🇫🇷",
    "combining e\u0301 vs é, ligature ﬁ, nbsp\u00a0, zero width\u200b, NUL\x00, bell\x07",
    "<|im_start|>user\nhi<|im_end|>\n",
    "\U0010ffff\U0001f9ea𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=64))
def test_round_trip_any_string(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_vocab_size_and_byte_alphabet(tokenizer) -> None:
    assert 1000 <= len(tokenizer) <= 2000
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = tokenizer.get_vocab()
    assert all(ch in vocab for ch in ByteLevel.alphabet())
    assert type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel"
    assert tokenizer.backend_tokenizer.normalizer is None  # no NFC: exact round trips


def test_layout_tags_are_bpe_text_not_added_tokens(tokenizer) -> None:
    added = tokenizer.get_added_vocab()
    first_special = min(added.values())
    for tag in LAYOUT_TAGS:
        assert tag not in added
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1 and all(i < first_special for i in ids), (tag, ids)
    # `>` may merge with the newline that follows it (the merged token belongs to the caption).
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("</caption>\n<think>", add_special_tokens=False)["input_ids"])
    assert ">Ċ" in tokens


def test_special_tokens_eos_pad(tokenizer, tiny_manifest: dict) -> None:
    added = tokenizer.get_added_vocab()
    for tok in SPECIAL_TOKENS:
        assert tok in added
        assert tokenizer(tok, add_special_tokens=False)["input_ids"] == [added[tok]]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == added["<|im_end|>"] == tiny_manifest["tokenizer"]["eos_token_id"]
    assert tokenizer.pad_token_id == added["<|endoftext|>"] == tiny_manifest["tokenizer"]["pad_token_id"]
    assert tokenizer.bos_token is None
    # Specials are skipped on decode, layout text is not.
    ids = tokenizer("<|im_start|>assistant\n<answer> 5 </answer><|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<answer> 5 </answer>"


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "<answer> 3 </answer>"},
        {"role": "user", "content": "and now?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nsys<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
        "<|im_start|>assistant\n<answer> 3 </answer><|im_end|>\n"
        "<|im_start|>user\nand now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=False)
    assert no_prompt.endswith("How many?<|im_end|>\n")


# --------------------------------------------------------------------------- models & processor


@pytest.mark.parametrize("name", ["qwen3_policy", "qwen3_dense"])
def test_text_models_load_and_forward(tiny_dir: Path, name: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir / name
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen3" and config.hidden_size == 64 and config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert config.vocab_size == len(tok)
    batch = tok(["hello world", "<caption> red 3 </caption>"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(prompt_ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt_ids.shape[1]


@pytest.mark.parametrize("name", ["tokenizer", *MODEL_DIRS])
def test_auto_tokenizer_and_auto_processor_load_every_dir(tiny_dir: Path, name: str) -> None:
    from transformers import AutoProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir / name)
    vision = name.startswith("qwen3_vl")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert ("processor_class" in tok.init_kwargs) == vision
    # the generic fast class: transformers 4.57 and 5.x both load tokenizer.json verbatim with it
    assert json.loads((tiny_dir / name / "tokenizer_config.json").read_text())["tokenizer_class"] == TOKENIZER_CLASS
    if name != "tokenizer":  # a model folder (transformers 4.57's AutoProcessor needs its config.json)
        processor = AutoProcessor.from_pretrained(tiny_dir / name)
        assert type(processor).__name__ == ("Qwen3VLProcessor" if vision else type(tok).__name__)


@pytest.mark.parametrize("name", ["qwen3_vl_policy", "qwen3_vl_dense"])
def test_vl_models_load_and_forward(tiny_dir: Path, name: str) -> None:
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = tiny_dir / name
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen3_vl"
    assert config.text_config.hidden_size == 64 and config.text_config.num_hidden_layers == 2
    vision = config.vision_config
    assert (vision.hidden_size, vision.depth, vision.patch_size, vision.spatial_merge_size) == (32, 2, 14, 2)
    assert vision.out_hidden_size == config.text_config.hidden_size
    assert all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes)
    assert len(vision.deepstack_visual_indexes) <= config.text_config.num_hidden_layers
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    processor, inputs = _vl_inputs(path)
    assert config.text_config.vocab_size == len(processor.tokenizer)
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("size", "visual_tokens"), [(56, 4), (112, 16)])
def test_processor_gives_a_handful_of_visual_tokens(tiny_dir: Path, size: int, visual_tokens: int) -> None:
    processor, inputs = _vl_inputs(tiny_dir / "qwen3_vl_policy", size=size)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_id).sum()) == visual_tokens
    assert inputs["image_grid_thw"].prod().item() == 4 * visual_tokens
    # Qwen3-VL's M-RoPE needs the token types where its rope index takes them (transformers 5.x)
    assert ("mm_token_type_ids" in inputs) == rope_index_takes_token_types(Qwen3VLModel)


@pytest.mark.parametrize("do_sample", [False, True])
def test_vl_policy_generates_from_image_prompt(tiny_dir: Path, do_sample: bool) -> None:
    from transformers import AutoModelForImageTextToText

    path = tiny_dir / "qwen3_vl_policy"
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor, inputs = _vl_inputs(path)
    vision_ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    assert sorted(model.generation_config.suppress_tokens) == sorted(vision_ids)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=24,
            min_new_tokens=24,
            do_sample=do_sample,
            suppress_tokens=vision_ids,  # explicit too: callers building their own GenerationConfig must do this
        )
    new = out[0, inputs["input_ids"].shape[1] :]
    assert len(new) == 24
    assert not set(new.tolist()) & set(vision_ids)
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)


# --------------------------------------------------------------------------- data


def _centre_counts(image_path: Path) -> dict[str, int]:
    """Count shapes per colour by reading each grid cell's centre pixel."""
    image = Image.open(image_path).convert("RGB")
    cell = IMAGE_SIZE // GRID
    counts = dict.fromkeys(COLORS, 0)
    lookup = {rgb: color for color, rgb in RGB.items()}
    for row in range(GRID):
        for col in range(GRID):
            pixel = image.getpixel((col * cell + cell // 2, row * cell + cell // 2))
            if pixel in lookup:
                counts[lookup[pixel]] += 1
    return counts


def test_dataset_files_parse_and_follow_the_layout(tiny_dir: Path) -> None:
    data = tiny_dir / "data"
    sft = json.loads((data / "sft.json").read_text(encoding="utf-8"))
    align = _read_jsonl(data / "align.jsonl")
    pairs = _read_jsonl(data / "pairs.jsonl")
    rlvr = _read_jsonl(data / "rlvr.jsonl")
    assert len(sft) == len(align) == len(pairs) == len(rlvr) == TINY_NUM_EXAMPLES

    for s, a, p, r in zip(sft, align, pairs, rlvr, strict=True):
        roles = [m["role"] for m in s["messages"]]
        assert roles == ["system", "user", "assistant"]
        user, response = s["messages"][1]["content"], s["messages"][2]["content"]
        assert user.count("<image>") == len(s["images"]) == 1 and user.startswith("<image>")
        assert LAYOUT_RE.match(response), response
        assert a["prompt"] == p["prompt"] == r["prompt"] == user
        assert a["images"] == r["images"] == s["images"] == [p["image"]]
        assert f"{a['teacher_caption']}\n{a['teacher_cot']}" == response
        assert a["teacher_caption"].startswith("<caption>") and a["teacher_caption"].endswith("</caption>")
        assert a["teacher_cot"].startswith("<think>") and a["teacher_cot"].endswith("</answer>")
        assert a["ground_truth"] == r["answer"]
        assert re.search(r"<answer> (\d+) </answer>", response).group(1) == r["answer"]
        assert (p["teacher_caption"], p["teacher_cot"]) == (a["teacher_caption"], a["teacher_cot"])
        assert LAYOUT_RE.match(f"{p['student_caption']}\n{p['student_cot']}")
        assert p["student_caption"] != p["teacher_caption"]
        student_answer = re.search(r"<answer> (\d+) </answer>", p["student_cot"]).group(1)
        assert student_answer != r["answer"]  # plausible but wrong

        image_path = data / s["images"][0]  # paths are relative to data/
        assert not Path(s["images"][0]).is_absolute() and image_path.is_file()
        assert Image.open(image_path).size == (IMAGE_SIZE, IMAGE_SIZE)
        counts = _centre_counts(image_path)
        assert a["teacher_caption"] == "<caption> " + " ".join(f"{c} {counts[c]}" for c in COLORS) + " </caption>"


def test_validation_split_is_its_own(tiny_dir: Path) -> None:
    """val.jsonl (for choosing settings) shares no image with eval.jsonl (the demo's evaluation) or training."""
    from prism_plugin.tiny.data import DEFAULT_NUM_EVAL, DEFAULT_NUM_VAL

    data = tiny_dir / "data"
    val, held_out, align = (_read_jsonl(data / f) for f in ("val.jsonl", "eval.jsonl", "align.jsonl"))
    assert (len(val), len(held_out)) == (DEFAULT_NUM_VAL, DEFAULT_NUM_EVAL)
    assert list(val[0]) == list(held_out[0]) == ["prompt", "images", "teacher_caption", "teacher_cot", "ground_truth"]
    images = [{row["images"][0] for row in rows} for rows in (val, held_out, align)]
    assert all(image.startswith("images/val_") for image in images[0])
    assert not images[0] & images[1] and not images[0] & images[2]
    for row in val:
        counts = _centre_counts(data / row["images"][0])
        assert row["teacher_caption"] == "<caption> " + " ".join(f"{c} {counts[c]}" for c in COLORS) + " </caption>"


@pytest.mark.llamafactory
def test_dataset_info_is_valid_for_llamafactory(tiny_dir: Path) -> None:
    from llamafactory.data.parser import get_dataset_list

    info = json.loads((tiny_dir / "data" / "dataset_info.json").read_text())
    assert Path(info["prism_tiny_sft"]["file_name"]).is_absolute()
    (attr,) = get_dataset_list(["prism_tiny_sft"], str(tiny_dir / "data"))
    assert attr.load_from == "file" and attr.formatting == "sharegpt"
    assert (attr.messages, attr.images) == ("messages", "images")
    assert (attr.role_tag, attr.content_tag, attr.user_tag, attr.assistant_tag, attr.system_tag) == (
        "role",
        "content",
        "user",
        "assistant",
        "system",
    )
    assert Path(attr.dataset_name) == tiny_dir / "data" / "sft.json"
    kinds = {name: entry.get("prism_kind") for name, entry in info.items()}
    assert kinds == {"prism_tiny_sft": None, "prism_tiny_pairs": "pairs", "prism_tiny_align": "align",
                     "prism_tiny_rlvr": "rlvr", "prism_tiny_policy_pairs": "pairs"}
    get_dataset_list(["prism_tiny_pairs", "prism_tiny_align"], str(tiny_dir / "data"))  # the kind key is ignored


@pytest.mark.llamafactory
def test_llamafactory_sft_on_tiny_vl_policy(tiny_sft_run) -> None:
    """Stage 1 as a real ``llamafactory-cli train`` (template prism_qwen3_vl) on CPU: it learns the toy set."""
    out, log = tiny_sft_run
    assert "<|image_pad|>" in log  # the example dump shows the expanded image placeholder
    assert "First describe the image inside <caption>" in log  # the PRISM template's system prompt
    checkpoint = out / "checkpoint-80"
    assert (checkpoint / "model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 160
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert all(loss == loss and loss > 0 for loss in losses)
    assert losses[-1] < losses[0] / 5
