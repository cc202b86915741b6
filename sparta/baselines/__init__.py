"""The paper's self-alignment baselines (docs/baselines.md), run in place of combat when `method` is not sparta.

Each member makes its own preference pairs from its own samples and is DPO-trained on those alone:
`self_rewarding` (the member judges its own samples, best vs worst) and `spin` (the prompt's reference answer vs
the member's own answer). `samples` holds what both share: sampling, the samples file and the pair rows.
"""
