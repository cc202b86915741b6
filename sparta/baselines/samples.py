"""What the baselines share: every member samples answers to the iteration's prompts, and pair rows name the
member they belong to, so DPO trains each member on its own pairs only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..arena.combat import generate_responses
from ..config import GenerationConfig
from ..records import Judgment, Prompt, Response


@dataclass
class Sample:
    """One row of iter_t/samples.jsonl: a member's answer to a prompt and its verdicts: self_rewarding's own
    (`judgment`), meta_rewarding's N own (`judgments`, and `meta`: the round robin of its meta-judge), or sppo's
    from every other member (`judgments`) and the win rate they give it (`win_prob`)."""

    member: str
    prompt_id: str
    prompt: str
    sample: int  # 0.. per (member, prompt)
    response: Response
    judgment: Judgment | None = None  # the member judging its own answer (target "self")
    # "generated" | "generation_failed" | "scored" | "judgment_unparsed" | "judgment_failed" | "judged" (sppo)
    status: str = ""
    # sppo: the other members', target "peer"; meta_rewarding: its own N, target "self"
    judgments: list[Judgment] = field(default_factory=list)
    win_prob: float | None = None  # sppo: P̂(y ≻ π_t | x) over the member's samples of the prompt
    meta: dict | None = None  # meta_rewarding: battles and strengths of its judgments (the most disputed sample)

    @property
    def score(self) -> float | None:
        """A scored sample's mean readable judgment (self_rewarding has one); None unless status is scored."""
        if self.status != "scored":
            return None
        scores = [j.score for j in self.verdicts if j.status == "ok"]
        return sum(scores) / len(scores) if scores else None

    @property
    def verdicts(self) -> list[Judgment]:
        """Every judgment of this sample: its own (self_rewarding) or its peers' (sppo)."""
        return ([self.judgment] if self.judgment else []) + self.judgments

    @staticmethod
    def from_dict(d: dict) -> Sample:
        d = dict(d, response=Response(**d["response"]))
        d["judgment"] = Judgment(**d["judgment"]) if d["judgment"] else None
        d["judgments"] = [Judgment(**j) for j in d.get("judgments", [])]
        return Sample(**d)


def draw_samples(backend, members: list[str], prompts: list[Prompt], n: int, gen: GenerationConfig, seed: int,
                 progress=None) -> list[Sample]:
    """n sampled answers per (prompt, member), in one batched call; a failed generation stays a failed sample."""
    keys = [(p, m, k) for p in prompts for m in members for k in range(n)]
    responses = generate_responses(backend, [(m, p.text) for p, m, _ in keys], gen, seed, progress)
    return [Sample(m, p.id, p.text, k, r, status="generated" if r.text is not None else "generation_failed")
            for (p, m, k), r in zip(keys, responses)]


def pair_row(method: str, iteration: int, s: Sample, chosen: str, rejected: str, prompt: str | None = None,
             **columns) -> dict:
    """A pair in trl's conversational format (on the sample's prompt, or `prompt`), with the member that trains on
    it and where it came from."""
    return {"prompt": [{"role": "user", "content": s.prompt if prompt is None else prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "prompt_id": s.prompt_id, "iteration": iteration, "method": method, "member": s.member, **columns}


def own_pairs(member: str, pairs: list[dict]) -> list[dict]:
    """Self-alignment: a member trains only on the pairs made from its own samples."""
    return [p for p in pairs if p["member"] == member]


def to_row(s: Sample) -> dict:
    return asdict(s)
