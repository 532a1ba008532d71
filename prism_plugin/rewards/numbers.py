"""Numbers with optional units: parsing, a tiny safe arithmetic evaluator, unit conversion.

:func:`parse_quantity` turns ``"1,234.5 cm"``, ``"-\\frac{3}{4}"``, ``"2\\sqrt{3}"``,
``"1.2 \\times 10^{-5}"`` or ``"50%"`` into a :class:`Quantity`; anything with a free
variable or an unknown word is not a number (``None``). Evaluation is float-only (no big
integers, exponent capped) so it can never stall.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from functools import lru_cache

from .normalize import clean_latex, strip_assignment

REL_TOL = 1e-6
_MAX_EXPR_CHARS = 200
_MAX_EXPONENT = 400.0

# Unit aliases -> canonical unit. Units here are stripped from numbers; those that also
# appear in _CONVERSIONS can be compared across scales ("3 m" == "300 cm").
_UNIT_ALIASES: dict[str, str] = {}


def _alias(canonical_unit: str, *names: str) -> None:
    for name in (canonical_unit, *names):
        _UNIT_ALIASES[name] = canonical_unit


_alias("mm", "millimeter", "millimeters", "millimetre", "millimetres", "毫米")
_alias("cm", "centimeter", "centimeters", "centimetre", "centimetres", "厘米")
_alias("dm", "decimeter", "decimeters", "分米")
_alias("m", "meter", "meters", "metre", "metres", "米")
_alias("km", "kilometer", "kilometers", "kilometre", "kilometres", "千米", "公里")
_alias("in", "inch", "inches")
_alias("ft", "foot", "feet")
_alias("mi", "mile", "miles")
_alias("mg", "milligram", "milligrams", "毫克")
_alias("g", "gram", "grams", "克")
_alias("kg", "kilogram", "kilograms", "千克", "公斤")
_alias("t", "ton", "tons", "tonne", "tonnes", "吨")
_alias("s", "sec", "secs", "second", "seconds", "秒")
_alias("min", "mins", "minute", "minutes", "分钟")
_alias("h", "hr", "hrs", "hour", "hours", "小时")
_alias("day", "days", "天")
_alias("mm^2", "mm2", "平方毫米")
_alias("cm^2", "cm2", "平方厘米")
_alias("dm^2", "dm2", "平方分米")
_alias("m^2", "m2", "平方米")
_alias("km^2", "km2", "平方千米", "平方公里")
_alias("mm^3", "mm3", "立方毫米")
_alias("cm^3", "cm3", "cc", "立方厘米")
_alias("dm^3", "dm3", "立方分米")
_alias("m^3", "m3", "立方米")
_alias("ml", "mL", "milliliter", "milliliters", "millilitre", "毫升")
_alias("l", "L", "liter", "liters", "litre", "litres", "升")
_alias("m/s", "米/秒", "米每秒")
_alias("km/h", "kph", "千米/小时", "千米每小时", "公里/小时")
_alias("°", "deg", "degree", "degrees", "度")
_alias("元", "yuan", "块")
_alias("角")
_alias("$", "dollar", "dollars", "usd")
_alias("cent", "cents")
# Counting words and classifiers are pure decoration: stripped, never compared.
for _word in (
    "个 人 只 本 次 岁 倍 页 辆 张 条 名 棵 件 种 分 份 朵 头 匹 位 支 把 杯 盒 袋 箱 台 道 组 根 双 对 层 "
    "units unit times people students apples items pieces points years year months month "
    "N J W V Pa Hz kJ kW kPa mph"
).split():
    _UNIT_ALIASES[_word] = ""

# canonical unit -> (dimension, factor to the dimension's base unit)
_CONVERSIONS: dict[str, tuple[str, float]] = {
    "mm": ("length", 1e-3),
    "cm": ("length", 1e-2),
    "dm": ("length", 0.1),
    "m": ("length", 1.0),
    "km": ("length", 1e3),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "mi": ("length", 1609.344),
    "mg": ("mass", 1e-3),
    "g": ("mass", 1.0),
    "kg": ("mass", 1e3),
    "t": ("mass", 1e6),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
    "mm^2": ("area", 1e-6),
    "cm^2": ("area", 1e-4),
    "dm^2": ("area", 1e-2),
    "m^2": ("area", 1.0),
    "km^2": ("area", 1e6),
    "mm^3": ("volume", 1e-9),
    "cm^3": ("volume", 1e-6),
    "dm^3": ("volume", 1e-3),
    "m^3": ("volume", 1.0),
    "ml": ("volume", 1e-6),
    "l": ("volume", 1e-3),
    "m/s": ("speed", 1.0),
    "km/h": ("speed", 1 / 3.6),
    "元": ("cny", 1.0),
    "角": ("cny", 0.1),
    "$": ("usd", 1.0),
    "cent": ("usd", 0.01),
}

_UNIT_RE = re.compile(
    r"^(?P<body>.*?)\s*(?:\\)?(?P<unit>"
    + "|".join(re.escape(u) for u in sorted(_UNIT_ALIASES, key=len, reverse=True))
    + r")\s*\.?$",
    re.DOTALL,
)
_PLAIN_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_THOUSANDS_RE = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,])")
_CURRENCY_PREFIX_RE = re.compile(r"^([+-]?)\s*(?:\\\$|\$|¥|€|£|rmb|usd)\s*", re.IGNORECASE)
_MIXED_RE = re.compile(r"^([+-]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_TOKEN_RE = re.compile(r"\s*(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|sqrt|pi|\*\*|[-+*/()])")


@dataclass(frozen=True)
class Quantity:
    """A parsed number: value, canonical unit ('' when none), and whether it had a '%'."""

    value: float
    unit: str = ""
    percent: bool = False


def _strip_unit(text: str) -> tuple[str, str | None]:
    m = _UNIT_RE.match(text)
    if m is None or not m.group("body"):
        return text, None
    body = m.group("body").rstrip()
    unit = m.group("unit")
    # A bare letter unit must be separated from a letter body ("2x m" is not a number anyway).
    if body.endswith("^") or body.endswith("_"):
        return text, None
    return body, _UNIT_ALIASES[unit]


@lru_cache(maxsize=65536)
def parse_quantity(text: str) -> Quantity | None:
    """Parse a number with optional thousands separators, currency, unit or percent sign."""
    s = strip_assignment(clean_latex(text))
    if not s or len(s) > _MAX_EXPR_CHARS:
        return None
    s = s.replace("{,}", "").replace("\\!", "")
    percent = False
    if s.endswith("%"):
        percent, s = True, s[:-1].rstrip()
    unit = ""
    m = _CURRENCY_PREFIX_RE.match(s)
    if m and m.end() < len(s):
        s, unit = m.group(1) + s[m.end() :], "$" if "$" in m.group(0) or "usd" in m.group(0).lower() else ""
        if "¥" in m.group(0) or "rmb" in m.group(0).lower():
            unit = "元"
    if not percent and not _PLAIN_RE.match(s):
        body, found = _strip_unit(s)
        if found is not None:
            s, unit = body, found
            if s.endswith("%"):
                percent, s = True, s[:-1].rstrip()
    if "," in s:
        s = _THOUSANDS_RE.sub(lambda mm: mm.group(0).replace(",", ""), s)
    value = parse_number(s)
    if value is None:
        return None
    return Quantity(value, unit, percent)


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

    A unit on one side only is decoration. A percent sign on one side only accepts either
    reading: "50%" matches both "50" and "0.5".
    """
    if pred.unit and gold.unit and pred.unit != gold.unit:
        return None
    if pred.percent == gold.percent:
        return numbers_equal(pred.value, gold.value)
    if pred.percent:
        return numbers_equal(pred.value, gold.value) or numbers_equal(pred.value / 100.0, gold.value)
    return numbers_equal(pred.value, gold.value) or numbers_equal(pred.value, gold.value / 100.0)


def convert_to_base(quantity: Quantity) -> tuple[str, float] | None:
    """(dimension, value in the dimension's base unit), or None for an unconvertible unit."""
    conv = _CONVERSIONS.get(quantity.unit)
    if conv is None:
        return None
    return conv[0], quantity.value * conv[1]
