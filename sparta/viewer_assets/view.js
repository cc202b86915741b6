// sparta view: an offline browser of a run's duels and pairs (docs/viewer.md).
// Data comes in as scripts (data/*.js call SPARTA_VIEW.load), so the page works from file://.
// Every piece of run data is set as text (createTextNode / textContent), never as HTML: responses are untrusted.
"use strict";

(function () {
  const V = (window.SPARTA_VIEW = { index: null, chunks: {}, waiting: {} });
  const LIST_ROWS = 50; // rows of the duel / pair list per page
  const OUTCOMES = ["a", "b", "tie", "below_margin", "void", "won", "lost"];

  V.load = function (name, data) {
    V.chunks[name] = data;
    if (name === "index") {
      V.index = data;
      start();
      return;
    }
    const callbacks = V.waiting[name] || [];
    delete V.waiting[name];
    callbacks.forEach((f) => f(data));
  };

  // a chunk's <script>, added once; cb runs when it has loaded
  function need(name, cb) {
    if (V.chunks[name]) return cb(V.chunks[name]);
    if (V.waiting[name]) return V.waiting[name].push(cb);
    V.waiting[name] = [cb];
    const s = document.createElement("script");
    s.src = "data/" + name + ".js";
    s.onerror = () => fail("could not load data/" + name + ".js");
    document.head.appendChild(s);
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-") || k === "id" || k === "title") node.setAttribute(k, String(v));
      else if (k === "href") node.setAttribute("href", v);
      else node[k] = v; // event handlers, value, type
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const num = (x, digits) => el("span", { class: "num", "data-value": x === null || x === undefined ? "" : String(x),
    title: x === null || x === undefined ? "" : String(x) }, fmt(x, digits));

  function fail(message) {
    const app = document.getElementById("app");
    app.appendChild(el("p", { class: "error" }, message));
  }

  // ---- state in the URL hash: #view=duels&iter=1&member=a&outcome=a&margin=0.5&page=2&duel=1:17 ----
  function readState() {
    const s = {};
    for (const part of location.hash.replace(/^#/, "").split("&")) {
      if (!part) continue;
      const i = part.indexOf("=");
      const key = decodeURIComponent(i < 0 ? part : part.slice(0, i));
      s[key] = i < 0 ? "" : decodeURIComponent(part.slice(i + 1));
    }
    s.view = s.view || (V.index.iterations.some((it) => it.has_duels) ? "duels" : "pairs");
    s.page = Math.max(0, parseInt(s.page || "0", 10) || 0);
    return s;
  }

  function hashOf(state) {
    return "#" + Object.entries(state).filter(([, v]) => v !== "" && v !== undefined && v !== null)
      .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
  }

  function go(changes) {
    const s = Object.assign(readState(), changes);
    location.hash = hashOf(s);
  }

  // ---- layout ----
  function start() {
    document.getElementById("title").textContent = "sparta view: " + V.index.run;
    document.getElementById("subtitle").textContent = "method " + V.index.method + " · members " +
      V.index.members.join(", ") + " · iterations " + V.index.iterations.map((it) => it.iteration).join(", ");
    window.addEventListener("hashchange", render);
    render();
  }

  function render() {
    const state = readState();
    const app = document.getElementById("app");
    app.replaceChildren(overview(), tabs(state));
    if (state.view === "pairs") app.appendChild(pairsView(state));
    else app.appendChild(duelsView(state));
    document.body.setAttribute("data-rendered-ms", String(Math.round(performance.now())));
  }

  // when the opened duel or pair was drawn, in ms since navigation (tests and measurements read it from the DOM)
  function loaded() {
    document.body.setAttribute("data-loaded-ms", String(Math.round(performance.now())));
  }

  function overview() {
    const ix = V.index;
    const section = el("section", { id: "overview" }, el("h2", {}, "Leaderboard"));
    const head = ["member", "reputation", "sigma", "W", "L", "T", "void", "chosen", "rejected", "trained on"];
    const table = el("table", { id: "leaderboard" }, el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const r of ix.leaderboard) {
      table.appendChild(el("tr", { "data-member": r.member }, el("td", {}, r.member), el("td", {}, num(r.reputation)),
        el("td", {}, num(r.sigma)), ...[r.wins, r.losses, r.ties, r.void, r.chosen, r.rejected, r.trained_on]
          .map((x) => el("td", {}, String(x)))));
    }
    section.appendChild(table);
    const iterations = el("table", { id: "iterations" }, el("tr", {}, ...["iteration", "duels", "samples", "pairs"]
      .map((h) => el("th", {}, h))));
    for (const it of ix.iterations) {
      iterations.appendChild(el("tr", {}, ...[it.iteration, it.has_duels ? it.duels.count : "–",
        it.samples === null ? "–" : it.samples, it.pairs.count].map((x) => el("td", {}, String(x)))));
    }
    section.appendChild(iterations);
    section.appendChild(el("p", { class: "note" }, "Pairs: " + (ix.pair_mode === "all" ?
      "every member trains on all of an iteration's pairs (training.pairs=all)." :
      "each member trains on the pairs of its own duels (training.pairs=" + ix.pair_mode + ").")));
    if (!ix.iterations.some((it) => it.has_duels)) {
      section.appendChild(el("p", { class: "note", id: "no-duels" }, "Method " + ix.method +
        " has no duels (no combat.jsonl): its samples and pairs are shown."));
    }
    if (ix.plots.length) {
      const plots = el("details", { id: "plots", open: true }, el("summary", {}, "Plots"));
      for (const p of ix.plots) plots.appendChild(el("img", { src: p, alt: p, title: p }));
      section.appendChild(plots);
    }
    if (ix.report) {
      section.appendChild(el("details", { id: "report" }, el("summary", {}, "report.md"),
        el("pre", {}, ix.report)));
    }
    return section;
  }

  function tabs(state) {
    const nav = el("nav", { id: "tabs" });
    for (const view of ["duels", "pairs"]) {
      nav.appendChild(el("a", { href: hashOf({ view }), class: view === state.view ? "on" : "" }, view));
    }
    return nav;
  }

  function select(name, value, options, onchange) {
    const s = el("select", { id: "filter-" + name, onchange: (e) => onchange(e.target.value) });
    for (const [v, label] of options) {
      const o = el("option", { value: v }, label);
      if (String(v) === String(value || "")) o.selected = true;
      s.appendChild(o);
    }
    return el("label", {}, name + " ", s);
  }

  function filters(state, withOutcome) {
    const ix = V.index;
    const bar = el("div", { class: "filters" },
      select("iter", state.iter, [["", "all"], ...ix.iterations.map((it) => [it.iteration, it.iteration])],
        (v) => go({ iter: v, page: 0 })),
      select("member", state.member, [["", "all"], ...ix.members.map((m) => [m, m])],
        (v) => go({ member: v, page: 0 })));
    if (withOutcome) {
      bar.appendChild(select("outcome", state.outcome, [["", "any"], ...OUTCOMES.map((o) => [o, o])],
        (v) => go({ outcome: v, page: 0 })));
      for (const [key, label] of [["margin", "margin ≥ "], ["maxmargin", "margin ≤ "]]) {
        bar.appendChild(el("label", {}, label, el("input", { id: "filter-" + key, type: "number", step: "any",
          value: state[key] || "", onchange: (e) => go({ [key]: e.target.value, page: 0 }) })));
      }
    }
    return bar;
  }

  function pager(state, total) {
    const pages = Math.max(1, Math.ceil(total / LIST_ROWS));
    const page = Math.min(state.page, pages - 1);
    const nav = el("div", { class: "pager" });
    if (page > 0) nav.appendChild(el("a", { href: hashOf(Object.assign({}, state, { page: page - 1 })) }, "‹ prev"));
    nav.appendChild(el("span", { id: "page" }, " page " + (page + 1) + " of " + pages + " "));
    if (page < pages - 1) nav.appendChild(el("a", { href: hashOf(Object.assign({}, state, { page: page + 1 })) },
      "next ›"));
    return [nav, page];
  }

  // ---- duels ----
  function matchDuel(state, t, r) {
    const [, , a, b, sa, sb, outcome] = r;
    if (state.iter && String(t) !== state.iter) return false;
    if (state.member && a !== state.member && b !== state.member) return false;
    if (state.outcome) {
      const side = state.member === a ? "a" : state.member === b ? "b" : null;
      if (state.outcome === "void" ? !outcome.startsWith("void") :
        state.outcome === "won" ? !(side && outcome === side) :
          state.outcome === "lost" ? !(side && (outcome === "a" || outcome === "b") && outcome !== side) :
            outcome !== state.outcome) return false;
    }
    const margin = sa === null || sb === null ? null : Math.abs(sa - sb);
    if (state.margin && !(margin !== null && margin >= parseFloat(state.margin))) return false;
    if (state.maxmargin && !(margin !== null && margin <= parseFloat(state.maxmargin))) return false;
    return true;
  }

  function duelsView(state) {
    const view = el("section", { id: "duels" }, filters(state, true));
    const matches = [];
    for (const it of V.index.iterations) {
      it.duels.rows.forEach((r, pos) => { if (matchDuel(state, it.iteration, r)) matches.push([it, pos, r]); });
    }
    const total = V.index.iterations.reduce((n, it) => n + it.duels.count, 0);
    view.appendChild(el("p", { id: "count" }, matches.length + " of " + total + " duels match"));
    const [nav, page] = pager(state, matches.length);
    const head = ["iter", "duel", "round", "a", "b", "score a", "score b", "margin", "outcome", "prompt"];
    const table = el("table", { id: "duel-list" }, el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const [it, , r] of matches.slice(page * LIST_ROWS, (page + 1) * LIST_ROWS)) {
      const [index, round, a, b, sa, sb, outcome, preview] = r;
      const key = it.iteration + ":" + index;
      const margin = sa === null || sb === null ? null : Math.abs(sa - sb);
      table.appendChild(el("tr", { "data-duel": key, class: state.duel === key ? "on" : "" },
        el("td", {}, String(it.iteration)),
        el("td", {}, el("a", { href: hashOf(Object.assign({}, state, { duel: key })) }, "#" + index)),
        el("td", {}, String(round)), el("td", {}, a), el("td", {}, b), el("td", {}, num(sa)), el("td", {}, num(sb)),
        el("td", {}, num(margin)), el("td", { class: "outcome" }, outcome), el("td", { class: "preview" }, preview)));
    }
    // the open duel first, so that a link to one shows it at once; then the list
    if (state.duel) view.appendChild(detail("duel", state.duel, findDuel(state.duel, state.iter), renderDuel));
    view.append(nav, table);
    return view;
  }

  // where duel "T:N" (or "N" with iter=T) is: its iteration's duels and its position in the journal
  function findDuel(key, iter) {
    const [t, n] = key.includes(":") ? key.split(":") : [iter, key];
    const it = V.index.iterations.find((x) => String(x.iteration) === String(t));
    const pos = it ? it.duels.rows.findIndex((r) => String(r[0]) === String(n)) : -1;
    return pos < 0 ? null : [it.duels, pos];
  }

  // the section of one duel or pair: the chunk holding row `pos` of `listing` is loaded, then render draws the row
  function detail(kind, key, found, render) {
    const box = el("section", { id: kind, ["data-" + kind]: key }, el("p", {}, "Loading " + kind + " " + key + "…"));
    if (!found) {
      box.replaceChildren(el("p", { class: "error" }, "no " + kind + " " + key));
      return box;
    }
    const [listing, pos] = found;
    const size = V.index.page_size;
    need(listing.stem + "-p" + String(Math.floor(pos / size)).padStart(3, "0"), (rows) => {
      box.replaceChildren(...render(rows[pos % size]));
      loaded();
    });
    return box;
  }

  function response(side, member, r, score) {
    return el("div", { class: "response", id: "response-" + side },
      el("h4", {}, side.toUpperCase() + ": ", el("span", { class: "member" }, member), " · score ",
        el("span", { class: "aggregate" }, num(score)),
        " · " + r.n_tokens + " tokens, finish " + (r.finish_reason || "–") +
        (r.prompt_shortened ? " · prompt shortened" : "")),
      r.text === null ? el("p", { class: "error" }, "generation failed: " + r.error) :
        el("pre", { class: "text" }, r.text));
  }

  function distribution(raw) {
    const p = String(raw || "").trim().split(/\s+/).map(Number);
    if (p.length !== 10 || p.some((x) => !isFinite(x))) return null;
    const bars = el("span", { class: "dist", title: "P(score = 1..10): " + raw });
    const top = Math.max(...p, 1e-12); // bars relative to the likeliest score
    p.forEach((x, i) => {
      const fill = el("span", { class: "fill", "data-p": x });
      fill.style.height = Math.round(Math.min(1, Math.max(0, x / top)) * 100) + "%"; // CSSOM: the CSP allows it
      bars.appendChild(el("span", { class: "bar", title: (i + 1) + ": " + x }, fill));
    });
    return bars;
  }

  function renderDuel(d) {
    const out = [];
    out.push(el("h3", {}, "Iteration " + d.iteration + ", round " + d.round + ", duel #" + d.index + " · ",
      el("span", { class: "outcome", id: "duel-outcome" }, d.outcome), " · prompt " + d.prompt_id));
    out.push(el("pre", { class: "prompt", id: "duel-prompt" }, d.prompt));
    out.push(el("div", { class: "sides" }, response("a", d.a, d.response_a, d.score_a),
      response("b", d.b, d.response_b, d.score_b)));
    const judges = el("table", { id: "judges" }, el("tr", {}, ...["judge", "weight", "score a", "score b",
      "status a", "status b", "distribution a", "distribution b"].map((h) => el("th", {}, h))));
    const names = [...new Set(d.judgments.map((j) => j.judge))];
    for (const name of names) {
      const of = (side) => d.judgments.find((j) => j.judge === name && j.target === side) || {};
      const ja = of("a"), jb = of("b");
      const w = name in d.weights ? d.weights[name] : null;
      judges.appendChild(el("tr", { "data-judge": name }, el("td", {}, name),
        el("td", { class: "weight" }, w === null ? "not counted" : num(w)),
        el("td", { class: "score-a" }, num(ja.score)), el("td", { class: "score-b" }, num(jb.score)),
        el("td", {}, ja.status || "–"), el("td", {}, jb.status || "–"),
        el("td", {}, distribution(ja.raw) || rawText(ja.raw)), el("td", {}, distribution(jb.raw) || rawText(jb.raw))));
    }
    out.push(el("h4", {}, "Judges (aggregated: a ", num(d.score_a), ", b ", num(d.score_b), ")"), judges);
    if (d.update) {
      const up = el("table", { id: "update" });
      for (const [k, v] of Object.entries(d.update)) {
        up.appendChild(el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "number" ? num(v, 6) : String(v))));
      }
      out.push(el("h4", {}, "Reputation update"), up);
    } else {
      out.push(el("p", { class: "note" }, "No reputation update (" + d.outcome + ")."));
    }
    return out;
  }

  function rawText(raw) {
    return raw ? el("details", {}, el("summary", {}, "output"), el("pre", {}, raw)) : "–";
  }

  // ---- pairs ----
  function pairsView(state) {
    const view = el("section", { id: "pairs" }, filters(state, false));
    const matches = [];
    for (const it of V.index.iterations) {
      if (state.iter && String(it.iteration) !== state.iter) continue;
      it.pairs.rows.forEach((r, pos) => { if (!state.member || r[4] === null || r[4].includes(state.member)) matches.push([it, pos, r]); });
    }
    view.appendChild(el("p", { id: "count" }, matches.length + " pairs" +
      (state.member ? " that " + state.member + " trained on" : "")));
    const [nav, page] = pager(state, matches.length);
    const table = el("table", { id: "pair-list" }, el("tr", {}, ...["iter", "pair", "duel", "chosen", "rejected",
      "margin", "prompt"].map((h) => el("th", {}, h))));
    for (const [it, pos, r] of matches.slice(page * LIST_ROWS, (page + 1) * LIST_ROWS)) {
      const key = it.iteration + ":" + pos;
      table.appendChild(el("tr", { "data-pair": key, class: state.pair === key ? "on" : "" },
        el("td", {}, String(it.iteration)),
        el("td", {}, el("a", { href: hashOf(Object.assign({}, state, { pair: key })) }, "#" + pos)),
        el("td", {}, r[0] === null || r[0] === undefined ? "–" :
          el("a", { href: hashOf({ view: "duels", iter: it.iteration, duel: it.iteration + ":" + r[0] }) },
            "#" + r[0])),
        el("td", {}, r[1] || "–"), el("td", {}, r[2] || "–"), el("td", {}, num(r[3])),
        el("td", { class: "preview" }, r[5] ?? duelPreview(it, r[0]))));
    }
    if (state.pair) view.appendChild(detail("pair", state.pair, findPair(state.pair), renderPair));
    view.append(nav, table);
    return view;
  }

  // a duel's prompt preview, for its pair (the index keeps it once)
  function duelPreview(it, index) {
    it.byIndex = it.byIndex || new Map(it.duels.rows.map((r) => [r[0], r]));
    const row = it.byIndex.get(index);
    return row ? row[7] : "";
  }

  // pair "T:P": row P of iteration T's pairs.jsonl
  function findPair(key) {
    const [t, pos] = key.split(":").map(Number);
    const it = V.index.iterations.find((x) => x.iteration === t);
    return it && pos >= 0 && pos < it.pairs.count ? [it.pairs, pos] : null;
  }

  const content = (m) => (Array.isArray(m) ? m.map((x) => x.content).join("\n\n") : m === undefined ? null : String(m));

  function renderPair(p) {
    const out = [el("h3", {}, "Pair: iteration " + p.iteration + (p.duel_index !== undefined ? ", duel #" +
      p.duel_index : "") + " · prompt " + p.prompt_id)];
    out.push(el("pre", { class: "prompt", id: "pair-prompt" }, content(p.prompt)));
    const sides = el("div", { class: "sides" });
    for (const side of ["chosen", "rejected"]) {
      if (p[side] === undefined) continue;
      sides.appendChild(el("div", { class: "response", id: "pair-" + side }, el("h4", {}, side + ": ",
        el("span", { class: "member" }, String(p[side + "_model"] ?? "–"))), el("pre", { class: "text" },
        content(p[side]))));
    }
    out.push(sides);
    const rest = el("table", { id: "pair-fields" });
    for (const [k, v] of Object.entries(p)) {
      if (["prompt", "chosen", "rejected"].includes(k)) continue;
      rest.appendChild(el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" && v !== null ?
        JSON.stringify(v) : String(v))));
    }
    out.push(rest);
    return out;
  }
})();
