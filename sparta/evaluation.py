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
from dataclasses import dataclass, field

from .arena.judging import ANSWER_PREFIX, JUDGE_PROMPT, ScoreTokens, expected_score, judge_messages
from .backends import Failure
from .chat import encode_chat
from .config import EvalConfig
from .tasks.catalog import Example, Task, format_mc
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
                        progress, c.mc_max_new_tokens)
    logliks = _option_logliks(backend, member, examples, c)
    rows: list[dict] = []
    letter: list[float | None] = []
    loglik: list[float | None] = []
    loglik_norm: list[float | None] = []
    for e, out, scores in zip(examples, outputs, logliks):
        grade = grade_mc_letter(out.text, e.choices, e.answer) if out.text is not None else None
        failed = [v.error for v in scores.values() if isinstance(v, Failure)]
        if failed:  # a remote backend could not score an option: no loglik pick for this example
            picked = picked_norm = None
            scores = {k: None if isinstance(v, Failure) else v for k, v in scores.items()}
        else:
            picked = pick_by_loglik(scores)
            # per-character normalisation (the harnesses' acc_norm): the plain sum favours short options
            picked_norm = pick_by_loglik({k: v / max(1, len(e.choices[k])) for k, v in scores.items()})
        rows.append({"id": e.id, "gold": e.answer, "output": out.text, "error": out.error,
                     "letter": grade.extracted if grade else None, "letter_method": grade.method if grade else "failed",
                     "letter_correct": bool(grade and grade.correct), "loglik_pick": picked,
                     "loglik_correct": picked == e.answer, "loglik_norm_pick": picked_norm, "option_logliks": scores,
                     "loglik_error": failed[0] if failed else None})
        letter.append(float(grade.correct) if grade else None)
        loglik.append(None if failed else float(picked == e.answer))
        loglik_norm.append(None if failed else float(picked_norm == e.answer))
    metrics = {name: summarise(values, c, seed)
               for name, values in (("letter", letter), ("loglik", loglik), ("loglik_norm", loglik_norm))}
    return {"metrics": metrics, "primary": "letter", "examples": rows}


def _option_logliks(backend, member, examples, c) -> list[dict[str, float]]:
    """Summed log-probability of each option's text as the answer to the question (options not listed)."""
    tok = backend.tokenizer(member)
    # the question as a prompt (shortened in the middle if needed), and each option as the assistant's answer
    # (its tokens and the template's end-of-turn, as in DPO), independent of the question's length
    prefixes = [encode_chat(tok, [("user", "{0}")], [e.question], max_tokens=c.max_prompt_tokens).ids
                for e in examples]
    continuations = [[ids[start:] for ids, start in (encode_example(tok, "?", text, 10**6)
                                                    for text in e.choices.values())] for e in examples]
    scores = backend.continuation_logprobs(member, prefixes, continuations, batch_size=c.batch_size)
    return [dict(zip(e.choices, row)) for e, row in zip(examples, scores)]


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
