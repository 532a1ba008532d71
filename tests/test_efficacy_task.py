"""The efficacy study's task metrics and oracle scorer (benchmarks/efficacy/task.py)."""

import pytest

from benchmarks.efficacy.task import caption_counts, oracle_scores, reasoning_consistent

TEACHER_CAPTION = "<caption> red 3 green 0 blue 2 yellow 1 </caption>"


def test_caption_counts_reads_every_colour():
    assert caption_counts(TEACHER_CAPTION) == {"red": 3, "green": 0, "blue": 2, "yellow": 1}


@pytest.mark.parametrize(("caption", "reasoning", "expected"), [
    (TEACHER_CAPTION, "<think> red 3 + blue 2 = 5 </think><answer> 5 </answer>", True),
    # wrong caption, but the sum follows it: consistent (perception error, not reasoning error)
    ("<caption> red 1 green 0 blue 2 yellow 1 </caption>", "<think> red 1 + blue 2 = 3 </think><answer> 3 </answer>",
     True),
    (TEACHER_CAPTION, "<think> red 3 + blue 1 = 4 </think><answer> 4 </answer>", False),  # count not from caption
    (TEACHER_CAPTION, "<think> red 3 + blue 2 = 6 </think><answer> 6 </answer>", False),  # bad arithmetic
    (TEACHER_CAPTION, "<think> red 3 + blue 2 = 5 </think><answer> 4 </answer>", False),  # answer is not the total
    (TEACHER_CAPTION, "<think> five </think><answer> 5 </answer>", False),
])
def test_reasoning_consistency(caption, reasoning, expected):
    assert reasoning_consistent(caption, reasoning) is expected


def test_oracle_scores_per_segment():
    rollouts = {"caption": [TEACHER_CAPTION, "<caption> red 1 green 0 blue 2 yellow 2 </caption>"],
                "reasoning": ["<think> red 3 + blue 2 = 5 </think>\n<answer> 5 </answer>",
                              "<think> red 1 + blue 2 = 4 </think>\n<answer> 4 </answer>"]}
    teacher = {"caption": [TEACHER_CAPTION] * 2, "reasoning": ["unused"] * 2}
    scores = oracle_scores(rollouts, teacher, ["5", "5"])
    assert scores == {"caption": [1.0, 0.5], "reasoning": [1.0, 0.0]}


def test_eval_records_carry_the_teacher_response_in_the_prism_layout(tmp_path):
    """The gate scores each held-out prompt's teacher response: it must parse as a PRISM response
    whose caption holds the record's true counts."""
    from benchmarks.efficacy.task import load_eval_records
    from prism_plugin.layout import layout_parts
    from prism_plugin.tiny.data import write_dataset

    paths = write_dataset(tmp_path / "data", num_examples=4, seed=3)
    records = load_eval_records(paths["align"])
    assert len(records) == 4
    for record in records:
        caption, think, answer = layout_parts(record.teacher)
        assert caption_counts(caption) == record.counts
        assert answer.strip() == record.answer
        assert reasoning_consistent(caption, f"<think>{think}</think><answer>{answer}</answer>")
        # the segments are joined the way the policy writes them (and the product renders a teacher):
        # the caption's score is read at its last token, so the separator must match
        assert "</caption>\n<think>" in record.teacher


def test_the_run_points_at_its_logs_and_the_report(tmp_path, monkeypatch, capsys):
    """Each seed runs in a worker writing only to its log: the driver names the log when a seed starts and
    ends, and where results, logs and the report command are at the end (here the worker is /bin/false)."""
    import benchmarks.efficacy.run as run

    monkeypatch.setattr(run, "build_eval_set", lambda args: None)
    monkeypatch.setattr(run.sys, "executable", "/bin/false")
    code = run.main(["--quick", "--work-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"seed 0: started; progress in {tmp_path / 'seed0.log'}" in out
    assert "seed 0: exit 1 after" in out and f"(log {tmp_path / 'seed0.log'})" in out
    assert f"failed: [0]; results and logs in {tmp_path}" in out
    assert f"python benchmarks/efficacy/report.py --work-dir {tmp_path}" in out
