"""The pure parts of the paper's self-alignment baselines (docs/baselines.md), which sparta.methods.self_alignment
runs in place of combat when `method` is not sparta.

Each member makes its own training rows from its own samples and is trained on those alone: `self_rewarding`
(the member judges its own samples, best vs worst), `meta_rewarding` (adds its judgments' own judge: judge
pairs beside the answer pairs), `spin` (the prompt's reference answer vs the member's own answer) and `sppo`
(the other members judge each sample; SPPO's loss on the win rates). `samples` holds what they share: sampling,
the samples file and the pair rows.
"""
