"""Numbers with optional units: parsing, a tiny safe arithmetic evaluator, comparison.

:func:`parse_quantity` turns ``"1,234.5 cm"``, ``"-\\frac{3}{4}"``, ``"2\\sqrt{3}"``,
``"1.2 \\times 10^{-5}"`` or ``"50%"`` into a :class:`Quantity`; anything with a free
variable or an unknown word is not a number (``None``). Evaluation is float-only (no big
integers, exponent capped) so it can never stall. The unit words and their conversions
live in :mod:`.units`.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from functools import lru_cache

from .normalize import canonical, clean_latex, strip_assignment
from .units import UNIT_ALIASES, same_unit, to_base

REL_TOL = 1e-6
_MAX_EXPR_CHARS = 200
_MAX_EXPONENT = 400.0

_MAX_UNIT_CHARS = max(map(len, UNIT_ALIASES))
_PLAIN_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_THOUSANDS_RE = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,])")
_CURRENCY_PREFIX_RE = re.compile(r"^([+-]?)\s*(¥|€|£|rmb|usd)\s*", re.IGNORECASE)
# currency written before the number -> canonical unit (¥ is read as the yuan, as in 元)
_CURRENCY_PREFIX_UNITS = {"usd": "$", "¥": "元", "rmb": "元", "€": "€", "£": "£"}
# clean_latex drops every '$' (math delimiters), so a dollar sign is looked for before it
_DOLLAR_RE = re.compile(r"(?:^|=)\s*[+-]?\s*\\?\$\s*[+-]?[\d.]|[\d.]\s*\\?\$$")
_MIXED_RE = re.compile(r"^([+-]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_DECIMAL_COMMA_RE = re.compile(r"^([+-]?\d+),(\d+)$")
_DECIMAL_GOLD_RE = re.compile(r"^[+-]?\d*\.\d+$")
_TOKEN_RE = re.compile(r"\s*(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|sqrt|pi|\*\*|[-+*/()])")


@dataclass(frozen=True)
class Quantity:
    """A parsed number: value, canonical unit ('' when none), and whether it had a '%'."""

    value: float
    unit: str = ""
    percent: bool = False


def _strip_unit(text: str) -> tuple[str, str | None]:
    """(body, canonical unit) for ``body [\\]unit[.]`` with the longest unit alias at the end."""
    core = (text[:-1] if text.endswith(".") else text).rstrip()
    for size in range(min(len(core), _MAX_UNIT_CHARS), 0, -1):  # dict look-ups, longest first
        unit = UNIT_ALIASES.get(core[-size:])
        if unit is not None:
            break
    else:
        return text, None
    body = core[:-size]
    body = (body[:-1] if body.endswith("\\") else body).rstrip()
    # "2^m", "x_m": the letter belongs to the expression, not a unit.
    if not body or body.endswith("^") or body.endswith("_"):
        return text, None
    return body, unit


def _has_dollar_sign(text: str) -> bool:
    """'$5', '\\$5', '5$', 'x = $5': a currency dollar (a '$…$' math pair is not)."""
    if "$" not in text or text.count("$") - text.count("\\$") > 1:
        return False
    return _DOLLAR_RE.search(text) is not None


@lru_cache(maxsize=65536)
def parse_quantity(text: str) -> Quantity | None:
    """Parse a number with optional thousands separators, currency, unit or percent sign."""
    text = canonical(text)
    s = strip_assignment(clean_latex(text))
    if not s or len(s) > _MAX_EXPR_CHARS:
        return None
    s = s.replace("{,}", "").replace("\\!", "")
    percent = False
    if s.endswith("%"):
        percent, s = True, s[:-1].rstrip()
    unit = "$" if _has_dollar_sign(text) else ""
    m = _CURRENCY_PREFIX_RE.match(s)
    if m and m.end() < len(s):
        s, unit = m.group(1) + s[m.end() :], _CURRENCY_PREFIX_UNITS[m.group(2).lower()]
    if not percent and not _PLAIN_RE.match(s):
        body, found = _strip_unit(s)
        if found is not None:
            s, unit = body, found or unit
            if s.endswith("%"):
                percent, s = True, s[:-1].rstrip()
    if "," in s:
        s = _THOUSANDS_RE.sub(lambda mm: mm.group(0).replace(",", ""), s)
    value = parse_number(s)
    if value is None:
        return None
    return Quantity(value, unit, percent)


def decimal_comma_reading(pred: str, gold: str) -> str:
    """``pred`` with a decimal comma read as a point, where that is the only sensible reading.

    Only a prediction that is one number ``digits,digits`` whose part after the comma is not
    three digits long ("3,75"; "1,000" is one thousand), against a gold that is a single
    decimal with a non-integer value ("3.75"): ``"3,75"`` -> ``"3.75"``. Anything else is
    returned unchanged ("1,00" against the gold "1" stays the two parts 1 and 00).
    """
    if "," not in pred or "." not in gold:
        return pred
    m = _DECIMAL_COMMA_RE.match(pred)
    if m is None or len(m.group(2)) == 3 or _DECIMAL_GOLD_RE.match(gold) is None or float(gold).is_integer():
        return pred
    return f"{m.group(1)}.{m.group(2)}"


def parse_number(s: str) -> float | None:
    """A plain number (``-1.5e3``) or a small closed-form expression; None otherwise."""
    s = s.strip()
    if _PLAIN_RE.match(s):
        value = float(s)
        return value if math.isfinite(value) else None
    return evaluate_expression(s)


def _latex_to_expr(s: str) -> str | None:
    m = _MIXED_RE.match(s)
    if m:  # mixed number: 2\frac{1}{2} = 2.5
        sign, whole, num, den = m.groups()
        return f"{sign}({whole}+{num}/{den})"
    s = s.replace("\\frac", "\\f").replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    s = s.replace("×", "*").replace("·", "*").replace("÷", "/").replace("\\pi", " pi ").replace("π", " pi ")
    s = s.replace("\\sqrt", " sqrt ").replace("^", "**")
    out: list[str] = []
    i = 0
    while i < len(s):
        if s.startswith("\\f", i):  # \frac{a}{b} -> ((a)/(b)); the groups are rewritten in place
            out.append("frac")
            i += 2
            continue
        out.append(s[i])
        i += 1
    s = "".join(out)
    if "\\" in s or "[" in s:
        return None
    s = s.replace("{", "(").replace("}", ")")
    # frac(a)(b) -> ((a)/(b)) once the braces became parentheses
    while "frac" in s:
        idx = s.find("frac")
        first = _group_end(s, idx + 4)
        if first < 0:
            return None
        second = _group_end(s, first + 1)
        if second < 0:
            return None
        a, b = s[idx + 5 : first], s[first + 2 : second]
        s = f"{s[:idx]}(({a})/({b})){s[second + 1 :]}"
    return s


def _group_end(s: str, start: int) -> int:
    """End index of the parenthesised group starting at ``start`` (spaces skipped)."""
    while start < len(s) and s[start] == " ":
        start += 1
    if start >= len(s) or s[start] != "(":
        return -1
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _tokens(expr: str) -> list[str] | None:
    tokens: list[str] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "pi":
        return math.pi
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > _MAX_EXPONENT or (left < 0 and not right.is_integer()):
                raise ValueError("exponent out of range")
            return math.pow(left, right)
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ValueError("operator")
        return op(left, right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "sqrt"
        and len(node.args) == 1
        and not node.keywords
    ):
        return math.sqrt(_eval(node.args[0]))
    raise ValueError("unsupported")


@lru_cache(maxsize=65536)
def evaluate_expression(s: str) -> float | None:
    """Evaluate digits with + - * / ^, parentheses, \\frac, \\sqrt and \\pi; None otherwise."""
    if not s or len(s) > _MAX_EXPR_CHARS:
        return None
    if not any(c.isdigit() for c in s) and "\\pi" not in s and "π" not in s:
        return None
    expr = _latex_to_expr(s)
    if expr is None:
        return None
    tokens = _tokens(expr)
    if not tokens:
        return None
    # implicit multiplication: 2\sqrt{3}, 2\pi, (1)(2), \pi r -> no (r is not a token)
    joined: list[str] = []
    for tok in tokens:
        if joined:
            prev = joined[-1]
            prev_value = prev[0].isdigit() or prev[0] == "." or prev in ("pi", ")")
            cur_start = tok in ("pi", "sqrt", "(") or tok[0].isdigit() or tok[0] == "."
            if prev_value and cur_start:
                if (prev[0].isdigit() or prev[0] == ".") and (tok[0].isdigit() or tok[0] == "."):
                    return None  # "2 3" is not a number
                joined.append("*")
        joined.append(tok)
    try:
        value = _eval(ast.parse(" ".join(joined), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, TypeError):
        return None
    return value if math.isfinite(value) else None


def numbers_equal(pred: float, gold: float, rel_tol: float = REL_TOL) -> bool:
    """Relative error below ``rel_tol`` (relative to the gold); zero must be exactly zero."""
    if gold == 0.0 or pred == 0.0:
        return pred == gold
    return abs(pred - gold) < rel_tol * abs(gold)


def quantities_equal(pred: Quantity, gold: Quantity) -> bool | None:
    """Compare two quantities; None when both carry different units (left to unit conversion).

    A unit on one side only is decoration (a counting word is no unit). A percent sign on
    one side only accepts either reading: "50%" matches both "50" and "0.5".
    """
    if pred.unit and gold.unit and not same_unit(pred.unit, gold.unit):
        return None
    if pred.percent == gold.percent:
        return numbers_equal(pred.value, gold.value)
    if pred.percent:
        return numbers_equal(pred.value, gold.value) or numbers_equal(pred.value / 100.0, gold.value)
    return numbers_equal(pred.value, gold.value) or numbers_equal(pred.value, gold.value / 100.0)


def convert_to_base(quantity: Quantity) -> tuple[str, float] | None:
    """(dimension, value in the dimension's base unit), or None for a quantity without a unit."""
    return to_base(quantity.unit, quantity.value)
