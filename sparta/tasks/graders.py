"""Answer graders for the evaluation tasks: GSM8K numbers, MATH expressions, multiple-choice letters.

Pure functions over strings (no torch). Every grader returns a `Grade` saying whether the output is correct,
what was read from it and which extraction rule fired, so a reported number can be traced to its rule.
Graders never raise on model output: whatever a model writes is graded (unreadable output is incorrect).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

TOLERANCE = Decimal("1e-6")  # numeric answers closer than this are equal
MATH_VERIFY_TIMEOUT_S = 3  # math-verify's own per-parse / per-comparison timeout (signal based: main thread only)
MAX_MATH_ANSWER_CHARS = 1000  # longer "answers" are not sent to math-verify (sympy on huge input can hang)


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None  # what we read from the model output (None = nothing found)
    method: str  # which extraction rule fired: "strict", "flexible", "boxed", "final_answer", "equals",
    #              "letter", "option_text", "none", "ambiguous", "unparseable"


# ---------------------------------------------------------------------------------------------- numbers

_MINUS = "\\-\u2212"  # ASCII hyphen-minus (escaped for character classes) and the Unicode minus sign
_NUM = rf"(?P<num>[{_MINUS}]?(?:\$\s?)?[{_MINUS}]?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?)(?!\d)"
# A number not glued to a preceding word/number: optional sign and $, thousands groups or plain digits,
# optional decimals. "1,2,3" reads as three numbers; "3-4" as 3 and 4; "H2O" and "x2" as none.
_NUMBER = re.compile(rf"(?<![\w.]){_NUM}")


def _clean_number(text: str) -> str:
    """'$1,000.' -> '1000', '\u22123' -> '-3', '-$5' -> '-5'."""
    text = text.strip().replace(",", "").replace("$", "").replace(" ", "").replace("\u2212", "-").rstrip(".")
    if text.count("-") > 1:  # "-$-5" style oddities: keep one sign
        text = "-" + text.replace("-", "")
    return text


def _to_decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(_clean_number(text))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _numbers_equal(a: str, b: str) -> bool:
    x, y = _to_decimal(a), _to_decimal(b)
    try:
        return x is not None and y is not None and abs(x - y) <= TOLERANCE
    except ArithmeticError:  # exponents beyond Decimal's range
        return False


# ----------------------------------------------------------------------------------------------- GSM8K

# lm-eval-harness style strict forms: "#### N", "The answer is N", "answer: N" (bold markers allowed).
_GSM8K_STRICT = re.compile(
    r"(?:####|\banswer\s+is\b|\banswer\s*:)[\s*:]*" + _NUM,
    re.IGNORECASE,
)


def gsm8k_gold(answer_field: str) -> str:
    """The number after '####' in a GSM8K answer, with commas and '$' stripped."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '####' line: {answer_field[-80:]!r}")
    tail = answer_field.rsplit("####", 1)[1].strip()
    match = _NUMBER.search(tail)
    if match is None:
        raise ValueError(f"GSM8K answer has no number after '####': {tail!r}")
    return _clean_number(match.group("num"))


def grade_gsm8k(output: str, gold: str) -> dict[str, Grade]:
    """{"strict": ..., "flexible": ...}: strict reads the first '#### N' / 'The answer is N' / 'answer: N'
    (as lm-eval-harness's strict-match does); flexible reads the last number anywhere in the output.
    Both compare numerically with the gold, so "18.00" == "18" and "$1,000" == "1000"."""
    output = output or ""
    grades = {}
    strict = _GSM8K_STRICT.search(output)
    numbers = list(_NUMBER.finditer(output))
    for name, match in (("strict", strict), ("flexible", numbers[-1] if numbers else None)):
        if match is None:
            grades[name] = Grade(False, None, "none")
        else:
            value = _clean_number(match.group("num"))
            grades[name] = Grade(_numbers_equal(value, gold), value, name)
    return grades


# ------------------------------------------------------------------------------------------------ MATH

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s${}]+)")  # "\boxed 5", seen in a few MATH solutions


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, content) of every balanced \\boxed{...} / \\fbox{...} (and "\\boxed 5") in `text`."""
    found = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
            i += 1
        if depth == 0:
            found.append((match.start(), text[match.end() : i - 1].strip()))
    found += [(m.start(), m.group(1)) for m in _BOXED_BARE.finditer(text)]
    return sorted(found)


def math_gold(solution: str) -> str:
    """The content of the last \\boxed{...} (or \\fbox{...}) in a MATH solution, braces balanced."""
    boxed = _boxed_contents(solution)
    if not boxed:
        raise ValueError(f"MATH solution has no \\boxed{{}} answer: {solution[-80:]!r}")
    return boxed[-1][1]


_FINAL_ANSWER = re.compile(r"(?:final\s+answer|\banswer)\s*(?:is|:)\s*:?\s*(?P<ans>[^\n]+)", re.IGNORECASE)
_TRAILING_EQUALS = re.compile(r"=\s*(?P<ans>[^=\n]+?)\s*$")
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}")  # two words in a row: a sentence, not a value
_HOPE = re.compile(r"\s*I hope it is correct\.?\s*$", re.IGNORECASE)


def _tidy_stated_answer(text: str) -> str:
    text = _HOPE.sub("", text).strip()
    math_span = re.search(r"(?<!\\)\$\$?(.+?)(?<!\\)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", text)
    if math_span:  # "The answer is $\frac12$ because ..." -> the math span
        text = next(g for g in math_span.groups() if g is not None)
    else:
        text = re.split(r"\.\s|\s(?:because|since|as|so|which)\s", text, maxsplit=1)[0]  # first sentence/clause
    return text.strip().strip("*").strip().rstrip(".").strip()


def extract_math_answer(output: str) -> tuple[str | None, str]:
    """(answer, method): the last \\boxed{} ("boxed"), else the last "final answer is X" / "answer: X"
    ("final_answer"), else "= X" ending the output ("equals"), else (None, "none")."""
    output = output or ""
    boxed = _boxed_contents(output)
    if boxed:
        return boxed[-1][1], "boxed"
    stated = list(_FINAL_ANSWER.finditer(output))
    if stated:
        answer = _tidy_stated_answer(stated[-1].group("ans"))
        if answer:
            return answer, "final_answer"
    tail = output.rstrip().rstrip(".").rstrip("$").rstrip()
    equals = _TRAILING_EQUALS.search(tail)
    if equals and equals.group("ans").strip() and not _PROSE.search(equals.group("ans")):
        return equals.group("ans").strip().strip("$").strip(), "equals"
    return None, "none"


def _normalise_latex(text: str) -> str:
    """Cheap normal form for the exact-string fast path."""
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right)\b", "", text)
    text = text.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace("$", "")
    return re.sub(r"\s+", "", text).rstrip(".")


def _math_verify_equal(gold: str, answer: str) -> bool | None:
    """math-verify's verdict; None when it could not read the answer as an expression. Its signal-based
    timeouts only work in the main thread, so elsewhere they are off (answers are length-capped instead)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on timeouts and disabled timeouts
    timeout = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    parsed_gold = parse(f"$\\boxed{{{gold}}}$", parsing_timeout=timeout)
    parsed_answer = parse(f"$\\boxed{{{answer}}}$", parsing_timeout=timeout)
    if bool(verify(parsed_gold, parsed_answer, timeout_seconds=timeout)):
        return True
    # parse() falls back to the raw string when no expression could be read; such an answer is unreadable
    return False if any(not isinstance(p, str) for p in parsed_answer) else None


def grade_math(output: str, gold: str) -> Grade:
    """Is the output's final answer (see `extract_math_answer`) equivalent to `gold`? Exact string match
    after light normalisation, else math-verify, else numeric equality. Never raises on model output;
    an answer nothing can read is incorrect with method "unparseable"."""
    answer, method = extract_math_answer(output)
    if answer is None:
        return Grade(False, None, "none")
    if _normalise_latex(answer) == _normalise_latex(gold):
        return Grade(True, answer, method)
    verdict = None
    if len(answer) <= MAX_MATH_ANSWER_CHARS:
        try:
            verdict = _math_verify_equal(gold, answer)
        except Exception:  # model output is arbitrary: any failure in math-verify means "unreadable"
            verdict = None
    if verdict:
        return Grade(True, answer, method)
    if _numbers_equal(_strip_units(answer), _strip_units(gold)):
        return Grade(True, answer, method)
    return Grade(False, answer, method if verdict is not None else "unparseable")


def _strip_units(text: str) -> str:
    text = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", text)
    return text.replace("\\%", "").replace("%", "").replace("\\$", "").strip()


# ------------------------------------------------------------------------------------- multiple choice

# Explicit statements: "answer is B", "Answer: (B)", "the correct option is B", "\boxed{B}".
_MC_STATED = re.compile(
    r"(?:\b(?:answer|option|choice)\b\s*(?:is|would\s+be|should\s+be|[:=])?\s*:?\s*|\\boxed\{\s*(?:\\text\{)?\s*)"
    r"[(\[]?(?P<letter>[A-Za-z])[)\]]?(?![\w'])(?P<after>\s+[a-z])?",
    re.IGNORECASE,
)
_MC_PAREN = re.compile(r"[(\[](?P<letter>[A-Za-z])[)\]]")  # "(B)" anywhere
_MC_LINE_START = re.compile(r"^[ \t]*(?P<letter>[A-Z])[.)](?=\s|$)", re.MULTILINE)  # "B) ..." / "B. ..."
_MC_LONE = re.compile(r"^[ \t]*[(\[]?(?P<letter>[A-Za-z])[)\].]?[ \t]*$", re.MULTILINE)  # a line that is "B"


def _letters(matches, keys: dict[str, str], stated: bool = False) -> list[str]:
    out = []
    for match in matches:
        letter = match.group("letter")
        # a lowercase letter running on into a sentence is the article "a", not option (a)
        if stated and letter.islower() and match.group("after"):
            continue
        if letter.upper() in keys:
            out.append(keys[letter.upper()])
    return out


def _decide(found: list[str], gold: str, method: str) -> Grade:
    distinct = sorted(set(found))
    if len(distinct) > 1:
        return Grade(False, ",".join(distinct), "ambiguous")
    return Grade(distinct[0].upper() == gold.upper(), distinct[0], method)


def grade_mc_letter(output: str, choices: dict[str, str], gold: str) -> Grade:
    """Generated-letter grader. Reads, in order of trust: explicit statements ("Answer: B", "the answer is
    (B)"); then letter marks ("(B)", a line starting "B)" / "B.", a line that is just "B"); then option text
    (the output contains exactly one option's text, case-insensitive). Two different letters (or options)
    at the first level that has any is "ambiguous", graded incorrect."""
    output = (output or "").replace("*", "").replace("_", " ")  # markdown bold/italics
    keys = {k.upper(): k for k in choices}
    stated = _letters(_MC_STATED.finditer(output), keys, stated=True)
    if stated:
        return _decide(stated, gold, "letter")
    marked = []
    for pattern in (_MC_PAREN, _MC_LINE_START, _MC_LONE):
        marked += _letters(pattern.finditer(output), keys)
    if marked:
        return _decide(marked, gold, "letter")
    text = " ".join(output.split()).lower()
    hits = {}
    for key, option in choices.items():
        option = " ".join(str(option).split()).lower().rstrip(".")
        if option and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", text):
            hits[key] = option
    # an option contained in a longer matched option ("Paris" in "Paris, Texas") is not a separate hit
    hits = {k: v for k, v in hits.items() if not any(v != w and v in w for w in hits.values())}
    if hits:
        return _decide(list(hits), gold, "option_text")
    return Grade(False, None, "none")


def pick_by_loglik(option_logliks: dict[str, float]) -> str:
    """The option with the highest log-likelihood (ties: the first in sorted order)."""
    if not option_logliks:
        raise ValueError("pick_by_loglik needs at least one option")
    return max(sorted(option_logliks), key=lambda k: option_logliks[k])


# ------------------------------------------------------------------------------------- NormAd verdicts

NORMAD_VERDICTS = ("yes", "no", "neutral")
_WORD = r"(?P<v>yes|no|neutral)\b"
_VERDICT_PATTERNS = (
    # the response opens with it: "Yes, ...", "No.", "**Neutral**", "Answer: no"; an opening "No" running on
    # into a sentence ("No one would ...") is not a verdict, so "no" must be followed by punctuation, a line
    # end or a word that starts a reason ("No it's rude", "No because ...")
    re.compile(r"\A[\s\"'*_#>(\[-]*(?:(?:final\s+)?(?:answer|verdict)\s*(?:is)?\s*[:=-]?[\s\"'*_(\[]*)?"
               r"(?P<v>yes\b|neutral\b|no(?=[^\w\s]|[ \t]*(?:\n|\Z)|\s+(?:it|this|that|she|he|they|because|not)\b))",
               re.IGNORECASE),
    # stated: "the answer is no", "Verdict: 'Neutral'", "my answer would be yes"
    re.compile(r"\b(?:answer|verdict)\b(?:\s+(?:is|would\s+be|should\s+be)\s*:?|\s*[:=])[\s\"'*_(\[]*" + _WORD,
               re.IGNORECASE),
    # set apart: 'No', "Yes", **Neutral**, or a line of its own
    re.compile(r"(?P<q>\*\*|[\"'*])" + r"(?P<v>yes|no|neutral)(?P=q)", re.IGNORECASE),
    re.compile(r"^[ \t]*" + _WORD + r"[ \t]*[.!]?[ \t]*$", re.IGNORECASE | re.MULTILINE),
)
# another verdict right before or after, as in an echo of the options ("'Yes', 'No', 'Neutral'") or "yes or no"
_LIST_AFTER = re.compile(r"[\"'*_)\]]*\s*(?:/|,|or\b|and\b)\s*[\"'*_(\[]*(?:yes|no|neutral)\b", re.IGNORECASE)
_LIST_BEFORE = re.compile(r"\b(?:yes|no|neutral)[\"'*_)\]]*\s*(?:/|,|or|and)\s*[\"'*_(\[]*\Z", re.IGNORECASE)


def normad_verdict(output: str, choices: dict[str, str] | None = None) -> str | None:
    """The yes / no / neutral verdict a NormAd response states, or None when it states none clearly.

    With `choices` (an MC prompt whose options are yes / no / neutral, as normad_value's), an explicit letter
    ("Answer: B", "(B)", a line "B." or "B") is read first, as grade_mc_letter reads it; two different letters
    are no verdict. Otherwise the first clear verdict word in the text: an opening "Yes," / "No." / "Neutral",
    a stated "the answer is no", a set-apart 'No' / **Yes** or a line of its own. A verdict word listed with
    another ("yes or no", an echo of "'Yes', 'No', 'Neutral'") is skipped, not read. Never raises."""
    output = output or ""
    if choices:
        keys = {k.upper(): k for k in choices}
        plain = output.replace("*", "").replace("_", " ")  # markdown, as grade_mc_letter
        letters = _letters(_MC_STATED.finditer(plain), keys, stated=True)
        if not letters:
            for pattern in (_MC_PAREN, _MC_LINE_START, _MC_LONE):
                letters += _letters(pattern.finditer(plain), keys)
        if len(set(letters)) > 1:
            return None
        if letters:
            said = choices[letters[0]].strip().lower()
            return said if said in NORMAD_VERDICTS else None
    found = sorted((m.start("v"), m.end("v"), m.group("v").lower()) for p in _VERDICT_PATTERNS
                   for m in p.finditer(output))
    for start, end, verdict in found:
        if not (_LIST_AFTER.match(output, end) or _LIST_BEFORE.search(output[:start])):
            return verdict
    return None
