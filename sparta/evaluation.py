"""Scoring members on a task's dev or test split, with bootstrap 95% confidence intervals.

Per task kind (sparta.tasks.catalog):
- gsm8k: greedy generation, graded by the final number — `strict` ("The answer is N" / "#### N") and
  `flexible` (the last number); accuracy = flexible, both reported.
- math: greedy generation, the last \\boxed{} (or a stated final answer) checked with math-verify.
- mc: graders reported side by side and named — `letter` (generate, read the chosen letter or option text),
  `loglik` (no generation: the option whose text is most likely after the question, summed log-probability,
  as evaluation harnesses do for MC1-style accuracy) and `loglik_norm` (the same per character, acc_norm).
- judged: greedy generation, then the evaluator member scores the answer 1-10 with the logprob judge.
Every example's output, extraction and verdict is kept, so a number can always be traced back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .arena.judging import ANSWER_PREFIX, ScoreTokens, expected_score, judge_messages
from .chat import encode_chat
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
class EvalSettings:
    max_new_tokens: int = 256
    mc_max_new_tokens: int = 32  # enough to state a letter or an option; MC accuracy does not need reasoning
    batch_size: int = 16
    max_prompt_tokens: int = 1024
    bootstrap: int = 1000
    seed: int = 0


def bootstrap_ci(values: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (seeded, so reports repeat)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1))]


def summarise(values: list[float | None], s: EvalSettings) -> dict:
    """Mean and CI over the examples that have a value; those without one (failed generations) are counted
    as `failed`, never scored."""
    valid = [v for v in values if v is not None]
    return {"value": sum(valid) / len(valid) if valid else float("nan"), "n": len(valid),
            "failed": len(values) - len(valid), "ci95": list(bootstrap_ci(valid, s.bootstrap, s.seed))}


def evaluate(backend, members: list[str], task: Task, examples: list[Example], s: EvalSettings,
             evaluator: str | None = None, progress=None) -> dict[str, dict]:
    """{member: result} where result = {"metrics": {name: {value, n, ci95}}, "primary": name, "examples": [...]}."""
    results = {}
    for member in members:
        clock = time.perf_counter()
        if task.kind == "mc":
            result = _mc(backend, member, examples, s, progress)
        elif task.kind == "judged":
            if evaluator is None:
                raise ValueError(f"task {task.name!r} is judged: name an evaluator member")
            result = _judged(backend, member, evaluator, examples, s, progress)
        else:
            result = _generated(backend, member, task.kind, examples, s, progress)
        result["wall_s"] = round(time.perf_counter() - clock, 2)
        results[member] = result
    return results


def _generate(backend, member: str, prompts: list[str], s: EvalSettings, progress, max_new_tokens=None) -> list:
    tok = backend.tokenizer(member)
    encoded = [encode_chat(tok, [("user", "{0}")], [p], max_tokens=s.max_prompt_tokens).ids for p in prompts]
    return backend.generate([member] * len(prompts), encoded, max_new_tokens=max_new_tokens or s.max_new_tokens,
                            temperature=0.0,
                            top_p=1.0, batch_size=s.batch_size, seed=s.seed,
                            progress=progress and progress(f"eval {member}", len(prompts)))


def _generated(backend, member, kind, examples, s, progress) -> dict:
    outputs = _generate(backend, member, [PROMPTS[kind].format(question=e.question) for e in examples], s, progress)
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
        metrics = {"flexible": summarise(flexible, s), "strict": summarise(strict, s)}
        return {"metrics": metrics, "primary": "flexible", "examples": rows}
    return {"metrics": {"accuracy": summarise(flexible, s)}, "primary": "accuracy", "examples": rows}


def _mc(backend, member, examples, s, progress) -> dict:
    outputs = _generate(backend, member, [format_mc(e.question, e.choices) for e in examples], s, progress,
                        s.mc_max_new_tokens)
    logliks = _option_logliks(backend, member, examples, s)
    rows: list[dict] = []
    letter: list[float | None] = []
    loglik: list[float | None] = []
    loglik_norm: list[float | None] = []
    for e, out, scores in zip(examples, outputs, logliks):
        grade = grade_mc_letter(out.text, e.choices, e.answer) if out.text is not None else None
        picked = pick_by_loglik(scores)
        # per-character normalisation (the harnesses' acc_norm): the plain sum favours short options
        picked_norm = pick_by_loglik({k: v / max(1, len(e.choices[k])) for k, v in scores.items()})
        rows.append({"id": e.id, "gold": e.answer, "output": out.text, "error": out.error,
                     "letter": grade.extracted if grade else None, "letter_method": grade.method if grade else "failed",
                     "letter_correct": bool(grade and grade.correct), "loglik_pick": picked,
                     "loglik_correct": picked == e.answer, "loglik_norm_pick": picked_norm, "option_logliks": scores})
        letter.append(float(grade.correct) if grade else None)
        loglik.append(float(picked == e.answer))
        loglik_norm.append(float(picked_norm == e.answer))
    metrics = {"loglik": summarise(loglik, s), "loglik_norm": summarise(loglik_norm, s), "letter": summarise(letter, s)}
    return {"metrics": metrics, "primary": "loglik",
            "examples": rows}


def _option_logliks(backend, member, examples, s) -> list[dict[str, float]]:
    """Summed log-probability of each option's text as the answer to the question (options not listed)."""
    tok = backend.tokenizer(member)
    # the question as a prompt (shortened in the middle if needed), and each option as the assistant's answer
    # (its tokens and the template's end-of-turn, as in DPO), independent of the question's length
    prefixes = [encode_chat(tok, [("user", "{0}")], [e.question], max_tokens=s.max_prompt_tokens).ids
                for e in examples]
    continuations = [[ids[start:] for ids, start in (encode_example(tok, "?", text, 10**6)
                                                    for text in e.choices.values())] for e in examples]
    scores = backend.continuation_logprobs(member, prefixes, continuations, batch_size=s.batch_size)
    return [dict(zip(e.choices, row)) for e, row in zip(examples, scores)]


def _judged(backend, member, evaluator, examples, s, progress) -> dict:
    outputs = _generate(backend, member, [PROMPTS["judged"].format(question=e.question) for e in examples], s,
                        progress)
    tok = backend.tokenizer(evaluator)
    tokens = ScoreTokens(tok)
    rows: list[dict] = []
    requests = []
    for e, out in zip(examples, outputs):
        rows.append({"id": e.id, "reference": e.answer, "output": out.text, "error": out.error, "score": None})
        if out.text is not None:
            enc = encode_chat(tok, judge_messages(), [e.question, out.text], assistant_prefix=ANSWER_PREFIX,
                              max_tokens=s.max_prompt_tokens - len(tokens.appended))
            requests.append((len(rows) - 1, enc.ids + tokens.appended))
    logprobs = backend.next_token_logprobs([evaluator] * len(requests), [r[1] for r in requests], tokens.candidates,
                                           last=tokens.positions, batch_size=s.batch_size)
    for (row, _), lp in zip(requests, logprobs):
        rows[row]["score"] = expected_score(tokens.distribution(lp))
    scores = [r["score"] for r in rows]  # failed generations stay None: counted as failed, not scored
    return {"metrics": {"judged_score": summarise(scores, s)}, "primary": "judged_score", "evaluator": evaluator,
            "judge_prompt": judge_messages()[0][1], "examples": rows}
