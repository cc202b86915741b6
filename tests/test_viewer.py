"""`sparta view`: the data files read back match the run's journal and pairs; a real headless Chromium shows what the
journal says, filters by the URL hash, and keeps untrusted text as text.

The browser tests skip where `chromium` is missing (`make browser` installs it), except when
SPARTA_REQUIRE_BROWSER=1 (set by .ci/run): then they fail."""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.view import synthetic_run
from sparta.arena.reputation import ReputationState
from sparta.cli import main
from sparta.pipeline import Pipeline
from sparta.ratings import leaderboard
from sparta.records import Duel, read_json, read_jsonl
from sparta.rundir import RunDir
from sparta.viewer import read_data, server, write_view
from tests.conftest import tiny

SCREENSHOT = Path(__file__).parents[1] / "test-artifacts" / "viewer.png"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, model_cache):
    """A real two-iteration tiny SPARTA run, and its view."""
    config = tiny(tmp_path_factory.mktemp("view") / "run", model_cache)
    root = Pipeline(config).run_all().root
    return root, write_view(root)


def chunks(view: Path, stem: str) -> list[dict]:
    rows = []
    for path in sorted((view / "data").glob(f"{stem}-p*.js")):
        name, data = read_data(path)
        assert name == path.stem
        rows += data
    return rows


def test_index_and_chunks_match_the_journal_and_pairs(tiny_run):
    root, page = tiny_run
    run, view = RunDir(root), page.parent
    name, index = read_data(view / "data" / "index.js")
    assert name == "index" and index["method"] == "sparta" and index["members"] == ["a", "b", "c", "d"]
    assert [it["iteration"] for it in index["iterations"]] == [1, 2]
    for it in index["iterations"]:
        t = it["iteration"]
        journal, pairs = read_jsonl(run.journal(t)), read_jsonl(run.pairs(t))
        assert chunks(view, f"duels-iter{t:02d}") == journal  # every row, exactly, in order
        assert chunks(view, f"pairs-iter{t:02d}") == pairs
        assert it["duels"]["count"] == len(journal) and it["pairs"]["count"] == len(pairs)
        assert it["duels"]["rows"] == [[d["index"], d["round"], d["a"], d["b"], d["score_a"], d["score_b"],
                                        d["outcome"], d["prompt"][:80]] for d in journal]
        assert it["pairs"]["rows"] == [[p["duel_index"], p["chosen_model"], p["rejected_model"], p["margin"], None,
                                        None] for p in pairs]  # previews: the duel's
        assert all(r[4] is None for r in it["pairs"]["rows"])  # training.pairs=all: every member trains on each
    # the leaderboard: the last reputations, the duels of both iterations counted as the pipeline counts them
    per_iteration = [leaderboard(index["members"], ReputationState.from_dict(read_json(run.reputations(t))),
                                 [Duel.from_dict(d) for d in read_jsonl(run.journal(t))], read_jsonl(run.pairs(t)))
                     for t in (1, 2)]
    for row in index["leaderboard"]:
        mine = [next(r for r in rows if r["member"] == row["member"]) for rows in per_iteration]
        assert row["reputation"] == mine[-1]["reputation"] and row["sigma"] == mine[-1]["sigma"]
        for key in ("wins", "losses", "ties", "void", "chosen", "rejected"):
            assert row[key] == sum(r[key] for r in mine), key
    assert index["plots"] == ["plots/reputations.png", "plots/win_matrix.png"]
    assert all((view / p).read_bytes() == (root / Path(p).name).read_bytes() for p in index["plots"])
    assert {p.name for p in view.iterdir()} == {".sparta-view", "index.html", "view.js", "view.css", "data", "plots"}


def test_view_replaces_only_its_own_directory(tiny_run, tmp_path):
    root, _ = tiny_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by `sparta view`"):
        write_view(root, mine)
    assert (mine / "notes.txt").read_text() == "keep"
    page = write_view(root, tmp_path / "out")
    assert write_view(root, tmp_path / "out") == page  # a second call replaces its own output


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, model_cache):
    """A real one-iteration self_rewarding run (samples and pairs, no duels), and its view."""
    config = tiny(tmp_path_factory.mktemp("view-sr") / "run", model_cache, "method=self_rewarding", "iterations=1",
                  "baseline.samples=3", "data.prompts_per_iteration=3")
    root = Pipeline(config).run_all().root
    return root, write_view(root)


def test_a_baseline_shows_its_pairs_and_says_it_has_no_duels(baseline_run, tmp_path):
    root, page = baseline_run
    pairs = read_jsonl(RunDir(root).pairs(1))
    _, index = read_data(page.parent / "data" / "index.js")
    assert index["method"] == "self_rewarding"
    it = index["iterations"][0]
    assert not it["has_duels"] and it["duels"]["count"] == 0 and it["samples"] == 3 * 4 * 3
    assert chunks(page.parent, "pairs-iter01") == pairs and pairs
    assert [r[4] for r in it["pairs"]["rows"]] == [[p["member"]] for p in pairs]  # each member trains on its own
    member = pairs[0]["member"]
    dom = DOM(chromium(tmp_path, f"{page.as_uri()}#member={member}", "--dump-dom")).root
    assert "self_rewarding has no duels" in dom.one(id="no-duels").text()
    listed = [tr.attrs["data-pair"] for tr in dom.one("table", id="pair-list").all("tr") if "data-pair" in tr.attrs]
    assert listed == [f"1:{i}" for i, p in enumerate(pairs) if p["member"] == member]


def test_cli_view_writes_the_page(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    assert main(["view", str(root), "--out", str(tmp_path / "v")]) == 0
    assert f"wrote {tmp_path / 'v' / 'index.html'}" in capsys.readouterr().out
    assert main(["view", str(tmp_path)]) == 1  # not a run


def test_server_serves_the_page_on_localhost(tiny_run):
    import threading
    import urllib.request

    httpd = server(tiny_run[1].parent, 0)
    host, port = httpd.server_address
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/index.js") as r:
            assert r.read() == (tiny_run[1].parent / "data" / "index.js").read_bytes()
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- in a real browser ----

def chromium(tmp_path: Path, url: str, *args: str) -> str:
    if not CHROMIUM:
        if os.environ.get("SPARTA_REQUIRE_BROWSER") == "1":
            pytest.fail("SPARTA_REQUIRE_BROWSER=1 but chromium is not on PATH: run `make browser`")
        pytest.skip("chromium is not installed (`make browser` installs it; SPARTA_REQUIRE_BROWSER=1 makes this fail)")
    profile = tmp_path / "chromium-profile"
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--virtual-time-budget=5000", *args, url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)  # (Chromium's dump of a
        # <pre> whose text starts with a newline does not double it, as the HTML serialisation would: none to drop)

    def all(self, tag: str | None = None, **attrs) -> list["Node"]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and all(c.attrs.get(k) == v for k, v in attrs.items()):
                    found.append(c)
                found += c.all(tag, **attrs)
        return found

    def one(self, tag: str | None = None, **attrs) -> "Node":
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> in the DOM"
        return found[0]


class DOM(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = self.at = Node("#document", {})
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.at)
        self.at.children.append(node)
        if tag not in self.VOID:
            self.at = node

    def handle_endtag(self, tag):
        node = self.at
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.at = node.parent

    def handle_data(self, data):
        self.at.children.append(data)


def value(node: Node) -> float:
    return float(node.one("span", **{"class": "num"}).attrs["data-value"])


def test_the_browser_shows_a_filtered_list_and_a_duel_as_the_journal_says(tiny_run, tmp_path):
    root, page = tiny_run
    journal = read_jsonl(RunDir(root).journal(1))
    mine = [d for d in journal if "a" in (d["a"], d["b"])]
    d = next((x for x in mine if x["outcome"] in ("a", "b")), mine[0])
    state = f"iter=1&member=a&duel=1:{d['index']}"
    html = chromium(tmp_path, f"{page.as_uri()}#{state}", "--dump-dom")
    dom = DOM(html).root
    # the filter: iteration 1's duels that a fought, and no other
    listed = [tr.attrs["data-duel"] for tr in dom.one("table", id="duel-list").all("tr") if "data-duel" in tr.attrs]
    assert listed == [f"1:{x['index']}" for x in mine]
    assert len(listed) < sum(it["duels"]["count"] for it in read_data(page.parent / "data" / "index.js")[1]
                             ["iterations"])
    # the open duel, field by field
    duel = dom.one("section", id="duel")
    assert duel.attrs["data-duel"] == f"1:{d['index']}"
    assert duel.one(id="duel-prompt").text() == d["prompt"]
    assert duel.one(id="duel-outcome").text() == d["outcome"]
    for side in "ab":
        box = duel.one(id=f"response-{side}")
        assert box.one("span", **{"class": "member"}).text() == d[side]
        assert box.one("pre").text() == d[f"response_{side}"]["text"]
        assert value(box.one("span", **{"class": "aggregate"})) == d[f"score_{side}"]
    rows = {tr.attrs["data-judge"]: tr for tr in duel.one("table", id="judges").all("tr") if "data-judge" in tr.attrs}
    assert set(rows) == {j["judge"] for j in d["judgments"]}
    for j in d["judgments"]:
        row = rows[j["judge"]]
        assert value(row.one("td", **{"class": f"score-{j['target']}"})) == j["score"]
        assert value(row.one("td", **{"class": "weight"})) == d["weights"][j["judge"]]
    update = {tr.one("th").text(): tr.one("td") for tr in duel.one("table", id="update").all("tr")}
    assert value(update["rating_a_after"]) == d["update"]["rating_a_after"]
    # a screenshot of the same state, kept as an artifact
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(tmp_path, f"{page.as_uri()}#{state}", f"--screenshot={SCREENSHOT}", "--window-size=1280,1800")
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"screenshot: {SCREENSHOT}")


def test_the_browser_pages_the_list_and_shows_a_members_pairs(tiny_run, tmp_path):
    root, page = tiny_run
    pairs = read_jsonl(RunDir(root).pairs(2))
    state = "view=pairs&iter=2&member=c&pair=2:1"
    dom = DOM(chromium(tmp_path, f"{page.as_uri()}#{state}", "--dump-dom")).root
    listed = [tr.attrs["data-pair"] for tr in dom.one("table", id="pair-list").all("tr") if "data-pair" in tr.attrs]
    assert listed == [f"2:{i}" for i in range(len(pairs))]  # training.pairs=all: c trains on every pair
    duel = next(d for d in read_jsonl(RunDir(root).journal(2)) if d["index"] == pairs[0]["duel_index"])
    assert dom.one("tr", **{"data-pair": "2:0"}).one("td", **{"class": "preview"}).text() == duel["prompt"][:80]
    box = dom.one("section", id="pair")
    assert box.one(id="pair-prompt").text() == pairs[1]["prompt"][0]["content"]
    assert box.one(id="pair-chosen").one("pre").text() == pairs[1]["chosen"][0]["content"]
    assert box.one(id="pair-rejected").one("pre").text() == pairs[1]["rejected"][0]["content"]


ATTACK = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"> & </pre>'


def test_untrusted_text_stays_text(tmp_path):
    texts = {(1, 3): (ATTACK, "\n<b>bold?</b>\n\nsecond paragraph")}
    root = synthetic_run(tmp_path / "run", iterations=1, duels=60, chars=50, members=["x", "y", "z"], texts=texts)
    page = write_view(root, page_size=25)
    html = chromium(tmp_path, f"{page.as_uri()}#duel=1:3&page=0", "--dump-dom")
    dom = DOM(html).root
    assert dom.one("title").text() == "sparta view"
    assert dom.one(id="response-a").one("pre").text() == ATTACK
    assert dom.one(id="response-b").one("pre").text() == "\n<b>bold?</b>\n\nsecond paragraph"
    assert not dom.all("img", src="x") and not dom.all("b")
    assert {s.attrs["src"] for s in dom.all("script")} == {"view.js", "data/index.js", "data/duels-iter01-p000.js"}
    # a duel in the third chunk loads that chunk only (and duel=N names duel N of iteration iter)
    dom = DOM(chromium(tmp_path, f"{page.as_uri()}#iter=1&duel=55", "--dump-dom")).root
    assert {s.attrs["src"] for s in dom.all("script")} == {"view.js", "data/index.js", "data/duels-iter01-p002.js"}
    assert dom.one("section", id="duel").attrs["data-duel"] == "55"
    assert dom.one(id="response-a").one("pre").text() == read_jsonl(RunDir(root).journal(1))[55]["response_a"]["text"]


def test_a_journal_being_written_is_read_not_truncated(tmp_path):
    root = synthetic_run(tmp_path / "run", iterations=1, duels=7, chars=20, members=["x", "y", "z"])
    journal = RunDir(root).journal(1)
    with open(journal, "ab") as f:
        f.write(b'{"iteration": 1, "rou')  # the run is appending its next round
    before = journal.read_bytes()
    _, index = read_data(write_view(root).parent / "data" / "index.js")
    assert index["iterations"][0]["duels"]["count"] == 7
    assert journal.read_bytes() == before
