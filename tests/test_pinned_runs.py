"""Behaviour pinned across refactors (issue 16): tiny runs of every method, digested artifact by artifact, must come
out as recorded in tests/data/pinned_runs.json, bit for bit.

The record holds a sha256 per artifact: each iteration's prompts, duel journal or samples, pairs, reputations, the
counts of metrics.json, each member's training metrics (without timings) and adapter weights. Bit for bit holds
only where the floats are computed the same way: the same CPU kernels (torch's CPU capability), torch and
transformers; elsewhere the test skips and says which differs. One torch thread, so the core count does not
matter. After a change meant to alter behaviour, rewrite the record (and say why in the commit):

    SPARTA_PIN=write python -m pytest tests/test_pinned_runs.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparta.pipeline import Pipeline

RECORD = Path(__file__).parent / "data" / "pinned_runs.json"
RUNS = {  # method -> overrides of the tiny config (tests/conftest.py): 2 iterations each
    "sparta": (),
    "self_rewarding": ("method=self_rewarding", "baseline.samples=3", "data.prompts_per_iteration=3"),
    # the tiny model's free-text judgments do not parse: no pairs, so this pins sampling and judging only
    "meta_rewarding": ("method=meta_rewarding", "judge.mode=generate", "judge.temperature=1.0", "baseline.samples=3",
                       "baseline.judgments=3", "data.prompts_per_iteration=2", "training.max_length=1200"),
    "spin": ("method=spin", "data.prompts_per_iteration=3"),
    "sppo": ("method=sppo", "baseline.samples=3", "data.prompts_per_iteration=2", "training.batch_size=8"),
}
TEXTS = ("prompts.jsonl", "combat.jsonl", "samples.jsonl", "pairs.jsonl", "reputations.json")
VOLATILE = ("seconds", "cpu_seconds", "timings_s", "peak_rss_mb")  # wall/CPU time and memory vary


def environment() -> dict:
    import transformers

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def stable(value):
    """`value` without the keys whose values vary from run to run."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def digest(root: Path) -> dict[str, str]:
    out = {}
    for it in sorted(root.glob("iter_*")):
        for name in TEXTS:
            if (it / name).exists():
                out[f"{it.name}/{name}"] = sha((it / name).read_bytes())
        metrics = stable(json.loads((it / "metrics.json").read_text()))
        out[f"{it.name}/metrics.json"] = sha(json.dumps(metrics, sort_keys=True).encode())
        for path in sorted((it / "training").glob("*.json")):
            out[f"{it.name}/training/{path.name}"] = sha(json.dumps(stable(json.loads(path.read_text())),
                                                                    sort_keys=True).encode())
        for adapter in sorted((it / "adapters").iterdir()):
            weights = load_file(str(adapter / "adapter_model.safetensors"))
            out[f"{it.name}/adapters/{adapter.name}"] = sha(b"".join(
                k.encode() + weights[k].contiguous().view(torch.uint8).numpy().tobytes() for k in sorted(weights)))
    return out


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


@pytest.mark.parametrize("method", list(RUNS))
def test_a_tiny_run_comes_out_as_recorded(method, record, tmp_path, model_cache):
    from tests.conftest import tiny

    writing = os.environ.get("SPARTA_PIN") == "write"
    if not writing:
        assert method in record.get("runs", {}), f"no record for {method}: SPARTA_PIN=write records it"
        if record["environment"] != environment():
            pytest.skip(f"recorded with {record['environment']}, this is {environment()}: floats may differ")
    threads = torch.get_num_threads()
    try:
        config = tiny(tmp_path / "run", model_cache, *RUNS[method], "threads=1")
        Pipeline(config).run_all()
    finally:
        torch.set_num_threads(threads)
    got = digest(tmp_path / "run")
    assert len(got) > 10 and any("/adapters/" in k for k in got) and any("pairs.jsonl" in k for k in got)
    if writing:
        RECORD.parent.mkdir(exist_ok=True)
        data = json.loads(RECORD.read_text()) if RECORD.exists() else {"runs": {}}
        data["environment"] = environment()
        data["runs"][method] = got
        RECORD.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    expected = record["runs"][method]
    differ = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    assert not differ, f"{method}: {len(differ)} artifacts differ from the record, first {differ[:8]}"
