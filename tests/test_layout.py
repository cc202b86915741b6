"""Imports flow one way (records/config → models → backend → arena → pairs → training → judge_diagnostics → ratings →
report → viewer → export → pipeline → compare → cli), and importing the package or the CLI stays light (no torch until
a model is needed)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "sparta"
ORDER = ["seeding", "records", "config", "rundir", "models", "chat", "tasks", "prompts", "hf_compat",
         "kv_continuation", "precision", "mixed_lora", "backends", "arena", "pairs", "simulate", "baselines",
         "methods", "training", "cluster", "experts", "eval_results", "evaluation", "run_evaluation",
         "judge_diagnostics", "ratings", "report", "viewer", "export", "tracking", "pipeline", "compare", "cli"]


def layer(module: str) -> int:
    return ORDER.index(module)


def sparta_imports(path: Path) -> list[str]:
    """Top-level sparta modules that `path` imports relatively (e.g. "backend", "arena")."""
    package = path.relative_to(PACKAGE).parent.parts  # () for sparta/x.py, ("arena",) for sparta/arena/x.py
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            parts = base + tuple((node.module or "").split(".")) if node.module else base
            if parts:
                out.append(parts[0])
    return out


def test_imports_flow_one_way():
    for path in PACKAGE.rglob("*.py"):
        me = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        for target in sparta_imports(path):
            if target != me:
                assert layer(target) < layer(me), f"{path.name} imports {target}: against the data flow"


def test_cli_help_does_not_import_torch():
    code = "import sys, sparta.cli; sparta.cli.make_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
