"""Did a stage help? ``prism-plugin evaluate``: policies side by side on rows with a verifiable answer.

Each policy (a full checkpoint or a LoRA adapter directory, text or vision-language) answers every
row — greedy by default, or ``num_samples`` samples per row at a temperature above 0 — through
:func:`prism_plugin.policy.sample`, the sampler of every other command. Every response is scored with
the verifiable reward of the RLVR stage (:func:`prism_plugin.rewards.compute_score`). Per policy:

- ``accuracy`` — mean@k: the mean answer accuracy over all ``k`` samples of all rows (with ``k = 1``,
  plain accuracy);
- ``pass@k`` (``k > 1``) — the unbiased pass@k estimator (:func:`pass_at_k`) averaged over rows; with
  ``n = k`` samples per row it is the share of rows with at least one correct sample;
- ``layout_valid`` — the share of samples in the PRISM layout that ended within the token budget;
- ``truncated`` — the share of samples that hit ``max_new_tokens`` without an end-of-turn token;
- ``response_tokens`` — the mean sample length in tokens (up to and including the end-of-turn token);
- on rows with a teacher caption (``teacher_caption``): ``caption_exact_match``
  (:func:`caption_exact_match`) and ``caption_token_f1`` (:func:`caption_token_f1`), means over those
  rows' samples. Only a layout-valid sample has a caption segment; any other sample scores 0 on both.

Accuracy and reward are ``compute_score`` of the decoded text (no overlong shaping), as RLVR rewards it;
``summary.json`` records the reward's ``reward_version`` (:data:`prism_plugin.rewards.REWARD_VERSION`):
accuracies measured under different versions are not comparable.
``<name>.jsonl`` holds one line per (row, sample): ``row`` (the data file's 1-based row), ``sample``,
``response``, ``ground_truth``, ``valid_layout``, ``truncated``, ``accuracy``, ``reward``,
``response_tokens`` and, where the row has a teacher caption, the two caption scores.

Rows are read by :func:`prism_plugin.data.records.load_prompts` (alignment or RLVR rows; a ground
truth is required, the teacher is optional). Every policy samples from the same seed; samples depend
on the seed, the batch size and the device.
"""

from __future__ import annotations

import gc
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_plugin.errors import UserError, check_at_least_one
from prism_plugin.layout import CAPTION_CLOSE, CAPTION_OPEN, Segments, caption_match

SUMMARY_NAME = "summary.json"
PLOT_NAME = "comparison.png"


# --------------------------------------------------------------------------- metric helpers


def caption_contents(caption: str) -> str:
    """The text between ``<caption>`` and ``</caption>`` of a caption segment (tags excluded)."""
    match = caption_match(caption)
    if match is None:
        raise ValueError(f"not a caption segment: {caption!r}")
    return match.group(0)[len(CAPTION_OPEN) : -len(CAPTION_CLOSE)]


def normalize_whitespace(text: str) -> str:
    """``text`` with every run of whitespace made one space and the ends stripped."""
    return " ".join(text.split())


def caption_exact_match(predicted: str | None, teacher: str) -> float:
    """1.0 when the contents of the ``predicted`` caption segment equal the ``teacher``'s after
    :func:`normalize_whitespace` (case and punctuation count), else 0.0; no caption (None) is 0.0."""
    if predicted is None:
        return 0.0
    return float(normalize_whitespace(caption_contents(predicted)) == normalize_whitespace(caption_contents(teacher)))


def caption_token_f1(predicted: str | None, teacher: str) -> float:
    """SQuAD-style bag-of-words F1 of two caption segments: the contents (tags excluded), lowercased and
    split on whitespace (no punctuation or article removal: counts such as ``red 3`` are the content);
    overlap = the size of the multiset intersection, precision = overlap / predicted tokens, recall =
    overlap / teacher tokens, F1 their harmonic mean. Two empty captions score 1.0, one empty 0.0; no
    caption (None) is 0.0."""
    if predicted is None:
        return 0.0
    pred, gold = caption_contents(predicted).lower().split(), caption_contents(teacher).lower().split()
    if not pred or not gold:
        return float(pred == gold)
    overlap = sum((Counter(pred) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: the chance that ``k`` samples drawn
    without replacement from the ``n`` hold at least one correct one, ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_at_k(correct: Sequence[Sequence[float]]) -> float:
    """mean@k: the mean accuracy over every sample of every row (``correct[row][sample]``)."""
    values = [value for row in correct for value in row]
    return sum(values) / len(values)


def mean_pass_at_k(correct: Sequence[Sequence[float]], k: int) -> float:
    """pass@k averaged over rows; a sample counts as correct when its accuracy is 1."""
    return sum(pass_at_k(len(row), sum(1 for v in row if v == 1.0), k) for row in correct) / len(correct)


# --------------------------------------------------------------------------- one sample, one policy


def score_sample(record: Any, sample: int, text: str, valid: bool, truncated: bool, tokens: int) -> dict[str, Any]:
    """The JSONL line of one sample: where it comes from, the response, its layout and reward, its caption
    scores when the row carries a teacher caption."""
    from prism_plugin.rewards import compute_score

    scores = compute_score(text, record.ground_truth)
    line = {"row": record.row, "sample": sample, "response": text, "ground_truth": record.ground_truth,
            "valid_layout": valid, "truncated": truncated, "accuracy": scores["accuracy"],
            "reward": scores["overall"], "response_tokens": tokens}
    if record.teacher is not None:
        segments = Segments.from_response(text) if valid else None
        caption = None if segments is None else segments.caption
        line["caption_exact_match"] = caption_exact_match(caption, record.teacher.caption)
        line["caption_token_f1"] = caption_token_f1(caption, record.teacher.caption)
    return line


def summarize(lines: Sequence[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """A policy's metrics (see the module docstring) from its per-sample lines."""
    def mean(key: str, rows: Sequence[dict[str, Any]] = lines) -> float:
        return sum(float(line[key]) for line in rows) / len(rows)

    by_row: dict[int, list[float]] = {}
    for line in lines:
        by_row.setdefault(line["row"], []).append(line["accuracy"])
    metrics: dict[str, Any] = {"samples": len(lines), "accuracy": mean_at_k(list(by_row.values()))}
    if num_samples > 1:
        metrics[f"pass@{num_samples}"] = mean_pass_at_k(list(by_row.values()), num_samples)
    metrics.update(layout_valid=mean("valid_layout"), truncated=mean("truncated"),
                   response_tokens=mean("response_tokens"))
    captioned = [line for line in lines if "caption_exact_match" in line]
    if captioned:
        metrics["caption_rows"] = len({line["row"] for line in captioned})
        metrics["caption_exact_match"] = mean("caption_exact_match", captioned)
        metrics["caption_token_f1"] = mean("caption_token_f1", captioned)
    return metrics


def evaluate_policy(
    policy_dir: str | Path, records: Sequence[Any], out_file: Path, *, num_samples: int, sampling: Any,
    batch_size: int, seed: int, device: str | None = None, desc: str = "evaluate", progress: bool = True,
    engine: str = "hf",
) -> tuple[list[dict[str, Any]], bool]:
    """Sample ``num_samples`` responses per record from the policy in ``policy_dir``, ``batch_size`` records
    per engine call, with ``engine`` (``hf`` or ``vllm``: :mod:`prism_plugin.vllm_rollout.checkpoint`); score
    each, write one JSONL line per sample to ``out_file``. Returns the lines and whether the policy sees
    images."""
    import torch
    from tqdm.auto import tqdm

    from prism_plugin.policy import sample
    from prism_plugin.vllm_rollout.checkpoint import policy_and_engine

    lines: list[dict[str, Any]] = []
    with policy_and_engine(policy_dir, engine, device=device, seed=seed) as (policy, processor, vision, sampler), \
            out_file.open("w", encoding="utf-8") as handle, \
            tqdm(total=len(records), desc=desc, unit="prompt", disable=not progress) as bar:
        torch.manual_seed(seed)
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            _, split = sample(policy, processor, vision, batch, num_samples, sampling, engine=sampler)
            for i, text in enumerate(split.texts):
                line = score_sample(batch[i // num_samples], i % num_samples, text, bool(split.valid[i]),
                                    bool(split.truncated[i]), int(split.lengths[i]))
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                lines.append(line)
            bar.update(len(batch))
    del policy, sampler
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return lines, vision


# --------------------------------------------------------------------------- several policies


def default_names(models: Sequence[str | Path]) -> list[str]:
    """Display names: each directory's name, with as many parent names (joined by ``-``) as it takes to tell
    different directories apart; the same directory given again is numbered (``-2`` …)."""
    paths = [Path(model).resolve() for model in models]
    names = []
    for path in paths:
        others = {other for other in paths if other != path}
        depth = 1
        while depth < len(path.parts) - 1 and any(o.parts[-depth:] == path.parts[-depth:] for o in others):
            depth += 1
        names.append("-".join(path.parts[-depth:]))
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _check_names(names: Sequence[str], models: Sequence[str | Path]) -> list[str]:
    if len(names) != len(models):
        raise UserError(f"{len(names)} --name for {len(models)} --model; give one name per model (or none)")
    for name in names:
        if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
            raise UserError(f"--name {name!r} cannot be a file name: use letters, digits, '-', '_'")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise UserError(f"--name {repeated[0]!r} is given twice; names must be unique (each names a JSONL file)")
    return list(names)


@dataclass
class Evaluation:
    """What :func:`evaluate` wrote: the summary (also ``summary.json``), per-policy JSONL files, the chart."""

    out_dir: Path
    summary: dict[str, Any]
    skipped: list[Any] = field(default_factory=list)
    plot: Path | None = None

    def table(self) -> str:
        """One row per policy, the metrics as columns (``-`` where a metric does not apply)."""
        return format_table(self.summary["models"])

    def details(self) -> str:
        """Lines for the skipped rows and for text-only policies shown rows with images."""
        lines = [f"row skipped: {err}" for err in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"… {len(self.skipped) - 20} more rows skipped (all listed in {SUMMARY_NAME})")
        with_images = self.summary["rows_with_images"]
        for name, metrics in self.summary["models"].items():
            if with_images and not metrics["vision"]:
                lines.append(f"{name} is a text-only policy: the images of {with_images} rows are not shown to it")
        return "\n".join(lines)


def metric_columns(models: dict[str, dict[str, Any]]) -> list[str]:
    """The metric names present for any policy, in a fixed order."""
    order = ["accuracy", *sorted({k for m in models.values() for k in m if k.startswith("pass@")}), "layout_valid",
             "truncated", "response_tokens", "caption_exact_match", "caption_token_f1"]
    return [key for key in order if any(key in m for m in models.values())]


def format_table(models: dict[str, dict[str, Any]]) -> str:
    """The comparison table as aligned text: a ``model`` column, then one column per metric."""
    columns = metric_columns(models)
    rows = [["model", *columns]]
    for name, metrics in models.items():
        cells = [name]
        for key in columns:
            value = metrics.get(key)
            cells.append("-" if value is None else f"{value:.1f}" if key == "response_tokens" else f"{value:.3f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    return "\n".join(line(row) for row in rows)


def draw_comparison(ax: Any, models: dict[str, dict[str, Any]]) -> None:
    """The rate metrics (accuracy, pass@k, layout-valid, truncation, caption scores) as bars on ``ax``, one bar
    per policy side by side within each metric, each labelled with its value."""
    columns = [key for key in metric_columns(models) if key != "response_tokens"]
    width = 0.8 / len(models)
    for i, (name, metrics) in enumerate(models.items()):
        positions = [x + (i - (len(models) - 1) / 2) * width for x in range(len(columns))]
        bars = ax.bar(positions, [metrics.get(key) or 0.0 for key in columns], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(columns)), [key.replace("_", "\n", 1).replace("_", " ") for key in columns])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate")


def comparison_width(models: dict[str, dict[str, Any]]) -> float:
    """Width in inches that :func:`draw_comparison`'s bars of ``models`` need."""
    columns = [key for key in metric_columns(models) if key != "response_tokens"]
    return 2.0 + 1.2 * len(columns) * max(1.0, len(models) / 3)


def plot_comparison(models: dict[str, dict[str, Any]], out_dir: str | Path) -> Path:
    """Bar chart of :func:`draw_comparison`; saved as ``out_dir/comparison.png``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(comparison_width(models), 4.5), layout="constrained")
    ax = fig.subplots()
    draw_comparison(ax, models)
    ax.set_title("prism-plugin evaluate")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(out_dir) / PLOT_NAME
    fig.savefig(path, format="png", dpi=100)
    return path


def evaluate(
    models: Sequence[str | Path],
    data: str | Path,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    media_dir: str | Path | None = None,
    device: str | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    engine: str = "hf",
) -> Evaluation:
    """Evaluate each policy of ``models`` on the rows of ``data``; write ``out_dir/<name>.jsonl`` per policy,
    ``summary.json`` and, for several policies, ``comparison.png``.

    Greedy (``temperature`` 0) by default; ``num_samples`` > 1 needs ``temperature`` > 0. ``limit`` keeps
    the first usable rows. Every mistake (an option, a path, a directory that is no policy, a bad row, a
    file without usable rows) is raised before the first policy loads. ``engine`` ``vllm`` samples with vLLM
    (the whole GPU per policy, no weight sync; a missing or unsupported vLLM is one error line).
    """
    from prism_plugin.data.records import load_prompts
    from prism_plugin.policy import policy_config, policy_device
    from prism_plugin.rewards import REWARD_VERSION
    from prism_plugin.rollout import Sampling

    if not models:
        raise UserError("give at least one --model")
    check_at_least_one(("--num-samples", num_samples), ("--max-new-tokens", max_new_tokens),
                       ("--batch-size", batch_size), ("--limit", limit))
    if temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or more; got {temperature}")
    if num_samples > 1 and temperature == 0:
        raise UserError(f"--num-samples {num_samples} with --temperature 0: greedy decoding gives the same response "
                        "every time; give --temperature above 0 (e.g. 1.0) to sample")
    names = _check_names(names, models) if names else default_names(models)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a directory")
    device = policy_device(device)
    if engine == "vllm":
        from prism_plugin.vllm_rollout.versions import require_vllm

        require_vllm("--engine vllm")
    for model in models:
        policy_config(model)

    loaded = load_prompts(data, teacher="optional", require_ground_truth=True, skip_invalid=skip_invalid,
                          media_dir=media_dir, limit=limit)
    records = loaded.records
    sampling = Sampling(max_new_tokens, temperature=temperature)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "data": str(Path(data).resolve()), "rows": len(records), "rows_skipped": len(loaded.skipped),
        "skipped": [str(err) for err in loaded.skipped],
        "rows_with_images": sum(1 for r in records if r.images),
        "num_samples": num_samples, "temperature": temperature, "max_new_tokens": max_new_tokens,
        "batch_size": batch_size, "seed": seed, "reward_version": REWARD_VERSION, "models": {},
    }
    for model, name in zip(models, names, strict=True):
        out_file = out_dir / f"{name}.jsonl"
        lines, vision = evaluate_policy(model, records, out_file, num_samples=num_samples, sampling=sampling,
                                        batch_size=batch_size, seed=seed, device=device, desc=name,
                                        progress=progress, engine=engine)
        summary["models"][name] = {"model": str(Path(model).resolve()), "jsonl": out_file.name, "vision": vision,
                                   **summarize(lines, num_samples)}
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot = plot_comparison(summary["models"], out_dir) if len(models) > 1 else None
    return Evaluation(out_dir, summary, list(loaded.skipped), plot)
