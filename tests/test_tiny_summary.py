"""``prism-plugin tiny-summary``: the demo's readings from a small synthetic evaluation and alignment log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism_plugin.tiny.summary import (
    LAYOUT_TOLERANCE,
    Change,
    CurveEnds,
    curve,
    curve_ends,
    gap_closed,
    paired_interval,
    stage_readings,
    summarize_demo,
    verdict,
    write_summary,
)

SFT = {"accuracy": 0.156, "layout_valid": 1.0, "truncated": 0.0, "response_tokens": 42.8,
       "caption_exact_match": 0.031, "caption_token_f1": 0.680}


def _models(align: dict, rlvr: dict | None = None) -> dict:
    return {"sft": SFT, "align": {**SFT, **align}, "rlvr": {**SFT, **align, **(rlvr or {})}}


def _write(tmp_path: Path, models: dict, gaps: list[float] | None) -> tuple[Path, Path]:
    """An evaluation folder with ``summary.json`` and an alignment run whose log has ``gaps`` every 2 steps."""
    eval_dir, align_dir = tmp_path / "eval", tmp_path / "align"
    eval_dir.mkdir()
    align_dir.mkdir()
    (eval_dir / "summary.json").write_text(json.dumps({"rows": 32, "models": models}))
    if gaps is not None:
        history = [{"step": 2 * (i + 1), "caption/score_gap": g, "reasoning/score_gap": g / 2, "valid_ratio": 0.5,
                    "loss": 0.1} for i, g in enumerate(gaps)]
        history.append({"step": 2 * len(gaps), "train_runtime": 9.0})  # the closing entry: no metrics
        (align_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return eval_dir, align_dir


def test_curve_ends_average_a_quarter_of_the_points() -> None:
    points = [(2 * i, float(v)) for i, v in enumerate([4, 2, 3, 3, 3, 3, 1, 0], start=1)]
    ends = curve_ends(points)
    assert (ends.start, ends.end) == (3.0, 0.5)
    assert (ends.start_steps, ends.end_steps) == ((2, 4), (14, 16))
    assert ends.describe() == "+3.00 (steps 2–4) → +0.50 (steps 14–16)"
    assert curve_ends(points[:1]).describe() == "+4.00 (step 2) → +4.00 (step 2)"
    assert curve_ends([]) is None
    assert curve_ends(points, window=1).start == 4.0


def test_curve_skips_entries_without_the_key() -> None:
    history = [{"step": 4, "x": 1.0}, {"step": 2, "x": 3.0}, {"step": 4, "train_runtime": 1.0}, {"x": 5.0}]
    assert curve(history, "x") == [(2, 3.0), (4, 1.0)]


@pytest.mark.parametrize(("start", "end", "closed"), [(2.0, 1.0, True), (2.0, 3.0, False), (-0.4, -1.0, False),
                                                       (0.0, -1.0, False), (1.0, -0.5, True)])
def test_gap_closes_only_from_a_positive_start(start: float, end: float, closed: bool) -> None:
    assert gap_closed(CurveEnds(start, end, (2, 6), (20, 24))) is closed


def test_layout_tolerance() -> None:
    kept = Change.between(SFT, {**SFT, "layout_valid": 1.0 - LAYOUT_TOLERANCE})
    lost = Change.between(SFT, {**SFT, "layout_valid": 0.656})
    assert kept.layout_kept and not lost.layout_kept


def test_summary_of_an_alignment_that_did_what_prism_claims(tmp_path: Path) -> None:
    models = _models({"caption_token_f1": 0.720, "caption_exact_match": 0.094, "accuracy": 0.125},
                     {"accuracy": 0.188, "samples": 32})
    eval_dir, align_dir = _write(tmp_path, models, [3.0, 2.0, 2.5, 1.0, 0.5, 0.4, 0.6, 0.2])
    result = summarize_demo(eval_dir, align_dir)
    text = result.text()
    assert text.splitlines()[0].split() == ["model", "accuracy", "layout_valid", "truncated", "response_tokens",
                                            "caption_exact_match", "caption_token_f1"]
    assert "layout kept (valid 1.00 → 1.00), captions toward the teacher's (token-F1 0.68 → 0.72" in text
    assert "RLVR on the answer reward: accuracy 0.12 → 0.19 (one of 32 answers is 0.031)" in text
    assert "caption score gap (teacher − policy, by the discriminator): +2.50 (steps 2–4) → +0.40 (steps 14–16) " \
           "(change -2.10 ± 1.08)" in text
    assert "did what PRISM claims" in result.verdict
    written = write_summary(result, eval_dir)
    assert [p.name for p in written] == ["summary.md", "comparison.png"]
    md = (eval_dir / "summary.md").read_text()
    assert "| align | 0.125 | 1.000 | 0.000 | 42.8 | 0.094 | 0.720 | PRISM alignment" in md
    assert (eval_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_says_plainly_when_alignment_did_not_help(tmp_path: Path) -> None:
    models = _models({"caption_token_f1": 0.449, "caption_exact_match": 0.0, "layout_valid": 0.656})
    eval_dir, align_dir = _write(tmp_path, models, [-0.4, -0.2, -1.0, -0.9])
    result = summarize_demo(eval_dir, align_dir)
    assert "layout lost (valid 1.00 → 0.66), captions away from the teacher's" in result.readings["align"]
    assert result.verdict.startswith("In this run the alignment stage did not show what PRISM claims: it lost the "
                                     "layout; it moved the held-out captions away from the teacher's; its "
                                     "discriminator did not score the teacher's captions above the policy's at the "
                                     "start")
    assert "did what PRISM claims" not in result.text()


def test_summary_without_an_alignment_log(tmp_path: Path) -> None:
    eval_dir, align_dir = _write(tmp_path, _models({"caption_token_f1": 0.7}), gaps=None)
    result = summarize_demo(eval_dir, align_dir)
    assert "no score gaps logged" in result.text()
    assert "logged no score gap" in result.verdict
    write_summary(result, eval_dir)  # the chart is still drawn


def test_verdict_needs_every_part() -> None:
    better = Change.between(SFT, {**SFT, "caption_token_f1": 0.7})
    gap = {"caption/score_gap": CurveEnds(2.0, 1.0, (2, 6), (20, 24))}
    assert "did what PRISM claims" in verdict(better, gap)
    assert "score gap did not close beyond noise" in verdict(better, {"caption/score_gap": CurveEnds(1.0, 2.0, (2, 6),
                                                                                                     (20, 24))})
    same = Change.between(SFT, dict(SFT))
    assert "it kept the layout; it did not move the held-out captions beyond noise." in verdict(same, gap)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prism_plugin.cli import main

    eval_dir, align_dir = _write(tmp_path, _models({"caption_token_f1": 0.7}), [1.0, 0.5])
    assert main(["tiny-summary", "--eval", str(eval_dir), "--align", str(align_dir)]) == 0
    out = capsys.readouterr().out
    assert "what each row shows:" in out and "written: " in out
    assert main(["tiny-summary", "--eval", str(tmp_path / "none"), "--align", str(align_dir)]) == 1
    assert "run prism-plugin evaluate" in capsys.readouterr().err
    assert main(["tiny-summary", "--eval", str(eval_dir), "--align", str(align_dir), "--rlvr-name", "grpo"]) == 1
    assert "no policy named 'grpo'" in capsys.readouterr().err


def test_curve_ends_noise_decides_whether_a_gap_closed() -> None:
    noisy = curve_ends([(2, 3.0), (4, -1.0), (6, 0.0), (8, 2.0)], window=2)  # 1.0 → 1.0 ± 2.5
    assert noisy.change == 0.0 and not noisy.beyond_noise
    swings = curve_ends([(2, 3.0), (4, 1.0), (6, 0.5), (8, -1.5)], window=2)  # 2.0 → -0.5, noise √2
    assert swings.change == -2.5 and swings.noise == pytest.approx(2**0.5)
    assert not swings.beyond_noise and not gap_closed(swings)
    clear = curve_ends([(2, 3.0), (4, 2.9), (6, 0.1), (8, 0.0)], window=2)
    assert clear.beyond_noise and gap_closed(clear)


def test_paired_interval_and_the_caption_direction() -> None:
    before = [{"row": r, "caption_token_f1": 0.6} for r in range(1, 33)]
    better = [{"row": r, "caption_token_f1": 0.6 + (0.1 if r % 2 else 0.05)} for r in range(1, 33)]
    mixed = [{"row": r, "caption_token_f1": 0.6 + (0.2 if r % 2 else -0.19)} for r in range(1, 33)]
    low, high = paired_interval(before, better, "caption_token_f1")
    assert 0.05 <= low < high <= 0.1
    assert paired_interval(before, [], "caption_token_f1") is None
    up = Change.between(SFT, {**SFT, "caption_token_f1": 0.755}, (low, high))
    assert up.captions_toward_teacher and "toward the teacher's (token-F1 0.68 → 0.76, change 95 % CI" in \
        stage_readings({"sft": SFT, "align": {}}, "sft", "align", None, up)["align"]
    interval = paired_interval(before, mixed, "caption_token_f1")
    assert interval[0] < 0 < interval[1]
    flat = Change.between(SFT, {**SFT, "caption_token_f1": 0.685}, interval)
    assert flat.caption_direction == 0 and not flat.captions_toward_teacher
    assert "captions unchanged beyond noise" in stage_readings({"sft": SFT, "align": {}}, "sft", "align", None,
                                                                flat)["align"]


def test_summary_reads_the_per_prompt_lines(tmp_path: Path) -> None:
    models = _models({"caption_token_f1": 0.69})
    models = {name: {**m, "jsonl": f"{name}.jsonl"} for name, m in models.items()}
    eval_dir, align_dir = _write(tmp_path, models, [3.0, 2.9, 0.1, 0.0])
    for name, shift in (("sft", 0.0), ("align", 0.02)):
        lines = [{"row": r, "caption_token_f1": 0.68 + shift * (1 if r % 2 else -0.95)} for r in range(1, 33)]
        (eval_dir / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = summarize_demo(eval_dir, align_dir)
    assert "change 95 % CI" in result.readings["align"]
    assert "did not move the held-out captions beyond noise" in result.verdict
