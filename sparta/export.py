"""`sparta export`: one member of a run, as it stood after an iteration, out of the run directory.

    OUT/adapter_config.json, adapter_model.safetensors   the member's LoRA adapter (PEFT), whose
                                base_model_name_or_path is a base a user can load (a local directory or a hub id)
    OUT/config.json, model.safetensors, tokenizer*       with merged=True instead: base + adapter merged
                                (peft's merge_and_unload), a plain transformers model with its tokenizer
    OUT/README.md               the model card (huggingface_hub's ModelCard): base, lineage, training settings,
                                the run's evaluations of the member at that iteration with 95% intervals, citation
    OUT/pairs/                  the rows the member trained on, iterations 1..t (datasets.save_to_disk) + README.md
    OUT/sparta_export.json      what was exported: run, member, iteration, the base's spec/kind/source/fingerprint

Everything is written in a temporary directory beside OUT and swapped in whole (rundir.swap_in): a failure leaves
OUT as it was. `push_to_hub` uploads OUT with the token from HF_TOKEN, which is never written anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .eval_results import EvalFile
from .methods import method_for
from .models import ResolvedModel, default_cache_dir, resolve_adapter, resolve_model
from .records import read_jsonl, write_json_atomic
from .rundir import RunDir, swap_in

PAPER = "SPARTA ALIGNMENT: Collectively Aligning Multiple Language Models through Combat"
ARXIV = "2506.04721"
# The authors' surnames, arXiv id, title and venue, as this repository's README gives them (nothing else is assumed)
BIBTEX = """@inproceedings{jiang2025sparta,
  title         = {{SPARTA ALIGNMENT}: Collectively Aligning Multiple Language Models through Combat},
  author        = {Jiang and Ding and Feng and Durrett and Tsvetkov},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2506.04721},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2506.04721}
}"""
APA = f"Jiang, Ding, Feng, Durrett, Tsvetkov (2025). {PAPER}. NeurIPS 2025. arXiv:{ARXIV}."
MANIFEST = "sparta_export.json"


class ExportError(RuntimeError):
    """An export that cannot be made as asked; the message says why and what exists instead."""


@dataclass(frozen=True)
class Export:
    """What `write_export` writes: a member of a run after iteration t (0: its starting point)."""

    run: Path
    config: RunConfig
    member: str
    iteration: int
    base: ResolvedModel
    adapter: Path | None  # None: a fresh LoRA adapter (B = 0), i.e. the base model itself
    start: str  # where the member started: "expert recipe X", "adapter DIR", "a fresh adapter"
    chosen: dict | None = None  # --member best: the task, split, metric and every member's score
    evaluations: list[EvalFile] = field(default_factory=list)  # the run's evaluation files of this member at t

    @property
    def method(self) -> str:
        return self.config.method


def plan(root: Path, member: str, task: str | None = None, iteration: int | None = None,
         metric: str | None = None) -> Export:
    """Which member at which iteration, its base and adapter, and the evaluations to report."""
    root = Path(root)
    run = RunDir(root)
    config = run.config()
    members = [m.name for m in config.pool.members]
    finished = run.done_iterations()
    if iteration is None:
        iteration = finished[-1] if finished else 0
    elif iteration < 0 or (iteration and iteration not in finished):
        raise ExportError(f"iteration {iteration} of {root} has not finished (finished: "
                          f"{', '.join(map(str, finished)) or 'none'}; 0 = the members' starting adapters)")
    chosen = None
    if member == "best":
        if not task:
            raise ExportError("--member best needs --task: the member with the best primary metric on its dev split")
        member, chosen = best_member(run, iteration, task, members, metric)
    elif member not in members:
        raise ExportError(f"no member {member!r} in {root} (members: {', '.join(members)}; or 'best' with --task)")
    spec = next(m for m in config.pool.members if m.name == member)
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    base = resolve_model(spec.model or config.pool.base, cache)
    start = (f"expert recipe {spec.expert!r}" if spec.expert else f"adapter {spec.adapter}" if spec.adapter
             else "a fresh LoRA adapter")
    adapter = run.adapter_dir(iteration, member) if iteration else _initial_adapter(config, spec, base, cache)
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        raise ExportError(f"member {member!r} after iteration {iteration}: no adapter at {adapter}")
    return Export(root, config, member, iteration, base, adapter, start, chosen,
                  member_evaluations(run, iteration, member))


def _initial_adapter(config: RunConfig, spec, base: ResolvedModel, cache: Path) -> Path | None:
    """The member's adapter before iteration 1: its own, its (cached) expert, or None (fresh: the base itself)."""
    if spec.adapter:
        return resolve_adapter(spec.adapter)
    if not spec.expert:
        return None
    from .backends.hf import ModelStore
    from .experts import build_experts

    # the run's own lookup: cached by (base, recipe, settings, seed); rebuilt the same way if the cache lost it
    built = build_experts(base, [spec.expert], cache, config.pool.lora, config.pool.experts, config.seed,
                          store=lambda: ModelStore.configured(config.model))
    return built[spec.expert]["dir"]


def best_member(run: RunDir, t: int, task: str, members: list[str], metric: str | None = None) -> tuple[str, dict]:
    """The member with the highest `metric` (default: the primary one) on the run's dev evaluation of `task` after
    iteration t (the paper selects on dev); ties go to the first in pool order."""
    path = run.evaluation(t, task, "dev")
    if not path.exists():
        have = [str(p.relative_to(run.root)) for p in run.evaluations()]
        raise ExportError(f"--member best: no dev evaluation of {task!r} after iteration {t} ({path} is missing); "
                          f"the run has: {', '.join(have) or 'no evaluation files'}. Make it with "
                          f"`sparta eval {run.root} --task {task} --split dev --iteration {t}`")
    results = EvalFile.read(path).results
    pool = [m for m in members if m in results]
    metric = metric or (results[pool[0]].primary if pool else None)
    lacking = [m for m in pool if metric not in results[m].metrics]
    if lacking:
        raise ExportError(f"--metric {metric}: {path} has no such metric for {', '.join(lacking)}; it has "
                          f"{', '.join(sorted(results[lacking[0]].metrics))}")
    scores = {m: results[m].metrics[metric].value for m in pool}
    scored = {m: v for m, v in scores.items() if not math.isnan(v)}
    if not scored:
        raise ExportError(f"--member best: {path} scores no member of the pool ({', '.join(members)})")
    best = max(scored, key=lambda m: (scored[m], -members.index(m)))
    return best, {"task": task, "split": "dev", "iteration": t, "metric": metric, "scores": scores,
                  "file": str(path)}


def member_evaluations(run: RunDir, t: int, member: str) -> list[EvalFile]:
    """The run's evaluation files after iteration t that score `member` (as a pool member)."""
    files = [EvalFile.read(p) for p in run.evaluations() if p.parent.name == f"iter_{t:02d}"]
    return [f for f in files if member in f.results and member not in f.outside()]


def trained_rows(export: Export) -> list[dict]:
    """The rows the member trained on in iterations 1..t, as the run's method picked them from pairs.jsonl."""
    run, method = RunDir(export.run), method_for(export.config)
    return [row for t in range(1, export.iteration + 1) for row in method.rows_for(export.member,
                                                                                  read_jsonl(run.pairs(t)))]


# ---- writing ---------------------------------------------------------------------------------------------------


def write_export(export: Export, out: Path, merged: bool = False, force: bool = False) -> Path:
    """Write the export to `out`, whole or not at all (built beside it, then swapped in)."""
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    if not merged and export.adapter is None:
        raise ExportError(f"member {export.member!r} at iteration {export.iteration} is a fresh LoRA adapter (B = 0): "
                          f"it is the base model {export.base.spec!r} itself ({export.base.source}); "
                          "pass --merged to export that model, or choose an iteration >= 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if merged:
            _write_merged(export, tmp)
        else:
            _write_adapter(export, tmp)
        rows = trained_rows(export)
        if rows:
            _write_pairs(export, rows, tmp / "pairs")
        model_card(export, merged, len(rows)).save(tmp / "README.md")
        write_json_atomic(tmp / MANIFEST, manifest(export, merged, len(rows)))
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def base_reference(base: ResolvedModel) -> str:
    """What `from_pretrained` loads the base from: the hub id, or the local directory sparta resolved it to."""
    return base.source


def _write_adapter(export: Export, directory: Path) -> None:
    """The adapter's files, with base_model_name_or_path set to the base a user can load."""
    for path in sorted(export.adapter.iterdir()):
        if path.is_file() and path.name != "README.md":
            shutil.copy2(path, directory / path.name)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_reference(export.base)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_merged(export: Export, directory: Path) -> None:
    """Base + adapter merged in fp32, saved in the base's own dtype, with the base's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = base_reference(export.base)
    if export.base.kind == "random":
        raise ExportError(f"{export.base.spec!r} has no weights on disk (random:); --merged cannot save it")
    from transformers import AutoConfig

    saved_dtype = AutoConfig.from_pretrained(source).dtype  # the base's own (None: fp32)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if export.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(export.adapter)).merge_and_unload()
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    if saved_dtype is not None and saved_dtype != torch.float32:
        model = model.to(saved_dtype)
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(source).save_pretrained(str(directory))


def _write_pairs(export: Export, rows: list[dict], directory: Path) -> None:
    """The rows as a datasets Dataset (save_to_disk) with a DatasetCard. Columns whose values are mappings keyed by
    member names (judge_scores, weights, ratings_before/after) are JSON text: Arrow would turn them into structs
    with every member's key, None where a row lacks it. decode_row gives back the row as pairs.jsonl has it."""
    from datasets import Dataset
    from huggingface_hub import DatasetCard, DatasetCardData

    mapped = sorted({k for row in rows for k, v in row.items() if isinstance(v, dict)})
    data = Dataset.from_list([{k: json.dumps(v) if k in mapped else v for k, v in row.items()} for row in rows])
    with _quiet_datasets():
        data.save_to_disk(str(directory))
    card = DatasetCard.from_template(
        DatasetCardData(pretty_name=f"{export.member} training rows (sparta run {export.run.name})",
                        tags=["sparta", "dpo", "preference"]),
        pretty_name=f"{export.member}'s training rows, iterations 1-{export.iteration}",
        dataset_summary=(f"The {len(rows)} rows member `{export.member}` was trained on in iterations 1 to "
                         f"{export.iteration} of a sparta run (method `{export.method}`, "
                         f"training.pairs `{export.config.training.pairs}`), as in the run's iter_NN/pairs.jsonl."),
        dataset_structure=(f"trl's conversational preference format (prompt, chosen, rejected) plus sparta's metadata "
                           f"columns; {', '.join(mapped) or 'no column'} hold(s) JSON text (mappings keyed by member "
                           "name). Load with `datasets.load_from_disk(DIR)`; `json.loads` those columns to get each "
                           "row as pairs.jsonl has it."),
        citation_bibtex=f"```bibtex\n{BIBTEX}\n```")
    card.save(directory / "README.md")
    (directory / "json_columns.json").write_text(json.dumps(mapped) + "\n")


@contextmanager
def _quiet_datasets():
    """No progress bar from datasets (cli is the only module that draws progress)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def decode_row(row: dict, directory: Path) -> dict:
    """A row of an exported pairs dataset as pairs.jsonl has it (the JSON-text columns parsed)."""
    mapped = set(json.loads((Path(directory) / "json_columns.json").read_text()))
    return {k: json.loads(v) if k in mapped else v for k, v in row.items()}


def manifest(export: Export, merged: bool, rows: int) -> dict:
    b = export.base
    return {"run": str(export.run), "member": export.member, "iteration": export.iteration, "method": export.method,
            "merged": merged, "adapter": str(export.adapter) if export.adapter else None, "start": export.start,
            "base": {"spec": b.spec, "kind": b.kind, "source": b.source, "fingerprint": b.fingerprint},
            "chosen": export.chosen, "training_rows": rows,
            "evaluations": [f"{f.task}-{f.split}" for f in export.evaluations]}


# ---- the model card ---------------------------------------------------------------------------------------------


def model_card(export: Export, merged: bool, rows: int):
    """huggingface_hub's model card (its default template), filled from the run."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    b, c = export.base, export.config
    name = f"{export.member}-iter{export.iteration:02d}" + ("-merged" if merged else "")
    results = [EvalResult(task_type="text-generation", dataset_type=f.task, dataset_name=f.task,
                          dataset_split=f.split, metric_type=r.primary, metric_name=f"{r.primary} (primary)",
                          metric_value=r.primary_metric.value,
                          metric_config=f"95% bootstrap CI [{r.primary_metric.ci95[0]}, {r.primary_metric.ci95[1]}], "
                                        f"n={r.primary_metric.n}")
               for f in export.evaluations for r in [f.results[export.member]]
               if not math.isnan(r.primary_metric.value)]
    data = ModelCardData(model_name=name, library_name="transformers" if merged else "peft",
                         base_model=b.source if b.kind == "hub" else None,
                         tags=["sparta", "dpo", "lora", f"method-{export.method}"] + ([] if merged else ["peft"]),
                         eval_results=results or None)
    return ModelCard.from_template(
        data, model_id=name,
        model_summary=(f"Member `{export.member}` of a sparta run after iteration {export.iteration} "
                       f"(method `{export.method}`){' merged into its base' if merged else ', as a LoRA adapter'}."),
        model_description=_lineage(export, rows), model_type="causal language model"
        + ("" if merged else " (LoRA adapter)"), base_model=_base_text(b), paper=f"https://arxiv.org/abs/{ARXIV}",
        repo="sparta (this repository's implementation of the paper)", get_started_code=_usage(export, merged),
        training_data=_training_data(export, rows), training_regime=_settings(c), results=_results_table(export),
        testing_metrics="Each task's metrics as sparta computes them; `*` marks the primary metric. Intervals are "
                        "95% percentile-bootstrap intervals of the mean over the evaluated examples.",
        citation_bibtex=f"```bibtex\n{BIBTEX}\n```", citation_apa=APA)


def _base_text(b: ResolvedModel) -> str:
    return f"`{b.spec}` ({b.kind}; loaded from `{b.source}`; fingerprint `{b.fingerprint}`)"


def _lineage(export: Export, rows: int) -> str:
    lines = [f"- **Run:** `{export.run}`", f"- **Method:** `{export.method}`",
             f"- **Started from:** {export.start}",
             f"- **Iterations trained:** {export.iteration} of {export.config.iterations}"
             + (f" ({rows} training rows in all)" if export.iteration else " (none: the starting point)"),
             f"- **Base model:** {_base_text(export.base)}"]
    if export.chosen:
        ch = export.chosen
        scores = ", ".join(f"{m} {v:.4f}" for m, v in ch["scores"].items())
        lines.append(f"- **Chosen as:** the best member on {ch['task']} ({ch['split']}, metric "
                     f"{ch['metric']}) after iteration {ch['iteration']}: {scores}")
    return "\n".join(lines)


def _usage(export: Export, merged: bool) -> str:
    source = base_reference(export.base)
    if merged:
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoModelForCausalLM.from_pretrained(\"PATH_OR_REPO\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"PATH_OR_REPO\")\n```")
    where = ("a hub id" if export.base.kind == "hub" else
             f"a local directory made by sparta from the spec `{export.base.spec}`; on another machine, make it "
             "with `python -c \"from sparta.models import resolve_model; "
             f"print(resolve_model('{export.base.spec}').source)\"` and pass that path as the base")
    return (f"The adapter's `base_model_name_or_path` is `{source}` ({where}).\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n\n"
            f"base = AutoModelForCausalLM.from_pretrained(\"{source}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{source}\")\n"
            "model = PeftModel.from_pretrained(base, \"PATH_OR_REPO\")\n```")


def _training_data(export: Export, rows: int) -> str:
    c = export.config
    if not export.iteration:
        return "None: this is the member before iteration 1."
    return (f"Prompts from `{c.data.prompts}`, {c.data.prompts_per_iteration} per iteration; the rows this member "
            f"trained on ({rows}, training.pairs `{c.training.pairs}`) are in `pairs/` "
            "(datasets.load_from_disk).")


def _settings(c: RunConfig) -> str:
    t, lora = c.training, c.pool.lora
    r = c.reputation
    return "as in the run's config.yaml:\n\n" + "\n".join([
        f"- method `{c.method}`, {c.iterations} iterations, seed {c.seed}",
        f"- DPO: beta {t.beta}, lr {t.lr}, {t.epochs} epoch(s), batch {t.batch_size} (micro {t.micro_batch_size}), "
        f"warmup {t.warmup_ratio}, max length {t.max_length}, max grad norm {t.max_grad_norm}, pairs `{t.pairs}`",
        f"- LoRA: r {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}, all linear layers",
        f"- generation: {c.generation.max_new_tokens} new tokens, temperature {c.generation.temperature}, "
        f"top-p {c.generation.top_p}; judging `{c.judge.mode}`",
        f"- arena: k {c.arena.k}, alpha {c.arena.alpha}; reputation: weighting `{r.weighting}`, initial `{r.initial}`",
        f"- precision `{c.model.dtype}`",
    ])


def _results_table(export: Export) -> str:
    if not export.evaluations:
        return (f"The run has no evaluation of `{export.member}` after iteration {export.iteration} "
                "(`sparta eval RUN --task T --iteration N` makes one).")
    lines = ["| task | split | metric | value | 95% CI | n | failed |", "|---|---|---|---|---|---|---|"]
    for f in export.evaluations:
        r = f.results[export.member]
        for metric, m in r.metrics.items():
            mark = "*" if metric == r.primary else ""
            lines.append(f"| {f.task} | {f.split} | {metric}{mark} | {m.value:.4f} | [{m.ci95[0]:.4f}, "
                         f"{m.ci95[1]:.4f}] | {m.n} | {m.failed} |")
    return "\n".join(lines)


# ---- the hub ----------------------------------------------------------------------------------------------------


def push_to_hub(out: Path, repo: str, private: bool = False) -> str:
    """Upload the export to `repo` (created if needed) with the token in HF_TOKEN; the URL of the commit. A failure
    says so without the token, and leaves the local export as it is."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ExportError(f"--push-to-hub {repo}: set HF_TOKEN in the environment (the local export at {out} is "
                          "complete)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo, folder_path=str(out), commit_message="sparta export")
    except Exception as e:  # offline, no access, a bad name: say so, never with the token
        reason = f"{type(e).__name__}: {e}".replace(token, "***")
        raise ExportError(f"--push-to-hub {repo} failed ({reason}); the local export at {out} is complete: push it "
                          f"later with `hf upload {repo} {out}`") from None
    return str(getattr(info, "commit_url", info))


__all__ = ["Export", "ExportError", "best_member", "decode_row", "plan", "push_to_hub",
           "trained_rows", "write_export"]
