"""String normalisation shared by the answer matchers.

Two levels: :func:`canonical` (unicode + outer-wrapper clean-up, safe for every matcher)
and :func:`normalize_text` (LaTeX clean-up, lowercase, punctuation off) for the text
matcher. Both are pure functions and cached, since the same gold is compared against
many rollouts.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Minus-like characters that NFKC leaves alone.
_MINUS = dict.fromkeys(map(ord, "\u2212\u2012\u2013\u2014\u2015\ufe63\uff0d\u2010\u2011"), "-")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_ASSIGNMENT_RE = re.compile(r"^(?:[A-Za-z]{1,3}|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_CJK_PUNCT = "。，、；：！？「」『』（）【】《》〈〉“”‘’…·〔〕"
# Sentence punctuation dropped by the text matcher; math operators and brackets are kept.
_TEXT_PUNCT = ";:!?'\"`" + _CJK_PUNCT
# '.' and ',' go too, except between two digits (3.5 must not become 35).
_DOT_COMMA_RE = re.compile(r"(?<!\d)[.,]|[.,](?!\d)")
_TEXT_PUNCT_TABLE = dict.fromkeys(map(ord, _TEXT_PUNCT), None)
_UNWRAP_COMMANDS = ("text", "textbf", "textit", "mathrm", "mathbf", "mathit", "operatorname", "mbox", "rm")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad|~")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT_RE = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d)")
_NEG_SPACE_THOUSANDS_RE = re.compile(r"(?<=\d)(?:,|\{,\})\\!\s*(?=\d{3}(?!\d))")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")


def unicode_clean(text: str) -> str:
    """NFKC (full-width digits, letters and punctuation to ASCII) and unicode minus to '-'."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_MINUS)


def matching_brace(text: str, start: int) -> int:
    """Index of the '}' closing the '{' at ``start``, or -1 when unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def unwrap_command(text: str, command: str) -> str:
    """Replace every ``\\command{body}`` by ``body`` (nested braces respected)."""
    token = "\\" + command
    out: list[str] = []
    pos = 0
    while True:
        idx = text.find(token, pos)
        if idx < 0:
            out.append(text[pos:])
            return "".join(out)
        after = idx + len(token)
        # Only a whole command name followed by a brace group (e.g. not \textbfx).
        j = after
        while j < len(text) and text[j] == " ":
            j += 1
        if (after < len(text) and text[after].isalpha()) or j >= len(text) or text[j] != "{":
            out.append(text[pos:after])
            pos = after
            continue
        close = matching_brace(text, j)
        if close < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:idx])
        out.append(text[j + 1 : close])
        pos = close + 1


def strip_delimiters(text: str) -> str:
    """Strip outer ``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]`` and a whole ``\\boxed{…}``."""
    changed = True
    while changed:
        changed = False
        text = text.strip()
        for left, right in _MATH_DELIMS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                inner = text[len(left) : len(text) - len(right)]
                if left[0] == "$" and "$" in inner.replace("\\$", ""):  # "$x=2$ or $x=5$": two spans
                    continue
                text = inner
                changed = True
                break
        for box in ("\\boxed", "\\fbox"):
            if text.startswith(box):
                j = len(box)
                while j < len(text) and text[j] == " ":
                    j += 1
                if j < len(text) and text[j] == "{" and matching_brace(text, j) == len(text) - 1:
                    text = text[j + 1 : -1]
                    changed = True
    return text


@lru_cache(maxsize=65536)
def canonical(text: str) -> str:
    """Unicode clean-up, outer math delimiters and ``\\boxed{}`` removed, whitespace trimmed; a LaTeX
    thousands separator written with a negative space (``11,\\! 111``) becomes a plain one (``11,111``)."""
    text = unicode_clean(text).strip()
    if "\\!" in text:
        text = _NEG_SPACE_THOUSANDS_RE.sub(",", text)
    return strip_delimiters(text)


def split_assignment(text: str) -> tuple[str, str] | None:
    """``x = 3`` -> (``x``, ``3``) for a simple left-hand side (a variable of up to three letters
    or a command such as ``\\alpha``, optionally subscripted; one '=' only), else None. The
    label is returned without spaces or braces (``a_{3}`` -> ``a_3``)."""
    if "=" not in text:
        return None
    m = _ASSIGNMENT_RE.match(text)
    if m is None:
        return None
    rest = text[m.end() :]
    if any(op in rest for op in ("=", "<", ">", "\\le", "\\ge", "\\ne")):
        return None
    label = text[: m.end()].rstrip().removesuffix("=")
    return "".join(ch for ch in label if ch not in " {}"), rest


def strip_assignment(text: str) -> str:
    """Drop a simple left-hand side: ``x = 3`` -> ``3`` (see :func:`split_assignment`)."""
    split = split_assignment(text)
    return text if split is None else split[1]


@lru_cache(maxsize=65536)
def clean_latex(text: str) -> str:
    """LaTeX clean-up: \\dfrac/\\tfrac -> \\frac, \\text{}/\\mathrm{} unwrapped, \\left/\\right
    and spacing commands dropped, ``^\\circ`` -> ``°``, ``\\%`` -> ``%``, \\boxed{} unwrapped."""
    text = canonical(text)
    if "\\" not in text and "$" not in text:
        return text
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    text = text.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    text = text.replace("\\%", "%").replace("\\$", "")
    text = _DEGREE_RE.sub("°", text)
    text = text.replace("\\circ", "°").replace("\\degree", "°")
    for command in _UNWRAP_COMMANDS + ("boxed",):
        if "\\" + command in text:
            text = unwrap_command(text, command)
    text = _SPACING_RE.sub(" ", text)
    text = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", text)
    text = _FRAC_HALF_SHORT_RE.sub(r"\\frac{\1}{\2}", text)
    text = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", text)
    text = text.replace("$", "").replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    return text.strip()


@lru_cache(maxsize=65536)
def normalize_text(text: str) -> str:
    """Text-matcher key: LaTeX cleaned, simple ``x =`` dropped, lowercase, sentence
    punctuation (ASCII and CJK) and all whitespace removed."""
    text = strip_assignment(clean_latex(text))
    text = _DOT_COMMA_RE.sub("", text.lower().translate(_TEXT_PUNCT_TABLE))
    return "".join(text.split())
