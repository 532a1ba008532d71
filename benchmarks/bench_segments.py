"""Segment splitting: prism_plugin.segment_split.split_segments vs the reference's prefix decoding.

The reference finds the caption/reasoning boundary by decoding growing prefixes until one
contains the caption match (plus one full decode for validity). Both run here on the same
64 synthetic responses of up to 6,144 tokens, same tokenizer, one CPU thread.

    python benchmarks/bench_segments.py [--responses 64] [--max-tokens 6144] [--reference-sample 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.references
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from prism_plugin.segment_split import _byte_table, is_valid, split_segments  # noqa: E402
from prism_plugin.tiny.tokenizer import build_tokenizer  # noqa: E402
from tests.references import reference_boundary  # noqa: E402

WORDS = ["red", "blue", "green", "yellow", "square", "circle", "count", "total", "therefore", "3", "+", "=",
         "the", "image", "shows", "row", "column", "红色", "圆形", "🍎", "\\frac{1}{2}", "x^2", "(", ")", "\n"]


def make_response(rng: random.Random, tok, caption_tokens: int, total_tokens: int) -> list[int]:
    """A layout-valid response of about ``total_tokens`` tokens whose caption has ``caption_tokens``."""

    def words_for(n_tokens: int) -> str:
        out, count = [], 0
        while count < n_tokens:
            word = rng.choice(WORDS)
            out.append(word)
            count += len(tok(" " + word, add_special_tokens=False)["input_ids"])
        return " ".join(out)

    caption = words_for(caption_tokens)
    answer = str(rng.randint(0, 99))
    think = words_for(max(total_tokens - caption_tokens - 20, 1))
    text = f"<caption> {caption} </caption>\n<think> {think} </think>\n<answer> {answer} </answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"][: total_tokens - 1]
    return ids + [tok.eos_token_id]


def reference_split(ids: list[int], tok) -> tuple[bool, int]:
    """The reference algorithm: one full decode for validity, then prefix decodes for the boundary."""
    valid = is_valid(tok.decode(ids, skip_special_tokens=True))
    return valid, reference_boundary(ids, tok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=6144)
    parser.add_argument("--reference-sample", type=int, default=0,
                        help="time the reference on only this many responses and scale (0: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tok = build_tokenizer()
    rng = random.Random(args.seed)
    responses = []
    for i in range(args.responses):
        total = args.max_tokens if i % 4 == 0 else rng.randint(args.max_tokens // 8, args.max_tokens)
        responses.append(make_response(rng, tok, rng.randint(64, 768), total))
    width = max(map(len, responses))
    ids = torch.full((len(responses), width), tok.pad_token_id)
    mask = torch.zeros(len(responses), width, dtype=torch.long)
    for row, r in enumerate(responses):
        ids[row, : len(r)] = torch.tensor(r)
        mask[row, : len(r)] = 1
    n_tokens = int(mask.sum())

    _byte_table(tok)  # built once per tokenizer; timed separately below
    t0 = time.perf_counter()
    from prism_plugin.segment_split import _ByteTable

    _ByteTable(tok)
    table_s = time.perf_counter() - t0

    ours_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batch = split_segments(ids, tok, mask)
        ours_times.append(time.perf_counter() - t0)
    ours = statistics.median(ours_times)

    sample = responses[: args.reference_sample or len(responses)]
    t0 = time.perf_counter()
    ref = [reference_split(r, tok) for r in sample]
    ref_per_response = (time.perf_counter() - t0) / len(sample)
    ref_batch = ref_per_response * len(responses)

    for row, (valid, boundary) in enumerate(ref):
        assert bool(batch.valid[row]) == valid and int(batch.boundary[row]) == boundary, f"mismatch on row {row}"

    print(f"{len(responses)} responses, {n_tokens} tokens (max {width}), vocab {len(tok)}, 1 thread")
    print(f"reference timed on {len(sample)} responses and scaled to {len(responses)}; outputs identical on those")
    print()
    print(f"| {'':28} | {'prism-plugin':>14} | {'reference':>14} | {'ratio':>8} |")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 16}|{'-' * 10}|")
    print(f"| {'batch of ' + str(len(responses)) + ' (ms)':28} | {ours * 1e3:14.1f} | {ref_batch * 1e3:14.0f} | "
          f"{ref_batch / ours:7.0f}x |")
    print(f"| {'per response (ms)':28} | {ours / len(responses) * 1e3:14.3f} | {ref_per_response * 1e3:14.1f} | "
          f"{ref_per_response / (ours / len(responses)):7.0f}x |")
    print(f"| {'one-off byte table (ms)':28} | {table_s * 1e3:14.1f} | {'-':>14} | {'':8} |")


if __name__ == "__main__":
    main()
