"""MC evaluation that a letter bias cannot fool: the seeded item draw (eval.limit), the majority-letter baseline
and the pick distributions, and the circular metrics, hand-checked with stub pickers on the real evaluation code
and run once on the tiny model."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from sparta.backends import Failure, Generated, MemberModel
from sparta.backends.hf import HFBackend
from sparta.config import ConfigError, EvalConfig, LoraConfig, load_config
from sparta.evaluation import draw_items, evaluate, majority_baseline
from sparta.models import resolve_model
from sparta.tasks.catalog import Example, get_task, rotate_choices

SETTINGS = EvalConfig(max_new_tokens=8, mc_max_new_tokens=4, bootstrap=50)
MEDQA = get_task("medqa")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    resolved = resolve_model("tiny", tmp_path_factory.mktemp("cache"))
    return HFBackend([MemberModel(n, resolved, None) for n in ("a", "b")], LoraConfig(dropout=0.0), seed=0)


# ---- the draw ---------------------------------------------------------------------------------------------

def test_draw_is_seeded_not_the_head_and_nested():
    drawn = draw_items(637, 20, seed=0, task="medqa", split="test")
    assert len(drawn) == len(set(drawn)) == 20 and drawn == sorted(drawn) and all(0 <= i < 637 for i in drawn)
    assert drawn != list(range(20))  # not the first 20
    assert draw_items(637, 20, 0, "medqa", "test") == drawn  # every call (every member, before and after)
    assert draw_items(637, 20, 1, "medqa", "test") != drawn  # another run seed, other items
    assert draw_items(637, 20, 0, "medqa", "dev") != drawn  # each split its own draw
    assert set(drawn) <= set(draw_items(637, 40, 0, "medqa", "test"))  # a larger limit keeps these items
    assert draw_items(637, 0, 0, "medqa", "test") is None and draw_items(637, 637, 0, "medqa", "test") is None
    with pytest.raises(ValueError, match="limit must be >= 0"):
        draw_items(637, -1, 0, "medqa", "test")


# ---- a stub backend whose picks the test controls ---------------------------------------------------------

class Picker:
    """The tiny model's tokenizer, with generations and option scores decided by `answer(prompt text)` (the
    letter said) and `score(prompt text, option text)`. It keeps every generation prompt it was given."""

    def __init__(self, inner, answer, score):
        self.inner, self.answer, self.score, self.asked = inner, answer, score, []

    def tokenizer(self, member):
        return self.inner.tokenizer(member)

    def _text(self, ids):
        return self.inner.tokenizer("a").decode(ids)

    def generate(self, members, prompts, **kw):
        texts = [self._text(ids) for ids in prompts]
        self.asked += texts
        return [Generated(self.answer(t)) for t in texts]

    def continuation_logprobs(self, member, prefixes, continuations, batch_size):
        return [[self.score(self._text(p), self._text(ids).split("<|im_end|>")[0]) for ids in row]
                for p, row in zip(prefixes, continuations)]


def shown_options(prompt: str) -> dict[str, str]:
    """The "A. text" lines of an MC prompt."""
    return dict(re.findall(r"^([A-Z])\. (.+)$", prompt, re.MULTILINE))


def always_a(prompt: str, option: str) -> float:
    """The option shown at letter A wins; with the bare question (no options shown) every option ties -> A."""
    shown = shown_options(prompt)
    return 0.0 if not shown or shown["A"] == option else -1.0


# four items, the gold once at each letter; the gold text is the longest option of its item
ITEMS = [Example(f"q:{i}", f"Question {i}?", gold,
                 {k: ("the right answer" if k == gold else f"wrong {k}") for k in "ABCD"})
         for i, gold in enumerate("ABCD")]


def right_text(prompt: str, option: str) -> float:
    return 0.0 if option == "the right answer" else -1.0


def says_right_letter(prompt: str) -> str:
    return next(k for k, text in shown_options(prompt).items() if text == "the right answer")


CIRCULAR = EvalConfig(max_new_tokens=8, mc_max_new_tokens=4, bootstrap=50, circular_letter=True)


def test_always_a_scores_its_share_plainly_and_zero_circularly(backend):
    r = evaluate(Picker(backend, lambda p: "A", always_a), ["a"], MEDQA, ITEMS, CIRCULAR)["a"]
    m = r["metrics"]
    for name in ("letter", "loglik", "loglik_listed"):  # right where the gold is A: 1 of 4
        assert (m[name]["value"], m[name]["n"], m[name]["picks"]) == (0.25, 4, {"A": 4})
    for name in ("loglik_circular", "letter_circular"):  # right in one rotation of each item, never in all four
        assert (m[name]["value"], m[name]["n"], m[name]["picks"]) == (0.0, 4, {"A": 16})
    assert r["primary"] == "letter"
    assert list(m) == ["letter", "loglik", "loglik_norm", "loglik_listed", "loglik_circular", "letter_circular"]


def test_a_picker_of_the_right_text_scores_one_everywhere(backend):
    picker = Picker(backend, says_right_letter, right_text)
    r = evaluate(picker, ["a"], MEDQA, ITEMS, CIRCULAR)["a"]
    for name in ("letter", "loglik", "loglik_listed", "loglik_circular", "letter_circular"):
        assert r["metrics"][name]["value"] == 1.0 and r["metrics"][name]["n"] == 4
    # each letter holds the gold once per item over the rotations: 4 items x 1 = 4 picks of each
    assert r["metrics"]["loglik_circular"]["picks"] == {"A": 4, "B": 4, "C": 4, "D": 4}
    row = r["examples"][1]  # gold B
    assert [(rot["shown"], rot["gold"]) for rot in row["rotations"]] == [
        ("ABCD", "B"), ("BCDA", "A"), ("CDAB", "D"), ("DABC", "C")]
    # the rotations were real: 1 + 3 generations per item, each prompt showing its rotation's order
    assert len(picker.asked) == 4 + 12
    rotated = [p for p in picker.asked if "Question 1?" in p]
    assert [says_right_letter(p) for p in rotated] == ["B", "A", "D", "C"]


def test_loglik_only_generates_nothing_and_scores_one_prompt_per_item(backend):
    """eval.mc_generate=false, listed_loglik=false (the CPU demo's dev scores): no generation, no listed prompt,
    loglik primary; circular_letter without generation is a config error."""
    picker, prompts = Picker(backend, lambda p: "A", right_text), []
    scoring = picker.continuation_logprobs
    picker.continuation_logprobs = lambda m, prefixes, *a, **k: prompts.extend(prefixes) or scoring(m, prefixes, *a,
                                                                                                   **k)
    c = EvalConfig(max_new_tokens=8, mc_max_new_tokens=4, bootstrap=50, mc_generate=False, listed_loglik=False)
    r = evaluate(picker, ["a"], MEDQA, ITEMS, c)["a"]
    assert picker.asked == [] and len(prompts) == len(ITEMS)
    assert list(r["metrics"]) == ["loglik", "loglik_norm"] and r["primary"] == "loglik"
    assert r["metrics"]["loglik"]["value"] == 1.0 and "letter" not in r["examples"][0]
    listed = evaluate(picker, ["a"], MEDQA, ITEMS, replace(c, listed_loglik=True))["a"]
    assert list(listed["metrics"]) == ["loglik", "loglik_norm", "loglik_listed", "loglik_circular"]
    with pytest.raises(ConfigError, match="circular_letter rotates the generated letter"):
        load_config(None, ["eval.mc_generate=false", "eval.circular_letter=true"])


def test_circular_letter_is_off_by_default_and_a_failed_rotation_is_failed(backend):
    r = evaluate(Picker(backend, lambda p: "A", always_a), ["a"], MEDQA, ITEMS, SETTINGS)["a"]
    assert "letter_circular" not in r["metrics"] and "loglik_circular" in r["metrics"]

    def fails_once(prompt):  # item 0's rotation 2 (CDAB) fails
        return None if "Question 0?" in prompt and shown_options(prompt)["A"] == "wrong C" else "A"

    r = evaluate(Picker(backend, fails_once, always_a), ["a"], MEDQA, ITEMS, CIRCULAR)["a"]
    m = r["metrics"]["letter_circular"]
    assert (m["n"], m["failed"], m["picks"]) == (3, 1, {"A": 12})  # the failed item's picks are not counted
    assert r["examples"][0]["rotations"][2]["letter_pick"] is None


def test_a_failed_option_score_in_one_rotation_fails_the_item_and_is_kept_as_none(backend):
    def fails_once(prompt, option):  # item 2's rotation 1 (BCDA): a remote backend could not score its options
        if "Question 2?" in prompt and shown_options(prompt).get("A") == "wrong B":
            return Failure("server lost")
        return always_a(prompt, option)

    r = evaluate(Picker(backend, lambda p: "A", fails_once), ["a"], MEDQA, ITEMS, SETTINGS)["a"]
    listed, circular = r["metrics"]["loglik_listed"], r["metrics"]["loglik_circular"]
    assert (listed["n"], listed["failed"]) == (4, 0)  # rotation 0 of item 2 was scored
    assert (circular["n"], circular["failed"], circular["picks"]) == (3, 1, {"A": 12})
    failed = r["examples"][2]["rotations"][1]
    assert failed["loglik_pick"] is None and failed["loglik_error"] == "server lost"
    assert set(failed["option_logliks"].values()) == {None}  # written to the eval file as null, never a score
    json.dumps(r["examples"])


def test_majority_baseline_and_letter_picks_by_hand(backend):
    """Gold A, A, B, C, A: always A scores 3/5. The answers: "A" (right), "A" (right), "The answer is B" (right),
    "(A) or (B)" (ambiguous: wrong), "no idea" (no letter: wrong) -> letter 3/5, picks A 2, B 1, ambiguous 1,
    none 1."""
    golds = "AABCA"
    items = [Example(f"q:{i}", f"Q{i}?", g, {"A": "alpha", "B": "beta", "C": "gamma"}) for i, g in enumerate(golds)]
    said = {"Q0?": "A", "Q1?": "A", "Q2?": "The answer is B", "Q3?": "(A) or (B)", "Q4?": "no idea"}
    picker = Picker(backend, lambda p: next(v for k, v in said.items() if k in p), always_a)
    r = evaluate(picker, ["a", "b"], MEDQA, items, SETTINGS)
    for member in ("a", "b"):
        assert r[member]["majority_baseline"] == {"letter": "A", "value": 0.6, "gold": {"A": 3, "B": 1, "C": 1}}
        letter = r[member]["metrics"]["letter"]
        assert letter["value"] == 0.6 and letter["picks"] == {"A": 2, "B": 1, "ambiguous": 1, "none": 1}
        assert r[member]["metrics"]["loglik"]["picks"] == {"A": 5}
    assert majority_baseline(list("BCCB")) == {"letter": "B", "value": 0.5, "gold": {"B": 2, "C": 2}}  # tie: first


def test_rotate_choices():
    choices = {"A": "3", "B": "4", "C": "5"}
    assert rotate_choices(choices, "B", 0) == (choices, "B")
    assert rotate_choices(choices, "B", 1) == ({"A": "4", "B": "5", "C": "3"}, "A")
    assert rotate_choices(choices, "B", 2) == ({"A": "5", "B": "3", "C": "4"}, "C")


# ---- the tiny model ---------------------------------------------------------------------------------------

def test_circular_metrics_on_the_tiny_model(backend):
    """Real generations and option scores: every rotation is scored on its own prompt (the listed options' order
    changes the numbers), circular accuracy never exceeds the listed one, and the picks add up."""
    examples = [MEDQA.examples("dev")[i] for i in draw_items(636, 3, 0, "medqa", "dev")]
    r = evaluate(backend, ["a"], MEDQA, examples, CIRCULAR)["a"]
    m = r["metrics"]
    n_rotations = sum(len(e.choices) for e in examples)
    for name in ("loglik_listed", "loglik_circular", "letter_circular"):
        assert m[name]["n"] + m[name]["failed"] == 3
    assert m["loglik_circular"]["value"] <= m["loglik_listed"]["value"]
    assert sum(m["loglik_circular"]["picks"].values()) == n_rotations
    assert sum(m["letter_circular"]["picks"].values()) == n_rotations
    row, e = r["examples"][0], examples[0]
    assert len(row["rotations"]) == len(e.choices)
    # the same texts, scored after a prompt that lists them in another order: other numbers, not a relabelling
    scores = [sorted(rot["option_logliks"].values()) for rot in row["rotations"]]
    assert all(s != scores[0] for s in scores[1:])
    assert row["rotations"][0]["output"] == row["output"]
