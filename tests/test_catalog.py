"""The task catalog: every task's combat pool and dev/test sets, held-out checks, user data and its errors."""

import json
import re
from pathlib import Path

import pytest

from sparta.tasks.catalog import (
    DATA,
    MC_INSTRUCTION,
    TASKS,
    MissingUserData,
    format_mc,
    get_task,
)

FIXTURES = Path(__file__).parent / "fixtures" / "user_data"
NAMES = ["gsm8k", "math_easy", "math_medium", "math_hard", "truthfulqa", "medqa", "normad_country", "normad_value",
         "normad_rot", "knowledge_crosswords", "com2", "alpaca"]
SHIPPED = [n for n in NAMES if not TASKS[n].requires_user_data]
USER_ONLY = ["normad_rot", "knowledge_crosswords"]
SIZES = {  # (dev, test) where the data fixes them
    "medqa": (636, 637), "truthfulqa": (200, 617), "normad_country": (53, 210), "normad_value": (51, 200),
    "gsm8k": (300, 1019), "math_easy": (53, 80), "math_medium": (42, 63), "math_hard": (105, 157), "com2": (317, 1000),
    "alpaca": (25, 50),
}


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_the_twelve_tasks():
    assert list(TASKS) == NAMES
    assert set(USER_ONLY) == {n for n in NAMES if TASKS[n].requires_user_data}
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
        assert task.kind in {"gsm8k", "math", "mc", "judged"}
        assert task.metric in {"accuracy", "judged score 1-10", "judged score 1-10 (free text) + accuracy (MC)"}
        assert task.combat_source.strip() and "\n" not in task.combat_source and task.notes.strip()
    assert TASKS["alpaca"].kind == "judged" and TASKS["com2"].kind == "mc"
    assert [n for n in NAMES if TASKS[n].free_text] == ["com2"]  # the one MC task also judged as free text


def test_get_task_unknown_lists_all_names():
    with pytest.raises(ValueError) as e:
        get_task("mmlu")
    assert all(name in str(e.value) for name in NAMES)


def test_format_mc_exact():
    assert format_mc("What is 2+2? ", {"A": "3", "B": " 4"}) == (
        "What is 2+2?\n\nA. 3\nB. 4\n\nAnswer with the letter of the correct option."
    )
    with pytest.raises(ValueError, match="letters"):
        format_mc("q", {"B": "x"})
    with pytest.raises(ValueError, match="non-empty"):
        format_mc("q", {"A": "x", "B": " "})


def _check_task(task, user_data=None, sizes=None):
    prompts = task.combat_prompts(user_data)
    ids = [p.id for p in prompts]
    assert prompts and len(set(ids)) == len(ids)
    assert all(p.id.startswith(f"{task.name}:") and p.text.strip() and p.source == task.name for p in prompts)
    refs = task.combat_references(user_data)
    assert set(refs) <= set(ids) and all(refs.values())
    splits = {s: task.examples(s, user_data) for s in ("dev", "test")}
    for split, examples in splits.items():
        assert examples
        assert all(e.id.startswith(f"{task.name}:{split}:") and e.question.strip() for e in examples)
        for e in examples:
            if task.kind == "mc":
                assert e.choices and e.answer in e.choices, e.id
                assert MC_INSTRUCTION not in e.question and "\nA. " not in e.question
            elif task.kind != "judged":
                assert e.answer.strip() and e.choices is None, e.id
    dev_ids, test_ids = ({e.id for e in splits[s]} for s in ("dev", "test"))
    assert len(dev_ids) == len(splits["dev"]) and len(test_ids) == len(splits["test"]) and not dev_ids & test_ids
    dev_questions, test_questions = ({_norm(e.question) for e in splits[s]} for s in ("dev", "test"))
    assert not dev_questions & test_questions  # disjoint in content, not only in ids
    if sizes:
        assert (len(splits["dev"]), len(splits["test"])) == sizes
    return prompts, splits


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_task(name):
    _check_task(TASKS[name], sizes=SIZES.get(name))


def test_ids_and_splits_are_stable():
    assert TASKS["gsm8k"].combat_prompts()[5417].id == "gsm8k:5417"  # same ids as the sparta.prompts pool
    first = [e.id for e in TASKS["gsm8k"].examples("dev")]
    _ = TASKS["math_easy"].examples("dev")
    assert [e.id for e in TASKS["gsm8k"].examples("dev")] == first
    assert first[:3] == ["gsm8k:dev:0", "gsm8k:dev:1", "gsm8k:dev:4"]  # pinned: the split never moves


def test_gold_answers():
    gsm = {e.id: e for s in ("dev", "test") for e in TASKS["gsm8k"].examples(s)}
    assert gsm["gsm8k:dev:0"].answer == "18"
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", e.answer) for e in gsm.values())  # commas and $ stripped
    hard = TASKS["math_hard"].examples("dev") + TASKS["math_hard"].examples("test")
    assert {e.meta["level"] for e in hard} == {4, 5}
    assert {e.meta["level"] for e in TASKS["math_easy"].examples("test")} == {1, 2}
    refs = TASKS["math_hard"].combat_references()
    assert len(refs) == len(TASKS["math_hard"].combat_prompts())  # every test5000 solution has a \boxed answer


def test_truthfulqa_combat_is_held_out_from_test():
    task = TASKS["truthfulqa"]
    test_questions = {_norm(e.question) for e in task.examples("test")}
    asked = [_norm(re.match(r"Q: (.*?)\nA: ", p.text, re.S).group(1)) for p in task.combat_prompts()]
    assert len(asked) == 1747 and not set(asked) & test_questions


def test_math_combat_is_held_out_from_math500():
    math500 = {_norm(json.loads(line)["problem"]) for line in (DATA / "math/math500_test.jsonl").open()}
    for name in ("math_easy", "math_medium", "math_hard"):
        assert not {_norm(p.text) for p in TASKS[name].combat_prompts()} & math500, name
    assert len(TASKS["math_hard"].combat_prompts()) == 2276


def _normad_story(text: str) -> str:
    match = re.search(r"(?:Please justify: |Story: )(.*?)(?:\.\n Choose from|\.?$|\nValue: )", text, re.S)
    return _norm(match.group(1))


def test_normad_combat_stories_are_held_out():
    for name in ("normad_country", "normad_value"):
        task = TASKS[name]
        combat = {_normad_story(p.text.split("\n\nA. ")[0]) for p in task.combat_prompts()}
        for split in ("dev", "test"):
            assert not combat & {_normad_story(e.question) for e in task.examples(split)}, (name, split)
    value = TASKS["normad_value"].examples("test")[0].question
    assert "\\n" not in value and "\nValue: " in value


def test_medqa_and_com2_combat_disjoint_from_eval():
    medqa = TASKS["medqa"]
    evaluated = {_norm(e.question) for s in ("dev", "test") for e in medqa.examples(s)}
    assert not {_norm(p.text.split("\n\nA. ")[0]) for p in medqa.combat_prompts()} & evaluated
    assert medqa.combat_prompts()[0].text.endswith(MC_INSTRUCTION)
    com2 = TASKS["com2"]
    context = re.compile(r"Context: (.*?)\nQuestion:", re.S)
    combat = {context.search(p.text).group(1).strip() for p in com2.combat_prompts()}
    examples = com2.examples("test")
    assert not combat & {context.search(e.question).group(1).strip() for e in examples}
    e = examples[0]
    assert e.meta["reference"] == e.choices[e.answer]
    assert e.meta["free_text_question"].endswith(e.question + "\nThe answer is:")


@pytest.mark.parametrize("name", USER_ONLY)
def test_user_only_task_without_data(name, tmp_path):
    task = TASKS[name]
    expected = task.user_files[0].path
    with pytest.raises(MissingUserData) as e:
        task.combat_prompts()
    assert expected in str(e.value) and "<user_data>" in str(e.value) and "get it" in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and e.value.task == name
    with pytest.raises(MissingUserData) as e:
        task.examples("test", tmp_path)
    assert str(tmp_path) in str(e.value) and task.user_files[-1].path in str(e.value)


def test_user_only_tasks_from_fixtures():
    rot_prompts, rot = _check_task(TASKS["normad_rot"], FIXTURES, sizes=(2, 2))
    assert [p.id for p in rot_prompts] == ["normad_rot:1", "normad_rot:2", "normad_rot:3", "normad_rot:4"]
    assert rot["dev"][0].answer == "A" and rot["dev"][0].meta["country"] == "fixtureland"
    assert not rot["dev"][0].question.endswith("'Neutral'")
    kc_prompts, kc = _check_task(TASKS["knowledge_crosswords"], FIXTURES, sizes=(2, 3))
    assert len(kc_prompts) == 4
    assert TASKS["knowledge_crosswords"].combat_references(FIXTURES)["knowledge_crosswords:1"] == "C"


def test_optional_user_data_replaces_the_shipped_pools():
    hard = TASKS["math_hard"].combat_prompts(FIXTURES)
    assert [p.id for p in hard] == ["math_hard:user:0", "math_hard:user:1", "math_hard:user:3"]  # row 2 is MATH-500
    assert TASKS["math_hard"].combat_references(FIXTURES)["math_hard:user:1"] == "225"
    medqa = TASKS["medqa"].combat_prompts(FIXTURES)
    assert [p.id for p in medqa] == ["medqa:user:0", "medqa:user:1"]  # row 2 is an eval question
    assert TASKS["medqa"].combat_references(FIXTURES)["medqa:user:1"] == "B"
    prompts, alpaca = _check_task(TASKS["alpaca"], FIXTURES, sizes=(1, 4))
    assert [p.id for p in prompts] == ["alpaca:user:0", "alpaca:user:1", "alpaca:user:3"]  # row 2 is an eval item
    assert prompts[1].text == "Classify the sentiment of the sentence.\n\nI love this fixture."
    assert all(e.id.split(":")[2] == "user" for e in alpaca["test"])


def test_shipped_alpaca_is_the_seed_split():
    task = TASKS["alpaca"]
    combat = {p.id.split(":")[1] for p in task.combat_prompts()}
    dev, test = ({e.meta["seed_id"] for e in task.examples(s)} for s in ("dev", "test"))
    assert len(combat | dev | test) == 175 and not combat & (dev | test)
    assert all(e.answer for e in task.examples("test"))


def test_malformed_user_rows_are_errors(tmp_path):
    path = tmp_path / "knowledge_crosswords/train.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"train": [{"prompt": "ok", "completion": "A"}, {"prompt": "", "completion": "B"}]}))
    with pytest.raises(ValueError, match=r"train\.json \['train'\] row 1: field 'prompt'"):
        TASKS["knowledge_crosswords"].combat_prompts(tmp_path)
    path.write_text(json.dumps({"train": [{"prompt": "ok", "completion": "maybe"}]}))
    with pytest.raises(ValueError, match="row 0: field 'completion'"):
        TASKS["knowledge_crosswords"].combat_prompts(tmp_path)
    eval_path = tmp_path / "eval/knowledge_crosswords.json"
    eval_path.parent.mkdir()
    eval_path.write_text(json.dumps({"dev": [{"question": "q", "choices": {"A": "x"}, "answer": "B"}], "test": []}))
    with pytest.raises(ValueError, match=r"\['dev'\] row 0: 'answer' must be one of \['A'\]"):
        TASKS["knowledge_crosswords"].examples("dev", tmp_path)
    rot = tmp_path / "culture/rule_of_thumb_dataset.json"
    rot.parent.mkdir()
    rot.write_text(json.dumps({"train": {}, "test": {"1": {"instruction": "x", "label": "yes"}},
                               "valid": {"2": {"instruction": "y", "label": "no"}}}))
    with pytest.raises(ValueError, match="subset of 'test'"):
        TASKS["normad_rot"].examples("dev", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        TASKS["gsm8k"].examples("train")
