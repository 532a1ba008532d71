"""The ``prism-plugin`` command line: a thin dispatcher over sub-commands.

Each sub-command imports its (heavy) implementation lazily, so ``prism-plugin --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from prism_plugin.tiny import DEFAULT_NUM_EXAMPLES


def _make_tiny(args: argparse.Namespace) -> int:
    import time

    from prism_plugin.tiny import make_tiny

    start = time.perf_counter()
    manifest = make_tiny(args.out_dir, seed=args.seed, num_examples=args.num_examples)
    seconds = round(time.perf_counter() - start, 2)
    print(json.dumps({"manifest": f"{manifest['root']}/manifest.json", "seconds": seconds}))
    return 0


def _add_make_tiny(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="build the tiny offline tokenizer, models and toy dataset")
    p.add_argument("out_dir", help="output directory (created; its known sub-directories are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    p.add_argument("--num-examples", type=int, default=DEFAULT_NUM_EXAMPLES,
                   help=f"toy examples to generate (default {DEFAULT_NUM_EXAMPLES})")
    p.set_defaults(func=_make_tiny)


def _upcycle(args: argparse.Namespace) -> int:
    from prism_plugin.discriminator.cli import run_upcycle

    return run_upcycle(args)


def _add_upcycle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upcycle", help="sparse-upcycle a dense Qwen3-VL / Qwen3 model into a PRISM discriminator")
    p.add_argument("dense_dir", help="dense model directory (Qwen3-VL or Qwen3, with its tokenizer/processor)")
    p.add_argument("out_dir", help="output discriminator directory")
    p.add_argument("--num-experts", type=int, default=4, help="experts per MoE layer; 0 keeps the dense backbone")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")
    p.add_argument("--noise-std", type=float, default=0.01, help="std of the noise added to each expert copy")
    p.add_argument("--router-std", type=float, default=0.02, help="std of the random router init")
    p.add_argument("--expert-mode", choices=["shared", "dedicated"], default="shared", help="default: shared")
    p.add_argument("--num-shared-experts", type=int, default=0, help="dedicated mode: experts usable by all segments")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, routers and heads (default 0)")
    p.set_defaults(func=_upcycle)


def _import_discriminator(args: argparse.Namespace) -> int:
    from prism_plugin.discriminator.cli import run_import

    return run_import(args)


def _add_import_discriminator(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-discriminator",
        help="write a discriminator in the PRISM authors' released format (or ours) as a prism-plugin one",
    )
    p.add_argument("src", help="discriminator directory (e.g. the authors' Qwen3-VL-2B-4X-Moe-warmup-120k)")
    p.add_argument("out", help="output directory (prism_discriminator format, same scores, same dtype)")
    p.set_defaults(func=_import_discriminator)


def _score(args: argparse.Namespace) -> int:
    from prism_plugin.discriminator.cli import run_score

    return run_score(args)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score responses in a JSONL file with a PRISM discriminator")
    p.add_argument("--discriminator", required=True, help="discriminator directory")
    p.add_argument("--data", required=True, help="JSONL: prompt (or question), image(s), and the response")
    p.add_argument("--out", required=True, help="output JSONL, one line per input row")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16)")
    p.add_argument(
        "--response-field",
        default="response",
        help="response field NAME: NAME, NAME_response, or NAME_caption + NAME_cot (default: response)",
    )
    p.add_argument("--max-length", type=int, default=None, help="longest prompt + response in tokens")
    p.add_argument("--image-dir", help="folder relative image paths resolve against (default: the data file's folder)")
    p.set_defaults(func=_score)


def _align_preview(args: argparse.Namespace) -> int:
    from prism_plugin.preview import format_preview, preview_alignment_step

    result = preview_alignment_step(
        args.policy, args.discriminator, args.data, num_prompts=args.num_prompts, config=args.config,
        num_generations=args.num_generations, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        seed=args.seed,
    )
    print(format_preview(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, ensure_ascii=False)
    return 0


def _add_align_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align-preview",
        help="dry-run one alignment step: rollouts, segments, discriminator scores, advantages, loss, reward",
    )
    p.add_argument("--policy", required=True, help="policy checkpoint directory (e.g. an SFT output)")
    p.add_argument("--discriminator", required=True, help="PRISM discriminator directory (prism-plugin upcycle)")
    p.add_argument("--data", required=True, help="alignment prompts (.jsonl/.json/.parquet with teacher segments)")
    p.add_argument("--config", help="a prism_align YAML: its prism_* keys (discriminator loss, segments, weights, "
                                     "G, lengths) and cutoff_len, checked as the run checks them")
    p.add_argument("--num-prompts", type=int, default=2)
    p.add_argument("--num-generations", type=int, help="rollouts per prompt (G; default the config's, else 4)")
    p.add_argument("--max-new-tokens", type=int, help="default the config's, else 64")
    p.add_argument("--temperature", type=float, help="default the config's, else 1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the per-rollout result as JSON here")
    p.set_defaults(func=_align_preview)


def _init(args: argparse.Namespace) -> int:
    from prism_plugin.resources import init_folder

    copied = init_folder(args.folder, force=args.force)
    print(json.dumps({"copied": copied, "next": f"cd {args.folder} && bash examples/tiny_pipeline.sh"}))
    return 0


def _add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="copy the shipped configs (yaml/) and examples (examples/) into a folder")
    p.add_argument("folder", help="where to put yaml/ and examples/ (created); run the pipeline from there")
    p.add_argument("--force", action="store_true", help="overwrite yaml/ and examples/ if they exist")
    p.set_defaults(func=_init)


def _paths(args: argparse.Namespace) -> int:
    from prism_plugin.easyr1 import paths

    if args.name is None:
        for name in paths.names():
            print(f"{name}\t{paths.path_of(name)}")
    else:
        print(paths.path_of(args.name))
    return 0


def _add_paths(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paths", help="print absolute paths of installed files EasyR1 needs (reward, format prompt …)")
    p.add_argument(
        "name", nargs="?", choices=["reward", "format-prompt", "preset-grpo", "preset-dapo", "preset-gspo"],
        help="one file (default: list all as NAME<TAB>PATH)",
    )
    p.set_defaults(func=_paths)


def _to_easyr1(args: argparse.Namespace) -> int:
    import sys

    from prism_plugin.easyr1.convert import image_storage, to_easyr1

    report = to_easyr1(
        args.input, args.output, image_dir=args.image_dir, skip_invalid=args.skip_invalid,
        embed_images=args.embed_images,
    )
    storage = image_storage(report.records, args.embed_images)
    print(report.summary())
    if storage == "paths":
        print(f"prism-plugin: {args.output} holds absolute image paths of this machine; every node of a "
              "multi-node Ray job must see them at the same paths, or rerun with --embed-images", file=sys.stderr)
    print(json.dumps({"output": str(args.output), "rows": len(report.records), "skipped": len(report.skipped),
                      "images": storage}))
    return 0


def _make_pairs(args: argparse.Namespace) -> int:
    import sys

    from prism_plugin.data.make_pairs import make_pairs
    from prism_plugin.errors import UserError

    report = make_pairs(
        args.policy, args.data, args.out, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, media_dir=args.image_dir,
        skip_invalid=args.skip_invalid, device=args.device, engine=args.engine,
    )
    details = report.details()
    if details:
        print(details, file=sys.stderr)
    if report.pairs_written == 0:
        print(json.dumps(report.summary()))
        raise UserError(f"no pair written to {args.out}: every sample was left out "
                        f"({dict(report.skipped_samples)}); see the lines above")
    from prism_plugin.data.dataset_info import PAIRS, file_entry, register

    name = args.dataset_name or f"prism_{Path(args.out).stem}"
    info = register(Path(args.out).parent, name, file_entry(args.out, PAIRS))
    print(json.dumps({**report.summary(), "dataset": name, "dataset_info": str(info)}))
    return 0


def _add_make_pairs(data_sub: argparse._SubParsersAction) -> None:
    q = data_sub.add_parser(
        "make-pairs", help="sample student responses from a policy and pair them with the teacher's (warm-up pairs)",
    )
    q.add_argument("--policy", required=True, help="policy checkpoint directory (e.g. the SFT output)")
    q.add_argument("--data", required=True, help="prompts with teacher segments (.jsonl/.json/.parquet, align format)")
    q.add_argument("--out", required=True, help="output pairs .jsonl (image paths written absolute)")
    q.add_argument("--num-samples", type=int, default=1, help="student samples per prompt (default 1)")
    q.add_argument("--max-new-tokens", type=int, default=512, help="longest sample in tokens (default 512)")
    q.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    q.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    q.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    q.add_argument("--image-dir", help="folder relative image paths resolve against (default: the input's folder)")
    q.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    q.add_argument("--skip-invalid", action="store_true", help="leave bad input rows out (counted, listed)")
    q.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf (transformers generate, default) or vllm (needs prism-plugin[vllm])")
    q.add_argument("--dataset-name", help="its entry in dataset_info.json beside --out (default: prism_<out stem>)")
    q.set_defaults(func=_make_pairs)


def _teach(args: argparse.Namespace) -> int:
    import os
    import sys

    from prism_plugin.data.teach import details, summary, teach
    from prism_plugin.errors import UserError

    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"environment variable {args.api_key_env} (named by --api-key-env) is not set or empty")
    report = teach(
        args.data, args.out, api_base=args.api_base, model=args.model, api_key=api_key,
        concurrency=args.concurrency, samples_per_prompt=args.samples_per_prompt, max_tokens=args.max_tokens,
        temperature=args.temperature, timeout=args.timeout, max_retries=args.max_retries,
        backoff_base=args.retry_base_delay, require_correct=args.require_correct, media_dir=args.image_dir,
        skip_invalid=args.skip_invalid,
    )
    lines = details(report)
    if lines:
        print(lines, file=sys.stderr)
    print(json.dumps(summary(report)))
    if report["stopped"]:
        raise UserError(f"stopped early: {report['stopped']}; {report['journal_lines']} answers are in "
                        f"{report['journal']}; rerun the same command to resume")
    if report["kept"] == 0:
        reasons = {reason: n for reason, n in report["dropped"].items() if n}
        raise UserError(f"no demonstration kept in {args.out}: every request was left out ({reasons}); "
                        "see the lines above and teach_report.json")
    return 0


def _add_teach(data_sub: argparse._SubParsersAction) -> None:
    q = data_sub.add_parser(
        "teach",
        help="ask a teacher behind an OpenAI-compatible API for demonstrations (SFT set, alignment rows)",
        description="Send each question to POST {api-base}/chat/completions with the PRISM system prompt; keep "
                    "the answers in the PRISM layout and write sft.json + dataset_info.json (Stage 1), "
                    "align.jsonl (Stage 2; also the teacher side of `data make-pairs`) and teach_report.json. "
                    "Resumable: answers are journaled in OUT/responses.jsonl and a re-run sends only the rest.",
    )
    q.add_argument("--data", required=True, help="question rows: prompt, image(s), optional answer/ground_truth")
    q.add_argument("--out", required=True, help="output folder (created; re-use it to resume)")
    q.add_argument("--api-base", required=True, help="base URL of the API, e.g. https://host/v1 (http/https only)")
    q.add_argument("--model", required=True, help="model name sent with each request")
    q.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (sent as a "
                                                        "Bearer token; default: no key)")
    q.add_argument("--concurrency", type=int, default=4, help="requests under way at once (default 4)")
    q.add_argument("--samples-per-prompt", type=int, default=1, help="answers asked per question (default 1)")
    q.add_argument("--max-tokens", type=int, default=2048, help="longest answer in tokens (default 2048)")
    q.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    q.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a request attempt may wait to connect or for data (default 120)")
    q.add_argument("--max-retries", type=int, default=5,
                   help="retries of a request on connection errors, time-outs, HTTP 429 and 5xx (default 5)")
    q.add_argument("--retry-base-delay", type=float, default=1.0,
                   help="first backoff in seconds, doubled per retry, with jitter (default 1)")
    q.add_argument("--require-correct", action="store_true",
                   help="keep only answers the verifiable reward marks correct, on rows with a ground truth")
    q.add_argument("--image-dir", help="folder relative image paths resolve against (default: the data's folder)")
    q.add_argument("--skip-invalid", action="store_true", help="leave bad input rows out (counted, listed)")
    q.set_defaults(func=_teach)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="teacher demonstrations; convert PRISM datasets for the toolkits; warm-up pairs")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    q = data_sub.add_parser(
        "to-easyr1", help="PRISM alignment/RLVR rows -> EasyR1 parquet (prompt, images, answer)",
        description="PRISM alignment/RLVR rows -> EasyR1 parquet (prompt, images, answer). Images are written "
        "as absolute paths of this machine unless --embed-images stores their bytes in the parquet: use it for "
        "multi-node Ray jobs, whose workers read the images on their own node. Data without images gets no "
        "images column, so EasyR1 reads it as text-only.",
    )
    q.add_argument("input", help="rows: .jsonl / .json / .parquet (prompt, images, answer or ground_truth)")
    q.add_argument("output", help="output .parquet")
    q.add_argument("--image-dir", help="folder relative image paths resolve against (default: the input's folder)")
    q.add_argument("--skip-invalid", action="store_true", help="leave bad rows out (counted, listed)")
    q.add_argument(
        "--embed-images", action="store_true",
        help="store image bytes in the parquet (self-contained; use for multi-node jobs) instead of absolute paths",
    )
    q.set_defaults(func=_to_easyr1)
    _add_make_pairs(data_sub)
    _add_teach(data_sub)


def _plan(args: argparse.Namespace) -> int:
    import sys

    from prism_plugin.plan import PlanError, build_plan, format_plan

    try:
        plan = build_plan(
            args.config, args.gpus, args.gpu_memory, policy_config=args.policy_config,
            discriminator_config=args.discriminator_config, upcycle_experts=args.upcycle_experts,
            upcycle_top_k=args.upcycle_top_k, prompt_tokens=args.prompt_tokens, reserve_gib=args.reserve_gib,
        )
    except PlanError as err:
        print(f"prism-plugin plan: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a training YAML (prism_align, prism_disc, sft), before renting")
    p.add_argument("config", help="LLaMA-Factory training YAML (relative paths in it resolve against the working dir)")
    p.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs (N)")
    p.add_argument("--gpu-memory", type=float, required=True, help="memory per GPU in GiB")
    p.add_argument("--policy-config", help="policy config dir or config.json (instead of model_name_or_path)")
    p.add_argument(
        "--discriminator-config",
        help="discriminator dir or config.json (instead of prism_discriminator / prism_disc's model_name_or_path): "
             "a PRISM discriminator, a qwen3_vl_moe backbone, or a dense Qwen3-VL / Qwen3 to upcycle",
    )
    p.add_argument("--upcycle-experts", type=int, help="experts when upcycling a dense config (default 4; 0: dense)")
    p.add_argument("--upcycle-top-k", type=int, help="experts per token when upcycling (default 2)")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="longest prompt in a rollout batch (default 1024)")
    p.add_argument("--reserve-gib", type=float, default=4.0, help="safety margin per GPU in GiB (default 4)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)


def _evaluate(args: argparse.Namespace) -> int:
    import sys

    from prism_plugin.evaluate import SUMMARY_NAME, evaluate

    result = evaluate(
        args.model, args.data, args.out, names=args.name, num_samples=args.num_samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        seed=args.seed, media_dir=args.image_dir, device=args.device, limit=args.limit,
        skip_invalid=args.skip_invalid, engine=args.engine,
    )
    details = result.details()
    if details:
        print(details, file=sys.stderr)
    print(result.table())
    written = [result.out_dir / SUMMARY_NAME, *([result.plot] if result.plot else [])]
    print("written: " + ", ".join(str(path) for path in written))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="did a stage help? answer accuracy, pass@k, layout, caption scores of policies side by side",
    )
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="policy checkpoint or LoRA adapter directory; repeat to compare several")
    p.add_argument("--data", required=True, help="rows with a ground truth (.jsonl/.json/.parquet; align or RLVR rows)")
    p.add_argument("--out", required=True, help="output folder: <name>.jsonl per model, summary.json, comparison.png")
    p.add_argument("--name", action="append", help="display name per --model, in order (default: the directory names)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per row, k of pass@k / mean@k (default 1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 (default) is greedy, --num-samples > 1 needs more")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest response in tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per generate call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model (default 0)")
    p.add_argument("--image-dir", help="folder relative image paths resolve against (default: the data file's folder)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--limit", type=int, help="evaluate only the first N usable rows")
    p.add_argument("--skip-invalid", action="store_true", help="leave bad rows out (counted, listed)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf (transformers generate, default) or vllm (needs prism-plugin[vllm])")
    p.set_defaults(func=_evaluate)


def _tiny_summary(args: argparse.Namespace) -> int:
    from prism_plugin.tiny.summary import summarize_demo, write_summary

    result = summarize_demo(args.eval, args.align, sft=args.sft_name, align=args.align_name, rlvr=args.rlvr_name)
    print(result.text())
    print("written: " + ", ".join(str(path) for path in write_summary(result, args.eval, args.align_name)))
    return 0


def _add_tiny_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-summary",
                       help="the tiny demo's result: the table, each stage's reading, the alignment's score-gap curve")
    p.add_argument("--eval", required=True, help="the prism-plugin evaluate --out folder (summary.json)")
    p.add_argument("--align", required=True, help="the alignment run's output_dir (trainer_state.json)")
    p.add_argument("--sft-name", default="sft", help="the SFT policy's --name in the evaluation (default sft)")
    p.add_argument("--align-name", default="align", help="the aligned policy's --name (default align)")
    p.add_argument("--rlvr-name", default="rlvr", help="the RLVR policy's --name (default rlvr)")
    p.set_defaults(func=_tiny_summary)


# Sub-command registrars: each adds one parser and sets ``func``; add new ones here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_init, _add_make_tiny, _add_upcycle, _add_import_discriminator, _add_score, _add_align_preview, _add_paths,
    _add_data, _add_plan, _add_evaluate, _add_tiny_summary,
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="prism-plugin", description="PRISM post-training tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``prism-plugin``; returns the process exit code. A user's mistake (a missing file, a
    bad row, a wrong kind of model) is one line on stderr and exit code 1; our own bugs keep their traceback."""
    import sys

    from prism_plugin.data.records import DatasetRowError
    from prism_plugin.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (UserError, DatasetRowError, FileNotFoundError) as err:
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"prism-plugin {command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
