"""Efficacy at toy scale: SFT → PRISM → GRPO against SFT → GRPO, paired over seeds (issue: evidence).

Per seed, from one SFT checkpoint (stock LLaMA-Factory SFT stopped at the first dev accuracy ≥
``--sft-threshold``), four arms with the same number of policy updates (``--align-steps`` K then
``--grpo-steps`` M), every stage a real ``llamafactory-cli train`` run of the product:

  grpo    ``prism_align`` with ``prism_reward: verifiable`` for K + M steps (GRPO);
  prism   discriminator upcycled from the SFT policy, ``prism_disc`` warm-up on synthetic miscount pairs
          and on the SFT policy's own samples (``make-pairs``) → ``prism_align`` against it for K
          (``prism_min_disc_accuracy``, unscaled advantages) → GRPO for M;
  sft     K more SFT steps → GRPO for M (the control: is alignment better than more SFT?);
  oracle  ``prism_align`` with an oracle per-segment scorer for K → GRPO for M (the upper bound).

Before the prism arm, a gate measures the warmed-up discriminator on captions the SFT policy samples
for held-out dev prompts: how often it ranks the teacher's caption above a wrong one (same prompt),
and the score gap between right and wrong ones. Every
checkpoint is evaluated greedily on the held-out set (accuracy, caption exact-match, reasoning
consistency). Results: ``WORK/seed{S}/result.json``; ``report.py`` aggregates them.

    python benchmarks/efficacy/run.py [--seeds 0 1 2 3 4 5] [--jobs 2] [--work-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
EVAL_SEED = 10_007
ARMS = ("grpo", "prism", "sft", "oracle")


def cli(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def lf_train(config: dict, work: Path, log_name: str) -> float:
    """``llamafactory-cli train`` on ``config`` (1 torch thread); returns its wall time, raises on failure."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{log_name}.yaml"  # JSON is YAML; LLaMA-Factory 0.9.5 cannot read a .json config
    path.write_text(json.dumps(config, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("FORCE_TORCHRUN", None)
    start = time.perf_counter()
    with open(work / f"{log_name}.log", "w") as log:
        proc = subprocess.run([cli("llamafactory-cli"), "train", str(path)], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=work)
    if proc.returncode:
        raise RuntimeError(f"{log_name} failed; see {work / (log_name + '.log')}")
    return time.perf_counter() - start


def base_config(model: str, tiny: Path, out: Path, seed: int) -> dict:
    return {"model_name_or_path": model, "do_train": True, "finetuning_type": "full", "template": "prism_qwen3_vl",
            "dataset_dir": str(tiny / "data"), "output_dir": str(out), "overwrite_output_dir": True,
            "report_to": "none", "bf16": False, "seed": seed, "logging_steps": 5, "preprocessing_num_workers": 1,
            "dataloader_num_workers": 0, "overwrite_cache": True, "plot_loss": False}


def sft_config(model: str, tiny: Path, out: Path, seed: int, args: argparse.Namespace, steps: int) -> dict:
    return {**base_config(model, tiny, out, seed), "stage": "sft", "dataset": "prism_tiny_sft", "cutoff_len": 512,
            "per_device_train_batch_size": args.sft_batch, "learning_rate": args.sft_lr, "max_steps": steps,
            "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 10, "save_strategy": "no"}


def align_config(model: str, tiny: Path, out: Path, seed: int, args: argparse.Namespace, steps: int, reward: str,
                 save_every: int, disc: str | None = None) -> dict:
    grpo = reward == "verifiable"
    config = {**base_config(model, tiny, out, seed), "stage": "prism_align", "dataset": "prism_tiny_align",
              "cutoff_len": 1024, "prism_reward": reward, "prism_num_generations": args.generations,
              "prism_max_new_tokens": args.max_new_tokens, "per_device_train_batch_size": args.prompts,
              "learning_rate": args.policy_lr if grpo else args.align_lr, "lr_scheduler_type": "constant",
              "max_steps": steps,
              "save_strategy": "steps", "save_steps": save_every, "save_only_model": True,
              "prism_disc_learning_rate": args.disc_lr, "logging_steps": 1}
    if disc:
        config.update({"prism_discriminator": disc, "prism_min_disc_accuracy": args.min_disc_accuracy,
                       "prism_scale_advantages": args.scale_advantages})
    return config


def eval_checkpoints(run_dir: Path, offset: int, processor_dir: str, records: list, into: dict) -> None:
    """Evaluate every ``checkpoint-N`` (and nothing else) of ``run_dir`` as policy-update step offset + N."""
    from transformers import AutoProcessor

    from benchmarks.efficacy.task import evaluate
    from prism_plugin.policy import load_policy

    processor = AutoProcessor.from_pretrained(processor_dir)
    for ckpt in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = offset + int(ckpt.name.split("-")[1])
        if str(step) in into:
            continue
        policy = load_policy(ckpt)[0]
        into[str(step)] = evaluate(policy, processor, records)
        print(f"  step {step}: {into[str(step)]}", flush=True)


def log_history(run_dir: Path) -> list[dict]:
    state = run_dir / "trainer_state.json"
    return json.loads(state.read_text())["log_history"] if state.is_file() else []


def discriminator_gate(disc_dir: Path, sft_dir: Path, dev_file: Path, args: argparse.Namespace) -> dict:
    """The warmed-up discriminator on captions the SFT policy samples for dev prompts (eval mode): the
    on-policy pairwise accuracy (teacher's caption scored above a wrong sampled caption), the AUC of
    right vs wrong sampled captions, and their mean score gap."""
    import torch

    from benchmarks.efficacy.task import caption_counts, load_eval_records
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.rendering import score_texts
    from prism_plugin.layout import layout_parts
    from prism_plugin.policy import load_policy, sample
    from prism_plugin.rollout import Sampling

    torch.manual_seed(0)
    policy, processor, _ = load_policy(sft_dir)
    policy.eval()
    records = load_eval_records(dev_file, args.gate_prompts)
    _, split = sample(policy, processor, True, records, 4, Sampling(args.max_new_tokens))
    rows = [(i // 4, text) for i, text in enumerate(split.texts) if layout_parts(text) is not None]
    disc = load_discriminator(str(disc_dir)).eval()
    with torch.no_grad():
        scores = score_texts(disc, [records[k].prompt for k, _ in rows], [t for _, t in rows],
                             [list(records[k].images) for k, _ in rows])["caption"].tolist()
        teacher = score_texts(disc, [r.prompt for r in records], [r.teacher for r in records],
                              [list(r.images) for r in records])["caption"].tolist()
    win = lambda a, b: float(a > b) + 0.5 * float(a == b)  # noqa: E731  (a tie counts one half)
    right, wrong, beaten = [], [], []
    for (k, text), value in zip(rows, scores, strict=True):
        if caption_counts(layout_parts(text)[0]) == records[k].counts:
            right.append(value)
        else:
            wrong.append(value)
            beaten.append(win(teacher[k], value))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    auc = mean([win(r, w) for r in right for w in wrong])
    return {"right_captions": len(right), "wrong_captions": len(wrong), "right_mean": mean(right),
            "wrong_mean": mean(wrong), "score_gap": mean(right) - mean(wrong), "on_policy_accuracy": mean(beaten),
            "right_vs_wrong_auc": auc}


def disc_backbone(work: Path, tiny: Path, sft_dir: Path, seed: int, args: argparse.Namespace, result: dict) -> Path:
    """The dense model the discriminator is upcycled from: the seed's SFT policy, the random tiny dense
    model, or that dense model after ``--disc-sft-steps`` of stock SFT on the teacher's demonstrations
    (a backbone that perceives, as the paper's pretrained discriminator VLM does)."""
    if args.disc_init == "policy":
        return sft_dir
    dense = tiny / "qwen3_vl_dense"
    if args.disc_init == "dense":
        return dense
    out = work / "disc_backbone"
    if "disc_backbone" not in result["wall_s"]:
        config = {**sft_config(str(dense), tiny, out, seed + 1, args, args.disc_sft_steps), "save_strategy": "no"}
        result["wall_s"]["disc_backbone"] = lf_train(config, work, "disc_backbone")
    return out


def warmup_datasets(work: Path, tiny: Path, sft_dir: Path, seed: int, args: argparse.Namespace) -> str:
    """The warm-up's LLaMA-Factory dataset names: the synthetic miscount pairs and/or pairs of the teacher
    with the SFT policy's own samples on the training prompts (``prism-plugin data make-pairs``)."""
    from prism_plugin.data.make_pairs import make_pairs

    names = []
    if args.warmup_pairs in ("synthetic", "both"):
        names.append("prism_tiny_pairs")
    if args.warmup_pairs in ("policy", "both"):
        out = tiny / "data" / "policy_pairs.jsonl"
        if not out.is_file():
            report = make_pairs(sft_dir, tiny / "data" / "align.jsonl", out.with_suffix(".tmp"),
                                num_samples=args.policy_samples, max_new_tokens=args.max_new_tokens, seed=seed,
                                batch_size=32, progress=False)
            (work / "make_pairs.json").write_text(json.dumps(report.summary(), indent=1))
            out.with_suffix(".tmp").rename(out)
        info_file = tiny / "data" / "dataset_info.json"
        info = json.loads(info_file.read_text())
        info["policy_pairs"] = {"file_name": str(out)}
        info_file.write_text(json.dumps(info, indent=1))
        names.append("policy_pairs")
    return ",".join(names)


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    """Every stage of one seed; resumable (finished stages are read back from result.json)."""
    from benchmarks.efficacy.task import load_eval_records
    from prism_plugin.discriminator import upcycle
    from prism_plugin.tiny import make_tiny

    work = args.work_dir / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    result_file = work / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {"seed": seed, "wall_s": {}}

    def save() -> None:
        result_file.write_text(json.dumps(result, indent=1))

    def timed(name: str, config: dict, run_dir: Path) -> None:
        if name in result["wall_s"]:
            return
        result["wall_s"][name] = lf_train(config, run_dir.parent, run_dir.name)
        save()

    tiny = work / "tiny"
    if not (tiny / "manifest.json").is_file():
        make_tiny(tiny, seed=seed, num_examples=args.train_examples)
    eval_dir = args.work_dir / "eval_set"
    records = load_eval_records(eval_dir / "data" / "align.jsonl", args.eval_examples)
    dev_file = eval_dir / "dev.jsonl"
    processor_dir = str(tiny / "qwen3_vl_policy")
    K, M = args.align_steps, args.grpo_steps

    # SFT to the threshold
    sft_dir = work / "sft"
    if "sft" not in result:
        config = sft_config(processor_dir, tiny, sft_dir, seed, args, args.sft_max_steps)
        (work / "sft.json").write_text(json.dumps(config))
        start = time.perf_counter()
        with open(work / "sft.log", "w") as log:
            proc = subprocess.run([sys.executable, str(HERE / "sft_stop.py"), str(work / "sft.json"), str(dev_file),
                                   str(args.sft_threshold), str(args.sft_eval_every), str(work / "sft_dev.json")],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=work)
        if proc.returncode:
            raise RuntimeError(f"SFT failed; see {work / 'sft.log'}")
        from transformers import AutoProcessor

        from benchmarks.efficacy.task import evaluate
        from prism_plugin.policy import load_policy

        result["wall_s"]["sft"] = time.perf_counter() - start
        result["sft"] = {"dev": json.loads((work / "sft_dev.json").read_text()),
                         "held_out": evaluate(load_policy(sft_dir)[0], AutoProcessor.from_pretrained(processor_dir),
                                              records)}
        save()
    print(f"seed {seed}: SFT {result['sft']['held_out']}", flush=True)
    curves = result.setdefault("curves", {arm: {} for arm in ARMS})
    for arm in ARMS:
        curves[arm].setdefault("0", result["sft"]["held_out"])

    # discriminator: upcycle, warm up, gate
    disc_dir = work / "disc"
    if "disc_warmup" not in result:
        dense = disc_backbone(work, tiny, sft_dir, seed, args, result)
        upcycle(dense, work / "disc_upcycled", num_experts=4, top_k=2, seed=seed, expert_mode=args.expert_mode)
        datasets = warmup_datasets(work, tiny, sft_dir, seed, args)
        config = {**base_config(str(work / "disc_upcycled"), tiny, disc_dir, seed), "stage": "prism_disc",
                  "dataset": datasets, "cutoff_len": 512, "per_device_train_batch_size": 16,
                  "learning_rate": args.warmup_lr, "num_train_epochs": args.warmup_epochs, "val_size": 0.1,
                  "eval_strategy": "epoch", "per_device_eval_batch_size": 32, "save_strategy": "no",
                  "lr_scheduler_type": "cosine", "warmup_ratio": 0.05}
        timed("disc_warmup", config, disc_dir)
        evals = [e for e in log_history(disc_dir) if "eval_caption/accuracy" in e]
        result["disc_warmup"] = {"eval": evals}
        save()
    if "gate" not in result:
        gate = discriminator_gate(disc_dir, sft_dir, dev_file, args)
        final = result["disc_warmup"]["eval"][-1]
        gate["caption_accuracy"] = final["eval_caption/accuracy"]
        gate["reasoning_accuracy"] = final.get("eval_reasoning/accuracy")
        gate["passed"] = bool(gate["on_policy_accuracy"] >= args.gate_accuracy and gate["score_gap"] > args.gate_gap)
        result["gate"] = gate
        save()
    print(f"seed {seed}: gate {result['gate']}", flush=True)

    oracle = f"{HERE / 'task.py'}:oracle_scores"
    stage1 = {
        "grpo": None,
        "prism": ("align", lambda out: align_config(str(sft_dir), tiny, out, seed, args, K, "discriminator", K,
                                                    str(disc_dir))),
        "sft": ("sft_more", lambda out: {**sft_config(str(sft_dir), tiny, out, seed, args, K),
                                         "save_strategy": "steps", "save_steps": K, "save_only_model": True}),
        "oracle": ("align", lambda out: align_config(str(sft_dir), tiny, out, seed, args, K, oracle, K)),
    }
    for arm in args.arms:
        arm_dir = work / arm
        if arm == "grpo":
            run = arm_dir / "grpo"
            timed(f"{arm}/grpo", align_config(str(sft_dir), tiny, run, seed, args, K + M, "verifiable", K),
                  run)
            eval_checkpoints(run, 0, processor_dir, records, curves[arm])
            result.setdefault("logs", {})[arm] = {"grpo": log_history(run)}
        else:
            name, make = stage1[arm]
            first = arm_dir / name
            timed(f"{arm}/{name}", make(first), first)
            eval_checkpoints(first, 0, processor_dir, records, curves[arm])
            start = first / f"checkpoint-{K}"
            if not (start / "processor_config.json").is_file():  # checkpoints keep the weights; add the processor
                for f in Path(processor_dir).iterdir():
                    if f.suffix in (".json", ".jinja") and not (start / f.name).exists() and f.name != "config.json":
                        shutil.copy(f, start / f.name)
            run = arm_dir / "grpo"
            timed(f"{arm}/grpo", align_config(str(start), tiny, run, seed, args, M, "verifiable", M), run)
            eval_checkpoints(run, K, processor_dir, records, curves[arm])
            result.setdefault("logs", {})[arm] = {name: log_history(first), "grpo": log_history(run)}
        save()
        print(f"seed {seed}: {arm} {curves[arm]}", flush=True)
    result["done"] = True
    save()
    return result


def build_eval_set(args: argparse.Namespace) -> None:
    """The held-out images (seed ``EVAL_SEED``, disjoint draws from every training seed) and the dev split."""
    from prism_plugin.tiny.data import write_dataset

    eval_dir = args.work_dir / "eval_set"
    align = eval_dir / "data" / "align.jsonl"
    total = args.eval_examples + args.dev_examples
    if not align.is_file() or len(align.read_text().splitlines()) != total:
        write_dataset(eval_dir / "data", num_examples=total, seed=EVAL_SEED)
    lines = align.read_text().splitlines()
    (eval_dir / "dev.jsonl").write_text("\n".join(lines[args.eval_examples:]) + "\n")
    dev_images = eval_dir / "images"
    if dev_images.exists() or dev_images.is_symlink():
        dev_images.unlink()
    dev_images.symlink_to(eval_dir / "data" / "images")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run in parallel, one torch thread each")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/efficacy"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, few steps, small sets")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--eval-examples", type=int, default=2048)
    parser.add_argument("--dev-examples", type=int, default=256)
    parser.add_argument("--sft-threshold", type=float, default=0.4)
    parser.add_argument("--sft-eval-every", type=int, default=50)
    parser.add_argument("--sft-max-steps", type=int, default=800)
    parser.add_argument("--sft-batch", type=int, default=16)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--align-steps", type=int, default=20, help="K: alignment (or extra SFT) updates")
    parser.add_argument("--grpo-steps", type=int, default=40, help="M: GRPO updates after that")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per policy update")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--policy-lr", type=float, default=1e-4)
    parser.add_argument("--align-lr", type=float, default=2e-5,
                        help="policy lr of the alignment stage (prism and oracle arms); GRPO uses --policy-lr")
    parser.add_argument("--disc-lr", type=float, default=1e-3, help="discriminator lr during alignment")
    parser.add_argument("--warmup-lr", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--expert-mode", default="dedicated", choices=["shared", "dedicated"])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS,
                        help="arms to run (none: stop after SFT, the warm-up and the gate)")
    parser.add_argument("--disc-init", default="policy", choices=["policy", "trained", "dense"],
                        help="upcycle the discriminator from the tiny dense model after --disc-sft-steps of SFT "
                             "(trained), from the seed's SFT policy, or from the random tiny dense model")
    parser.add_argument("--disc-sft-steps", type=int, default=1000, help="SFT steps of the trained backbone")
    parser.add_argument("--warmup-pairs", default="both", choices=["synthetic", "policy", "both"],
                        help="warm-up pairs: synthetic miscounts, the SFT policy's own samples (make-pairs), or both")
    parser.add_argument("--policy-samples", type=int, default=1, help="SFT samples per training prompt (make-pairs)")
    parser.add_argument("--min-disc-accuracy", type=float, default=0.6, help="prism_min_disc_accuracy of the prism arm")
    parser.add_argument("--scale-advantages", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                        help="prism_scale_advantages of the prism arm (true: unit-variance group advantages)")
    parser.add_argument("--gate-prompts", type=int, default=64)
    parser.add_argument("--gate-accuracy", type=float, default=0.75)
    parser.add_argument("--gate-gap", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.train_examples, args.eval_examples, args.dev_examples = 200, 128, 64
        args.sft_max_steps, args.sft_eval_every, args.align_steps, args.grpo_steps = 100, 50, 2, 2
        args.prompts, args.generations, args.gate_prompts, args.warmup_epochs = 2, 4, 8, 1.0
    args.work_dir = args.work_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PRISM_EFFICACY_SEED") is not None:  # a worker: one seed
        run_seed(int(os.environ["PRISM_EFFICACY_SEED"]), args)
        return 0
    build_eval_set(args)
    start = time.perf_counter()
    pending = list(args.seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log_path = args.work_dir / f"seed{seed}.log"
            log = open(log_path, "w")  # noqa: SIM115 (closed with the worker)
            print(f"seed {seed}: started; progress in {log_path} (tail -f it)", flush=True)
            env = {**os.environ, "PRISM_EFFICACY_SEED": str(seed), "OMP_NUM_THREADS": "1"}
            running.append((seed, subprocess.Popen([sys.executable, __file__, *(argv or sys.argv[1:])],
                                                   stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for seed, proc in list(running):
            if proc.poll() is not None:
                running.remove((seed, proc))
                print(f"seed {seed}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s "
                      f"(log {args.work_dir / f'seed{seed}.log'})", flush=True)
                if proc.returncode:
                    failed.append(seed)
    print(f"all seeds done in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}; results and logs "
          f"in {args.work_dir}; tables and plots: python benchmarks/efficacy/report.py --work-dir {args.work_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
