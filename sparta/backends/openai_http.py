"""Inference against an OpenAI-compatible completions server (vLLM, SGLang, llama.cpp server, ...).

Requests carry token ids (`prompt: [ids]`), so the server reads exactly the tokens sparta encoded, special tokens
split, nothing re-templated. Generation works with any such server. Log-probabilities use two vLLM extensions,
both keyed by token id, never by decoded text: the judge's next-token log-probs of exactly the score tokens
(`logprob_token_ids`, one request per position read), and continuation log-likelihoods (`prompt_logprobs`).

The API key comes from the environment variable `http.api_key_env` at request time; it is never stored on the
backend, written to a run directory or logged. Connection errors, timeouts, 429 and 5xx are retried with
exponential backoff; what still fails, or a reply without the fields asked for, fails that row as data
(`Failure`): a failed generation or judgment, never a response or a score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import (
    BackendError,
    Failure,
    Generated,
    MemberModel,
    adapter_stamp,
    context_error,
    in_shard,
    load_tokenizer,
    single_base,
)

log = logging.getLogger(__name__)
RETRIED_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RequestFailed(RuntimeError):
    pass


class HTTPBackend:
    """Members' adapters are loaded into the server at run time under a new name per (member, directory, weights),
    so an iteration is never served from an earlier one's adapter; replaced names are unloaded. The server must
    read sparta's adapter directories (same machine or shared storage) and load adapters at run time (vLLM:
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). The base is the server's model `base_name`, else `http.served_base`,
    else the one model the server lists without a parent."""

    kind = "http"  # backend.kind, for messages

    def __init__(self, members: list[MemberModel], http, base_name: str | None = None, window: int | None = None):
        self.cfg, self.window = http, window or 10**9
        self.url = http.base_url.rstrip("/")
        self.base_name = base_name or http.served_base or None
        self.members: dict[str, MemberModel] = {}
        self.loaded: dict[str, str | None] = {}  # member -> served LoRA name (None: the base itself)
        self._stop_ids: dict[str, list[int]] = {}
        self.set_pool(members)

    # ---- the protocol ------------------------------------------------------------------------------

    def set_pool(self, members: list[MemberModel]) -> None:
        single_base([*self.members.values(), *members], self.kind)
        for m in members:
            name = _lora_name(m) if m.adapter_dir else None
            if m.name not in self.loaded or self.loaded[m.name] != name:
                if name is not None:
                    self._load(name, m.adapter_dir)
                old = self.loaded.get(m.name)
                self.loaded[m.name] = name
                if old is not None and old not in self.loaded.values():
                    self._unload(old)
            self.members[m.name] = m
            self._stops(m.name)  # tokenizer and stop ids loaded here, not by the request threads (racing imports)

    def _load(self, name: str, directory) -> None:
        try:
            self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(directory).resolve())})
        except RequestFailed as e:  # serving the old adapter instead would be silently wrong
            raise BackendError(f"the server at {self.url} could not load adapter {directory} ({e}); it must load "
                               "adapters at run time (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and see sparta's "
                               "run directory") from None

    def _unload(self, name: str) -> None:
        try:
            self._post("/unload_lora_adapter", {"lora_name": name})
        except RequestFailed as e:  # it only frees a slot: the run goes on
            log.warning("could not unload adapter %s: %s", name, e)

    def _served(self, member: str) -> str:
        if self.loaded.get(member):
            return self.loaded[member]
        if self.base_name is None:
            listed = self._get("/models").get("data") or []
            bases = [m["id"] for m in listed if isinstance(m, dict) and not m.get("parent")]
            if len(bases) != 1:
                raise BackendError(f"cannot tell the base model among {bases} at {self.url}: set "
                                   "backend.http.served_base")
            self.base_name = bases[0]
        return self.base_name

    def tokenizer(self, member: str):
        return load_tokenizer(self.members[member].base.source)

    def close(self) -> None:
        pass

    def _stops(self, member: str) -> list[int]:
        """End-of-turn ids: the tokenizer's and those the model's generation_config names (a server told to
        ignore that file for sampling would otherwise stop only at the tokenizer's)."""
        source = Path(self.members[member].base.source)
        if source not in self._stop_ids:  # read once per base, not per request
            eos = {self.tokenizer(member).eos_token_id}
            if (source / "generation_config.json").exists():
                found = json.loads((source / "generation_config.json").read_text()).get("eos_token_id")
                eos |= set(found if isinstance(found, list) else [found])
            self._stop_ids[source] = sorted(e for e in eos if e is not None)
        return self._stop_ids[source]

    def generate(self, members, prompts, *, max_new_tokens, temperature, top_p, batch_size, seed, progress=None,
                 min_new_tokens: int = 0, shard=None) -> list[Generated]:
        def one(i):
            error = context_error(len(prompts[i]), max_new_tokens, self.window)
            if error:
                return Generated(None, error=error)
            body = {"prompt": prompts[i], "max_tokens": max_new_tokens, "temperature": temperature,
                    "top_p": top_p if temperature > 0 else 1.0, "seed": seed + i, "min_tokens": min_new_tokens,
                    "skip_special_tokens": True, "stop_token_ids": self._stops(members[i]),
                    "return_token_ids": True}
            try:
                choice = self._complete(members[i], body)
                text, reason = choice["text"], choice.get("finish_reason") or ""
                n = len(choice["token_ids"]) if choice.get("token_ids") else len(self.tokenizer(members[i]).encode(
                    text, add_special_tokens=False))
            except (RequestFailed, KeyError, TypeError) as e:
                return Generated(None, error=f"{type(e).__name__}: {e}")
            text = text.strip()
            return Generated(text, n, reason) if text else Generated(None, n, reason, error="empty response")

        return self._map(one, len(prompts), progress, shard)

    def next_token_logprobs(self, members, prompts, token_ids, *, last, batch_size, progress=None, shard=None):
        def one(i):
            try:
                return self._position_logprobs(members[i], prompts[i], token_ids, last)
            except (RequestFailed, KeyError, TypeError, ValueError) as e:
                return Failure(f"{type(e).__name__}: {e}")

        return self._map(one, len(prompts), progress, shard)

    def grouped_next_token_logprobs(self, members, groups, token_ids, *, last, batch_size, progress=None, shard=None):
        # the server's prefix cache shares the groups' prefixes: ask prompt by prompt (a shard: whole groups)
        mine = [g for g in range(len(groups)) if in_shard(g, shard)]
        flat = iter(self.next_token_logprobs([members[g] for g in mine for _ in groups[g]],
                                             [p for g in mine for p in groups[g]], token_ids, last=last,
                                             batch_size=batch_size, progress=progress))
        out: list = [None] * len(groups)
        for g in mine:
            out[g] = [next(flat) for _ in groups[g]]
        return out

    def continuation_logprobs(self, member, prefixes, continuations, *, batch_size, progress=None, shard=None):
        mine = [j for j in range(len(prefixes)) if in_shard(j, shard)]  # a shard: whole prefixes
        jobs = [(prefixes[j], option) for j in mine for option in continuations[j]]

        def one(j):
            prefix, option = jobs[j]
            try:
                lps = self._prompt_logprobs(member, prefix + option, 0)
                return sum(_logprob(lps[len(prefix) + k], t) for k, t in enumerate(option))
            except (RequestFailed, KeyError, TypeError, ValueError) as e:
                return Failure(f"{type(e).__name__}: {e}")

        flat = iter(self._map(one, len(jobs), progress))
        out: list = [None] * len(prefixes)
        for j in mine:
            out[j] = [next(flat) for _ in continuations[j]]
        return out

    # ---- requests ----------------------------------------------------------------------------------

    def _position_logprobs(self, member, prompt, token_ids, last):
        """log p(c | prompt[:k]) for the last `last` positions k, exact for every candidate c: one request per
        position, asking for exactly those tokens' log-probs (vLLM's `logprob_token_ids`)."""
        out = []
        for k in range(len(prompt) - last + 1, len(prompt) + 1):
            body = {"prompt": prompt[:k], "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                    "logprob_token_ids": list(token_ids), "return_tokens_as_token_ids": True}
            logprobs = self._complete(member, body).get("logprobs") or {}
            top = (logprobs.get("top_logprobs") or [None])[0]
            if not isinstance(top, dict):
                raise RequestFailed("the server returned no top_logprobs (needs vLLM's logprob_token_ids)")
            known = {int(key.split(":", 1)[1]): value for key, value in top.items() if key.startswith("token_id:")}
            missing = [c for c in token_ids if c not in known]
            if missing:
                raise RequestFailed(f"the server left out the log-probs of tokens {missing[:5]} "
                                    "(needs vLLM's logprob_token_ids)")
            out.append([known[c] for c in token_ids])
        return out

    def _prompt_logprobs(self, member, ids, k):
        body = {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k}
        lps = self._complete(member, body).get("prompt_logprobs")
        if not isinstance(lps, list) or len(lps) != len(ids):
            raise RequestFailed(f"the server returned no prompt_logprobs for {len(ids)} tokens (vLLM's extension; "
                                "is this a vLLM server?)")
        return lps

    def _complete(self, member, body) -> dict:
        payload = {"model": self._served(member), **body}
        reply = self._post("/completions", payload)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise RequestFailed(f"malformed reply from {self.url}/completions: {str(reply)[:200]}")
        return choices[0]

    def _get(self, path: str) -> dict:
        return self._post(path, None)

    def _post(self, path: str, payload: dict | None) -> dict:
        """POST `payload` (None: GET) with retries; the reply's JSON (or its text, for plain-text endpoints)."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(payload).encode() if payload is not None else None
        last = None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
            try:
                request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                                 method="POST" if data is not None else "GET")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as r:
                    raw = r.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:  # some endpoints (vLLM's adapter loading) answer in plain text
                    return {"text": raw.decode(errors="replace")}
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {self.url}{path}: {e.read()[:300].decode(errors='replace')}"
                if e.code not in RETRIED_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{self.url}{path} unreachable or too slow ({type(e).__name__}: {e})"
                self._unanswered(last)
        log.error("request failed after %d attempt(s): %s", attempt + 1, last)
        raise RequestFailed(last)

    def _unanswered(self, error: str) -> None:
        """A request timed out or found no server. Someone else's server: retried, then the row fails (as data).
        A server sparta runs checks itself here (VLLMBackend: raises when it died or hung)."""

    def _map(self, fn, n: int, progress, shard=None):
        """fn(i) for every row i of the shard (seeds follow i, so sharding changes nothing); None elsewhere."""
        rows = [i for i in range(n) if in_shard(i, shard)]
        out: list = [None] * n
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            for i, result in zip(rows, pool.map(fn, rows)):
                out[i] = result
                if progress:
                    progress(1)
        return out


def _lora_name(m: MemberModel) -> str:
    """A new name per (member, directory, weights): servers cache adapters by name."""
    directory, written = adapter_stamp(m.adapter_dir)
    return f"{m.name}-{hashlib.sha256(f'{directory}:{written}'.encode()).hexdigest()[:10]}"


def _logprob(entry: dict, token: int) -> float:
    """The log-prob of `token` in one position of vLLM's prompt_logprobs ({token id: {logprob, ...}})."""
    if entry is None or str(token) not in entry:
        raise ValueError(f"token {token} is missing from the server's prompt_logprobs")
    return entry[str(token)]["logprob"]
