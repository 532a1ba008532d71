"""Rule-based verifiable reward for Stage 3 (RLVR): pure Python, no training-toolkit imports.

Public API:

- :func:`compute_score` — the reward of one response: format gate (0), empty or
  >= 1024-char answer (0.2), else 0.8·accuracy + 0.2, plus optional DAPO overlong shaping.
  :data:`REWARD_VERSION` changes whenever a verdict does.
- :func:`answers_match` — does a predicted answer match a gold answer? Extracts the final
  answer first (the ``\\boxed{…}`` answers decide, :mod:`.extract`), then tries the registered
  matchers in order (exact, multi_part, coordinates, multiple_choice, numbers, units, text,
  math_verify); the first that decides wins. Extend with :func:`register_matcher`.

Decisions on cases the reference leaves open (each has tests in tests/data/answers.jsonl):

- "3.0" == "3"; "x = 3" == "3" (a one-variable left-hand side is ignored on both sides).
- "50%" matches "50" and "0.5"; "0.5" matches "50%" but not "50".
- A unit is ignored only when one side carries none ("5 cm" == "5"). Two different units
  match only through an exact factor within one dimension ("3 m" == "300 cm", "5 kJ" ==
  "5000 J", "60 mph" == "96.56064 km/h" but != "60 km/h"), never across ("5 J" != "5 W",
  "3 m" != "3 kg", "€5" != "$5"); the units matcher runs before the case-blind text
  matcher ("5 mW" != "5 MW"). Units without an exact factor match only themselves:
  temperatures are affine ("25 °C" != "77 °F"; a bare "°"/"度" may stand for °C or °F),
  years and months convert into each other but not into days, "ton" and "calorie" are
  ambiguous, cal/kcal are not converted to joules. Short aliases read as in science: "m"
  metre, "t" tonne, "in" inch, "A" ampere, "K" kelvin. Only counting words and classifiers
  (个, 人, 分, apples, times, people …) are decoration, always dropped ("10个" == "10人").
- A prediction holding ``\\boxed{…}`` is judged by its boxes: the last box against a
  single-part gold ("We get $x=3$, so the count is $\\boxed{2}$." == "2"), all boxes as one
  multi-part answer against a multi-part gold ("\\boxed{a=2} \\quad\\text{and}\\quad \\boxed{b=7}"
  == "a = 2, b = 7"). Boxes joined only by separators ("\\boxed{3} or \\boxed{5}") are a list
  of candidates, which no single-part gold matches.
- A bare list — parts joined by commas, semicolons, "or"/"and", ``\\quad``, ``\\text{and}``,
  several boxes, or wrapped in ``\\{…\\}`` — is a set of answers: order-free, duplicates
  ignored, every element matched ("3, 2" == "2, 3", "\\{-1, 2, -3\\}" == "-3;-1;2",
  "5, 2" == "2 \\text{ or } 5"). A tuple in parentheses stays ordered ("(2, 1)" != "(1, 2)"),
  and a set of tuples is a set of ordered tuples ("(2, 1), (1, 2)" == "(1,2),(2,1)").
  Numbered items ("(1) 5 (2) 7") match in order. Labelled parts match by label
  ("b=7, a=2" == "a = 2, b = 7"); unlabelled parts against a labelled gold are read in the
  gold's order. One "a \\pm b" is the set {a + b, a - b}. A list never matches a single-part
  gold ("2, 3, 5" != "5", "5, which is prime" != "5"); a coordinate gold needs a "(x, y)" pair.
- A leading concluding connective and its comma ("Therefore,", "So,", "Hence,", "因此，") are not a
  list part: "Therefore, the answer is 4" == "4", "So, x = 4" == "4"; what follows is judged as
  usual ("Therefore, 3, 5" != "5").
- "1,000" is one thousand (digit + comma + 3 digits); "1, 000" is two parts. A decimal comma
  is read only in a prediction that is one number "digits,digits" whose part after the comma
  is not 3 digits long, against a gold that is a single non-integer decimal ("3,75" ==
  "3.75"); "1,00" against the gold "1" stays two parts.
- Multiple choice: a bare number matches a gold "(B) 3.5" through the option text; a
  prediction that names a letter is judged by the letter only. "not B but C", "A or C",
  "(A) (C)" are ambiguous -> no match, whatever the gold ("answer is C" is explicit and
  the last such phrase wins; "option B is wrong" is not a commitment). A lone lowercase
  letter ("b", "e") is not an option.
- "2\\frac{1}{2}" is the mixed number 2.5; zero only matches exactly zero.
- math_verify runs in a killable worker process with a hard 2 s limit, shared by all the
  parts of one comparison; a time-out is a non-match. Without math_verify installed the
  matcher is skipped; prose (no digit, operator or backslash) is never sent to it.
"""

from .matchers import (
    MAX_ANSWER_CHARS,
    REGISTRY,
    answers_match,
    extract_letter,
    matcher_names,
    parse_option,
    register_matcher,
    set_math_verify_timeout,
    unregister_matcher,
)
from .parts import answer_parts, split_parts
from .score import REWARD_VERSION, compute_score, extract_answer, format_ok, overlong_penalty_value

__all__ = [
    "MAX_ANSWER_CHARS",
    "REGISTRY",
    "REWARD_VERSION",
    "answer_parts",
    "answers_match",
    "compute_score",
    "extract_answer",
    "extract_letter",
    "format_ok",
    "matcher_names",
    "overlong_penalty_value",
    "parse_option",
    "register_matcher",
    "set_math_verify_timeout",
    "split_parts",
    "unregister_matcher",
]
