"""Discriminator scoring: shared-prefix reuse vs the reference's 4 full forwards per sample.

One alignment group = one prompt (system prompt + question + one image of >= 256 visual tokens),
G rollouts and one teacher demonstration. The reference scores each rollout against the teacher
with 4 full forwards (student caption, student reasoning, teacher caption, teacher reasoning;
vision tower included each time): 4G sequences. prism-plugin encodes the prompt once (vision
tower, M-RoPE positions, KV cache) and scores the 2(G+1) distinct segments as batched
continuations over that cache. Tiny upcycled Qwen3-VL-MoE discriminator, fp32, one CPU thread.

    python benchmarks/bench_disc_scoring.py [--group 16] [--image-side 448] [--caption 96] [--reasoning 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from prism_plugin.discriminator import SegmentQuery, score, upcycle  # noqa: E402
from prism_plugin.discriminator.modeling import PrismDiscriminator  # noqa: E402
from prism_plugin.discriminator.rendering import TextScorer  # noqa: E402
from prism_plugin.tiny import make_tiny  # noqa: E402
from prism_plugin.tiny.processor import PATCH_SIZE  # noqa: E402

QUESTION = (
    "Look at the picture and count the shapes of each colour in every row and column. "
    "How many red and blue shapes are there in total? Explain the counting briefly, "
    "then give the number only as the final answer."
)


def segment_ids(rng: torch.Generator, tok, length: int, opener: str, closer: str, eot: int | None) -> list[int]:
    """``opener`` + random text tokens + ``closer`` (+ end-of-turn), ``length`` tokens in all."""
    head = tok(opener, add_special_tokens=False)["input_ids"]
    tail = tok(closer, add_special_tokens=False)["input_ids"] + ([eot] if eot is not None else [])
    body = torch.randint(0, 1200, (max(length - len(head) - len(tail), 1),), generator=rng).tolist()
    return head + body + tail


def timed(fn, repeats: int) -> tuple[float, list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=16, help="rollouts per prompt (G)")
    parser.add_argument("--image-side", type=int, default=448, help="square image side in pixels (448: 256 tokens)")
    parser.add_argument("--caption", type=int, default=96, help="caption segment tokens")
    parser.add_argument("--reasoning", type=int, default=256, help="reasoning segment tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward, both methods")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the median is shown")
    parser.add_argument("--mode", choices=["shared", "dedicated"], default="shared")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tiny(root / "tiny", seed=0, num_examples=1)
        upcycle(root / "tiny" / "qwen3_vl_dense", root / "disc", expert_mode=args.mode, router_std=1.0)
        model = PrismDiscriminator.from_pretrained(root / "disc").eval()
        scorer = TextScorer(model)
        side = args.image_side
        scorer.processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": side * side}
        image = Image.new("RGB", (side, side), (200, 60, 60))
        prompt = scorer.render_prompt("<image>" + QUESTION, [image])

    tok = scorer.tokenizer
    grid = prompt.image_grid_thw[0].tolist()
    visual = grid[0] * grid[1] * grid[2] // 4
    rng = torch.Generator().manual_seed(0)
    eot = scorer.eot
    # Rollout g (g < G) and the teacher (index G): caption and reasoning segments of realistic relative length.
    segments = []
    for _ in range(args.group + 1):
        jitter = int(torch.randint(-8, 9, (1,), generator=rng))
        caption = segment_ids(rng, tok, args.caption + jitter, "<caption> ", " </caption>", None)
        closer = " </think>\n<answer> 7 </answer>"
        reasoning = segment_ids(rng, tok, args.reasoning + 4 * jitter, "\n<think> ", closer, eot)
        segments.append((caption, reasoning))
    teacher = segments[-1]
    # Reference: per rollout, student caption, student reasoning, teacher caption, teacher reasoning.
    reference_queries = []
    for g in range(args.group):
        for ids, name in ((segments[g][0], "caption"), (segments[g][1], "reasoning"), (teacher[0], "caption"),
                          (teacher[1], "reasoning")):
            reference_queries.append(SegmentQuery(0, name, ids))
    names = ("caption", "reasoning")
    distinct = [SegmentQuery(0, n, ids) for pair in segments for ids, n in zip(pair, names, strict=True)]

    with torch.no_grad():
        score(model, [prompt], distinct[:4], reuse_prefix=True)  # warm-up (lazy inits)
        score(model, [prompt], distinct[:4], reuse_prefix=False)
        t_ref, ref_runs, ref = timed(
            lambda: score(model, [prompt], reference_queries, reuse_prefix=False, batch_size=args.batch_size),
            args.repeats,
        )
        t_dedup, dedup_runs, dedup = timed(
            lambda: score(model, [prompt], distinct, reuse_prefix=False, batch_size=args.batch_size), args.repeats
        )
        t_fast, fast_runs, fast = timed(
            lambda: score(model, [prompt], distinct, reuse_prefix=True, batch_size=args.batch_size), args.repeats
        )

    # Map the reference's 4G scores onto the 2(G+1) distinct segments and compare.
    ref = ref.view(args.group, 4)
    from_ref = torch.cat([ref[:, :2].reshape(-1), ref[0, 2:]])
    diff_ref = (from_ref - fast).abs().max().item()
    diff_teacher = (ref[:, 2:] - ref[0, 2:]).abs().max().item()
    diff_dedup = (dedup - fast).abs().max().item()
    prompt_len = len(prompt.input_ids)
    seg_tokens = sum(len(c) + len(r) for c, r in segments)

    print(f"G={args.group}, mode={args.mode}, prompt {prompt_len} tokens ({visual} visual, grid {grid}, "
          f"patch {PATCH_SIZE}), caption ~{args.caption}, reasoning ~{args.reasoning} tokens, "
          f"{seg_tokens} segment tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print()
    rows = [
        ("reference: 4 full forwards per sample", 4 * args.group, t_ref, ref_runs),
        ("full forwards, distinct segments only", 2 * (args.group + 1), t_dedup, dedup_runs),
        ("shared prefix: 1 prefix + continuations", 2 * (args.group + 1), t_fast, fast_runs),
    ]
    print(f"| {'method':<40} | {'sequences':>9} | {'ms / group (range)':>20} | {'vs reference':>12} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 22}|{'-' * 14}|")
    for name, n, t, runs in rows:
        cell = f"{t * 1000:.0f} ({min(runs) * 1000:.0f}-{max(runs) * 1000:.0f})"
        print(f"| {name:<40} | {n:>9} | {cell:>20} | {t_ref / t:>11.1f}x |")
    print()
    print(f"max |score difference|: shared prefix vs reference {diff_ref:.2e}, vs distinct full forwards "
          f"{diff_dedup:.2e}; teacher scores across the reference's {args.group} copies {diff_teacher:.2e}")


if __name__ == "__main__":
    main()
