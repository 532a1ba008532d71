"""A command-line value out of range is one line and exit code 1, before any model or data is read."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.transformers4

UPCYCLE = ["upcycle", "nowhere/dense", "nowhere/out"]


@pytest.mark.parametrize(("argv", "message"), [
    ([*UPCYCLE, "--num-experts", "4", "--top-k", "6"],
     "--top-k must be in 1..4 (each token is routed to top-k of the --num-experts 4 experts); got 6"),
    ([*UPCYCLE, "--top-k", "0"],
     "--top-k must be in 1..4 (each token is routed to top-k of the --num-experts 4 experts); got 0"),
    ([*UPCYCLE, "--num-experts", "-1"], "--num-experts must be >= 0 (0 keeps the dense backbone); got -1"),
    ([*UPCYCLE, "--noise-std", "-0.1"], "--noise-std and --router-std must be >= 0; got -0.1 and 0.02"),
    ([*UPCYCLE, "--num-shared-experts", "1"], "--num-shared-experts 1 applies to --expert-mode dedicated only"),
    ([*UPCYCLE, "--num-experts", "0", "--expert-mode", "dedicated"],
     "a dense (--num-experts 0) discriminator supports --expert-mode shared only"),
    ([*UPCYCLE, "--expert-mode", "dedicated", "--num-experts", "1", "--top-k", "1"],
     "--expert-mode dedicated gives each of the 2 segments its own experts: --num-experts must be >= 2; got 1"),
    ([*UPCYCLE, "--expert-mode", "dedicated", "--num-shared-experts", "3"],
     "--num-shared-experts must be in 0..2: --num-experts 4 leave at least one own expert to each of the 2 "
     "segments; got 3"),
    ([*UPCYCLE, "--expert-mode", "dedicated", "--top-k", "3"],
     "--top-k 3 is more than the 2 experts a segment may use (its own 2 + 0 shared)"),
    (["score", "--discriminator", "nowhere", "--data", "x.jsonl", "--out", "o.jsonl", "--batch-size", "0"],
     "--batch-size must be at least 1; got 0"),
    (["score", "--discriminator", "nowhere", "--data", "x.jsonl", "--out", "o.jsonl", "--max-length", "-5"],
     "--max-length must be at least 1; got -5"),
    (["align-preview", "--policy", "p", "--discriminator", "d", "--data", "x.jsonl", "--num-generations", "1"],
     "--num-generations must be at least 2 (advantages compare a prompt's rollouts); got 1"),
    (["align-preview", "--policy", "p", "--discriminator", "d", "--data", "x.jsonl", "--num-prompts", "0"],
     "--num-prompts must be at least 1; got 0"),
    (["data", "make-pairs", "--policy", "p", "--data", "x.jsonl", "--out", "o.jsonl", "--num-samples", "0"],
     "--num-samples must be at least 1; got 0"),
    (["data", "make-pairs", "--policy", "p", "--data", "x.jsonl", "--out", "o.jsonl", "--temperature", "-1"],
     "--temperature must be 0 (greedy) or more; got -1.0"),
    (["make-tiny", "nowhere/tiny", "--num-examples", "0"], "--num-examples must be at least 1; got 0"),
])
def test_an_option_out_of_range_is_one_line(argv, message, tmp_path, monkeypatch, capsys):
    from prism_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    captured = capsys.readouterr()
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    assert captured.err == f"prism-plugin {command}: error: {message}\n" and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # refused before anything was read or written
