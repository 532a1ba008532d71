"""Alignment step (stage ``prism_align``) vs trl 0.24 ``GRPOTrainer``: step time and peak memory.

Same tiny policies (text: Qwen3, VL: Qwen3-VL), same prompts, 2 prompts x 8 generations per step,
fp32, sampling at temperature 1 (no top-k / top-p), one optimiser step per batch of rollouts.

* trl: ``GRPOTrainer`` (HF ``generate``) with a frozen tiny reward model (a Qwen3
  sequence-classification head on the tiny dense Qwen3 config) and the documented
  trl 0.24 x transformers 5.6 workarounds (import flags, ``warnings_issued``, fp32, top-k off,
  ``mm_token_type_ids`` restored for the training forward, vision tokens blocked while sampling).
* ours: the real ``prism_align`` stage run in-process through LLaMA-Factory's ``run_exp`` (the
  same path as ``llamafactory-cli train``): rollout, segment split, discriminator scores,
  group advantages, one discriminator update, one policy update per step.

Each (side, modality, new-token budget) runs in its own subprocess, so peak RSS does not mix,
``--repeats`` times (default 4), the sides alternating (trl, ours, ours, trl, ...) so that a drift in
the machine's speed falls on both. Step time = interval between consecutive ``on_step_end``
callbacks (data loading, rollout, scoring, updates and per-step logging included), median over the
measured steps (after each run's warm-up) of all runs.
Breakdown = time inside the trainers' own methods, wrapped here (product code untouched).

By default the policies are first trained with a short stock LLaMA-Factory SFT so rollouts
are realistic (layout-valid, end-of-turn terminated); ``--random-policy`` skips that.

    python benchmarks/bench_align_step.py [--quick] [--work-dir DIR] [--steps 20] [--warmup 3] [--repeats 4]
        [--tokens 64 256] [--modalities text vl] [--threads 2] [--random-policy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.peers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

PROMPTS_PER_STEP = 2
GENERATIONS = 8
SEED = 0
# Both policies train at a learning rate too small to change their rollouts within the measured
# steps: at 1e-4, trl's VL policy learnt to end its rollouts after ~15 tokens (ours: 42) against the
# random reward model within 20 steps, which measures less work, not a faster step.
POLICY_LR = 1e-6
TEMPLATES = {"vl": "prism_qwen3_vl", "text": "prism_qwen3"}
BASE_POLICY = {"vl": "qwen3_vl_policy", "text": "qwen3_policy"}
DENSE = {"vl": "qwen3_vl_dense", "text": "qwen3_dense"}
RESULT_TAG = "BENCH_RESULT "
PHASES = ("generation", "scoring", "disc_update", "step_metrics", "other_prep", "policy_update")


# --------------------------------------------------------------------------- set-up (parent process)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cli() -> str:
    return str(Path(sys.executable).with_name("llamafactory-cli"))


def bench_env(threads: int) -> dict[str, str]:
    """The environment of every measured process: same threads, passive OpenMP waiting, offline."""
    env = dict(os.environ)
    env.update({"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "DISABLE_VERSION_CHECK": "1"})
    env.pop("FORCE_TORCHRUN", None)
    return env


def write_text_data(data_dir: Path) -> None:
    """Text-only copies of the tiny SFT and alignment sets (``<image>`` markers and images dropped)."""
    sft = json.loads((data_dir / "sft.json").read_text())
    for row in sft:
        for message in row["messages"]:
            message["content"] = message["content"].replace("<image>", "")
        row.pop("images", None)
    (data_dir / "sft_text.json").write_text(json.dumps(sft, indent=1))
    rows = [json.loads(line) for line in (data_dir / "align.jsonl").read_text().splitlines() if line.strip()]
    with (data_dir / "align_text.jsonl").open("w") as fh:
        for row in rows:
            row["prompt"] = row["prompt"].replace("<image>", "")
            row.pop("images", None)
            fh.write(json.dumps(row) + "\n")
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["bench_sft_text"] = {**info["prism_tiny_sft"], "file_name": str(data_dir / "sft_text.json"),
                              "columns": {"messages": "messages"}}
    info["bench_align_text"] = {"file_name": str(data_dir / "align_text.jsonl")}
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))


def sft_policy(work: Path, modality: str, steps: int, threads: int) -> Path:
    """A short stock LLaMA-Factory SFT of the tiny policy (the layout is learnt after ~80 steps)."""
    out = work / f"sft_{modality}"
    if (out / "model.safetensors").is_file():
        return out
    tiny = work / "tiny"
    config = {
        "model_name_or_path": str(tiny / BASE_POLICY[modality]), "stage": "sft", "do_train": True,
        "finetuning_type": "full", "dataset": "prism_tiny_sft" if modality == "vl" else "bench_sft_text",
        "dataset_dir": str(tiny / "data"), "template": TEMPLATES[modality], "cutoff_len": 512,
        "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
        "output_dir": str(out), "logging_steps": 20, "save_strategy": "no", "max_steps": steps,
        "per_device_train_batch_size": 8, "learning_rate": 3.0e-3, "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.05, "bf16": False, "report_to": "none", "seed": SEED, "overwrite_output_dir": True,
    }
    path = work / f"sft_{modality}.yaml"
    path.write_text(json.dumps(config, indent=1))
    start = time.perf_counter()
    proc = subprocess.run([_cli(), "train", str(path)], cwd=work, env=bench_env(threads), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"SFT ({modality}) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    _log(f"SFT {modality}: {steps} steps in {time.perf_counter() - start:.0f} s")
    return out


def build_reward_model(work: Path) -> Path:
    """A frozen tiny reward model: Qwen3 sequence classifier (1 label) on the tiny dense Qwen3 config."""
    out = work / "reward_model"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen3ForSequenceClassification

    dense = work / "tiny" / DENSE["text"]
    config = AutoConfig.from_pretrained(dense)
    config.num_labels = 1
    config.architectures = ["Qwen3ForSequenceClassification"]
    torch.manual_seed(SEED + 7)
    model = Qwen3ForSequenceClassification(config).float().eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(dense).save_pretrained(out)
    return out


def setup(work: Path, args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    from prism_plugin.discriminator import upcycle
    from prism_plugin.tiny import make_tiny

    tiny = work / "tiny"
    if not (tiny / "manifest.json").is_file():
        make_tiny(tiny, seed=SEED, num_examples=32)
        write_text_data(tiny / "data")
        _log(f"tiny models and data in {tiny}")
    build_reward_model(work)
    paths = {}
    for modality in args.modalities:
        disc = work / f"disc_{modality}"
        if not (disc / "model.safetensors").is_file():
            upcycle(tiny / DENSE[modality], disc, num_experts=4, top_k=2, seed=SEED)
        policy = tiny / BASE_POLICY[modality] if args.random_policy else sft_policy(
            work, modality, args.sft_steps, args.threads)
        paths[modality] = {"policy": policy, "disc": disc}
    return paths


# --------------------------------------------------------------------------- measurement helpers (workers)


class PhaseTimer:
    """Wall time spent inside wrapped methods, per step (outermost call only for nested wraps)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def wrap(self, cls: type, method: str, phase: str) -> None:
        original = getattr(cls, method)
        timer = self

        def wrapped(*a, **k):
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timer.current[phase] = timer.current.get(phase, 0.0) + time.perf_counter() - start

        wrapped.__name__ = original.__name__
        setattr(cls, method, wrapped)

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def make_step_callback(timer: PhaseTimer, records: list[dict], logs: list[dict]):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Timestamps each optimiser step's end; keeps each step's phase times and logs."""

        def __init__(self) -> None:
            self.last = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()
            records.append({"rss_at_train_begin_kib": _status_kib("VmRSS")})
            timer.take()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            records.append({"step_s": now - self.last, "phases": timer.take()})
            self.last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                log_entries.append(dict(logs))

    log_entries = logs
    return StepClock()


def _phase_medians(step_phases: list[dict[str, float]]) -> dict[str, float]:
    names = {k for p in step_phases for k in p}
    return {name: statistics.median(p.get(name, 0.0) for p in step_phases) for name in names}


def summarise(records: list[dict], logs: list[dict], warmup: int, extra: dict) -> dict:
    steps = [r for r in records if "step_s" in r][warmup:]
    times = [r["step_s"] for r in steps]
    step_phases = [r["phases"] for r in steps]
    begin = next((r["rss_at_train_begin_kib"] for r in records if "rss_at_train_begin_kib" in r), 0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times": times,
            "phases": _phase_medians(step_phases), "step_phases": step_phases,
            "peak_rss_mib": _status_kib("VmHWM") / 1024, "rss_train_begin_mib": begin / 1024,
            "logs": logs[warmup:], **extra}


def pool_repeats(runs: list[dict], warmup: int) -> dict:
    """One result from several runs of the same configuration: the measured steps of all runs pooled (medians
    over all of them), the largest peak memory; per-step series keep the first run's warm-up entries only, so
    slicing them at ``warmup`` gives every run's measured steps."""
    times = [t for r in runs for t in r["times"]]
    step_phases = [p for r in runs for p in r["step_phases"]]
    pooled = dict(runs[0])
    pooled.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times), times=times,
                  step_phases=step_phases, phases=_phase_medians(step_phases), repeats=len(runs),
                  peak_rss_mib=max(r["peak_rss_mib"] for r in runs), logs=[e for r in runs for e in r["logs"]])
    for key in ("valid_ratio", "completion_length", "disc_skipped"):
        if key in runs[0]:
            pooled[key] = runs[0][key] + [v for r in runs[1:] for v in r[key][warmup:]]
    return pooled


# --------------------------------------------------------------------------- worker: ours (prism_align)


def run_ours(work: Path, modality: str, tokens: int, policy: Path, disc: Path, steps: int,
             keys: dict | None = None) -> tuple[list, list, dict]:
    from llamafactory.train.tuner import run_exp

    from prism_plugin.discriminator.rollout_scorer import DiscriminatorScorer
    from prism_plugin.llamafactory.align import trainer as align_trainer
    from prism_plugin.llamafactory.align.trainer import PrismAlignTrainer
    from prism_plugin.rollout import HFRolloutEngine

    timer = PhaseTimer()
    timer.wrap(PrismAlignTrainer, "get_batch_samples", "prep_total")
    timer.wrap(HFRolloutEngine, "generate", "generation")
    timer.wrap(DiscriminatorScorer, "score", "scoring")
    timer.wrap(DiscriminatorScorer, "update", "disc_update")
    timer.wrap(align_trainer, "step_metrics", "step_metrics")
    records, logs = [], []
    out = work / "runs" / f"ours_{modality}_{tokens}{'_variant' if keys else ''}"
    config = {
        "model_name_or_path": str(policy), "stage": "prism_align", "do_train": True, "finetuning_type": "full",
        "prism_discriminator": str(disc), "prism_segments": ["caption", "reasoning"],
        "prism_segment_weights": [0.5, 0.5], "prism_num_generations": GENERATIONS, "prism_max_new_tokens": tokens,
        "prism_temperature": 1.0, "prism_disc_learning_rate": 1e-4, "prism_policy_loss": "grpo",
        "prism_policy_epochs": 1,
        "dataset": "prism_tiny_align" if modality == "vl" else "bench_align_text",
        "dataset_dir": str(work / "tiny" / "data"), "template": TEMPLATES[modality], "cutoff_len": 1024,
        "output_dir": str(out), "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
        "overwrite_output_dir": True, "report_to": "none", "per_device_train_batch_size": PROMPTS_PER_STEP,
        "gradient_accumulation_steps": 1, "learning_rate": POLICY_LR, "lr_scheduler_type": "constant",
        "max_steps": steps, "bf16": False, "seed": SEED, "dataloader_num_workers": 0, **(keys or {}),
    }
    run_exp(config, callbacks=[make_step_callback(timer, records, logs)])
    for r in records:
        if "phases" in r:
            p = r["phases"]
            prep = p.pop("prep_total", 0.0)
            p["other_prep"] = (prep - p.get("generation", 0.0) - p.get("scoring", 0.0) - p.get("disc_update", 0.0)
                               - p.get("step_metrics", 0.0))
            p["policy_update"] = r["step_s"] - prep
    valid = [e["valid_ratio"] for e in logs if "valid_ratio" in e]
    length = [e["response_length"] for e in logs if "response_length" in e]
    skipped = [e.get("disc/skipped", 0.0) for e in logs if "valid_ratio" in e]
    return records, logs, {"valid_ratio": valid, "completion_length": length, "disc_skipped": skipped}


# --------------------------------------------------------------------------- worker: trl GRPOTrainer


def run_trl(work: Path, modality: str, tokens: int, policy: Path, steps: int) -> tuple[list, list, dict]:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prism_plugin.layout import SYSTEM_PROMPT, layout_parts
    from tests.peers import fix_trl_import_flags

    fix_trl_import_flags()
    from trl import GRPOConfig, GRPOTrainer

    timer = PhaseTimer()
    timer.wrap(GRPOTrainer, "_prepare_inputs", "prep_total")
    timer.wrap(GRPOTrainer, "_generate", "generation")
    records, logs = [], []
    texts: list[str] = []
    original_rewards = GRPOTrainer._calculate_rewards

    def keep_completions(self, inputs, prompts, completions, completion_ids_list):
        texts.extend(c if isinstance(c, str) else c[0]["content"] for c in completions)
        return original_rewards(self, inputs, prompts, completions, completion_ids_list)

    GRPOTrainer._calculate_rewards = keep_completions
    timer.wrap(GRPOTrainer, "_calculate_rewards", "scoring")

    data_dir = work / "tiny" / "data"
    rows = [json.loads(line) for line in (data_dir / "align.jsonl").read_text().splitlines() if line.strip()]
    examples = []
    for row in rows:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": row["prompt"].replace("<image>", "")}]
        example = {"prompt": messages}
        if modality == "vl":
            example["image"] = Image.open(data_dir / row["images"][0]).convert("RGB")
        examples.append(example)
    dataset = Dataset.from_list(examples)

    if modality == "vl":
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        model = Qwen3VLForConditionalGeneration.from_pretrained(policy, dtype=torch.float32)
        processing = AutoProcessor.from_pretrained(policy)
        tokenizer = processing.tokenizer
        image_token = model.config.image_token_id

        def add_mm_token_type_ids(module, args, kwargs):  # trl 0.24 drops them before the training forward
            if kwargs.get("pixel_values") is not None and kwargs.get("mm_token_type_ids") is None:
                kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == image_token).long()
            return args, kwargs

        model.register_forward_pre_hook(add_mm_token_type_ids, with_kwargs=True)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
        processing = tokenizer = AutoTokenizer.from_pretrained(policy)
    model.warnings_issued = {}  # read by GRPOTrainer.__init__, gone in transformers 5
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation_kwargs = {"eos_token_id": eot}
    if modality == "vl":
        vision = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
        generation_kwargs["suppress_tokens"] = tokenizer.convert_tokens_to_ids(vision)

    reward_dir = work / "reward_model"
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=torch.float32).eval()
    reward.requires_grad_(False)
    reward_tok = AutoTokenizer.from_pretrained(reward_dir)

    config = GRPOConfig(
        output_dir=str(work / "runs" / f"trl_{modality}_{tokens}"), per_device_train_batch_size=PROMPTS_PER_STEP
        * GENERATIONS, gradient_accumulation_steps=1, num_generations=GENERATIONS, max_completion_length=tokens,
        max_prompt_length=None, temperature=1.0, top_k=0, top_p=1.0, beta=0.0, loss_type="grpo",
        learning_rate=POLICY_LR, lr_scheduler_type="constant", max_steps=steps, logging_steps=1, save_strategy="no",
        report_to="none", bf16=False, fp16=False, seed=SEED, dataloader_num_workers=0, use_cpu=True,
        generation_kwargs=generation_kwargs,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=processing, reward_processing_classes=[reward_tok],
                          callbacks=[make_step_callback(timer, records, logs)])
    trainer.train()
    for r in records:
        if "phases" in r:
            p = r["phases"]
            prep = p.pop("prep_total", 0.0)
            p["other_prep"] = prep - p.get("generation", 0.0) - p.get("scoring", 0.0)
            p["policy_update"] = r["step_s"] - prep
    length = [e["completions/mean_length"] for e in logs if "completions/mean_length" in e]
    valid = sum(layout_parts(t) is not None for t in texts) / max(len(texts), 1)
    return records, logs, {"completion_length": length, "valid_ratio_all_steps": valid}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    policy, disc = Path(args.policy), Path(args.disc)
    total = args.warmup + args.steps
    if args.worker in ("ours", "variant"):
        keys = dict(args.variant) if args.worker == "variant" else None
        records, logs, extra = run_ours(work, args.modality, args.new_tokens, policy, disc, total, keys)
    else:
        records, logs, extra = run_trl(work, args.modality, args.new_tokens, policy, total)
    result = summarise(records, logs, args.warmup, extra)
    result.update(side=args.worker, modality=args.modality, tokens=args.new_tokens, threads=torch.get_num_threads())
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- driver


def run_config(args, side: str, modality: str, tokens: int, paths: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--modality", modality, "--new-tokens", str(tokens),
           "--work-dir", str(args.work_dir), "--policy", str(paths["policy"]), "--disc", str(paths["disc"]),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           *[f"--variant={key}={json.dumps(value)}" for key, value in args.variant]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=bench_env(args.threads), capture_output=True, text=True, cwd=args.work_dir)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {modality} {tokens} failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    _log(f"{side:4s} {modality:4s} {tokens:4d} tok: median {result['median_s']:.3f} s/step "
         f"(range {result['min_s']:.2f}-{result['max_s']:.2f}), peak {result['peak_rss_mib']:.0f} MiB, "
         f"process {time.perf_counter() - start:.0f} s")
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def print_table(results: dict, args: argparse.Namespace) -> None:
    header = ("| policy | new tok | trl s/step median (min) | ours s/step median (min) | ours/trl median (min) "
              "| trl peak MiB | ours peak MiB "
              "| mean len trl / ours | valid (ours) | disc updates |")
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for modality in args.modalities:
        for tokens in args.tokens:
            trl, ours = results[("trl", modality, tokens)], results[("ours", modality, tokens)]
            skipped = ours.get("disc_skipped", [])[args.warmup:]
            updates = f"{sum(1 for s in skipped if s == 0.0)}/{len(skipped)}"
            print(f"| {modality} | {tokens} | {trl['median_s']:.3f} ({trl['min_s']:.3f}) | "
                  f"{ours['median_s']:.3f} ({ours['min_s']:.3f}) | {ours['median_s'] / trl['median_s']:.2f}x "
                  f"({ours['min_s'] / trl['min_s']:.2f}x) | {trl['peak_rss_mib']:.0f} | "
                  f"{ours['peak_rss_mib']:.0f} | {_mean(trl['completion_length'][args.warmup:]):.0f} / "
                  f"{_mean(ours['completion_length'][args.warmup:]):.0f} | "
                  f"{_mean(ours['valid_ratio'][args.warmup:]):.2f} | {updates} |")
    print()
    print("Breakdown, median s/step (trl: generation = `_generate`, scoring = reward model; ours: generation = "
          "the rollout engine's `generate`, scoring = the discriminator scorer's `score` (the update batch's "
          "forward with gradients), disc update = its `update` (backward and step); other prep = the rest of "
          "`get_batch_samples`; policy update = step - `get_batch_samples`):")
    print()
    print("| policy | new tok | side | " + " | ".join(p.replace("_", " ") for p in PHASES) + " | step |")
    print("|" + "|".join("---" for _ in range(len(PHASES) + 4)) + "|")
    for modality in args.modalities:
        for tokens in args.tokens:
            for side in ("trl", "ours"):
                r = results[(side, modality, tokens)]
                cells = [f"{r['phases'][p]:.3f}" if p in r["phases"] else "-" for p in PHASES]
                print(f"| {modality} | {tokens} | {side} | " + " | ".join(cells) + f" | {r['median_s']:.3f} |")
    if args.variant:
        print_variant_table(results, args)


def print_variant_table(results: dict, args: argparse.Namespace) -> None:
    """Ours with its defaults against ours with the ``--variant`` keys, same run: the discriminator's update
    (scoring forward + backward/step) and the whole step, medians."""
    keys = ", ".join(f"{key}: {json.dumps(value)}" for key, value in args.variant)
    print()
    print(f"Variant ({keys}) against the defaults, median s/step:")
    print()
    print("| policy | new tok | default disc (score + update) | variant disc (score + update) | default/variant "
          "| default step | variant step | default/variant |")
    print("|---|---|---|---|---|---|---|---|")
    for modality in args.modalities:
        for tokens in args.tokens:
            ours, var = results[("ours", modality, tokens)], results[("variant", modality, tokens)]
            d = ours["phases"]["scoring"] + ours["phases"]["disc_update"]
            v = var["phases"]["scoring"] + var["phases"]["disc_update"]
            print(f"| {modality} | {tokens} | {d:.3f} | {v:.3f} | {d / v:.2f}x | {ours['median_s']:.3f} | "
                  f"{var['median_s']:.3f} | {ours['median_s'] / var['median_s']:.2f}x |")


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value parsed as YAML: numbers, booleans, lists, strings)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.startswith("prism_"):
        raise argparse.ArgumentTypeError(f"expected prism_KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 tokens only, one run per side, 1 warm-up + 2 steps")
    parser.add_argument("--work-dir", default=None, help="tiny models, SFT policies, runs (reused if present); "
                        "default: a fresh temporary directory")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (not measured)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="runs per side and configuration, in alternating order (trl, ours, ours, trl, ...); "
                             "medians over the measured steps of all runs (one run's speed drifts with the machine's "
                             "load, by up to half on a shared 2-core machine)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256], help="max new tokens per rollout")
    parser.add_argument("--modalities", nargs="+", choices=["text", "vl"], default=["text", "vl"])
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of every measured process")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps that make the policies realistic")
    parser.add_argument("--random-policy", action="store_true",
                        help="skip SFT: random-weight policies (rollouts are layout-invalid, no disc update)")
    parser.add_argument("--json", default=None, help="also write all results to this JSON file")
    parser.add_argument("--variant", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                        help="also run ours with this prism_* key changed (repeatable; VALUE in JSON/YAML style), "
                             "e.g. prism_score_reg_rows=valid: a table of the defaults against it")
    # internal: one measured configuration per subprocess
    parser.add_argument("--worker", choices=["trl", "ours", "variant"], help=argparse.SUPPRESS)
    parser.add_argument("--modality", help=argparse.SUPPRESS)
    parser.add_argument("--new-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--disc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.tokens, args.steps, args.warmup, args.repeats = [64], 2, 1, 1
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    import tempfile

    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_align_")
        args.work_dir = tmp.name
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.work_dir = str(work)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    paths = setup(work, args)
    results = {}
    sides = ("trl", "ours", *(["variant"] if args.variant else []))
    for modality in args.modalities:
        for tokens in args.tokens:
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for repeat in range(args.repeats):  # alternating order: a drift of the machine's speed hits both sides
                for side in sides if repeat % 2 == 0 else reversed(sides):
                    runs[side].append(run_config(args, side, modality, tokens, paths[modality]))
            for side in sides:
                results[(side, modality, tokens)] = pool_repeats(runs[side], args.warmup)
    import platform

    import torch

    print()
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY=PASSIVE, fp32, {PROMPTS_PER_STEP} prompts x "
          f"{GENERATIONS} generations, median of {args.repeats} x {args.steps} steps (each run after "
          f"{args.warmup} warm-up), "
          f"policy: {'random' if args.random_policy else f'SFT {args.sft_steps} steps'}; "
          f"total {time.perf_counter() - start:.0f} s; 1-min load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end (> {os.cpu_count()}: other processes shared the CPUs)")
    print()
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"|".join(map(str, k)): v for k, v in results.items()}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
