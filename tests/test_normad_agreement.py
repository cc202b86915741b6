"""NormAd verdicts: reading the yes / no / neutral a response states, and judge agreement on NormAd combat duels."""

import json

import pytest
import yaml

from sparta.report import _agreement_section, judge_agreement
from sparta.tasks.catalog import get_task
from sparta.tasks.graders import normad_verdict

VALUE_CHOICES = {"A": "yes", "B": "no", "C": "neutral"}


@pytest.mark.parametrize("text, verdict", [
    ("Yes, it is acceptable.", "yes"),
    ("YES! Totally fine.", "yes"),
    ("No.", "no"),
    ("no", "no"),
    ("No, it is rude in Thailand.", "no"),
    ("No it's rude", "no"),  # "no" then a reason
    ("**Neutral**\nBecause it depends on the family.", "neutral"),
    ("Answer: no", "no"),
    ("The answer is: 'Yes'.", "yes"),
    ("In Thailand, cleaning your plate is polite. So the answer is yes.", "yes"),
    ("It is rude.\n\nNo", "no"),  # a verdict on a line of its own
    ('"No", because guests should accept.', "no"),
    ("Choose from: 'Yes', 'No', 'Neutral'. Answer: No", "no"),  # the echoed options are skipped
    ("Yes. Actually, the answer is no.", "yes"),  # the first clear verdict counts
])
def test_normad_verdict_reads_the_first_clear_verdict(text, verdict):
    assert normad_verdict(text) == verdict


@pytest.mark.parametrize("text", [
    "No one would mind.",  # "No" opening a sentence, not a verdict
    "I think it is acceptable.",  # no verdict word at all
    "It depends. Yes or no? Hard to say.",
    "Yes/No",
    "Yes and no.",
    "neutrality matters here",
    "The answer is not yes.",
    "Sarah did nothing wrong, no.",  # a trailing "no" inside a sentence is not clear
    "",
])
def test_normad_verdict_unclear_is_none(text):
    assert normad_verdict(text) is None


@pytest.mark.parametrize("text, verdict", [
    ("B. no", "no"),
    ("The answer is (B).", "no"),
    ("A", "yes"),
    ("**C**", "neutral"),
    ("Answer: A, yes", "yes"),
    ("Neutral.", "neutral"),  # no letter: the verdict word
    ("A person should ask first.", None),  # the article "A" is not a letter
    ("The answer is A. Or maybe B.", "yes"),  # a stated letter outranks a later mark
    ("(A) or (B)", None),  # two letters
])
def test_normad_verdict_with_mc_options(text, verdict):
    assert normad_verdict(text, VALUE_CHOICES) == verdict


def _duel(prompt, text_a, text_b, outcome, scores):
    judgments = [{"judge": j, "target": side, "score": s, "status": "ok"}
                 for j, pair in scores.items() for side, s in zip("ab", pair)]
    return {"prompt_id": prompt.id, "prompt": prompt.text, "response_a": {"text": text_a},
            "response_b": {"text": text_b}, "outcome": outcome, "score_a": 1.0, "score_b": 0.0,
            "judgments": judgments}


def _prompts_with(task: str, label: str, n: int):
    """The first n combat prompts of `task` whose reference is `label`, and all references."""
    t = get_task(task)
    refs = t.combat_references()
    return [p for p in t.combat_prompts() if refs[p.id] == label][:n], refs


def test_judge_agreement_on_normad_country_prompts():
    """Authors' prompts ending "Choose from:'Yes', 'No', 'Neutral'", references "no".
    d1: a says No (right), b Yes; verdict a; x agrees (8 > 2).  d2: a Yes, b "No it's rude" (right); verdict a
    (wrong); x agrees (3 < 6), y does not (9 > 1).  d3: a unreadable ("No one knows") → left out.
    d4: both say no → left out. Aggregate 1/2; x 2/2; y 0/1."""
    (p1, p2, p3, p4), refs = _prompts_with("normad_country", "no", 4)
    assert p1.text.endswith("Choose from:'Yes', 'No', 'Neutral'")
    duels = [_duel(p1, "No, that is rude there.", "Yes.", "a", {"x": (8, 2)}),
             _duel(p2, "Yes, fine.", "No it's rude", "a", {"x": (3, 6), "y": (9, 1)}),
             _duel(p3, "No one knows.", "Yes", "b", {"x": (1, 2)}),
             _duel(p4, "No.", "The answer is no.", "a", {"x": (5, 4)})]
    a = judge_agreement(duels, refs, "normad")
    assert a["duels"] == 2 and a["aggregate"] == 0.5
    assert a["per_judge"] == {"x": {"agree": 2, "of": 2, "rate": 1.0}, "y": {"agree": 0, "of": 1, "rate": 0.0}}


def test_judge_agreement_on_normad_value_prompts():
    """MC prompts (A yes / B no / C neutral), references letters. A response may answer with the letter or the
    word: "B" and "Neutral" against gold C → b right; verdict b; judge x scored b higher."""
    (p,), refs = _prompts_with("normad_value", "C", 1)
    assert "A. yes\nB. no\nC. neutral" in p.text
    a = judge_agreement([_duel(p, "B", "Neutral, it depends.", "b", {"x": (2, 7)})], refs, "normad")
    assert a["duels"] == 1 and a["aggregate"] == 1.0 and a["per_judge"]["x"]["rate"] == 1.0


def test_report_section_grades_normad_duels(tmp_path):
    """The report picks the NormAd grader for a run on normad_country prompts (the MC grader would find no
    options in these prompts and leave every duel out)."""
    (p1, p2), _ = _prompts_with("normad_country", "yes", 2)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"prompts": "normad_country", "user_data": ""}}))
    (tmp_path / "iter_01").mkdir()
    duels = [_duel(p1, "Yes.", "No.", "a", {"x": (7, 3)}), _duel(p2, "No!", "Yes, it is.", "a", {"x": (6, 5)})]
    (tmp_path / "iter_01" / "combat.jsonl").write_text("".join(json.dumps(d) + "\n" for d in duels))
    assert "| 1 | 2 | 0.50 | x 1/2 |" in _agreement_section(tmp_path, [1])
