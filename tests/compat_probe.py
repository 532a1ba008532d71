"""What a model folder gives on the installed transformers line, as JSON: run here and, as
``python -m tests.compat_probe COMMAND …``, in the other line's environment (tests/test_transformers_compat.py).

Commands:
  folders TINY             token ids, special tokens, chat template, processor output, RoPE frequencies
                           and logits of every folder of a ``make_tiny`` build
  policy DIR IMAGE         a policy folder (``prism_plugin.policy.load_policy``): prompt ids and logits
  discriminators TINY DIR… ``score_texts`` of the tiny pair rows by each discriminator folder
  upcycle TINY OUT         upcycle the tiny dense models (VL dedicated, text shared) into OUT/…
  retrain SRC DST          load the discriminator in SRC, change every weight (a stand-in for training), save to DST
  make-tiny OUT            ``make_tiny(OUT)``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

TEXTS = [
    "hello world",
    "<caption> red 3 green 0 </caption>\n<think> 3 + 0 = 3 </think>\n<answer> 3 </answer>",
    "combining e\u0301 vs é, ligature ﬁ, 图中有三个 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
]
QUESTION = "How many red shapes are there?"
UPCYCLED = {"vl-dedicated": ("qwen3_vl_dense", "dedicated"), "text-shared": ("qwen3_dense", "shared")}


def _versions() -> dict[str, str]:
    import transformers

    return {"transformers": transformers.__version__}


def _tokenizer_facts(tok: Any) -> dict[str, Any]:
    return {
        "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
        "special": [tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, tok.unk_token_id, len(tok)],
        "chat": tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        tokenize=False),
    }


def _image() -> Any:
    from PIL import Image

    image = Image.new("RGB", (112, 112), (220, 40, 40))
    image.paste((40, 40, 220), (0, 0, 56, 56))
    return image


def _vl_inputs(processor: Any) -> Any:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[_image()], return_tensors="pt")


def _inv_freq(model: Any) -> list[float]:
    rotary = next(m for name, m in model.named_modules() if name.endswith("rotary_emb"))
    return rotary.inv_freq.tolist()


def folders(tiny: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    out: dict[str, Any] = {"tokenizer": _tokenizer_facts(AutoTokenizer.from_pretrained(tiny / "tokenizer"))}
    for name in ("qwen3_policy", "qwen3_vl_policy"):
        path = tiny / name
        facts = {"tokenizer": _tokenizer_facts(AutoTokenizer.from_pretrained(path))}
        with torch.no_grad():
            if name == "qwen3_vl_policy":
                processor = AutoProcessor.from_pretrained(path)
                inputs = _vl_inputs(processor)
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
                facts["processor_ids"] = inputs["input_ids"][0].tolist()
                facts["image_grid_thw"] = inputs["image_grid_thw"].tolist()
                facts["processor_tokenizer"] = _tokenizer_facts(processor.tokenizer)
                facts["mrope_section"] = list(model.config.text_config.rope_scaling["mrope_section"])
            else:
                tok = AutoTokenizer.from_pretrained(path)
                inputs = tok(TEXTS[1], return_tensors="pt")
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            facts["inv_freq"] = _inv_freq(model)
            facts["logits"] = model(**inputs).logits[0, -3:].tolist()
        out[name] = facts
    return out


def policy(directory: Path, image: Path) -> dict[str, Any]:
    """A trained policy folder as EasyR1 would take it: model + processor, one image prompt's ids and logits."""
    from PIL import Image

    from prism_plugin.policy import load_policy

    model, processor, vision = load_policy(directory, device="cpu")
    tokenizer = getattr(processor, "tokenizer", processor)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(image)], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -4:]
    return {"vision": vision, "ids": inputs["input_ids"][0].tolist(), "tokenizer": _tokenizer_facts(tokenizer),
            "eos": model.generation_config.eos_token_id, "logits": logits.tolist(),
            "inv_freq": _inv_freq(model)}


def discriminators(tiny: Path, directories: list[Path]) -> dict[str, Any]:
    from prism_plugin.discriminator.loading import load_discriminator

    rows = [json.loads(line) for line in (tiny / "data" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()][:3]
    prompts = [r["prompt"] for r in rows]
    responses = [r["teacher_caption"] + "\n" + r["teacher_cot"] for r in rows]
    responses[-1] = rows[-1]["student_caption"] + "\n" + rows[-1]["student_cot"]
    images = [tiny / "data" / r["image"] for r in rows]
    out = {}
    for directory in directories:
        model = load_discriminator(directory).eval()
        scores = model.score_texts(prompts, responses, images if model.config.is_vision else None)
        out[str(directory)] = {name: scores[name].tolist() for name in model.config.segments}
    return out


def upcycle(tiny: Path, root: Path) -> list[str]:
    from prism_plugin.discriminator import upcycle as build

    made = []
    for name, (dense, mode) in UPCYCLED.items():
        made.append(str(build(tiny / dense, root / name, num_experts=4, top_k=2, expert_mode=mode, seed=3)))
    return made


def retrain(src: Path, dst: Path) -> str:
    """Load, change every weight deterministically, save: a discriminator that has been through a load/save
    cycle with new values (what training does to it)."""
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.upcycle import copy_processor_files

    model = load_discriminator(src)
    with torch.no_grad():
        for index, (_, param) in enumerate(sorted(model.named_parameters())):
            param.add_(0.001 * (index % 7 + 1))
    model.save_pretrained(dst)
    copy_processor_files(src, dst)
    return str(dst)


def make_tiny(out: Path) -> str:
    from prism_plugin.tiny import make_tiny as build

    build(out, seed=0, num_examples=4)
    return str(out)


def main(argv: list[str]) -> None:
    command, args = argv[0], [Path(a) for a in argv[1:]]
    if command == "folders":
        result: Any = folders(args[0])
    elif command == "policy":
        result = policy(args[0], args[1])
    elif command == "discriminators":
        result = discriminators(args[0], args[1:])
    elif command == "upcycle":
        result = upcycle(args[0], args[1])
    elif command == "retrain":
        result = retrain(args[0], args[1])
    elif command == "make-tiny":
        result = make_tiny(args[0])
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps({"versions": _versions(), "result": result}))


if __name__ == "__main__":
    main(sys.argv[1:])
