"""Verifiable reward: responses/second of prism_plugin.rewards.compute_score on one core.

A realistic Stage-3 mix (prompts x 16 rollouts): mostly numeric and multiple-choice golds,
some LaTeX (fractions, surds, symbolic expressions), about a third wrong answers and 8 %
layout-invalid responses. Baseline: the same format gate and answer extraction, then plain
``math_verify.verify(parse(gold), parse(pred))`` (its own signal time-outs), on a sample.

    python benchmarks/bench_rewards.py [--prompts 1250] [--rollouts 16] [--baseline-sample 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from prism_plugin.rewards import compute_score, extract_answer, format_ok  # noqa: E402
from prism_plugin.rewards import matchers as matchers_mod  # noqa: E402

UNITS = ["", "", "", " cm", "cm", " m", "°", "^\\circ", "\\text{ cm}", "个", " degrees", "%"]
OPTION_FORMS = ["{L}", "({L})", "{L}.", "The answer is {L}", "{L}. {text}", "\\boxed{{{L}}}", "答案是{L}"]


def _number_gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    kind = rng.random()
    if kind < 0.5:
        value = rng.randint(0, 500)
        gold = str(value)
        right = [gold, f"{value}.0", f"\\boxed{{{value}}}", f"x = {value}"]
        wrong = [str(value + rng.choice([-2, -1, 1, 3])), str(value * 10), f"{value}.5"]
    elif kind < 0.8:
        value = round(rng.uniform(0, 100), rng.choice([1, 2]))
        gold = str(value)
        right = [gold, f"{value:.2f}", f"{value}0"]
        wrong = [f"{value + 0.1:.2f}", str(round(value * 1.01, 2))]
    else:
        value = rng.randint(1000, 2_000_000)
        gold = f"{value:,}"
        right = [str(value), f"{value:,}", f"\\${value:,}"]
        wrong = [str(value + 1), f"{value * 2:,}"]
    unit = rng.choice(UNITS)
    right = [r + unit if rng.random() < 0.3 else r for r in right]
    return gold, right, wrong


def _choice_gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    letter = rng.choice("ABCD")
    text = str(rng.randint(1, 90))
    gold = rng.choice([letter, f"({letter}) {text}", f"{letter}. {text}"])
    other = rng.choice([c for c in "ABCD" if c != letter])
    right = [form.format(L=letter, text=text) for form in OPTION_FORMS]
    wrong = [form.format(L=other, text=text) for form in OPTION_FORMS] + [f"not {letter} but {other}"]
    return gold, right, wrong


def _latex_gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(1, 9), rng.randint(2, 12)
    kind = rng.random()
    if kind < 0.45:
        gold = f"\\frac{{{a}}}{{{b}}}"
        right = [gold, f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a / b:.8f}"]
        wrong = [f"\\frac{{{b}}}{{{a}}}", f"{a / b:.3f}"]
    elif kind < 0.75:
        gold = f"{a}\\sqrt{{{b}}}"
        right = [gold, f"\\sqrt{{{a * a * b}}}", f"{a}\\sqrt {b}"]
        wrong = [f"{a + 1}\\sqrt{{{b}}}", f"\\sqrt{{{a * b}}}"]
    elif kind < 0.9:
        gold = f"\\frac{{{a}\\pi}}{{{b}}}"
        right = [gold, f"\\frac{{{a}}}{{{b}}}\\pi"]
        wrong = [f"\\frac{{{a}\\pi}}{{{b + 1}}}"]
    else:  # symbolic: only math_verify can decide
        gold = f"x^2+{a}x+{b}"
        right = [gold, f"{b}+{a}x+x^2"]
        wrong = [f"x^2+{a}x+{b + 1}", f"x^2-{a}x+{b}"]
    return gold, right, wrong


def _response(rng: random.Random, answer: str) -> str:
    if rng.random() < 0.08:
        broken = rng.choice(
            [
                "<think>{t}</think><answer>{a}</answer>",
                "<caption>{c}</caption><think>{t}</think><answer>{a}",
                "Sure. <caption>{c}</caption><think>{t}</think><answer>{a}</answer>",
                "<caption>{c}</caption><think>{t}</think>{a}",
            ]
        )
        return broken.format(c="a chart with bars", t="step " * 40, a=answer)
    think = " ".join(rng.choice(["so", "the", "area", "is", "=", "3", "x", "then", "\\frac{1}{2}"]) for _ in range(120))
    caption = "- a right triangle with legs 3 and 4\n- a table of values\n- labels A, B, C"
    return f"<caption>\n{caption}\n</caption>\n<think>\n{think}\n</think>\n<answer>{answer}</answer>"


def make_mix(prompts: int, rollouts: int, seed: int = 0) -> list[tuple[str, str]]:
    """(response, gold) pairs: 55 % numbers, 30 % letters, 15 % LaTeX; ~35 % wrong answers."""
    rng = random.Random(seed)
    mix = []
    for _ in range(prompts):
        r = rng.random()
        make = _number_gold if r < 0.55 else _choice_gold if r < 0.85 else _latex_gold
        gold, right, wrong = make(rng)
        p_right = rng.uniform(0.3, 0.95)
        for _ in range(rollouts):
            answer = rng.choice(right) if rng.random() < p_right else rng.choice(wrong)
            mix.append((_response(rng, answer), gold))
    return mix


def run_ours(mix: list[tuple[str, str]]) -> tuple[float, float, list[float]]:
    scores, worst = [], 0.0
    start = time.perf_counter()
    for response, gold in mix:
        t0 = time.perf_counter()
        scores.append(compute_score(response, gold)["accuracy"])
        worst = max(worst, time.perf_counter() - t0)
    return time.perf_counter() - start, worst, scores


def run_baseline(mix: list[tuple[str, str]]) -> tuple[float, float, list[float]]:
    from math_verify import parse, verify

    scores, worst = [], 0.0
    start = time.perf_counter()
    for response, gold in mix:
        t0 = time.perf_counter()
        accuracy = 0.0
        if format_ok(response):
            answer = extract_answer(response) or ""
            if answer:
                accuracy = float(verify(parse(gold), parse(answer)))
        scores.append(accuracy)
        worst = max(worst, time.perf_counter() - t0)
    return time.perf_counter() - start, worst, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1250)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--baseline-sample", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core (the worker inherits it)

    mix = make_mix(args.prompts, args.rollouts)
    compute_score("<caption>c</caption><think>t</think><answer>1</answer>", "1")  # import prism_plugin.segment_split
    startup = 0.0
    if matchers_mod.HAS_MATH_VERIFY:
        t0 = time.perf_counter()
        matchers_mod.math_verify_worker().start()
        startup = time.perf_counter() - t0
    elapsed, worst, ours = run_ours(mix)
    mv_calls = len(matchers_mod._MV_CACHE)

    rows = [
        ("responses", f"{len(mix):,}", "", ""),
        ("responses / s", f"{len(mix) / elapsed:,.0f}", "", ""),
        ("mean per response (ms)", f"{1000 * elapsed / len(mix):.3f}", "", ""),
        ("worst single call in the mix (ms)", f"{1000 * worst:.1f}", "", ""),
        ("distinct math_verify calls", f"{mv_calls}", "", ""),
        ("math_verify worker start-up (ms)", f"{1000 * startup:.0f}", "", ""),
        ("accuracy (mean)", f"{sum(ours) / len(ours):.3f}", "", ""),
    ]
    if matchers_mod.HAS_MATH_VERIFY and args.baseline_sample:
        rng = random.Random(1)
        sample_idx = sorted(rng.sample(range(len(mix)), min(args.baseline_sample, len(mix))))
        sample = [mix[i] for i in sample_idx]
        matchers_mod._MV_CACHE.clear()
        for fn in (matchers_mod.parse_option, matchers_mod.extract_letter, matchers_mod.answer_parts):
            fn.cache_clear()
        s_elapsed, s_worst, s_ours = run_ours(sample)
        b_elapsed, b_worst, base = run_baseline(sample)
        agree = sum(a == b for a, b in zip(s_ours, base, strict=True)) / len(sample)
        rows = [
            ("responses (baseline sample)", f"{len(sample):,}", f"{len(sample):,}", ""),
            (
                "responses / s",
                f"{len(sample) / s_elapsed:,.0f}",
                f"{len(sample) / b_elapsed:,.0f}",
                f"{b_elapsed / s_elapsed:.0f}x",
            ),
            ("worst single call (ms)", f"{1000 * s_worst:.1f}", f"{1000 * b_worst:.1f}", ""),
            ("accuracy (mean)", f"{sum(s_ours) / len(s_ours):.3f}", f"{sum(base) / len(base):.3f}", ""),
            ("same accuracy as baseline", f"{100 * agree:.1f} %", "", ""),
        ] + [("full mix: " + name, a, b, c) for name, a, b, c in rows]
    patho_time = float("nan")
    if matchers_mod.HAS_MATH_VERIFY:
        t0 = time.perf_counter()
        compute_score("<caption>c</caption><think>t</think><answer>1</answer>", "(3^{200000})!")
        patho_time = time.perf_counter() - t0

    rows.append(("pathological call, (3^{200000})! (ms)", f"{1000 * patho_time:.0f}", "", ""))
    print(f"{'':48s} | {'prism-plugin':>14s} | {'math_verify':>14s} | {'ratio':>7s}")
    print(f"{'-' * 48}-|-{'-' * 14}-|-{'-' * 14}-|-{'-' * 7}")
    for name, a, b, c in rows:
        print(f"{name:48s} | {a:>14s} | {b:>14s} | {c:>7s}")


if __name__ == "__main__":
    main()
