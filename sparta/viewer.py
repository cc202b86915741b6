"""`sparta view RUN`: a static, offline duel browser for a run directory (docs/viewer.md).

    OUT/index.html, OUT/view.js, OUT/view.css   the page (copied from sparta/viewer_assets)
    OUT/data/index.js                           loaded up front: the run, the leaderboard, plots, report.md, and
                                                per duel / pair the few fields the filters need
    OUT/data/duels-iter01-p003.js               full duels (the journal's rows as they are), `page_size` a chunk
    OUT/data/pairs-iter01-p000.js               full pairs.jsonl rows, likewise
    OUT/plots/*.png                             the report's plots, copied

Browsers refuse fetch() from file:// pages, so every data file is a script that hands its JSON to the page's global
loader (`SPARTA_VIEW.load(name, data)`), and the page adds the <script> of a chunk only when it shows one of its
rows. Nothing is inserted as HTML: model output is untrusted and is always set as text.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
from pathlib import Path

import yaml

from .pairs import pairs_for
from .ratings import duel_record
from .records import Duel, read_json, read_jsonl
from .rundir import RunDir, method_of, swap_in

ASSETS = Path(__file__).parent / "viewer_assets"
ASSET_FILES = ("index.html", "view.js", "view.css")
PAGE_SIZE = 50  # duels (or pairs) per data chunk
PREVIEW = 80  # characters of the prompt kept in the index for the duel list
MARKER = ".sparta-view"  # marks a directory this module wrote, so --out never replaces anything else


def write_view(root: Path, out: Path | None = None, page_size: int = PAGE_SIZE) -> Path:
    """Write the browser for run `root` into `out` (default RUN/view), replacing a previous one whole.
    Returns the path of index.html."""
    root = Path(root)
    run = RunDir(root)
    if not run.config_file.exists():
        raise FileNotFoundError(f"{root} has no config.yaml: not a sparta run directory")
    out = Path(out) if out is not None else run.view
    if out.exists() and (not (out / MARKER).exists() and any(out.iterdir())):
        raise FileExistsError(f"{out} exists, is not empty and was not written by `sparta view`: refusing to "
                              "replace it (choose another --out)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    (tmp / MARKER).write_text("written by sparta view; the whole directory is replaced on the next run\n")
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, tmp / name)
    index = build_index(root, tmp, page_size)
    _write_data(tmp, "index", index)
    swap_in(tmp, out)
    return out / "index.html"


def build_index(root: Path, out: Path, page_size: int) -> dict:
    """Write the duel and pair chunks of every iteration into out/data and return the index that lists them."""
    run = RunDir(root)
    saved = yaml.safe_load(run.config_file.read_text()) or {}
    members = [m["name"] if isinstance(m, dict) else str(m) for m in saved.get("pool", {}).get("members", [])]
    pair_mode = saved.get("training", {}).get("pairs", "all")
    iterations, all_duels = [], []
    for t in _iterations(root):
        rows = _complete_rows(run.journal(t))
        all_duels += [Duel.from_dict(row) for row in rows]  # checks every row has a duel's fields
        pairs = read_jsonl(run.pairs(t)) if run.pairs(t).exists() else []
        iterations.append({
            "iteration": t, "has_duels": run.journal(t).exists(),
            "samples": len(read_jsonl(run.samples(t))) if run.samples(t).exists() else None,
            "duels": _chunks(out, f"duels-iter{t:02d}", rows, page_size, _duel_summary),
            "pairs": _chunks(out, f"pairs-iter{t:02d}", pairs, page_size,
                             functools.partial(_pair_summary, members=members, mode=pair_mode)),
            "reputations": _reputations(run, t) if rows else None})  # a baseline's is the start state: left out
    report = root / "report.md"
    return {
        "run": str(root), "method": method_of(root), "members": members, "pair_mode": pair_mode,
        "page_size": page_size, "iterations": iterations, "leaderboard": leaderboard(members, iterations, all_duels),
        "plots": _copy_plots(root, out), "report": report.read_text() if report.exists() else None}


def _reputations(run: RunDir, t: int) -> dict | None:
    if not run.reputations(t).exists():
        return None
    state = read_json(run.reputations(t))
    return {"ratings": state["ratings"], "sigmas": state["sigmas"]}


def _iterations(root: Path) -> list[int]:
    """Every iteration with a journal, samples or pairs (a run in progress shows what it has so far)."""
    found = {int(p.parent.name[len("iter_"):]) for name in ("combat.jsonl", "samples.jsonl", "pairs.jsonl")
             for p in root.glob(f"iter_[0-9]*/{name}")}
    return sorted(found)


def _complete_rows(path: Path) -> list[dict]:
    """A journal's complete lines; a run still writing may have a partial last one, left as it is (only read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].decode().splitlines() if line.strip()]


def _chunks(out: Path, stem: str, rows: list[dict], page_size: int, summary) -> dict:
    """rows in chunk files of page_size; the index keeps summary(row) for each, with the chunk it is in."""
    for p, start in enumerate(range(0, len(rows), page_size)):
        _write_data(out, f"{stem}-p{p:03d}", rows[start:start + page_size])
    return {"stem": stem, "count": len(rows), "rows": [summary(r) for r in rows]}


def _duel_summary(d: dict) -> list:
    """[index, round, a, b, score_a, score_b, outcome, prompt preview] — what the filters and the list need."""
    return [d["index"], d["round"], d["a"], d["b"], d["score_a"], d["score_b"], d["outcome"], d["prompt"][:PREVIEW]]


def _pair_summary(p: dict, members: list[str], mode: str) -> list:
    """[duel_index, chosen_model, rejected_model, margin, members that train on it (None: all), prompt preview
    (None for a duel's pair: its duel's summary has it)]"""
    prompt = p.get("prompt")
    text = None if p.get("duel_index") is not None else \
        prompt[-1]["content"][:PREVIEW] if isinstance(prompt, list) and prompt else str(prompt or "")[:PREVIEW]
    if "member" in p:  # a baseline's rows: each member trains on its own
        trained = [p["member"]]
    else:
        trained = [m for m in members if pairs_for(m, [p], mode)]
        trained = None if trained == members else trained  # training.pairs=all: not spelled out 8000 times
    return [p.get("duel_index"), p.get("chosen_model"), p.get("rejected_model"), p.get("margin"), trained, text]


def leaderboard(members: list[str], iterations: list[dict], duels: list[Duel]) -> list[dict]:
    """Reputation after the last iteration that has one, and the duels and pairs of every iteration."""
    state = next((it["reputations"] for it in reversed(iterations) if it["reputations"]), None) or {}
    rows, trained = [], [r for it in iterations for r in it["pairs"]["rows"]]
    for m in members:
        rows.append({
            "member": m, "reputation": state.get("ratings", {}).get(m), "sigma": state.get("sigmas", {}).get(m),
            **duel_record(m, duels),
            "chosen": sum(r[1] == m for r in trained), "rejected": sum(r[2] == m for r in trained),
            "trained_on": sum(r[4] is None or m in r[4] for r in trained)})
    return sorted(rows, key=lambda r: -(r["reputation"] if r["reputation"] is not None else float("-inf")))


def _copy_plots(root: Path, out: Path) -> list[str]:
    names = []
    for png in sorted(root.glob("*.png")):
        (out / "plots").mkdir(exist_ok=True)
        shutil.copyfile(png, out / "plots" / png.name)
        names.append(f"plots/{png.name}")
    return names


def _write_data(out: Path, name: str, data: object) -> None:
    # ASCII JSON is valid JavaScript; the file is loaded by <script src>, never pasted into HTML. A plain write:
    # the directory is a temporary one until swap_in puts it in place whole.
    (out / "data" / f"{name}.js").write_text(f"SPARTA_VIEW.load({json.dumps(name)}, {json.dumps(data)});\n")


def read_data(path: Path) -> tuple[str, object]:
    """A data file back as (name, data): what the page's loader receives (tests, tools)."""
    text = path.read_text()
    head, tail = "SPARTA_VIEW.load(", ");\n"
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(f"{path}: not a sparta view data file")
    body = text[len(head):-len(tail)]
    name, end = json.JSONDecoder().raw_decode(body)
    return name, json.loads(body[end:].removeprefix(", "))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # cli is the only module that prints
        pass


def server(directory: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A local HTTP server for `directory` on 127.0.0.1 (port 0: a free one); the caller serves and stops it."""
    handler = functools.partial(_Quiet, directory=str(directory))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
