"""Scoring members on a task's dev or test split, with bootstrap 95% confidence intervals.

Per task kind (sparta.tasks.catalog):
- gsm8k: greedy generation, graded by the final number — `strict` ("The answer is N" / "#### N") and
  `flexible` (the last number); primary = flexible, both reported.
- math: greedy generation, the last \\boxed{} (or a stated final answer) checked with math-verify.
- mc: three graders reported side by side and named — `letter` (greedy generation of an answer to the MC
  prompt, the chosen letter or option text read from it), `loglik` (no generation: the option whose text is
  most likely after the bare question, summed log-probability, as evaluation harnesses do for MC1-style
  accuracy) and `loglik_norm` (the same per character, the harnesses' acc_norm).
  Primary = `letter`, for every MC task: the paper reports accuracies of generated answers, and generated
  answers are what SPARTA trains (combat answers the task prompts in text; DPO moves those answers). The
  log-likelihood rules score another question (the options are not shown) and carry length biases: the plain
  sum favours short options (the demo's SmolLM2-135M experts: 0.13-0.20 on MedQA, chance 0.25), the
  per-character one long ones ("neutral" for every NormAd item). They stay reported, as probes that need no
  instruction following. `letter` has its own bias (a small model leans on one letter, and an echo of the
  options is `ambiguous`, graded wrong); docs/tasks.md has the measurements.
  Beside them, on the same items, with eval.listed_loglik: `loglik_listed` (the option log-likelihood picker,
  the prompt listing the options as the MC prompt does) and `loglik_circular`: the options rotated n times
  (each rotation moves every text to another letter), an item right only if the picker chose the gold text in
  every rotation; with eval.circular_letter, `letter_circular` the same for the generated letter. With
  eval.mc_generate=false nothing is generated: no `letter`, and `loglik` is the primary metric. A
  pure letter or position bias scores 0 on a circular metric. Every MC metric keeps how often each letter was
  picked (`picks`), and every MC result the majority-letter baseline on its items (`majority_baseline`).
- judged: greedy generation, then an evaluator scores the answer 1-10 with the logprob judge (the authors'
  judge prompt; the reference answer is recorded with each example, not shown to the judge).
- COM2 (an mc task with a free-text form, `Task.free_text`): the MC metrics, plus, when an evaluator is given,
  `judged_score` on the free-text question of every item that has a usable reference; primary = judged_score,
  the paper's COM2 number (1-10).
The evaluator is any backend model: a pool member, or a model from outside the pool (see Evaluator).
Every example's output, extraction and verdict is kept, so a number can always be traced back.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from .arena.judging import ANSWER_PREFIX, JUDGE_PROMPT, ScoreTokens, expected_score, judge_messages
from .backends import BackendError, Failure
from .chat import encode_chat
from .config import EvalConfig
from .seeding import rng
from .tasks.catalog import Example, Task, format_mc, rotate_choices
from .tasks.graders import grade_gsm8k, grade_math, grade_mc_letter, pick_by_loglik
from .training import encode_example

PROMPTS = {
    # a literal "The answer is N." in the instruction was copied verbatim by SmolLM2 (seen in the demo's eval)
    "gsm8k": "{question}\n\nSolve it step by step. End with the sentence \"The answer is\" followed by the number.",
    "math": "{question}\n\nSolve it step by step and put the final answer in \\boxed{{}}.",
    "judged": "{question}",
}


@dataclass(frozen=True)
class Evaluator:
    """The model that scores free-text answers: `name` in `backend`, and `record` (its name, spec, ...) to keep
    with the results. It may sit in another backend than the members it scores."""

    backend: object
    name: str
    record: dict = field(default_factory=dict)


def needs_evaluator(task: Task) -> bool:
    """Judged tasks, and MC tasks with a judged free-text form (COM2)."""
    return task.kind == "judged" or task.free_text


def draw_items(n_items: int, limit: int | None, seed: int, task: str, split: str) -> list[int] | None:
    """The indices (ascending) of `limit` items of a split of `n_items`, drawn at random from the run seed, the
    task and the split: the same for every member and every call, so evaluations before and after training stay
    paired. A larger limit keeps the items of a smaller one (the first `limit` of one seeded order). None: every
    item (limit 0 or None, or not below n_items). Not the first N: a split's head can be skewed (MedQA test's
    first 20 items have gold A 10 times)."""
    if not limit or limit >= n_items:
        return None
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = all), got {limit}")
    order = list(range(n_items))
    rng(seed, "eval-items", task, split).shuffle(order)
    return sorted(order[:limit])


def bootstrap_ci(values: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (seeded, so reports repeat)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1))]


def summarise(values: list[float | None], c: EvalConfig, seed: int) -> dict:
    """Mean and CI over the examples that have a value; those without one (failed generations) are counted
    as `failed`, never scored."""
    valid = [v for v in values if v is not None]
    return {"value": sum(valid) / len(valid) if valid else float("nan"), "n": len(valid),
            "failed": len(values) - len(valid), "ci95": list(bootstrap_ci(valid, c.bootstrap, seed))}


def evaluate(backend, members: list[str], task: Task, examples: list[Example], c: EvalConfig,
             evaluator: Evaluator | str | None = None, progress=None, seed: int = 0) -> dict[str, dict]:
    """{member: result} where result = {"metrics": {name: {value, n, failed, ci95}}, "primary": name,
    "examples": [...]}. `evaluator`: an Evaluator, or the name of a model in `backend`; needed by judged
    tasks, optional for COM2 (without one, COM2 has only its MC metrics)."""
    if isinstance(evaluator, str):
        evaluator = Evaluator(backend, evaluator, {"name": evaluator})
    if task.kind == "judged" and evaluator is None:
        raise ValueError(f"task {task.name!r} is judged: name an evaluator")
    results = {}
    for member in members:
        clock = time.perf_counter()
        if task.kind == "mc":
            result = _mc(backend, member, examples, c, seed, progress)
            if task.free_text and evaluator is not None:
                _add_free_text(result, backend, member, evaluator, examples, c, seed, progress)
        elif task.kind == "judged":
            result = _judged(backend, member, evaluator, examples, c, seed, progress)
        else:
            result = _generated(backend, member, task.kind, examples, c, seed, progress)
        result["wall_s"] = round(time.perf_counter() - clock, 2)
        results[member] = result
    return results


def _generate(backend, member: str, prompts: list[str], c: EvalConfig, seed: int, progress,
              max_new_tokens=None) -> list:
    tok = backend.tokenizer(member)
    encoded = [encode_chat(tok, [("user", "{0}")], [p], max_tokens=c.max_prompt_tokens).ids for p in prompts]
    return backend.generate([member] * len(prompts), encoded, max_new_tokens=max_new_tokens or c.max_new_tokens,
                            temperature=0.0,
                            top_p=1.0, batch_size=c.batch_size, seed=seed,
                            progress=progress and progress(f"eval {member}", len(prompts)))


def _generated(backend, member, kind, examples, c, seed, progress) -> dict:
    outputs = _generate(backend, member, [PROMPTS[kind].format(question=e.question) for e in examples], c, seed,
                        progress)
    rows: list[dict] = []
    strict: list[float | None] = []
    flexible: list[float | None] = []
    for e, out in zip(examples, outputs):
        row = {"id": e.id, "gold": e.answer, "output": out.text, "error": out.error}
        if out.text is None:  # a failed generation is recorded as failed and left out of the accuracy
            row.update(correct=None, method="failed")
            strict.append(None)
            flexible.append(None)
        elif kind == "gsm8k":
            grades = grade_gsm8k(out.text, e.answer)
            row.update(correct=grades["flexible"].correct, extracted=grades["flexible"].extracted,
                       strict=grades["strict"].correct, strict_extracted=grades["strict"].extracted)
            strict.append(float(grades["strict"].correct))
            flexible.append(float(grades["flexible"].correct))
        else:
            grade = grade_math(out.text, e.answer)
            row.update(correct=grade.correct, extracted=grade.extracted, method=grade.method)
            flexible.append(float(grade.correct))
        rows.append(row)
    if kind == "gsm8k":
        metrics = {"flexible": summarise(flexible, c, seed), "strict": summarise(strict, c, seed)}
        return {"metrics": metrics, "primary": "flexible", "examples": rows}
    return {"metrics": {"accuracy": summarise(flexible, c, seed)}, "primary": "accuracy", "examples": rows}


def _mc(backend, member, examples, c, seed, progress) -> dict:
    outputs = _generate(backend, member, [format_mc(e.question, e.choices) for e in examples], c, seed,
                        progress, c.mc_max_new_tokens) if c.mc_generate else [None] * len(examples)
    # the bare question, the options not shown: each option's text as the answer
    logliks = _option_logliks(backend, member, [e.question for e in examples], [e.choices for e in examples], c)
    scores = _Scores()
    rows: list[dict] = []
    for e, out, option_scores in zip(examples, outputs, logliks, strict=True):
        grade = grade_mc_letter(out.text, e.choices, e.answer) if out and out.text is not None else None
        failed = [v.error for v in option_scores.values() if isinstance(v, Failure)]
        if failed:  # a remote backend could not score an option: no loglik pick for this example
            picked = picked_norm = None
            option_scores = {k: None if isinstance(v, Failure) else v for k, v in option_scores.items()}
        else:
            picked = pick_by_loglik(option_scores)
            # per-character normalisation (the harnesses' acc_norm): the plain sum favours short options
            picked_norm = pick_by_loglik({k: v / max(1, len(e.choices[k])) for k, v in option_scores.items()})
        row = {"id": e.id, "gold": e.answer}
        if out is not None:  # eval.mc_generate
            row.update(output=out.text, error=out.error, letter=grade.extracted if grade else None,
                       letter_method=grade.method if grade else "failed", letter_correct=bool(grade and grade.correct))
            scores.add("letter", None if grade is None else float(grade.correct),
                       grade and [_letter_pick(grade.extracted, grade.method)])
        rows.append({**row, "loglik_pick": picked, "loglik_correct": picked == e.answer,
                     "loglik_norm_pick": picked_norm, "option_logliks": option_scores,
                     "loglik_error": failed[0] if failed else None})
        scores.add("loglik", None if failed else float(picked == e.answer), [picked])
        scores.add("loglik_norm", None if failed else float(picked_norm == e.answer), [picked_norm])
    if c.listed_loglik or c.circular_letter:
        _rotations(backend, member, examples, outputs, rows, scores, c, seed, progress)
    return {"metrics": scores.summaries(c, seed), "primary": "letter" if c.mc_generate else "loglik", "examples": rows,
            "majority_baseline": majority_baseline([e.answer for e in examples])}


class _Scores:
    """Per MC metric: each item's value (None: failed) and the letters picked, in the order metrics are added."""

    def __init__(self):
        self.values: dict[str, list[float | None]] = {}
        self.picks: dict[str, Counter] = {}

    def add(self, metric: str, value: float | None, picks) -> None:
        self.values.setdefault(metric, []).append(value)
        self.picks.setdefault(metric, Counter()).update(picks if value is not None else ())

    def summaries(self, c: EvalConfig, seed: int) -> dict:
        return {name: {**summarise(values, c, seed), "picks": dict(sorted(self.picks[name].items()))}
                for name, values in self.values.items()}


def _letter_pick(extracted: str | None, method: str) -> str:
    """What a generated answer picked (grade_mc_letter's reading): its letter, or "none" / "ambiguous" (no
    letter, or two)."""
    return method if method in ("none", "ambiguous") else extracted


def majority_baseline(gold: list[str]) -> dict:
    """The accuracy of always answering the most frequent gold letter of these items (ties: the first letter)."""
    counts = Counter(gold)
    letter = max(sorted(counts), key=counts.__getitem__)
    return {"letter": letter, "value": counts[letter] / len(gold), "gold": dict(sorted(counts.items()))}


def _rotations(backend, member, examples, outputs, rows, scores: _Scores, c, seed, progress) -> None:
    """loglik_listed, loglik_circular (eval.listed_loglik) and letter_circular (eval.circular_letter). Each
    row keeps its item's rotations (rotate_choices; rotation 0 is the task's own order) under `rotations`: the
    original letters in the order shown, the letter the gold is shown at, and each picker's choice. A failure
    in any rotation leaves the item's circular value failed, never scored."""
    for e, row in zip(examples, rows, strict=True):
        # rotating the letters themselves gives, for each shown letter, the original option it shows
        rotations = [rotate_choices(dict(zip(e.choices, e.choices)), e.answer, r)
                     for r in range(len(e.choices))]
        row["rotations"] = [{"shown": "".join(shown.values()), "gold": gold} for shown, gold in rotations]
    scored = [(e, rotation) for e, row in zip(examples, rows) for rotation in row["rotations"]] if c.listed_loglik \
        else []
    logliks = _option_logliks(backend, member, [format_mc(e.question, _shown(e, r)) for e, r in scored],
                              [_shown(e, r) for e, r in scored], c)
    for (_, rotation), option_scores in zip(scored, logliks, strict=True):
        failed = [v.error for v in option_scores.values() if isinstance(v, Failure)]
        rotation.update(loglik_pick=None if failed else pick_by_loglik(option_scores),
                        option_logliks={k: None if isinstance(v, Failure) else v for k, v in option_scores.items()},
                        loglik_error=failed[0] if failed else None)
    for row in rows if c.listed_loglik else ():
        loglik = row["rotations"]
        _add_circular(scores, "loglik", loglik, [r["loglik_pick"] if r["loglik_error"] is None else None
                                                 for r in loglik])
    if c.circular_letter:
        _letter_rotations(backend, member, examples, outputs, rows, c, seed, progress)
        for row in rows:
            _add_circular(scores, "letter", row["rotations"], [r["letter_pick"] for r in row["rotations"]],
                          listed=False)


def _shown(e: Example, rotation: dict) -> dict[str, str]:
    """The options as a rotation shows them: shown letter -> text."""
    return {letter: e.choices[original] for letter, original in zip(e.choices, rotation["shown"])}


def _add_circular(scores: _Scores, picker: str, rotations: list[dict], picks: list[str | None],
                  listed: bool = True) -> None:
    """One item's `{picker}_listed` (rotation 0; where `listed`) and `{picker}_circular` (right in every
    rotation; only with more than one). `picks`: the letter chosen in each rotation, None where it failed."""
    correct = [None if p is None else float(p == r["gold"]) for p, r in zip(picks, rotations, strict=True)]
    if listed:
        scores.add(f"{picker}_listed", correct[0], picks[:1])
    if len(rotations) > 1:
        scores.add(f"{picker}_circular", None if None in correct else float(all(correct)), picks)


def _letter_rotations(backend, member, examples, outputs, rows, c, seed, progress) -> None:
    """The generated letter in every rotation (`letter_pick`, None where the generation failed): rotation 0's is
    the `letter` metric's answer; the others are generated from the MC prompt showing the rotated options."""
    for row, out in zip(rows, outputs, strict=True):
        pick = None if out.text is None else _letter_pick(row["letter"], row["letter_method"])
        row["rotations"][0].update(output=out.text, error=out.error, letter_pick=pick)
    asked = [(e, rotation) for e, row in zip(examples, rows) for rotation in row["rotations"][1:]]
    generated = _generate(backend, member, [format_mc(e.question, _shown(e, r)) for e, r in asked], c, seed,
                          progress, c.mc_max_new_tokens)
    for (e, rotation), out in zip(asked, generated, strict=True):
        grade = None if out.text is None else grade_mc_letter(out.text, _shown(e, rotation), rotation["gold"])
        rotation.update(output=out.text, error=out.error,
                        letter_pick=grade and _letter_pick(grade.extracted, grade.method))


def _option_logliks(backend, member, prompts: list[str], options: list[dict[str, str]], c) -> list[dict]:
    """Summed log-probability of each option's text as the answer to its prompt: {letter: float or Failure}."""
    tok = backend.tokenizer(member)
    # the prompt (shortened in the middle if needed), and each option as the assistant's answer (its tokens and
    # the template's end-of-turn, as in DPO), independent of the prompt's length
    prefixes = [encode_chat(tok, [("user", "{0}")], [p], max_tokens=c.max_prompt_tokens).ids for p in prompts]
    continuations = [[ids[start:] for ids, start in (encode_example(tok, "?", text, 10**6)
                                                    for text in choices.values())] for choices in options]
    scores = backend.continuation_logprobs(member, prefixes, continuations, batch_size=c.batch_size)
    if len(scores) != len(prompts):
        raise BackendError(f"continuation_logprobs gave {len(scores)} rows for {len(prompts)} prompts")
    return [dict(zip(choices, row, strict=True)) for choices, row in zip(options, scores)]


def _judged(backend, member, evaluator: Evaluator, examples, c, seed, progress) -> dict:
    outputs = _generate(backend, member, [PROMPTS["judged"].format(question=e.question) for e in examples], c,
                        seed, progress)
    tok = evaluator.backend.tokenizer(evaluator.name)
    tokens = ScoreTokens(tok)
    rows: list[dict] = []
    requests = []
    for e, out in zip(examples, outputs):
        rows.append({"id": e.id, "reference": e.answer, "output": out.text, "error": out.error, "score": None})
        if out.text is not None:
            enc = encode_chat(tok, judge_messages(), [e.question, out.text], assistant_prefix=ANSWER_PREFIX,
                              max_tokens=c.max_prompt_tokens - len(tokens.appended))
            requests.append((len(rows) - 1, enc.ids + tokens.appended))
    logprobs = evaluator.backend.next_token_logprobs(
        [evaluator.name] * len(requests), [r[1] for r in requests], tokens.candidates, last=tokens.positions,
        batch_size=c.batch_size, progress=progress and progress(f"judge {member}", len(requests)))
    for (row, _), lp in zip(requests, logprobs):
        if isinstance(lp, Failure):  # the evaluator could not score it: failed, never a default score
            rows[row]["error"] = lp.error
            continue
        rows[row]["score"] = expected_score(tokens.distribution(lp))
    scores = [r["score"] for r in rows]  # failed generations stay None: counted as failed, not scored
    return {"metrics": {"judged_score": summarise(scores, c, seed)}, "primary": "judged_score",
            "evaluator": evaluator.record, "judge_prompt": JUDGE_PROMPT, "examples": rows}


def _add_free_text(result: dict, backend, member, evaluator: Evaluator, examples, c, seed, progress) -> None:
    """COM2's judged score: the member answers each item's free-text question, the evaluator scores it 1-10.
    Items whose right option is "None of the answers are correct" have no usable reference: left out, counted
    as `excluded`. The judged rows go into the MC rows (`free_text`) of the same examples."""
    usable = []
    for e in examples:
        if "free_text_question" not in e.meta or "reference" not in e.meta:
            raise ValueError(f"example {e.id}: a free-text task needs meta['free_text_question'] and "
                             "meta['reference']")
        if not e.meta.get("none_of_the_above"):
            usable.append(Example(e.id, e.meta["free_text_question"], e.meta["reference"]))
    judged = _judged(backend, member, evaluator, usable, c, seed, progress)
    by_id = {row["id"]: row for row in judged["examples"]}
    for row in result["examples"]:
        row["free_text"] = by_id.get(row["id"])  # None: no usable reference
    result["metrics"] = {"judged_score": {**judged["metrics"]["judged_score"],
                                         "excluded": len(examples) - len(usable)}, **result["metrics"]}
    result.update(primary="judged_score", evaluator=judged["evaluator"], judge_prompt=judged["judge_prompt"])
