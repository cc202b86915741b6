"""Hand-made edge cases for the answer graders (GSM8K numbers, MATH expressions, multiple-choice letters)."""

import json
import threading
from pathlib import Path

import pytest

from sparta.tasks.graders import (
    Grade,
    extract_math_answer,
    grade_gsm8k,
    grade_math,
    grade_mc_letter,
    gsm8k_gold,
    math_gold,
    pick_by_loglik,
)

DATA = Path(__file__).parents[1] / "sparta" / "_data"


def both(output: str, gold: str) -> tuple[bool, bool]:
    grades = grade_gsm8k(output, gold)
    return grades["strict"].correct, grades["flexible"].correct


# ----------------------------------------------------------------------------------------------- GSM8K


def test_gsm8k_gold_strips_commas_and_dollars():
    assert gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18") == "18"
    assert gsm8k_gold("...\n#### 1,450,000") == "1450000"
    assert gsm8k_gold("...\n#### $5") == "5"
    assert gsm8k_gold("...\n#### -3") == "-3"


def test_gsm8k_gold_missing_marker_or_number_raises():
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("The answer is 18.")
    with pytest.raises(ValueError, match="no number"):
        gsm8k_gold("blah\n#### none")


def test_gsm8k_gold_on_the_shipped_test_set():
    rows = [json.loads(line) for line in (DATA / "gsm8k/test.jsonl").open()]
    golds = [gsm8k_gold(row["answer"]) for row in rows]
    assert golds[0] == "18"  # Janet's ducks
    assert all(g.lstrip("-").replace(".", "").isdigit() for g in golds)
    assert any(row["answer"].rstrip().endswith(",000") for row in rows)  # commas do occur in gold


def test_gsm8k_hash_form():
    grades = grade_gsm8k("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 72", "72")
    assert grades["strict"] == Grade(True, "72", "strict")
    assert grades["flexible"] == Grade(True, "72", "flexible")


def test_gsm8k_the_answer_is_with_trailing_period():
    assert both("So in total she has 70 + 2 = 72 apples. The answer is 72.", "72") == (True, True)


def test_gsm8k_answer_colon_and_bold():
    assert both("Answer: 72", "72") == (True, True)
    assert both("The answer is **72** apples.", "72") == (True, True)
    assert both("answer: 70 + 2 = 72", "72") == (False, True)


def test_gsm8k_commas_in_output():
    assert both("The answer is 1,000.", "1000") == (True, True)
    assert grade_gsm8k("#### 1,000", "1000")["strict"].extracted == "1000"


def test_gsm8k_dollar_sign():
    assert both("She earns $5 an hour, so she makes $10.\n#### $10", "10") == (True, True)
    assert both("It costs $5", "5") == (False, True)


def test_gsm8k_decimals_compare_numerically():
    assert both("#### 18.00", "18") == (True, True)
    assert both("#### 18.5", "18") == (False, False)
    assert both("The answer is 0.50", "0.5") == (True, True)


def test_gsm8k_negative_and_unicode_minus():
    assert both("The temperature is -3 degrees. The answer is -3", "-3") == (True, True)
    assert both("The answer is \u22123.", "-3") == (True, True)
    assert both("The answer is 3", "-3") == (False, False)


def test_gsm8k_range_hyphen_is_not_a_minus():
    assert grade_gsm8k("Between 3-4 hours", "4")["flexible"] == Grade(True, "4", "flexible")


def test_gsm8k_strict_and_flexible_disagree():
    grades = grade_gsm8k("#### 72\nIt took her 3 hours in total.", "72")
    assert grades["strict"] == Grade(True, "72", "strict")
    assert grades["flexible"] == Grade(False, "3", "flexible")
    grades = grade_gsm8k("She has 10 - 3 = 7 apples left.", "7")
    assert grades["strict"] == Grade(False, None, "none")
    assert grades["flexible"] == Grade(True, "7", "flexible")


def test_gsm8k_strict_takes_the_first_marked_answer_like_lm_eval():
    grades = grade_gsm8k("#### 5\n\nQuestion: another one?\nAnswer: 9", "5")
    assert grades["strict"].extracted == "5" and grades["strict"].correct
    assert grades["flexible"].extracted == "9" and not grades["flexible"].correct


def test_gsm8k_no_number_at_all():
    grades = grade_gsm8k("I cannot solve this problem.", "18")
    assert grades == {"strict": Grade(False, None, "none"), "flexible": Grade(False, None, "none")}
    assert grade_gsm8k("", "18")["flexible"].method == "none"


def test_gsm8k_percent_and_units_after_the_number():
    assert both("The discount is 25%.", "25") == (False, True)
    assert both("The answer is 25%", "25") == (True, True)
    assert both("#### 12kg", "12") == (True, True)


def test_gsm8k_numbers_inside_words_do_not_count():
    assert grade_gsm8k("Use 40 liters of H2O", "40")["flexible"].extracted == "40"
    assert grade_gsm8k("The list 1,2,3", "3")["flexible"].extracted == "3"  # not "123"


# ------------------------------------------------------------------------------------------------ MATH


def test_math_gold_nested_braces_from_a_real_math500_solution():
    row = json.loads((DATA / "math/math500_test.jsonl").open().readline())
    assert "Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$" in row["solution"]
    assert math_gold(row["solution"]) == "\\left( 3, \\frac{\\pi}{2} \\right)" == row["answer"]


def test_math_gold_last_boxed_fbox_and_missing():
    assert math_gold("First $\\boxed{1}$, finally $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert math_gold("So $\\fbox{7}$") == "7"
    assert math_gold("So the answer is $\\boxed 5$.") == "5"
    with pytest.raises(ValueError, match="boxed"):
        math_gold("The answer is 5.")
    with pytest.raises(ValueError):
        math_gold("unbalanced \\boxed{\\frac{1}{2}")


def test_math_extract_rules():
    assert extract_math_answer("so $\\boxed{\\frac{1}{2}}$.") == ("\\frac{1}{2}", "boxed")
    assert extract_math_answer("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.") == (
        "\\frac{3}{4}",
        "final_answer",
    )
    assert extract_math_answer("The answer is 3 because 1+2=3.") == ("3", "final_answer")
    assert extract_math_answer("Adding up, x = 12.") == ("12", "equals")
    assert extract_math_answer("x = 12 is wrong, we need more work") == (None, "none")
    assert extract_math_answer("The length is 2x = 5 cm") == ("5 cm", "equals")
    assert extract_math_answer("") == (None, "none")


@pytest.mark.parametrize(
    "output, gold",
    [
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces inside \boxed
        ("$\\boxed{\\frac12}$", "0.5"),
        ("$\\boxed{0.5}$", "\\frac12"),
        ("$\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}"),
        ("$\\boxed{5\\text{ cm}}$", "5"),
        ("$\\boxed{5}$", "5\\text{ cm}"),
        ("$\\boxed{(0, 1]}$", "(0,1]"),
        ("$\\boxed{\\sqrt{8}}$", "2\\sqrt{2}"),
        ("$\\boxed{x=3}$", "3"),
        ("$\\boxed{1,000}$", "1000"),
        ("$\\boxed{x^2+2x+1}$", "(x+1)^2"),
        ("The final answer is $\\$18.90$.", "\\$18.90"),  # an escaped dollar is not a math delimiter
        ("No box here, but the final answer is \\frac{1}{3}", "\\frac13"),
    ],
)
def test_math_equivalent_answers(output, gold):
    grade = grade_math(output, gold)
    assert grade.correct, grade


def test_math_wrong_answers():
    assert grade_math("$\\boxed{4}$", "3") == Grade(False, "4", "boxed")
    assert not grade_math("$\\boxed{[0,1]}$", "(0,1]").correct  # closed vs half-open interval
    assert not grade_math("$\\boxed{\\frac{1}{3}}$", "0.5").correct
    assert not grade_math("$\\boxed{\\sqrt{2}}$", "2").correct


def test_math_last_boxed_wins():
    assert grade_math("try \\boxed{\\frac{1}{2}} ... no: \\boxed{\\frac{1}{3}}", "\\frac13").correct
    assert not grade_math("try \\boxed{\\frac{1}{3}} ... no: \\boxed{\\frac{1}{2}}", "\\frac13").correct


def test_math_no_answer():
    assert grade_math("I am not sure how to proceed.", "3") == Grade(False, None, "none")


@pytest.mark.parametrize(
    "output",
    [
        "\\boxed{}",
        "\\boxed{\\frac{1}{\\frac{}{}}}}}}",
        "answer: ^^^&&&\\\\frac{",
        "\\boxed{" + "(" * 40 + "}",
        "\\boxed{1e99999999999999999999}",
        "\x00\x01 \\boxed{\\begin{pmatrix} 1 & \\end{}}",
    ],
)
def test_math_garbage_never_raises(output):
    grade = grade_math(output, "7")
    assert grade.correct is False
    assert grade.method in {"unparseable", "boxed", "final_answer"}


def test_math_garbage_is_unparseable():
    assert grade_math("answer: ^^^&&&\\\\frac{", "1") == Grade(False, "^^^&&&\\\\frac{", "unparseable")


def test_math_works_outside_the_main_thread():
    out = []
    worker = threading.Thread(target=lambda: out.append(grade_math("$\\boxed{\\frac12}$", "0.5")))
    worker.start()
    worker.join()
    assert out == [Grade(True, "\\frac12", "boxed")]


# ------------------------------------------------------------------------------------- multiple choice

CHOICES = {"A": "Paris", "B": "London", "C": "Berlin", "D": "Paris, Texas"}


@pytest.mark.parametrize(
    "output",
    [
        "B",
        "(B)",
        "B) London",
        "B. London",
        "Answer: B",
        "The answer is B.",
        "The correct answer is (b).",  # lowercase letter
        "b",
        "**B**",
        "$\\boxed{B}$",
        "Let me think.\nB\n",  # a lone letter line
        "Answer: B because London is the capital of England.",
        "England's capital is London, not Paris (A). So the answer is (B).",  # the stated answer wins
    ],
)
def test_mc_letter_patterns(output):
    assert grade_mc_letter(output, CHOICES, "B") == Grade(True, "B", "letter")


def test_mc_wrong_letter():
    assert grade_mc_letter("The answer is C.", CHOICES, "B") == Grade(False, "C", "letter")


def test_mc_option_text():
    assert grade_mc_letter("It is london, of course.", CHOICES, "B") == Grade(True, "B", "option_text")
    assert grade_mc_letter("It is Berlin", CHOICES, "B") == Grade(False, "C", "option_text")


def test_mc_longer_option_text_contains_shorter():
    assert grade_mc_letter("Paris, Texas is the one.", CHOICES, "D") == Grade(True, "D", "option_text")


def test_mc_ambiguous():
    assert grade_mc_letter("(A) or (B)?", CHOICES, "B") == Grade(False, "A,B", "ambiguous")
    assert grade_mc_letter("Answer: A. No wait, answer: B", CHOICES, "B") == Grade(False, "A,B", "ambiguous")
    assert grade_mc_letter("London or Berlin", CHOICES, "B") == Grade(False, "B,C", "ambiguous")
    assert grade_mc_letter("A. Paris\nB. London\nC. Berlin", CHOICES, "B").method == "ambiguous"


def test_mc_letters_inside_words_do_not_count():
    assert grade_mc_letter("Although I agree", CHOICES, "A") == Grade(False, None, "none")
    assert grade_mc_letter("A dog barked.", CHOICES, "A") == Grade(False, None, "none")
    # "a" as an article after "the answer is" is not option (a); the option text decides
    assert grade_mc_letter("The answer is a city in England: London", CHOICES, "B") == Grade(True, "B", "option_text")


def test_mc_letter_not_among_choices_and_nothing_found():
    assert grade_mc_letter("Answer: E", CHOICES, "B") == Grade(False, None, "none")
    assert grade_mc_letter("I'm not sure.", CHOICES, "B") == Grade(False, None, "none")
    assert grade_mc_letter("", CHOICES, "B") == Grade(False, None, "none")


def test_pick_by_loglik():
    assert pick_by_loglik({"A": -3.2, "B": -1.1, "C": -7.0}) == "B"
    assert pick_by_loglik({"C": -1.0, "B": -1.0, "A": -2.0}) == "B"  # tie: first in sorted order
    assert pick_by_loglik({"D": -0.5}) == "D"
    with pytest.raises(ValueError):
        pick_by_loglik({})
