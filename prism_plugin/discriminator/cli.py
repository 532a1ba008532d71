"""Implementations of ``prism-plugin upcycle`` and ``prism-plugin score`` (the parsers live in ``prism_plugin.cli``)."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from prism_plugin.discriminator.texts import PreparedText, RowError, TextScorer


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


def response_of(row: dict[str, Any], name: str) -> tuple[str, str]:
    """The response text of ``row`` for ``--response-field name`` and the field it came from.

    ``row[name]``, else ``row[name + "_response"]``, else ``row[name + "_caption"] + "\\n" +
    row[name + "_cot"]`` (the pair format of the discriminator warm-up data).
    """
    for key in (name, f"{name}_response"):
        if isinstance(row.get(key), str):
            return row[key], key
    caption, cot = row.get(f"{name}_caption"), row.get(f"{name}_cot")
    if isinstance(caption, str) and isinstance(cot, str):
        return f"{caption}\n{cot}", f"{name}_caption/{name}_cot"
    expected = f"{name!r}, '{name}_response' or '{name}_caption' + '{name}_cot'"
    raise RowError(name, f"no response: expected {expected}", "missing_field")


def _prepare_row(scorer: TextScorer, row: Any, base: Path, response_field: str) -> tuple[PreparedText, str]:
    if not isinstance(row, dict):
        raise RowError("<row>", "a JSON object per line is expected", "bad_json")
    prompt = row.get("prompt", row.get("question"))
    if not isinstance(prompt, str):
        raise RowError("prompt", "missing (expected a string 'prompt' or 'question')", "missing_field")
    images = row.get("images", row.get("image"))
    field = "images" if "images" in row else "image"
    if isinstance(images, str):
        images = [images]
    if images is not None and not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
        raise RowError(field, "expected a path or a list of paths", "bad_field")
    paths = [p if Path(p).is_absolute() else base / p for p in images or []]
    for path in paths:
        if not Path(path).is_file():
            raise RowError(field, f"image file {str(path)!r} not found", "missing_image")
    response, source = response_of(row, response_field)
    return scorer.prepare(prompt, response, paths or None), source


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
    from transformers import AutoModel

    import prism_plugin.discriminator  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(args.discriminator, dtype=torch.float32).eval()
    scorer = TextScorer(model)
    if args.max_length:
        scorer.max_length = args.max_length
    data = Path(args.data)
    names = list(model.config.segments)
    clip = model.config.score_clip
    lines = data.read_text(encoding="utf-8").splitlines()
    todo = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    bad: Counter[str] = Counter()
    sums = dict.fromkeys(names, 0.0)
    num_valid = 0

    def report(n: int, message: str) -> None:
        tqdm.write(f"{data}:{n}: {message}", file=sys.stderr)

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out, tqdm(total=len(todo), desc="scoring", unit="row") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            results: dict[int, dict[str, Any]] = {}
            ready: list[tuple[int, PreparedText]] = []
            for n, line in batch:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    bad["bad_json"] += 1
                    report(n, f"not valid JSON ({err.msg})")
                    results[n] = {"line": n, "error": f"not valid JSON ({err.msg})"}
                    continue
                try:
                    prepared, source = _prepare_row(scorer, row, data.parent, args.response_field)
                except RowError as err:
                    bad[err.reason] += 1
                    report(n, str(err))
                    results[n] = {"line": n, "error": str(err)}
                    continue
                if not prepared.valid:
                    bad["layout"] += 1
                    report(n, f"field {source!r}: response is not in the <caption>/<think>/<answer> layout")
                ready.append((n, prepared))
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
    return 0
