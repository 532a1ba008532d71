"""Implementations of ``prism-plugin upcycle`` and ``prism-plugin score`` (the parsers live in ``prism_plugin.cli``)."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from prism_plugin.data.records import DatasetRowError, RowReader, read_rows
from prism_plugin.discriminator.rendering import PreparedText, TextScorer
from prism_plugin.errors import UserError, check_at_least_one, did_you_mean


def run_upcycle(args: Any) -> int:
    """Upcycle ``args.dense_dir`` into ``args.out_dir`` and print a one-line JSON summary."""
    from prism_plugin.discriminator.upcycle import upcycle

    out = upcycle(
        args.dense_dir,
        args.out_dir,
        num_experts=args.num_experts,
        top_k=args.top_k,
        noise_std=args.noise_std,
        router_std=args.router_std,
        expert_mode=args.expert_mode,
        seed=args.seed,
        num_shared_experts=args.num_shared_experts,
    )
    print(json.dumps({"discriminator": str(out), "num_experts": args.num_experts, "expert_mode": args.expert_mode}))
    return 0


def run_import(args: Any) -> int:
    """Load ``args.src`` (any format :func:`load_discriminator` reads) in its own dtype and save it, with its
    tokenizer and processor files, as a prism-plugin discriminator in ``args.out``."""
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.upcycle import copy_processor_files

    model = load_discriminator(args.src, dtype=None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copied = copy_processor_files(args.src, out)
    print(json.dumps({"discriminator": str(out), "segment_format": model.config.segment_format,
                      "dtype": str(model.checkpoint_dtype).removeprefix("torch."), "processor_files": copied}))
    return 0


def _prepare_row(scorer: TextScorer, reader: RowReader, response_field: str) -> tuple[PreparedText, str]:
    """Render and split one row through the one row parser; :class:`DatasetRowError` for an unusable row."""
    images = reader.images()
    prompt = reader.prompt(images)
    response, source = reader.response_text(response_field)
    try:
        return scorer.prepare(prompt, response, list(images) or None), source
    except DatasetRowError as err:
        raise err.at(reader.path, reader.row_no) from None


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def run_score(args: Any) -> int:
    """Score every row of ``args.data``; one JSON line per row in ``args.out``, a summary on stdout."""
    import torch

    with torch.no_grad():  # scoped: a caller in the same process keeps its grad mode
        return _run_score(args)


def _run_score(args: Any) -> int:
    import torch
    from tqdm import tqdm

    from prism_plugin.discriminator.loading import load_discriminator

    check_at_least_one(("--batch-size", args.batch_size), ("--max-length", args.max_length))
    model = load_discriminator(args.discriminator, dtype=torch.float32).eval()
    scorer = TextScorer(model)
    if args.max_length:
        scorer.max_length = args.max_length
    data = Path(args.data)
    media = Path(args.image_dir) if getattr(args, "image_dir", None) else data.parent
    names = list(model.config.segments)
    clip = model.config.score_clip
    todo = list(read_rows(data))
    bad: Counter[str] = Counter()
    sums = dict.fromkeys(names, 0.0)
    num_valid = prepared_rows = 0

    def report(n: int, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out, tqdm(total=len(todo), desc="scoring", unit="row") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            results: dict[int, dict[str, Any]] = {}
            ready: list[tuple[int, PreparedText]] = []
            for n, row in batch:
                try:
                    if isinstance(row, DatasetRowError):
                        raise row
                    prepared, source = _prepare_row(scorer, RowReader(data, n, row, media), args.response_field)
                except DatasetRowError as err:
                    bad[err.reason] += 1
                    report(n, str(err))
                    results[n] = {"line": n, "error": str(err)}
                    continue
                if not prepared.valid:
                    bad["layout"] += 1
                    report(n, f"{data}, row {n}, field '{source}': response is not in the <caption>/<think>/<answer> "
                              "layout")
                ready.append((n, prepared))
                prepared_rows += 1
            if ready:
                scores = scorer.score_prepared([p for _, p in ready], batch_size=args.batch_size, clip=clip)
                for k, (n, prepared) in enumerate(ready):
                    record: dict[str, Any] = {"line": n, "valid": prepared.valid}
                    for name in names:
                        record[name] = _finite(scores[name][k].item())
                    if prepared.valid:
                        num_valid += 1
                        for name in names:
                            sums[name] += scores[name][k].item()
                    results[n] = record
            for n, _ in batch:
                out.write(json.dumps(results[n]) + "\n")
            bar.update(len(batch))
    summary = {
        "rows": len(todo),
        "scored": num_valid,
        "fraction_valid": round(num_valid / len(todo), 6) if todo else 0.0,
        "mean_score": {name: (round(sums[name] / num_valid, 6) if num_valid else None) for name in names},
        "bad_rows": sum(bad.values()),
        "bad_by_reason": dict(sorted(bad.items())),
        "out": str(out_path),
    }
    print(json.dumps(summary))
    if prepared_rows == 0:
        fields = sorted({k for _, row in todo if isinstance(row, dict) for k in row})
        raise UserError(f"no row of {data} could be scored ({dict(sorted(bad.items()))}); --response-field "
                        f"{args.response_field!r}{did_you_mean(args.response_field, fields)}; fields in the file: "
                        f"{', '.join(fields) or 'none'}")
    return 0
