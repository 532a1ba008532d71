"""Answer matchers: a registry of small functions tried in order by :func:`answers_match`.

A matcher takes ``(pred, gold)`` (both already :func:`~.normalize.canonical`, the prediction
reduced to its final answer by :func:`~.extract.final_answer`) and returns
True or False when it can decide, or None to pass to the next one. Adding a matcher is
adding a decorated function::

    @register_matcher("roman_numerals", order=35)
    def roman(pred: str, gold: str) -> bool | None: ...

Default order: exact (0), multi_part (10), coordinates (20), multiple_choice (30),
numbers (40), units (45), text (50), math_verify (90). No matcher decides -> False.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache

from .extract import final_answer, gold_answer
from .normalize import canonical, clean_latex, normalize_text
from .numbers import (
    convert_to_base,
    decimal_comma_reading,
    numbers_equal,
    parse_number,
    parse_quantity,
    quantities_equal,
)
from .parts import answer_parts, parts_agree
from .timeout import TimeoutWorker

Matcher = Callable[[str, str], "bool | None"]

MAX_ANSWER_CHARS = 1024
COORD_TOL = 1e-6
MATH_VERIFY_TIMEOUT_S = 2.0


@dataclass(frozen=True, order=True)
class MatcherEntry:
    """One registered matcher; entries sort by ``order``."""

    order: float
    name: str
    fn: Matcher = field(compare=False)


REGISTRY: dict[str, MatcherEntry] = {}
_ORDERED: list[MatcherEntry] = []
# monotonic time by which the comparison in progress must be decided (math_verify's share)
_DEADLINE: ContextVar[float | None] = ContextVar("answers_match_deadline", default=None)


def register_matcher(name: str, order: float) -> Callable[[Matcher], Matcher]:
    """Decorator: register ``fn`` under ``name`` at position ``order`` (replaces same name)."""

    def decorate(fn: Matcher) -> Matcher:
        REGISTRY[name] = MatcherEntry(order, name, fn)
        _reorder()
        return fn

    return decorate


def unregister_matcher(name: str) -> None:
    """Remove a matcher (e.g. ``"math_verify"`` for a purely rule-based reward)."""
    REGISTRY.pop(name, None)
    _reorder()


def _reorder() -> None:
    _ORDERED[:] = sorted(REGISTRY.values())


def matcher_names() -> list[str]:
    """Registered matcher names in the order they are tried."""
    return [entry.name for entry in _ORDERED]


def answers_match(pred: str, gold: str) -> bool:
    """True iff the predicted answer matches the gold answer (see the package docstring).

    The final answer is extracted first (:func:`~.extract.final_answer`: the boxes decide), then
    the matchers are tried. All math_verify calls of one comparison, its parts included, share
    one time limit (:func:`set_math_verify_timeout`, 2 s by default).
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    if len(pred) >= MAX_ANSWER_CHARS:
        return False
    if _DEADLINE.get() is not None:  # a part of an answer already being compared
        return _match(pred, gold)
    token = _DEADLINE.set(time.monotonic() + MATH_VERIFY_TIMEOUT_S)
    try:
        return _match(pred, gold)
    finally:
        _DEADLINE.reset(token)


def _match(pred: str, gold: str) -> bool:
    pred_c, gold_c = canonical(pred), canonical(gold)
    if not pred_c or not gold_c:
        return False
    if "\\boxed" in gold_c or "\\fbox" in gold_c:
        gold_c = canonical(gold_answer(gold_c))
    pred_c = canonical(final_answer(pred_c, len(answer_parts(gold_c).parts)))  # answer_parts is cached
    if not pred_c or not gold_c:
        return False
    pred_c = decimal_comma_reading(pred_c, gold_c)
    for entry in _ORDERED:
        decision = entry.fn(pred_c, gold_c)
        if decision is not None:
            return bool(decision)
    return False


# --------------------------------------------------------------------------- exact


@register_matcher("exact", order=0)
def match_exact(pred: str, gold: str) -> bool | None:
    """Identical after unicode clean-up: accept at once."""
    return True if pred == gold else None


# --------------------------------------------------------------------------- multi-part


@register_matcher("multi_part", order=10)
def match_multi_part(pred: str, gold: str) -> bool | None:
    """A multi-part gold is compared part by part (:func:`~.parts.parts_agree`: bare lists as sets,
    numbered items in order, labelled parts by label); a multi-part prediction never matches a
    single-part gold. Final when either side has several parts."""
    if parse_option(gold) is not None:
        return None
    gold_parts = answer_parts(gold)
    pred_parts = answer_parts(pred)
    if len(gold_parts.parts) < 2:
        return False if len(pred_parts.parts) > 1 else None
    return parts_agree(pred_parts, gold_parts, answers_match)


# --------------------------------------------------------------------------- coordinates

_PAIR = r"\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)"
_PAIR_RE = re.compile(_PAIR)
_GOLD_PAIR_RE = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?\s*=?\s*)?" + _PAIR + "$")


def _pair_values(x: str, y: str) -> tuple[float, float] | None:
    vx, vy = parse_number(x), parse_number(y)
    if vx is None or vy is None:
        return None
    return vx, vy


@register_matcher("coordinates", order=20)
def match_coordinates(pred: str, gold: str) -> bool | None:
    """Gold ``(x, y)`` with numeric entries: the prediction must hold exactly one numeric pair
    within 1e-6·max(1, |gold|) per coordinate. The decision is final."""
    if "(" not in gold:
        return None
    m = _GOLD_PAIR_RE.match(clean_latex(gold))
    if m is None:
        return None
    gold_xy = _pair_values(m.group(1), m.group(2))
    if gold_xy is None:
        return None
    found = {xy for xy in (_pair_values(a, b) for a, b in _PAIR_RE.findall(clean_latex(pred))) if xy}
    if len(found) != 1:
        return False
    pred_xy = found.pop()
    return all(abs(p - g) <= COORD_TOL * max(1.0, abs(g)) for p, g in zip(pred_xy, gold_xy, strict=True))


# --------------------------------------------------------------------------- multiple choice

_LETTERS = "ABCDEFGH"
_GOLD_OPTION_RE = re.compile(r"^(?:\(([A-Ha-h])\)|([A-H])(?:[.):]|$))\s*(.*)$", re.DOTALL)
_EXPLICIT_RE = re.compile(
    r"(?:answer|correct (?:option|choice)|choose|select|答案|选择|应选|选)\s*(?:is|should be|would be|为|是|应为)?"
    r"\s*[:：]?\s*(?:\(([A-Ha-h])\)|(?<![A-Za-z])([A-H])(?![A-Za-z]))",
    re.IGNORECASE,
)
_PAREN_LETTER_RE = re.compile(r"(?<![A-Za-z0-9_\\])\(([A-Ha-h])\)")
_DOT_LETTER_RE = re.compile(r"(?:^|(?<=\s))([A-H])[.:)](?=\s|$)")
_BARE_LETTER_RE = re.compile(r"^[\s(\[{*]*([A-H])[\s)\]}.:*]*$")


@lru_cache(maxsize=65536)
def parse_option(gold: str) -> tuple[str, str] | None:
    """Gold ``B``, ``(B) text`` or ``B. text`` -> (letter, option text or ''); else None."""
    m = _GOLD_OPTION_RE.match(clean_latex(gold))
    if m is None:
        return None
    return (m.group(1) or m.group(2)).upper(), m.group(3).strip()


def _explicit_letter(match: re.Match[str]) -> str | None:
    letter = match.group(1) or match.group(2)
    # "answer is a ..." is an article; only a parenthesised letter may be lowercase.
    if match.group(2) and not match.group(2).isupper():
        return None
    return letter.upper() if letter else None


@lru_cache(maxsize=65536)
def extract_letter(pred: str) -> str | None:
    """The letter a prediction commits to, or '' when it names several (ambiguous), or None.

    Priority: "answer is B" (last one wins) > "(B)" > "B." / "B)" / "B:" > a lone "B".
    Within the last three tiers, two different letters make the prediction ambiguous.
    """
    text = clean_latex(pred)
    explicit = [x for x in (_explicit_letter(m) for m in _EXPLICIT_RE.finditer(text)) if x]
    if explicit:
        return explicit[-1]
    for pattern in (_PAREN_LETTER_RE, _DOT_LETTER_RE):
        letters = {m.upper() for m in pattern.findall(text)}
        if len(letters) == 1:
            return letters.pop()
        if len(letters) > 1:
            return ""
    m = _BARE_LETTER_RE.match(text)
    return m.group(1) if m else None


@register_matcher("multiple_choice", order=30)
def match_multiple_choice(pred: str, gold: str) -> bool | None:
    """Letters A–H. A prediction without a letter may give the gold option's text instead."""
    option = parse_option(gold)
    if option is None:
        return None
    gold_letter, option_text = option
    letter = extract_letter(pred)
    if letter:
        return letter == gold_letter
    if letter is None and option_text:
        return answers_match(pred, option_text)
    return False


# --------------------------------------------------------------------------- numbers


@register_matcher("numbers", order=40)
def match_numbers(pred: str, gold: str) -> bool | None:
    """Both numbers (units, separators, %, simple LaTeX arithmetic allowed): compare values.

    Final unless both carry different units (then the unit matcher decides).
    """
    gold_q = parse_quantity(gold)
    if gold_q is None:
        return None
    pred_q = parse_quantity(pred)
    if pred_q is None:
        return None
    return quantities_equal(pred_q, gold_q)


# --------------------------------------------------------------------------- units


@register_matcher("units", order=45)
def match_units(pred: str, gold: str) -> bool | None:
    """Two quantities with different units: convert by the exact factor within a dimension
    ("3 m" == "300 cm", "5 kJ" == "5000 J"); different dimensions do not match. Final when
    both carry units, and tried before the case-blind text matcher ("5 mW" != "5 MW")."""
    gold_q = parse_quantity(gold)
    pred_q = parse_quantity(pred)
    if gold_q is None or pred_q is None or not gold_q.unit or not pred_q.unit:
        return None
    gold_base, pred_base = convert_to_base(gold_q), convert_to_base(pred_q)
    if gold_base is None or pred_base is None or gold_base[0] != pred_base[0]:
        return False
    return numbers_equal(pred_base[1], gold_base[1])


# --------------------------------------------------------------------------- text


@register_matcher("text", order=50)
def match_text(pred: str, gold: str) -> bool | None:
    """Equal after LaTeX clean-up, lowercasing and dropping punctuation and spaces."""
    return True if normalize_text(pred) == normalize_text(gold) else None


# --------------------------------------------------------------------------- math_verify

HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
_MATHY = set("0123456789\\^_+-*/=<>()[]{}|")
_WORKER: TimeoutWorker | None = None
_MV_CACHE: OrderedDict[tuple[str, str], bool] = OrderedDict()
_MV_CACHE_SIZE = 8192


def _looks_mathematical(text: str) -> bool:
    """A digit, backslash or operator, or a short symbol ("e", "pi"); prose is not sent."""
    return len(text) <= 3 or not _MATHY.isdisjoint(text)


def _math_verify_warmup() -> None:
    """Child-process warm-up: import math_verify, run one comparison, silence its warnings."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_verify_pair("x+1", "1+x")  # first parse/verify pays sympy and antlr set-up


def _wrap(text: str) -> str:
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def math_verify_pair(pred: str, gold: str) -> bool:
    """``math_verify.verify(parse(gold), parse(pred))`` with its own signal timeouts off
    (runs inside the worker, which the parent kills on time-out)."""
    from math_verify import parse, verify

    gold_parsed = parse(_wrap(gold), parsing_timeout=None)
    pred_parsed = parse(_wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def math_verify_worker() -> TimeoutWorker:
    """The shared worker process that runs math_verify (started on first use)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = TimeoutWorker(warmup=f"{__name__}:_math_verify_warmup")
    return _WORKER


def set_math_verify_timeout(seconds: float) -> None:
    """Change the hard per-call limit of the math_verify matcher (default 2 s)."""
    global MATH_VERIFY_TIMEOUT_S
    MATH_VERIFY_TIMEOUT_S = float(seconds)
    _MV_CACHE.clear()


@register_matcher("math_verify", order=90)
def match_math_verify(pred: str, gold: str) -> bool | None:
    """Symbolic equivalence by math_verify, under a hard time limit (time-out -> False).

    Skipped when math_verify is not installed or either side is prose (no digit, operator
    or backslash and longer than 3 characters).
    """
    if not HAS_MATH_VERIFY:
        return None
    if not (_looks_mathematical(pred) and _looks_mathematical(gold)):
        return None
    key = (pred, gold)
    cached = _MV_CACHE.get(key)
    if cached is not None:
        _MV_CACHE.move_to_end(key)
        return cached
    deadline = _DEADLINE.get()
    budget = MATH_VERIFY_TIMEOUT_S if deadline is None else min(MATH_VERIFY_TIMEOUT_S, deadline - time.monotonic())
    if budget <= 0:  # the comparison's time is spent: reject, as on a time-out
        return False
    result = math_verify_worker().call(math_verify_pair, (pred, gold), timeout=budget)
    if result is None:  # time-out, error or no worker: reject, but do not remember it
        return False
    result = bool(result)
    _MV_CACHE[key] = result
    if len(_MV_CACHE) > _MV_CACHE_SIZE:
        _MV_CACHE.popitem(last=False)
    return result
