"""GPU check of the vLLM rollout engine: parity, rollout throughput, one alignment step. Needs a CUDA GPU, vLLM
(``pip install -e ".[llamafactory,vllm]"``) and no model hub; writes ``OUT/results.json``.

1. **Parity** on the tiny Qwen3-VL policy (``make-tiny``): greedy rollouts of prompts with images from the HF engine
   and from ``VLLMRolloutEngine`` (float32 on both sides); every vLLM token must be the policy's argmax up to
   ``--tie`` in log-probability (random weights leave near-ties, see ``tests/test_vllm_engine.py``), and the
   share of identical sequences is reported.
2. **Throughput** on a policy of realistic size built from a config (``--policy-config``, default the
   Qwen3-VL-4B config in ``tests/data/model_configs``; random bf16 weights, the tiny tokenizer and a processor
   with the config's patch sizes): rollout tokens per second of both engines, ``--prompts`` × ``--samples``
   completions of ``--new-tokens`` each (no end-of-turn stop: random weights rarely emit one, so both engines
   generate the full budget).
3. **One alignment step** of ``stage: prism_align`` with ``prism_rollout_engine: vllm`` on that policy, through
   ``llamafactory-cli train`` (verifiable reward on the tiny RLVR rows, 1 step), timed end to end.

    python benchmarks/gpu/run.py --out outputs/gpu [--policy-config DIR] [--new-tokens 512] [--skip-step]

Not run on the project's machines (no GPU with vLLM there): no numbers are claimed until someone runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def parity(tiny: Path, tie: float) -> dict:
    from prism_plugin.data.records import load_align
    from prism_plugin.policy import load_policy, policy_prompt
    from prism_plugin.rollout import HFRolloutEngine, Sampling, vision_suppress_ids
    from prism_plugin.vllm_rollout.engine import VLLMRolloutEngine, VLLMSettings
    from prism_plugin.vllm_rollout.prompts import processor_pixels

    policy_dir = tiny / "qwen3_vl_policy"
    model, processor, _ = load_policy(policy_dir, device="cuda")
    records = load_align(tiny / "data" / "align.jsonl").records[:8]
    prompts = [policy_prompt(processor, True, r.prompt, r.images) for r in records]
    sampling = Sampling(32, temperature=0.0)
    hf = HFRolloutEngine(processor.tokenizer)
    hf.load_policy(model)
    theirs = hf.generate(prompts, 1, sampling)
    engine = VLLMRolloutEngine(processor, VLLMSettings(model=str(policy_dir), dtype="float32", sleep_mode=False,
                                                       gpu_memory_utilization=0.2, return_log_probs=True,
                                                       mm_processor_kwargs=processor_pixels(processor)))
    ours = engine.generate(prompts, 1, sampling)
    blocked = vision_suppress_ids(processor.tokenizer)
    worst, identical = 0.0, 0
    for row, prompt in enumerate(prompts):
        tokens = ours.completions[row, : int(ours.lengths[row])].tolist()
        identical += tokens == theirs.completions[row, : int(theirs.lengths[row])].tolist()
        ids = torch.tensor([prompt.input_ids + tokens], device="cuda")
        mm = {k: v.to("cuda") for k, v in prompt.mm_inputs.items()}
        with torch.no_grad():
            logits = model(input_ids=ids, **mm).logits[0, len(prompt.input_ids) - 1 : -1].float()
        logits[:, blocked] = -float("inf")
        log_probs = torch.log_softmax(logits, -1)
        chosen = log_probs[torch.arange(len(tokens)), torch.tensor(tokens)]
        worst = max(worst, float((log_probs.max(-1).values - chosen).max()))
    engine.close()
    return {"prompts": len(prompts), "identical_sequences": identical, "worst_argmax_gap": worst,
            "passed": worst <= tie}


def realistic_policy(config_dir: Path, tiny: Path, out: Path) -> Path:
    """Random bf16 weights of ``config_dir``'s architecture, with the tiny tokenizer's special-token ids and a
    processor whose patch sizes are the config's."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if (out / "config.json").is_file():
        return out
    processor = AutoProcessor.from_pretrained(tiny / "qwen3_vl_policy")
    tokenizer = processor.tokenizer
    config = AutoConfig.from_pretrained(config_dir)
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(config, key, tokenizer.convert_tokens_to_ids(token))
    for cfg in (config, config.text_config):
        cfg.eos_token_id, cfg.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.device("cuda"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    vision = config.vision_config
    processor.image_processor.patch_size = vision.patch_size
    processor.image_processor.merge_size = vision.spatial_merge_size
    processor.image_processor.temporal_patch_size = vision.temporal_patch_size
    processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def throughput(policy_dir: Path, tiny: Path, prompts: int, samples: int, new_tokens: int) -> dict:
    from prism_plugin.data.records import load_align
    from prism_plugin.policy import load_policy, policy_prompt
    from prism_plugin.rollout import HFRolloutEngine, Sampling
    from prism_plugin.vllm_rollout.engine import VLLMRolloutEngine, VLLMSettings
    from prism_plugin.vllm_rollout.prompts import processor_pixels

    model, processor, _ = load_policy(policy_dir, device="cuda")
    model.to(torch.bfloat16)
    records = load_align(tiny / "data" / "align.jsonl").records[:prompts]
    rendered = [policy_prompt(processor, True, r.prompt, r.images) for r in records]
    sampling = Sampling(new_tokens, temperature=1.0)
    result = {}
    hf = HFRolloutEngine(processor.tokenizer)
    hf.load_policy(model)
    torch.cuda.synchronize()
    start = time.perf_counter()
    rollouts = hf.generate(rendered, samples, sampling)
    torch.cuda.synchronize()
    result["hf"] = {"seconds": time.perf_counter() - start, "tokens": int(rollouts.lengths.sum())}
    del model, hf
    torch.cuda.empty_cache()
    engine = VLLMRolloutEngine(processor, VLLMSettings(model=str(policy_dir), dtype="bfloat16", sleep_mode=False,
                                                       gpu_memory_utilization=0.8,
                                                       mm_processor_kwargs=processor_pixels(processor)))
    engine.generate(rendered[:1], 1, Sampling(8))  # warm-up (CUDA graphs are captured at start already)
    start = time.perf_counter()
    rollouts = engine.generate(rendered, samples, sampling)
    result["vllm"] = {"seconds": time.perf_counter() - start, "tokens": int(rollouts.lengths.sum())}
    engine.close()
    for side in ("hf", "vllm"):
        result[side]["tokens_per_second"] = result[side]["tokens"] / result[side]["seconds"]
    result["speedup"] = result["vllm"]["tokens_per_second"] / result["hf"]["tokens_per_second"]
    return result


def alignment_step(policy_dir: Path, tiny: Path, out: Path, new_tokens: int) -> dict:
    import yaml

    config = {
        "model_name_or_path": str(policy_dir), "stage": "prism_align", "do_train": True, "finetuning_type": "full",
        "freeze_vision_tower": True, "prism_reward": "verifiable", "prism_num_generations": 8,
        "prism_max_new_tokens": new_tokens, "prism_rollout_engine": "vllm", "prism_vllm_gpu_memory_utilization": 0.3,
        "dataset": "prism_tiny_rlvr", "dataset_dir": str(tiny / "data"), "template": "prism_qwen3_vl",
        "cutoff_len": new_tokens + 1024, "output_dir": str(out / "align"), "overwrite_output_dir": True,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1.0e-6,
        "max_steps": 1, "bf16": True, "gradient_checkpointing": True, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none",
    }
    path = out / "align_step.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    run = subprocess.run(["llamafactory-cli", "train", str(path)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    (out / "align_step.log").write_text(run.stdout + run.stderr)
    return {"returncode": run.returncode, "seconds": seconds, "log": str(out / "align_step.log")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--policy-config", type=Path, default=REPO / "tests" / "data" / "model_configs" / "qwen3_vl_4b")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--tie", type=float, default=1e-4)
    parser.add_argument("--skip-step", action="store_true", help="leave out the alignment step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu/run.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from prism_plugin.tiny import make_tiny
    from prism_plugin.vllm_rollout.versions import require_vllm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {"vllm": require_vllm(), "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = args.out / "tiny"
    if not (tiny / "manifest.json").is_file():
        make_tiny(tiny)
    # each part in a child process: one vLLM engine per process, a clean GPU for each measurement
    part = os.environ.get("PRISM_GPU_PART")
    if part == "parity":
        print(json.dumps(parity(tiny, args.tie)))
        return 0
    if part == "throughput":
        policy = realistic_policy(args.policy_config, tiny, args.out / "policy")
        print(json.dumps(throughput(policy, tiny, args.prompts, args.samples, args.new_tokens)))
        return 0
    for name in ("parity", "throughput"):
        run = subprocess.run([sys.executable, *sys.argv], capture_output=True, text=True,
                             env={**os.environ, "PRISM_GPU_PART": name})
        (args.out / f"{name}.log").write_text(run.stdout + run.stderr)
        lines = run.stdout.strip().splitlines()
        results[name] = json.loads(lines[-1]) if run.returncode == 0 and lines else {"error": run.stderr[-2000:]}
        print(name, json.dumps(results[name]), flush=True)
    if not args.skip_step:
        results["alignment_step"] = alignment_step(args.out / "policy", tiny, args.out, args.new_tokens)
        print("alignment_step", json.dumps(results["alignment_step"]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results.get("parity", {}).get("passed") else 1


if __name__ == "__main__":
    raise SystemExit(main())
