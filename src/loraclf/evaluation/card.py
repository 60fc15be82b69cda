"""The model card: ``artifact/README.md`` in the Hugging Face format (YAML metadata + Markdown).

The metadata is a ``huggingface_hub.ModelCardData``: ``base_model``, ``library_name``,
``pipeline_tag``, tags, and the test (or validation) metrics as ``EvalResult``s, from which
huggingface_hub builds the ``model-index`` the Hub shows. The text (``templates/model_card.md.j2``)
says what the model does, how to load it, what it was trained on, how well it did, where it fails,
and what it should not be used for.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from ..models.heads import HEADS
from ..models.methods import method_of
from ..tasks import task_of
from .analysis import primary_split
from .metrics import metric
from .tables import markdown_table

# The Hub files every loraclf task under text-classification (its pipeline serves them all,
# config.problem_type choosing softmax, sigmoid or no activation); the task names the model-index task.
PIPELINE_TAG = "text-classification"


def _dataset_name(config: dict, metrics: dict) -> tuple[str, Optional[str]]:
    """A readable dataset name, and its hub id when it came from the hub."""
    path = ((config.get("data") or {}).get("path") or "") if config else ""
    if path.startswith("hf:"):
        return path[3:], path[3:]
    if path:
        return Path(path).name.split(".")[0], None
    src = ((metrics.get("data") or {}).get("sources") or {}).get("train")
    return (Path(str(src)).parent.name if src else "custom"), None


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
        out.append(EvalResult(task_type=PIPELINE_TAG, task_name=task.card_task_name, dataset_type=hub or name,
                              dataset_name=name, dataset_split=split, metric_type=metric_type,
                              metric_name=metric(key).name, metric_value=round(float(value), metric(key).digits),
                              metric_args=args))
    return out


def card_data(metrics: dict, config: dict, meta: dict):
    """The card's metadata (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    name = (metrics.get("model") or {}).get("method") or meta.get("method")
    adapter = _saves_adapter(name)
    _, ds_hub = _dataset_name(config, metrics)
    results = eval_results(metrics, config)
    return ModelCardData(
        base_model=meta.get("base_model_hub_id") or (metrics.get("model") or {}).get("hub_id"),
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=["loraclf", PIPELINE_TAG] + list(task_of(metrics).card_tags) + (["lora", "peft"] if adapter else [name]),
        datasets=[ds_hub] if ds_hub else None,
        metrics=list(dict.fromkeys(r.metric_type for r in results)) or None,
        model_name=(metrics.get("run") or "loraclf-model") if results else None,
        eval_results=results or None,
    )


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("loraclf", "templates"), autoescape=False,  # Markdown
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                             undefined=jinja2.StrictUndefined)
    env.filters["code"] = lambda s: f"`{s}`"
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


def _saves_adapter(method: str) -> bool:
    m = method_of(method)
    return bool(m and m.adapters)


def _trains(method: str) -> bool:
    m = method_of(method)
    return m is None or m.trains


def _procedure_table(metrics: dict, config: dict, meta: dict, base: str) -> str:
    """Method, prompt, LoRA and training settings, parameters and time, as a setting | value table."""
    model = metrics.get("model") or {}
    method = model.get("method") or meta.get("method")
    lo, tr, d = config.get("lora") or {}, config.get("train") or {}, config.get("data") or {}
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
    if not _trains(method):
        rows.append(["training", f"none ({method})"])
    else:
        best = metrics.get("best") or {}
        rows += [["epochs (run)", f"{tr.get('epochs')} ({best.get('epochs_run', '-')})"],
                 ["batch size x grad accumulation", f"{tr.get('batch_size')} x {tr.get('grad_accum_steps')}"],
                 ["learning rate, schedule, warmup",
                  f"{tr.get('lr')}, {tr.get('scheduler')}, {tr.get('warmup_ratio')}"],
                 ["weight decay, label smoothing", f"{tr.get('weight_decay')}, {tr.get('label_smoothing')}"],
                 ["class weights", f"{tr.get('class_weights')}"],
                 ["model selection", f"best validation `{tr.get('metric')}`"
                  + (f" at step {best['step']}" if best.get("step") else "")]]
    rows += [["max length (tokens)", f"{d.get('max_length')}"], ["seed", f"{config.get('seed')}"]]
    p = metrics.get("params") or {}
    if p:
        rows.append(["trainable parameters", f"{p.get('trainable', 0):,} of {p.get('total', 0):,} "
                     f"({p.get('trainable_pct', 0):.2f}%): LoRA {p.get('lora', 0):,}, head {p.get('head', 0):,}, "
                     f"other {p.get('other', 0):,}"])
    t, env = metrics.get("timing") or {}, metrics.get("environment") or {}
    if t and _trains(method):
        rows.append(["training time", f"{t.get('train_seconds', 0):.0f} s ({t.get('train_samples_per_s', 0):.1f} "
                     f"samples/s) on {env.get('cuda_device') or env.get('device', '?')}, "
                     f"precision {env.get('precision', '?')}"])
    return markdown_table(["setting", "value"], rows)


def _eval_tables(metrics: dict, split: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The headline metrics of every split, and the task's per-label scores of `split`."""
    task = task_of(metrics)
    keys = task.headline
    rows = [[s, f"{metrics[s]['n']:,}"] + [metric(k).format(metrics[s].get(k)) for k in keys]
            for s in ("validation", "test") if metrics.get(s)]
    splits = markdown_table(["split", "texts"] + [metric(k).name for k in keys], rows) if rows else None
    return splits, (task.card_label_table(metrics, split) if split else None)


def _intro(method: str, head: str, base: str, dataset: str) -> str:
    """What the card's first sentence says the artifact is (before the task's purpose)."""
    m, h = method_of(method), HEADS.get(head)
    prompted, how = bool(h and h.prompted), h.how if h else ""
    what = m.introduce(base, prompted, how) if m else f"`{base}`"
    if _trains(method):
        return f"{what}, trained with loraclf on **{dataset}**"
    return f"{what}. loraclf evaluated it on **{dataset}**"


def card_body(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None) -> str:
    """The Markdown text of the card (below its metadata)."""
    model = metrics.get("model") or {}
    labels = metrics.get("labels") or meta.get("labels") or []
    head = meta.get("head") or "classifier"
    base = meta.get("base_model_hub_id") or model.get("hub_id") or model.get("resolved") or model.get("name")
    split = primary_split(metrics)
    d = config.get("data") or {}
    task = task_of(metrics)
    method = model.get("method") or meta.get("method")
    saves = (method_of(method).saves if method_of(method) else None)
    headline = None
    if split:
        m = metrics[split]
        headline = {"n": f"{m['n']:,}", "text": " and ".join(
            f"{metric(k).name} **{metric(k).format(m.get(k))}**" for k in task.headline[:2])}
    eval_table, per_label_table = _eval_tables(metrics, split)
    env = _environment()
    dataset = _dataset_name(config, metrics)[0]
    return env.get_template("model_card.md.j2").render(
        run=metrics.get("run") or "model", base=base, task=env.get_template(task.card_template).module,
        intro=_intro(method, head, base, dataset), task_state=meta.get("task_state") or {},
        prompted=bool(HEADS.get(head) and HEADS[head].prompted),
        saves_adapter=_saves_adapter(method), saves_checkpoint=saves is not None and not _saves_adapter(method),
        dataset=dataset, labels=labels, split=split, headline=headline,
        labels_table=markdown_table(["id", "label"], [[str(i), f"`{x}`"] for i, x in enumerate(labels)]),
        text_column=d.get("text_column", "text"), label_column=d.get("label_column", "label"),
        data_table=_data_table(metrics), notes=(metrics.get("data") or {}).get("notes") or [],
        procedure_table=_procedure_table(metrics, config, meta, base), eval_table=eval_table,
        per_label_table=per_label_table, findings=findings or [], max_length=d.get("max_length"),
        versions=meta.get("versions") or {})


def build_card(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None):
    """The model card as a ``huggingface_hub.ModelCard`` (``str(card)`` is the README.md text)."""
    from huggingface_hub import ModelCard

    data = card_data(metrics, config, meta)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(metrics, config, meta, findings).rstrip()}\n")


def model_card(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None) -> str:
    """The README.md text for a run's artifact."""
    return str(build_card(metrics, config, meta, findings))
