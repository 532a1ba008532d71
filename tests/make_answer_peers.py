"""Regenerate the peer columns of tests/data/answers.jsonl: what two other rewards say on each case.

    PRISM_AUTHORS_SRC=/path/to/PRISM  python -m tests.make_answer_peers

- ``math_verify``: plain math-verify, ``verify(parse(gold), parse(pred))`` with its default extraction
  and time-outs (the baseline of ``benchmarks/bench_rewards.py``). ``tests/test_rewards.py`` checks
  this column live wherever math-verify is installed.
- ``authors``: the PRISM authors' RLVR reward (github XIAO4579/PRISM,
  ``verl/verl/utils/reward_score/math_verify_with_format.py``, ``compute_score``) on a layout-valid
  response holding the prediction in ``<answer>…</answer>``: True when its accuracy is 1. Their module
  is imported at run time from the checkout named by ``PRISM_AUTHORS_SRC``; none of their code is in
  this repository, so this column is stored.

Together with ``expected`` the columns show where our reward differs from each peer, and the case's
``why`` says why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from pathlib import Path
from types import ModuleType

CORPUS = Path(__file__).resolve().parent / "data" / "answers.jsonl"
AUTHORS_MODULE = Path("verl") / "verl" / "utils" / "reward_score" / "math_verify_with_format.py"
RESPONSE = "<caption>a figure</caption>\n<think>work</think>\n<answer>{answer}</answer>"


def plain_math_verify(pred: str, gold: str) -> bool:
    """math-verify as it comes: ``verify(parse(gold), parse(pred))``; an error is a non-match."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:
        return bool(verify(parse(gold), parse(pred)))
    except Exception:  # noqa: BLE001 - math-verify's own failures (time-outs included) are non-matches
        return False


def load_authors_reward(src: str | Path) -> ModuleType:
    """The authors' ``math_verify_with_format`` module, imported from a checkout of their repository."""
    path = Path(src).resolve() / AUTHORS_MODULE
    if not path.is_file():
        raise FileNotFoundError(f"PRISM_AUTHORS_SRC={src} has no {AUTHORS_MODULE}")
    spec = importlib.util.spec_from_file_location("prism_authors_math_verify_with_format", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.logger.setLevel(logging.CRITICAL)
    return module


def authors_accuracy(module: ModuleType, pred: str, gold: str) -> bool:
    """Does the authors' reward credit the prediction (accuracy 1) on a layout-valid response?"""
    return module.compute_score(RESPONSE.format(answer=pred), gold)["acc_reward"] == 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.environ.get("PRISM_AUTHORS_SRC"),
                        help="checkout of github XIAO4579/PRISM (default $PRISM_AUTHORS_SRC)")
    args = parser.parse_args()
    if not args.src:
        parser.error("give --src or set PRISM_AUTHORS_SRC")
    authors = load_authors_reward(args.src)
    cases = [json.loads(line) for line in CORPUS.read_text("utf-8").splitlines()]
    out = []
    for case in cases:
        row = {key: case[key] for key in ("pred", "gold", "expected", "why")}
        row["math_verify"] = plain_math_verify(case["pred"], case["gold"])
        row["authors"] = authors_accuracy(authors, case["pred"], case["gold"])
        out.append(json.dumps(row, ensure_ascii=False))
    CORPUS.write_text("\n".join(out) + "\n", encoding="utf-8")
    differ = {peer: sum(json.loads(line)[peer] != json.loads(line)["expected"] for line in out)
              for peer in ("math_verify", "authors")}
    print(f"{len(out)} cases written to {CORPUS}; verdicts other than expected: {differ}")


if __name__ == "__main__":
    main()
