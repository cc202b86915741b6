"""The typed evaluation files: dict -> typed -> dict gives back the same JSON text, for every shape the writers
have made (old files without `models`/`evaluator`, COM2's and alpaca's key orders, NaN means); a file without
what every writer puts in it fails naming the file and the missing key."""

from __future__ import annotations

import copy

import pytest

from sparta.eval_results import EvalFile, EvalFileError, MajorityBaseline, Metric
from sparta.records import write_json_atomic

NAN = float("nan")


def metric(value: float, n: int = 3, failed: int = 0, **extra) -> dict:
    return {"value": value, "n": n, "failed": failed, "ci95": [value / 2, min(1.0, value * 2)], **extra}


def mc(value: float) -> dict:
    return {"metrics": {"letter": metric(value), "loglik": metric(0.25), "loglik_norm": metric(0.5)},
            "primary": "letter", "examples": [{"id": "medqa:0", "letter": "B", "letter_correct": True}], "wall_s": 2.5}


EVALUATOR = {"name": "tiny", "member": False, "spec": "tiny", "kind": "hf", "fingerprint": "ab12", "adapter": None}


def com2() -> dict:
    """_mc's keys, then _add_free_text's: `evaluator` comes after `examples`; the judged score excludes an item."""
    return {"metrics": {"judged_score": metric(5.5, n=2, failed=1, excluded=1), "letter": metric(NAN, n=0, failed=4)},
            "primary": "judged_score", "examples": [{"id": "com2:0", "free_text": None}], "evaluator": EVALUATOR,
            "judge_prompt": "J", "wall_s": 4.0}


def alpaca() -> dict:
    """_judged's keys: `evaluator` before `examples`."""
    return {"metrics": {"judged_score": metric(4.9, n=2)}, "primary": "judged_score", "evaluator": EVALUATOR,
            "judge_prompt": "J", "examples": [{"id": "alpaca:0", "score": 4.9}], "wall_s": 1.0}


def eval_file(task: str, kind: str, results: dict, old: bool = False) -> dict:
    head = {"task": task, "kind": kind, "split": "test", "iteration": 1, "n_examples": 3}
    if old:  # written before the scored models and the evaluator were recorded
        return {**head, "results": results}
    judged = any("evaluator" in r for r in results.values())
    models = {m: {"name": m, "member": m != "tiny:1", "adapter": None} for m in results}
    return {**head, "models": models, "evaluator": EVALUATOR if judged else None,
            "judge_prompt": "J" if judged else None, "results": results}


def mc_with_picks(value: float) -> dict:
    """Written since the draw and the letter-bias checks: picks per metric, a circular metric, the baseline."""
    picks = {"A": 2, "none": 1}
    return {"metrics": {"letter": metric(value, picks=picks), "loglik": metric(0.25, picks={"B": 3}),
                        "loglik_circular": metric(0.0, picks={"A": 12})},
            "primary": "letter", "examples": [{"id": "medqa:7", "letter": "A", "rotations": []}],
            "majority_baseline": {"letter": "A", "value": 2 / 3, "gold": {"A": 2, "C": 1}}, "wall_s": 2.5}


SUBSET = {"seed": 0, "of": 637, "indices": [7, 100, 512]}
FILES = {"mc": eval_file("medqa", "mc", {"a": mc(0.5), "tiny:1": mc(0.75)}),
         "drawn": {**eval_file("medqa", "mc", {"a": mc_with_picks(0.5)}), "subset": SUBSET},
         "old": eval_file("medqa", "mc", {"a": mc(0.5)}, old=True),
         "com2": eval_file("com2", "mc", {"a": com2()}),
         "alpaca": eval_file("alpaca", "judged", {"a": alpaca(), "b": alpaca()})}


@pytest.mark.parametrize("name", FILES)
def test_round_trip_gives_back_the_same_json(name, tmp_path):
    data = FILES[name]
    assert EvalFile.from_dict(data, "x.json").to_dict() == data
    path, again = tmp_path / "medqa-test.json", tmp_path / "again.json"
    write_json_atomic(path, data)
    write_json_atomic(again, EvalFile.read(path).to_dict())
    assert again.read_bytes() == path.read_bytes()  # the same keys in the same order (and NaN stays NaN)


def test_typed_reads():
    mc_file = EvalFile.from_dict(FILES["mc"], "x.json")
    assert mc_file.results["a"].primary_metric == Metric(0.5, 3, 0, (0.25, 1.0))
    assert mc_file.outside() == {"tiny:1"} and mc_file.evaluator is None
    old = EvalFile.from_dict(FILES["old"], "x.json")
    assert old.models is None and old.outside() == set() and old.evaluator is None
    assert old.subset is None and old.results["a"].majority_baseline is None
    assert old.results["a"].primary_metric.picks is None  # written before picks were kept
    drawn = EvalFile.from_dict(FILES["drawn"], "x.json")
    assert drawn.subset == SUBSET and drawn.extras == {"evaluator": None, "judge_prompt": None, "subset": SUBSET}
    a = drawn.results["a"]
    assert a.majority_baseline == MajorityBaseline("A", 2 / 3, {"A": 2, "C": 1}) and a.extras == {}
    assert a.metrics["letter"].picks == {"A": 2, "none": 1} and a.metrics["letter"].extras == {}
    result = EvalFile.from_dict(FILES["com2"], "x.json").results["a"]
    assert result.primary_metric.excluded == 1 and result.metrics["letter"].excluded is None
    assert result.evaluator == EVALUATOR and result.extras == {"judge_prompt": "J"}


def broken(edit) -> dict:
    data = copy.deepcopy(FILES["mc"])
    edit(data)
    return data


@pytest.mark.parametrize("data, says", [
    (broken(lambda d: d["results"]["a"].pop("primary")), "results['a']: missing 'primary'"),
    (broken(lambda d: d["results"]["a"]["metrics"]["loglik"].pop("value")),
     "results['a'], metric 'loglik': missing 'value'"),
    (broken(lambda d: [d.pop("n_examples"), d.pop("kind")]), "missing 'kind', 'n_examples'"),
    (broken(lambda d: d["results"]["a"].update(primary="accuracy")),
     "results['a']: primary metric 'accuracy' is not among its metrics ['letter', 'loglik', 'loglik_norm']"),
    (broken(lambda d: d.update(results=[])), "results: expected an object, got list"),
    (broken(lambda d: d["results"]["a"].update(majority_baseline={"letter": "A"})),
     "results['a'], majority_baseline: missing 'value', 'gold'"),
])
def test_a_bad_file_names_itself_and_what_is_missing(data, says, tmp_path):
    path = tmp_path / "eval" / "iter_01" / "medqa-test.json"
    write_json_atomic(path, data)
    with pytest.raises(EvalFileError) as e:
        EvalFile.read(path)
    assert str(e.value) == f"{path}: {says}"
    assert isinstance(e.value, ValueError)  # the CLI's `error: ...` and compare's error paths catch it
