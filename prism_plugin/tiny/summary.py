"""What the tiny demo's result shows: each stage's change in one line, and the alignment stage's own curve.

``prism-plugin tiny-summary --eval DIR --align DIR`` reads the ``summary.json`` of ``prism-plugin evaluate``
(policies named ``sft``, ``align`` and ``rlvr`` by default) and the alignment run's log
(``trainer_state.json``'s ``log_history``), prints the table with one reading per stage beneath it and the
discriminator's teacher − policy score gap at the start and end of alignment, and writes the same as
``summary.md`` beside the table, and ``comparison.png`` redrawn with the readings and the gap curve.

The alignment stage is read by what PRISM claims it does: the discriminator's score gap between the teacher's
segments and the policy's closes, and the policy's held-out captions move toward the teacher's, with the
layout kept. When this run's numbers do not show that, the verdict says so. The thresholds are
:data:`LAYOUT_TOLERANCE` (a drop in the layout-valid rate up to this is "kept") and the sign of the changes;
at 32 held-out prompts one prompt is 0.031 of a rate.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_plugin.errors import UserError
from prism_plugin.evaluate import PLOT_NAME, SUMMARY_NAME, comparison_width, draw_comparison, format_table

SUMMARY_MD = "summary.md"
LAYOUT_TOLERANCE = 0.05  # layout-valid may fall this much and still count as kept
BOOTSTRAP_RESAMPLES = 2000
GAP_KEYS = ("caption/score_gap", "reasoning/score_gap")
CURVE_KEYS = (*GAP_KEYS, "valid_ratio")


# --------------------------------------------------------------------------- the alignment log


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``log_history`` of ``run_dir/trainer_state.json`` (empty when the file is missing)."""
    state = Path(run_dir) / "trainer_state.json"
    if not state.is_file():
        return []
    return list(json.loads(state.read_text(encoding="utf-8")).get("log_history", []))


def curve(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every log entry that has ``key``, in step order."""
    return sorted((int(entry["step"]), float(entry[key])) for entry in history if key in entry and "step" in entry)


@dataclass(frozen=True)
class CurveEnds:
    """A logged curve's start and end: the means of its first and last ``window`` points and their steps."""

    start: float
    end: float
    start_steps: tuple[int, int]
    end_steps: tuple[int, int]
    noise: float = 0.0  # the standard error of end − start, from the spread of the points in each window

    @property
    def change(self) -> float:
        return self.end - self.start

    @property
    def beyond_noise(self) -> bool:
        """The change is more than twice its standard error (with one point per window: any change)."""
        return abs(self.change) > 2 * self.noise

    def describe(self, fmt: str = "{:+.2f}") -> str:
        """``+2.31 (steps 2–6) → +1.05 (steps 20–24)``."""
        def steps(span: tuple[int, int]) -> str:
            return f"step {span[0]}" if span[0] == span[1] else f"steps {span[0]}–{span[1]}"

        start, end = fmt.format(self.start), fmt.format(self.end)
        return f"{start} ({steps(self.start_steps)}) → {end} ({steps(self.end_steps)})"


def curve_ends(points: list[tuple[int, float]], window: int | None = None) -> CurveEnds | None:
    """Start and end of a curve as the means of its first and last ``window`` points (default: a quarter of
    them, at least one), which smooths single noisy batches; None for an empty curve."""
    if not points:
        return None
    window = max(1, len(points) // 4) if window is None else max(1, min(window, len(points)))
    head, tail = [v for _, v in points[:window]], [v for _, v in points[-window:]]

    def variance_of_mean(values: list[float]) -> float:
        return statistics.variance(values) / len(values) if len(values) > 1 else 0.0

    return CurveEnds(start=statistics.fmean(head), end=statistics.fmean(tail),
                     start_steps=(points[0][0], points[window - 1][0]), end_steps=(points[-window][0], points[-1][0]),
                     noise=math.sqrt(variance_of_mean(head) + variance_of_mean(tail)))


def alignment_curves(history: list[dict[str, Any]]) -> dict[str, CurveEnds]:
    """:func:`curve_ends` of the score gaps and the rollouts' layout-valid share in an alignment run's log."""
    ends = {key: curve_ends(curve(history, key)) for key in CURVE_KEYS}
    return {key: value for key, value in ends.items() if value is not None}


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class Change:
    """How one stage changed the held-out metrics of the stage before it."""

    layout: tuple[float, float]
    caption_f1: tuple[float, float] | None
    caption_exact: tuple[float, float] | None
    accuracy: tuple[float, float]
    caption_f1_interval: tuple[float, float] | None = None  # 95 % paired bootstrap interval of the F1 change

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any],
                interval: tuple[float, float] | None = None) -> Change:
        def pair(key: str) -> tuple[float, float] | None:
            return (before[key], after[key]) if key in before and key in after else None

        return cls(layout=(before["layout_valid"], after["layout_valid"]), caption_f1=pair("caption_token_f1"),
                   caption_exact=pair("caption_exact_match"), accuracy=(before["accuracy"], after["accuracy"]),
                   caption_f1_interval=interval)

    @property
    def caption_direction(self) -> int:
        """+1 toward the teacher's captions, -1 away, 0 unchanged: by the 95 % interval of the token-F1 change
        over prompts when there is one (0 when it holds 0), else by the sign of the change."""
        if self.caption_f1 is None:
            return 0
        if self.caption_f1_interval is not None:
            low, high = self.caption_f1_interval
            return 1 if low > 0 else -1 if high < 0 else 0
        delta = round(self.caption_f1[1] - self.caption_f1[0], 3)
        return (delta > 0) - (delta < 0)

    @property
    def layout_kept(self) -> bool:
        return self.layout[1] >= self.layout[0] - LAYOUT_TOLERANCE

    @property
    def captions_toward_teacher(self) -> bool:
        return self.caption_direction > 0


def _arrow(values: tuple[float, float]) -> str:
    return f"{values[0]:.2f} → {values[1]:.2f}"


def _captions(change: Change) -> str:
    if change.caption_f1 is None:
        return "no teacher captions to compare"
    where = {1: "toward the teacher's", -1: "away from the teacher's",
             0: "unchanged" if change.caption_f1_interval is None else "unchanged beyond noise"}
    interval = change.caption_f1_interval
    noise = f", change 95 % CI {interval[0]:+.3f} to {interval[1]:+.3f}" if interval else ""
    exact = f", exact match {_arrow(change.caption_exact)}" if change.caption_exact else ""
    return f"captions {where[change.caption_direction]} (token-F1 {_arrow(change.caption_f1)}{noise}{exact})"


def paired_interval(before: list[dict[str, Any]], after: list[dict[str, Any]], key: str,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """95 % bootstrap interval of the mean per-prompt change of ``key`` between two policies' evaluation lines
    (``<name>.jsonl``: ``row``, ``key``), prompts resampled with replacement; None without common prompts."""
    def per_row(lines: list[dict[str, Any]]) -> dict[int, float]:
        rows: dict[int, list[float]] = {}
        for line in lines:
            if key in line:
                rows.setdefault(int(line["row"]), []).append(float(line[key]))
        return {row: statistics.fmean(values) for row, values in rows.items()}

    first, second = per_row(before), per_row(after)
    diffs = [second[row] - first[row] for row in sorted(first.keys() & second.keys())]
    if not diffs:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def _layout(change: Change) -> str:
    return f"layout {'kept' if change.layout_kept else 'lost'} (valid {_arrow(change.layout)})"


def stage_readings(models: dict[str, dict[str, Any]], sft: str, align: str, rlvr: str | None,
                   aligned: Change | None = None) -> dict[str, str]:
    """One line per stage: what its row means at this scale, and how it changed the row before it (``aligned``:
    the alignment's change, when it has a caption interval)."""
    base = models[sft]
    readings = {sft: f"Stage 1, the starting point: imitates the teacher's layout (valid {base['layout_valid']:.2f}); "
                     f"a tiny policy on 32 toy scenes, so low answer accuracy is expected"}
    aligned = aligned or Change.between(base, models[align])
    readings[align] = (f"PRISM alignment against the discriminator: {_layout(aligned)}, {_captions(aligned)}; "
                       f"answer accuracy {_arrow(aligned.accuracy)} (not what this stage trains)")
    if rlvr is not None:
        after = Change.between(models[align], models[rlvr])
        samples = models[rlvr].get("samples")
        unit = f" (one of {samples} answers is {1 / samples:.3f})" if samples else ""
        readings[rlvr] = (f"RLVR on the answer reward: accuracy {_arrow(after.accuracy)}{unit}, {_layout(after)}; "
                          f"24 updates of a tiny policy show that the stage runs, not RLVR's gains")
    return readings


def gap_closed(gap: CurveEnds | None) -> bool:
    """The teacher − policy score gap closed: it started positive (the discriminator told the teacher's
    segments from the policy's) and ended smaller. A gap that starts at or below 0 shows a discriminator that
    did not tell them apart, not a policy that caught up; a change within the noise of the logged batches
    (:attr:`CurveEnds.beyond_noise`) is no closing."""
    return gap is not None and gap.start > 0 and gap.end < gap.start and gap.beyond_noise


def verdict(change: Change, gaps: dict[str, CurveEnds]) -> str:
    """The alignment stage's result in plain words: did it do what PRISM claims, at this scale?"""
    closed = gap_closed(gaps.get("caption/score_gap"))
    if change.layout_kept and change.captions_toward_teacher and closed:
        return ("At this scale the alignment stage did what PRISM claims: the discriminator's teacher − policy "
                "caption score gap closed and the policy's held-out captions moved toward the teacher's, with the "
                "layout kept. A toy run shows the mechanism working, not PRISM's gains on real models.")
    gap = gaps.get("caption/score_gap")
    findings = ["it kept the layout" if change.layout_kept else "it lost the layout",
                {1: "it moved the held-out captions toward the teacher's",
                 0: "it did not move the held-out captions beyond noise",
                 -1: "it moved the held-out captions away from the teacher's"}[change.caption_direction]]
    if gap is None:
        findings.append("it logged no score gap")
    elif gap.start <= 0:
        findings.append("its discriminator did not score the teacher's captions above the policy's at the start "
                        "(gap ≤ 0), so it had nothing to close")
    elif not closed:
        findings.append("the discriminator's caption score gap did not close beyond noise")
    return ("In this run the alignment stage did not show what PRISM claims: " + "; ".join(findings) + ". At this "
            "scale the run shows that every stage runs, not whether PRISM helps (benchmarks/RESULTS.md: the tiny "
            "alignment sweep over seeds, and the larger toy efficacy study).")


def gap_lines(gaps: dict[str, CurveEnds]) -> list[str]:
    """The alignment log's curves, start → end."""
    if not gaps:
        return ["alignment log: no score gaps logged (no trainer_state.json in the alignment run)"]
    lines = []
    for key in GAP_KEYS:
        if key in gaps:
            segment = key.split("/")[0]
            ends = gaps[key]
            noise = f" (change {ends.change:+.2f} ± {2 * ends.noise:.2f})" if ends.noise else ""
            lines.append(f"{segment} score gap (teacher − policy, by the discriminator): {ends.describe()}{noise}")
    if "valid_ratio" in gaps:
        lines.append(f"rollouts in the layout during alignment: {gaps['valid_ratio'].describe('{:.2f}')}")
    return lines


# --------------------------------------------------------------------------- outputs


@dataclass
class TinySummary:
    """The demo's summary: table, per-stage readings, the alignment curve's ends and the verdict."""

    models: dict[str, dict[str, Any]]
    readings: dict[str, str]
    gaps: dict[str, CurveEnds]
    verdict: str
    history: list[dict[str, Any]]

    def text(self) -> str:
        """The terminal form: the table, then one line per stage, the alignment curve, the verdict."""
        width = max(len(name) for name in self.readings)
        lines = [format_table(self.models), "", "what each row shows:"]
        lines += [f"  {name.ljust(width)}  {reading}" for name, reading in self.readings.items()]
        lines += ["", "the alignment stage's own log (means of the first and last quarter of its logged steps):"]
        lines += [f"  {line}" for line in gap_lines(self.gaps)]
        return "\n".join([*lines, "", self.verdict])

    def markdown(self) -> str:
        """``summary.md``: the table with a reading column, the alignment curve, the verdict."""
        from prism_plugin.evaluate import metric_columns

        columns = metric_columns(self.models)
        rows = ["| model | " + " | ".join(columns) + " | what it shows |", "|---" * (len(columns) + 2) + "|"]
        for name, metrics in self.models.items():
            cells = ["-" if metrics.get(k) is None else f"{metrics[k]:.1f}" if k == "response_tokens"
                     else f"{metrics[k]:.3f}" for k in columns]
            rows.append(f"| {name} | " + " | ".join(cells) + f" | {self.readings.get(name, '')} |")
        gaps = "\n".join(f"- {line}" for line in gap_lines(self.gaps))
        return ("# Tiny pipeline: what the table shows\n\n" + "\n".join(rows)
                + "\n\n## The alignment stage's own log\n\nMeans of the first and last quarter of the logged steps.\n\n"
                + gaps + "\n\n" + self.verdict + "\n")

    def plot(self, path: Path, align_name: str) -> Path:
        """The bar chart beside the alignment run's score-gap curves, with each stage's reading beneath."""
        import textwrap

        from matplotlib.figure import Figure

        width = comparison_width(self.models) + 4.5
        readings = [textwrap.fill(f"{name}: {text}", width=int(width * 15)) for name, text in self.readings.items()]
        wrapped = [*readings, textwrap.fill(self.verdict, width=int(width * 15))]
        height = 4.5 + 0.17 * sum(text.count("\n") + 1 for text in wrapped)
        fig = Figure(figsize=(width, height), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.5, height - 4.5])
        bars, gaps = top.subplots(1, 2, width_ratios=[comparison_width(self.models), 4.5])
        draw_comparison(bars, self.models)
        bars.set_title("held-out prompts")
        bars.legend(loc="upper right", fontsize=8)
        plotted = False
        for key in GAP_KEYS:
            points = curve(self.history, key)
            if points:
                gaps.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3, label=key.split("/")[0])
                plotted = True
        gaps.axhline(0.0, color="grey", lw=0.8)
        gaps.set_xlabel(f"{align_name} step")
        gaps.set_ylabel("teacher − policy score")
        gaps.set_title("alignment: discriminator's score gap")
        if plotted:
            gaps.legend(fontsize=8)
        bottom.text(0.01, 0.98, "\n".join(wrapped), va="top", ha="left", fontsize=8)
        fig.savefig(path, format="png", dpi=100)
        return path


def summarize_demo(eval_dir: str | Path, align_dir: str | Path, sft: str = "sft", align: str = "align",
                   rlvr: str | None = "rlvr") -> TinySummary:
    """The :class:`TinySummary` of an evaluation folder and the alignment run it evaluated."""
    summary_file = Path(eval_dir) / SUMMARY_NAME
    if not summary_file.is_file():
        raise UserError(f"{summary_file} not found: run prism-plugin evaluate --out {eval_dir} first")
    models = json.loads(summary_file.read_text(encoding="utf-8"))["models"]
    missing = [name for name in (sft, align, rlvr) if name is not None and name not in models]
    if missing:
        raise UserError(f"{summary_file} has no policy named {missing[0]!r}; it has {', '.join(models)}")
    history = read_history(align_dir)
    gaps = alignment_curves(history)
    lines = {name: _read_lines(Path(eval_dir) / models[name].get("jsonl", f"{name}.jsonl")) for name in (sft, align)}
    interval = paired_interval(lines[sft], lines[align], "caption_token_f1") if all(lines.values()) else None
    aligned = Change.between(models[sft], models[align], interval)
    readings = stage_readings(models, sft, align, rlvr, aligned)
    return TinySummary(models, readings, gaps, verdict(aligned, gaps), history)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """An evaluation's per-sample lines (empty when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_summary(result: TinySummary, eval_dir: str | Path, align_name: str = "align") -> list[Path]:
    """Write ``summary.md`` and the redrawn ``comparison.png`` into ``eval_dir``; returns their paths."""
    eval_dir = Path(eval_dir)
    md = eval_dir / SUMMARY_MD
    md.write_text(result.markdown(), encoding="utf-8")
    return [md, result.plot(eval_dir / PLOT_NAME, align_name)]
