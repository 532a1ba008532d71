"""Aggregate the efficacy study's per-seed results: tables (markdown), paired differences with a
bootstrap CI, and PNG curves.

    python benchmarks/efficacy/report.py [--work-dir outputs/efficacy] [--out benchmarks/efficacy]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

ARMS = ("grpo", "prism", "sft", "oracle")
LABELS = {"grpo": "SFT→GRPO", "prism": "SFT→PRISM→GRPO", "sft": "SFT→more SFT→GRPO", "oracle": "SFT→oracle align→GRPO"}
METRICS = ("accuracy", "caption_exact", "reasoning_consistent", "valid")


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def bootstrap_ci(diffs: list[float], reps: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of paired differences."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def load_results(work_dir: Path) -> list[dict]:
    results = []
    for path in sorted(work_dir.glob("seed*/result.json")):
        result = json.loads(path.read_text())
        if result.get("done"):
            results.append(result)
    return results


def arms_run(results: list[dict]) -> list[str]:
    """The arms every result has run (an arm left out with ``run.py --arms`` holds only step 0)."""
    return [arm for arm in ARMS if all(len(r["curves"].get(arm, {})) > 1 for r in results)]


def steps_of(results: list[dict]) -> list[int]:
    return sorted({int(s) for r in results for arm in arms_run(results) for s in r["curves"][arm]})


def curve_table(results: list[dict], metric: str) -> list[str]:
    steps, arms = steps_of(results), arms_run(results)
    lines = ["| policy updates | " + " | ".join(LABELS[a] for a in arms) + " |",
             "|---:|" + "---:|" * len(arms)]
    for step in steps:
        cells = []
        for arm in arms:
            values = [r["curves"][arm][str(step)][metric] for r in results if str(step) in r["curves"][arm]]
            if values:
                mean, se = mean_se(values)
                cells.append(f"{mean:.3f} ± {se:.3f}")
            else:
                cells.append("—")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def diff_cells(diffs: list[float]) -> str:
    """``per-seed differences | mean | [95% bootstrap CI]`` cells of one paired comparison."""
    low, high = bootstrap_ci(diffs)
    return ", ".join(f"{d:+.3f}" for d in diffs) + f" | {sum(diffs) / len(diffs):+.3f} | [{low:+.3f}, {high:+.3f}]"


def paired_table(results: list[dict]) -> list[str]:
    final = max(steps_of(results))
    lines = ["| comparison (final accuracy) | per-seed differences | mean | 95% bootstrap CI |", "|---|---|---:|---|"]
    arms = arms_run(results)
    for arm in [a for a in ("prism", "sft", "oracle") if a in arms and "grpo" in arms]:
        diffs = [r["curves"][arm][str(final)]["accuracy"] - r["curves"]["grpo"][str(final)]["accuracy"]
                 for r in results]
        lines.append(f"| {LABELS[arm]} − {LABELS['grpo']} | {diff_cells(diffs)} |")
    rows = [("prism", "sft", results, ""),
            ("prism", "grpo", [r for r in results if r["gate"]["passed"]], " (gate-passed seeds only)")]
    for arm, base, subset, note in rows:
        if arm not in arms or base not in arms:
            continue
        if not subset:
            lines.append(f"| {LABELS[arm]} − {LABELS[base]}{note} | no seed | — | — |")
            continue
        diffs = [r["curves"][arm][str(final)]["accuracy"] - r["curves"][base][str(final)]["accuracy"] for r in subset]
        lines.append(f"| {LABELS[arm]} − {LABELS[base]}{note} | {diff_cells(diffs)} |")
    return lines


def boundary_table(results: list[dict], boundary: int) -> list[str]:
    """Paired differences after the first stage (same number of policy updates): what alignment, more SFT
    or the oracle did before any GRPO, against GRPO's own first ``boundary`` updates."""
    arms = arms_run(results)
    lines = [f"| comparison at {boundary} updates | metric | per-seed differences | mean | 95% bootstrap CI |",
             "|---|---|---|---:|---|"]
    for arm in [a for a in ("prism", "sft", "oracle") if a in arms and "grpo" in arms]:
        for metric in ("accuracy", "caption_exact"):
            diffs = [r["curves"][arm][str(boundary)][metric] - r["curves"]["grpo"][str(boundary)][metric]
                     for r in results]
            lines.append(f"| {LABELS[arm]} − {LABELS['grpo']} | {metric.replace('_', ' ')} | {diff_cells(diffs)} |")
    return lines


def gate_table(results: list[dict]) -> list[str]:
    lines = ["| seed | warm-up val caption / reasoning pair acc. | on-policy caption acc. (teacher ≻ wrong SFT "
             "caption, same prompt) | right / wrong SFT captions | AUC right vs wrong | score gap (right − wrong) "
             "| gate |", "|---:|---|---:|---|---:|---:|---|"]
    for r in results:
        g = r["gate"]
        lines.append(f"| {r['seed']} | {g['caption_accuracy']:.3f} / {g['reasoning_accuracy']:.3f} | "
                     f"{g['on_policy_accuracy']:.3f} | {g['right_captions']} / {g['wrong_captions']} | "
                     f"{g['right_vs_wrong_auc']:.3f} | {g['score_gap']:+.3f} | "
                     f"{'passed' if g['passed'] else 'FAILED'} |")
    return lines


def disc_during_alignment(results: list[dict]) -> list[str]:
    """Discriminator pairwise accuracy per segment over the alignment steps (mean over seeds)."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for r in results:
        for entry in r["logs"]["prism"]["align"]:
            if "disc/caption/accuracy" in entry:
                slot = by_step.setdefault(int(entry["step"]), {"caption": [], "reasoning": [], "fresh": [],
                                                               "gated": []})
                slot["caption"].append(entry["disc/caption/accuracy"])
                slot["reasoning"].append(entry.get("disc/reasoning/accuracy", float("nan")))
                if "disc/batch_accuracy" in entry:
                    slot["fresh"].append(entry["disc/batch_accuracy"])
                slot["gated"].append(entry.get("policy/gated", 0.0))
    lines = ["| alignment step | disc caption acc. (teacher ≻ rollout) | disc reasoning acc. | fresh-rollout acc. "
             "(before the update, teacher copies left out) | seeds whose policy update was gated |",
             "|---:|---:|---:|---:|---:|"]
    for step in sorted(by_step):
        slot = by_step[step]
        c, s = mean_se(slot["caption"]), mean_se(slot["reasoning"])
        fresh = mean_se(slot["fresh"]) if slot["fresh"] else (float("nan"), float("nan"))
        lines.append(f"| {step} | {c[0]:.3f} ± {c[1]:.3f} | {s[0]:.3f} ± {s[1]:.3f} | {fresh[0]:.3f} ± {fresh[1]:.3f} "
                     f"| {int(sum(slot['gated']))} / {len(slot['gated'])} |")
    return lines, by_step


def plot(results: list[dict], by_step: dict, boundary: int, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    steps = steps_of(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, ("accuracy", "caption_exact", "reasoning_consistent"), strict=True):
        for arm in arms_run(results):
            xs, ms, ses = [], [], []
            for step in steps:
                values = [r["curves"][arm][str(step)][metric] for r in results if str(step) in r["curves"][arm]]
                if values:
                    m, se = mean_se(values)
                    xs.append(step), ms.append(m), ses.append(0.0 if math.isnan(se) else se)
            ax.errorbar(xs, ms, yerr=ses, marker="o", capsize=3, label=LABELS[arm])
        ax.axvline(boundary, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("policy updates (dashed: alignment → GRPO)")
        ax.set_title(f"held-out {metric.replace('_', ' ')} (mean ± SE, {len(results)} seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "efficacy_curves.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    if by_step:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = sorted(by_step)
        for seg in ("caption", "reasoning"):
            ax.plot(xs, [mean_se(by_step[x][seg])[0] for x in xs], marker=".", label=f"{seg} (training batch)")
        fresh = [x for x in xs if by_step[x]["fresh"]]
        if fresh:
            ax.plot(fresh, [mean_se(by_step[x]["fresh"])[0] for x in fresh], marker="o",
                    label="fresh rollouts, before the update")
            ax.bar(xs, [sum(by_step[x]["gated"]) / len(by_step[x]["gated"]) for x in xs], color="grey", alpha=0.25,
                   label="share of seeds gated")
        ax.axhline(0.5, color="grey", linestyle=":")
        ax.set_xlabel("alignment step")
        ax.set_ylabel("pairwise accuracy (teacher ≻ rollout) / share")
        ax.set_title("discriminator during alignment (PRISM arm)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(out / "efficacy_discriminator.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return [str(f) for f in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/efficacy"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = load_results(args.work_dir)
    if not results:
        raise SystemExit(f"no finished seeds under {args.work_dir}")
    staged = [arm for arm in arms_run(results) if arm != "grpo"] or ["grpo"]
    boundary = min(int(s) for s in results[0]["curves"][staged[0]] if int(s) > 0)
    disc_lines, by_step = disc_during_alignment(results) if "prism" in arms_run(results) else ([], {})
    wall = {k: mean_se([r["wall_s"][k] for r in results if k in r["wall_s"]])[0] for k in results[0]["wall_s"]}
    sections = [f"Seeds: {', '.join(str(r['seed']) for r in results)} (paired: every arm starts from that seed's "
                f"SFT checkpoint). Alignment/GRPO boundary at {boundary} policy updates.", "",
                "**Held-out answer accuracy**", "", *curve_table(results, "accuracy"), "",
                "**Caption exact-match**", "", *curve_table(results, "caption_exact"), "",
                "**Reasoning consistency**", "", *curve_table(results, "reasoning_consistent"), "",
                "**Paired differences at the last step**", "", *paired_table(results), "",
                "**Paired differences at the alignment/GRPO boundary**", "", *boundary_table(results, boundary), "",
                "**Discriminator gate (before the PRISM arm)**", "", *gate_table(results), "",
                "**Discriminator during alignment**", "", *disc_lines, "",
                "**Mean wall time per stage (s, one torch thread)**", "",
                "| " + " | ".join(wall) + " |", "|" + "---:|" * len(wall),
                "| " + " | ".join(f"{v:.0f}" for v in wall.values()) + " |"]
    files = plot(results, by_step, boundary, args.out)
    text = "\n".join(sections)
    (args.out / "efficacy_tables.md").write_text(text + "\n")
    print(text)
    print("plots:", *files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
