"""The tiny demo's alignment settings, chosen on a validation split: a small sweep over seeds.

The demo (``examples/tiny_pipeline.sh``) runs Stage 2 with ``yaml/prism_align_tiny.yaml``. This sweep runs that
stage with each setting of :data:`SETTINGS` (policy and discriminator learning rates, steps, G, policy epochs;
every other key from the YAML) and judges it on ``tiny/data/val.jsonl`` — 64 prompts of scenes of their own,
which the demo's evaluation (``eval.jsonl``) never sees; this script never reads ``eval.jsonl``.

Per seed S (the tiny build itself is the demo's, seed 0): Stage 1 SFT (``yaml/sft_qwen3vl_tiny.yaml``, seed
S) is shared by every run of the seed; each discriminator variant of :data:`DISCS` (which dense model is
upcycled, seed S; which pairs ``yaml/prism_disc_warmup_tiny.yaml`` warms it up on, seed S) is shared by every
setting run with it; then each setting's alignment run (seed S) starts from them. Every stage is a
``llamafactory-cli train`` run with one torch thread. Per run: layout-valid rate, caption token-F1 and exact
match, answer accuracy on the validation prompts (greedy, 128 new tokens, as the demo's evaluation), their
change from that seed's SFT policy, and the discriminator's teacher − policy caption score gap at the start
and end of alignment (means of the first and last quarter of the logged steps, as the demo's summary). Per
discriminator, before alignment: how often it scores the teacher's caption above a wrong caption the SFT
policy samples for a validation prompt (``benchmarks/efficacy``'s gate).

Choice rule: a setting keeps the layout on a seed when its validation layout-valid rate is at most
``LAYOUT_TOLERANCE`` below that seed's SFT policy; among settings that keep it on every seed, raise caption
token-F1 on most seeds and on average, and whose mean alignment time is at most ``--max-time-ratio`` times the
old demo setting's, the one with the largest mean caption token-F1 gain is chosen; if none qualifies, none is.
Results land in ``WORK/results.jsonl`` (a re-run skips finished runs).

    python benchmarks/tiny_align_sweep.py [--seeds 0 1 2] [--discs NAME ...] [--settings NAME ...] [--work-dir DIR]
        [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.efficacy.run import cli, lf_train  # noqa: E402
from prism_plugin.tiny.summary import LAYOUT_TOLERANCE, alignment_curves, read_history  # noqa: E402

SWEPT = ("learning_rate", "prism_disc_learning_rate", "max_steps", "prism_num_generations", "prism_policy_epochs")
SETTINGS: dict[str, dict[str, Any]] = {
    # name: the swept keys (all of them, so a setting does not depend on the YAML's current values)
    "lr1e-4_d1e-4": dict(learning_rate=1e-4, prism_disc_learning_rate=1e-4, max_steps=24, prism_num_generations=4,
                         prism_policy_epochs=2),  # the demo's setting before this sweep
    "lr2e-5_d1e-3": dict(learning_rate=2e-5, prism_disc_learning_rate=1e-3, max_steps=24, prism_num_generations=4,
                         prism_policy_epochs=2),  # the efficacy study's rates
    "lr2e-5_d1e-4": dict(learning_rate=2e-5, prism_disc_learning_rate=1e-4, max_steps=24, prism_num_generations=4,
                         prism_policy_epochs=2),
    "lr1e-5_d1e-3": dict(learning_rate=1e-5, prism_disc_learning_rate=1e-3, max_steps=24, prism_num_generations=4,
                         prism_policy_epochs=2),
    "lr5e-5_d1e-3": dict(learning_rate=5e-5, prism_disc_learning_rate=1e-3, max_steps=24, prism_num_generations=4,
                         prism_policy_epochs=2),
    "lr2e-5_d1e-3_ep1": dict(learning_rate=2e-5, prism_disc_learning_rate=1e-3, max_steps=24,
                             prism_num_generations=4, prism_policy_epochs=1),
    "lr2e-5_d1e-3_G8": dict(learning_rate=2e-5, prism_disc_learning_rate=1e-3, max_steps=24, prism_num_generations=8,
                            prism_policy_epochs=2),
    "lr2e-5_d1e-3_48st": dict(learning_rate=2e-5, prism_disc_learning_rate=1e-3, max_steps=48,
                              prism_num_generations=4, prism_policy_epochs=2),
}
BASELINE = "lr1e-4_d1e-4"
DISCS: dict[str, tuple[str, str]] = {
    # name: (the dense model upcycled, the warm-up pairs)
    "dense-syn": ("dense", "synthetic"),  # the demo's before this sweep: the tiny random dense VLM, synthetic pairs
    "sft-syn": ("sft", "synthetic"),      # upcycled from the seed's SFT policy, a backbone that perceives
    "dense-both": ("dense", "both"),      # + pairs of the teacher with the SFT policy's own samples (make-pairs)
    "sft-both": ("sft", "both"),
}
BASE_DISC = "dense-syn"
POLICY_SAMPLES = 4  # make-pairs samples per training prompt (layout-invalid ones are not written)
VAL_MAX_NEW_TOKENS = 128  # as the demo's evaluation


def load_yaml(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "yaml" / name).read_text(encoding="utf-8"))


def train(yaml_name: str, overrides: dict[str, Any], work: Path, log_name: str) -> float:
    """``llamafactory-cli train`` on the shipped YAML with ``overrides``; returns its wall time."""
    config = {**load_yaml(yaml_name), "plot_loss": False, **overrides}
    return lf_train(config, work, log_name)


def prepare_sft(seed: int, tiny: Path, work: Path) -> Path:
    """Stage 1 SFT with seed ``seed`` (once per seed)."""
    sft = work / "sft"
    if not (sft / "model.safetensors").is_file():
        train("sft_qwen3vl_tiny.yaml", {"model_name_or_path": str(tiny / "qwen3_vl_policy"),
                                        "dataset_dir": str(tiny / "data"), "output_dir": str(sft), "seed": seed},
              work, "sft")
    return sft


def disc_dir(work: Path, disc: str) -> Path:
    """Where seed ``work``'s warmed-up discriminator of variant ``disc`` lives."""
    return work / "discriminator_warm" if disc == BASE_DISC else work / f"disc_{disc}" / "discriminator_warm"


def policy_pairs(seed: int, tiny: Path, sft: Path, work: Path) -> str:
    """Pairs of the teacher with the seed's SFT samples on the training prompts (``prism-plugin data
    make-pairs``), registered in the tiny ``dataset_info.json``; returns the dataset name."""
    name, out = f"policy_pairs_seed{seed}", tiny / "data" / f"policy_pairs_seed{seed}.jsonl"
    if not out.is_file():
        subprocess.run([cli("prism-plugin"), "data", "make-pairs", "--policy", str(sft), "--data",
                        str(tiny / "data" / "align.jsonl"), "--out", str(out), "--num-samples", str(POLICY_SAMPLES),
                        "--max-new-tokens", "64", "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    info_file = tiny / "data" / "dataset_info.json"
    info = json.loads(info_file.read_text())
    if name not in info:
        info[name] = {"file_name": str(out)}
        info_file.write_text(json.dumps(info, indent=1))
    return name


def prepare_disc(seed: int, disc: str, tiny: Path, sft: Path, work: Path) -> Path:
    """Upcycle and warm up seed ``seed``'s discriminator of variant ``disc`` (once)."""
    warm = disc_dir(work, disc)
    if (warm / "config.json").is_file():
        return warm
    backbone, pairs = DISCS[disc]
    upcycled = warm.with_name("discriminator")
    dense = sft if backbone == "sft" else tiny / "qwen3_vl_dense"
    subprocess.run([cli("prism-plugin"), "upcycle", str(dense), str(upcycled), "--num-experts", "4", "--top-k", "2",
                    "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    datasets = "prism_tiny_pairs" + ("," + policy_pairs(seed, tiny, sft, work) if pairs == "both" else "")
    train("prism_disc_warmup_tiny.yaml", {"model_name_or_path": str(upcycled), "dataset_dir": str(tiny / "data"),
                                          "dataset": datasets, "output_dir": str(warm), "seed": seed},
          warm.parent, "disc_warmup")
    return warm


def disc_gate(warm: Path, sft: Path, val_file: Path) -> dict[str, Any]:
    """The warmed-up discriminator on the SFT policy's own captions for the validation prompts: how often it
    scores the teacher's caption above a wrong sampled one (``benchmarks/efficacy``'s gate); cached."""
    from types import SimpleNamespace

    from benchmarks.efficacy.run import discriminator_gate

    cache = warm / "val_gate.json"
    if not cache.is_file():
        gate = discriminator_gate(warm, sft, val_file, SimpleNamespace(gate_prompts=64, max_new_tokens=64))
        cache.write_text(json.dumps(gate))
    return json.loads(cache.read_text())


def validate(model: Path, val_file: Path, out_dir: Path) -> dict[str, Any]:
    """The demo's evaluation metrics of ``model`` on the validation prompts."""
    from prism_plugin.evaluate import evaluate

    result = evaluate([model], val_file, out_dir, names=["policy"], max_new_tokens=VAL_MAX_NEW_TOKENS,
                      progress=False)
    return result.summary["models"]["policy"]


def run_one(disc: str, setting: str, seed: int, tiny: Path, work: Path, sft_val: dict[str, Any]) -> dict[str, Any]:
    """One alignment run of ``setting`` from seed ``seed``'s SFT policy and ``disc`` discriminator, validated."""
    run_dir = work / setting if disc == BASE_DISC else work / f"disc_{disc}" / setting
    seconds = train("prism_align_tiny.yaml", {"model_name_or_path": str(work / "sft"),
                                              "prism_discriminator": str(disc_dir(work, disc)),
                                              "dataset_dir": str(tiny / "data"), "output_dir": str(run_dir),
                                              "seed": seed, **SETTINGS[setting]}, run_dir.parent, f"align_{setting}")
    val = validate(run_dir, tiny / "data" / "val.jsonl", run_dir / "val")
    curves = alignment_curves(read_history(run_dir))
    result = {"disc": disc, "setting": setting, "seed": seed, "align_seconds": round(seconds, 1), **SETTINGS[setting]}
    for key in ("layout_valid", "caption_token_f1", "caption_exact_match", "accuracy"):
        result[key] = val[key]
        result[f"sft_{key}"] = sft_val[key]
    for key, ends in curves.items():
        result[f"{key}/start"], result[f"{key}/end"] = ends.start, ends.end
    return result


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every finished run (runs written before the discriminator variants were swept used ``dense-syn``)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [{"disc": BASE_DISC, **row} for row in rows]


def spread(values: list[float]) -> str:
    """``mean [min, max]`` of the values over seeds."""
    return f"{statistics.fmean(values):+.3f} [{min(values):+.3f}, {max(values):+.3f}]"


def label(run: dict[str, Any]) -> str:
    """``disc/setting``: the discriminator variant and the alignment setting of a run."""
    return f"{run['disc']}/{run['setting']}"


def gap_text(run: dict[str, Any], key: str) -> str:
    """``+0.70 → -0.20``: a logged curve's start and end in a run's result."""
    return f"{run[key + '/start']:+.2f} → {run[key + '/end']:+.2f}" if key + "/start" in run else "-"


def order(run: dict[str, Any]) -> tuple[int, int, int]:
    return list(DISCS).index(run["disc"]), list(SETTINGS).index(run["setting"]), run["seed"]


def report(results: list[dict[str, Any]], gates: list[dict[str, Any]], max_time_ratio: float) -> str:
    """The discriminators' gate, the per-run table, the aggregate over seeds and the choice."""
    out = ["Discriminator before alignment, on the SFT policy's own captions for the validation prompts "
           "(4 samples per prompt): how often it scores the teacher's caption above a wrong one, and the AUC of "
           "right vs wrong sampled captions.", "",
           "| discriminator | seed | teacher ≻ wrong SFT caption | right / wrong SFT captions | AUC right vs wrong |",
           "|---|---:|---:|---|---:|"]
    for g in sorted(gates, key=lambda g: (list(DISCS).index(g["disc"]), g["seed"])):
        out.append(f"| {g['disc']} | {g['seed']} | {g['on_policy_accuracy']:.3f} | {g['right_captions']} / "
                   f"{g['wrong_captions']} | {g['right_vs_wrong_auc']:.3f} |")
    out += ["", "| discriminator/setting | seed | layout-valid (SFT) | caption F1 (SFT) | caption exact (SFT) "
            "| accuracy (SFT) | caption gap start → end | reasoning gap start → end | align s |", "|---" * 9 + "|"]
    for r in sorted(results, key=order):
        out.append(f"| {label(r)} | {r['seed']} | {r['layout_valid']:.3f} ({r['sft_layout_valid']:.3f}) "
                   f"| {r['caption_token_f1']:.3f} ({r['sft_caption_token_f1']:.3f}) "
                   f"| {r['caption_exact_match']:.3f} ({r['sft_caption_exact_match']:.3f}) "
                   f"| {r['accuracy']:.3f} ({r['sft_accuracy']:.3f}) | {gap_text(r, 'caption/score_gap')} "
                   f"| {gap_text(r, 'reasoning/score_gap')} | {r['align_seconds']:.0f} |")
    out += ["", "Change from each seed's SFT policy on the validation prompts, mean [min, max] over seeds:", "",
            "| discriminator/setting | seeds | Δ layout-valid | Δ caption F1 | Δ caption exact | Δ accuracy "
            "| caption gap change (end − start) | layout kept on | align s |", "|---" * 9 + "|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=order):
        groups.setdefault(label(r), []).append(r)
    base = groups.get(f"{BASE_DISC}/{BASELINE}", results)
    baseline_time = statistics.fmean(r["align_seconds"] for r in base)
    candidates = []
    for name, runs in groups.items():
        delta = {k: [r[k] - r[f"sft_{k}"] for r in runs] for k in
                 ("layout_valid", "caption_token_f1", "caption_exact_match", "accuracy")}
        gap = [r["caption/score_gap/end"] - r["caption/score_gap/start"] for r in runs if "caption/score_gap/end" in r]
        kept = sum(d >= -LAYOUT_TOLERANCE for d in delta["layout_valid"])
        seconds = statistics.fmean(r["align_seconds"] for r in runs)
        out.append(f"| {name} | {len(runs)} | {spread(delta['layout_valid'])} | {spread(delta['caption_token_f1'])} "
                   f"| {spread(delta['caption_exact_match'])} | {spread(delta['accuracy'])} "
                   f"| {spread(gap) if gap else '-'} | {kept} / {len(runs)} | {seconds:.0f} |")
        raised = sum(d > 0 for d in delta["caption_token_f1"])
        mean_gain = statistics.fmean(delta["caption_token_f1"])
        if kept == len(runs) and 2 * raised > len(runs) and mean_gain > 0 and seconds <= max_time_ratio * baseline_time:
            candidates.append((mean_gain, name, min(delta["caption_token_f1"])))
    best = max(candidates, default=None)
    out.append("")
    if best is None:
        out.append("No setting kept the layout on every seed and raised caption token-F1 on most seeds (and on "
                   "average) within the time budget.")
    else:
        out.append(f"The rule's pick: {best[1]} (mean caption token-F1 gain {best[0]:+.3f}; layout kept on every "
                   f"seed, F1 raised on most; alignment time at most {max_time_ratio}× {BASE_DISC}/{BASELINE}'s).")
        ties = [f"{name} ({gain:+.3f})" for gain, name, _ in sorted(candidates, reverse=True)
                if name != best[1] and gain >= best[2]]
        if ties:
            out.append("Within the pick's spread over seeds (mean gain at least its lowest seed's, "
                       f"{best[2]:+.3f}): " + ", ".join(ties) + ".")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--discs", nargs="+", default=[BASE_DISC], choices=list(DISCS),
                        help="discriminator variants; each is run with every --settings")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/tiny_align_sweep"))
    parser.add_argument("--max-time-ratio", type=float, default=2.0,
                        help="longest mean alignment time allowed, as a multiple of the old demo setting's")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    results_file, tiny = work / "results.jsonl", work / "tiny"
    if not args.report_only:
        import torch

        torch.set_num_threads(1)
        if not (tiny / "data" / "val.jsonl").is_file():
            subprocess.run([cli("prism-plugin"), "make-tiny", str(tiny)], check=True, stdout=subprocess.DEVNULL)
        done = {(r["disc"], r["setting"], r["seed"]) for r in read_results(results_file)}
        for seed in args.seeds:
            seed_dir, start = work / f"seed{seed}", time.perf_counter()
            sft = prepare_sft(seed, tiny, seed_dir)
            sft_val = validate(sft, tiny / "data" / "val.jsonl", seed_dir / "sft_val")
            print(f"seed {seed}: SFT ready ({time.perf_counter() - start:.0f} s); on val: layout "
                  f"{sft_val['layout_valid']:.3f}, caption F1 {sft_val['caption_token_f1']:.3f}", flush=True)
            for disc in args.discs:
                warm = prepare_disc(seed, disc, tiny, sft, seed_dir)
                gate = disc_gate(warm, sft, tiny / "data" / "val.jsonl")
                print(f" {disc}: teacher ≻ wrong SFT caption {gate['on_policy_accuracy']:.3f}", flush=True)
                for setting in args.settings:
                    if (disc, setting, seed) in done:
                        continue
                    result = run_one(disc, setting, seed, tiny, seed_dir, sft_val)
                    with results_file.open("a") as handle:
                        handle.write(json.dumps(result) + "\n")
                    print(f"  {disc}/{setting} seed {seed}: layout {result['layout_valid']:.3f}, caption F1 "
                          f"{result['caption_token_f1']:.3f} (SFT {sft_val['caption_token_f1']:.3f}), "
                          f"{result['align_seconds']:.0f} s", flush=True)
    gates = [{"disc": disc, "seed": int(seed_dir.name[4:]), **json.loads((disc_dir(seed_dir, disc) / "val_gate.json")
                                                                         .read_text())}
             for seed_dir in sorted(work.glob("seed*")) for disc in DISCS
             if (disc_dir(seed_dir, disc) / "val_gate.json").is_file()]
    print(report(read_results(results_file), gates, args.max_time_ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
