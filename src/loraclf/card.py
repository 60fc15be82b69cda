"""The model card: ``artifact/README.md`` in the Hugging Face format (YAML metadata + Markdown).

The metadata block carries ``base_model``, ``library_name``, ``pipeline_tag`` and a
``model-index`` with the test (or validation) metrics, so the Hub shows them when the artifact is
uploaded; the text says what the model does, how to load it, what it was trained on, how well it
did, where it fails, and what it should not be used for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from .analysis import primary_split

_HEADLINE = (("accuracy", "Accuracy", None), ("macro_f1", "Macro F1", "macro"),
             ("weighted_f1", "Weighted F1", "weighted"))


def _dataset_name(config: dict, metrics: dict) -> tuple[str, Optional[str]]:
    """A readable dataset name, and its hub id when it came from the hub."""
    path = ((config.get("data") or {}).get("path") or "") if config else ""
    if path.startswith("hf:"):
        return path[3:], path[3:]
    if path:
        return Path(path).name.split(".")[0], None
    src = ((metrics.get("data") or {}).get("sources") or {}).get("train")
    return (Path(str(src)).parent.name if src else "custom"), None


def _metadata(metrics: dict, config: dict, meta: dict) -> dict:
    method = (metrics.get("model") or {}).get("method") or meta.get("method")
    hub = meta.get("base_model_hub_id") or (metrics.get("model") or {}).get("hub_id")
    md: dict = {}
    if hub:
        md["base_model"] = hub
    md["library_name"] = "peft" if method == "lora" else "transformers"
    md["pipeline_tag"] = "text-classification"
    md["tags"] = ["loraclf", "text-classification"] + (["lora", "peft"] if method == "lora" else [method])
    ds_name, ds_hub = _dataset_name(config, metrics)
    if ds_hub:
        md["datasets"] = [ds_hub]
    md["metrics"] = ["accuracy", "f1"]
    split = primary_split(metrics)
    if split:
        m = metrics[split]
        results = []
        for key, name, avg in _HEADLINE:
            entry = {"type": "accuracy" if key == "accuracy" else "f1", "value": round(float(m[key]), 4), "name": name}
            if avg:
                entry["args"] = {"average": avg}
            results.append(entry)
        if m.get("roc_auc") is not None:
            results.append({"type": "roc_auc", "value": round(float(m["roc_auc"]), 4), "name": "ROC-AUC"})
        ds = {"name": ds_name, "type": ds_hub or ds_name, "split": split}
        md["model-index"] = [{"name": metrics.get("run") or "loraclf-model", "results": [{
            "task": {"type": "text-classification", "name": "Text Classification"},
            "dataset": ds, "metrics": results}]}]
    return md


def _table(rows: list[list[str]]) -> str:
    rows = [[c.replace("|", "\\|") for c in r] for r in rows]  # a label may contain the column separator
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def model_card(metrics: dict, config: dict, meta: dict, findings: Optional[list[str]] = None) -> str:
    """The README.md text for a run's artifact."""
    model = metrics.get("model") or {}
    labels = metrics.get("labels") or meta.get("labels") or []
    method = model.get("method") or meta.get("method")
    base = meta.get("base_model_hub_id") or model.get("hub_id") or model.get("resolved") or model.get("name")
    run = metrics.get("run") or "model"
    ds_name, _ = _dataset_name(config, metrics)
    d = config.get("data") or {}
    lo = config.get("lora") or {}
    tr = config.get("train") or {}
    p = metrics.get("params") or {}
    split = primary_split(metrics)
    front = yaml.safe_dump(_metadata(metrics, config, meta), sort_keys=False, allow_unicode=True).strip()
    out = ["---", front, "---", ""]
    head = meta.get("head") or "classifier"
    prompted = head != "classifier"  # decoders that answer a prompt (label words or generation)
    how = {"verbalizer": "scores each label's word(s) as the next tokens after a prompt",
           "generate": "generates an answer to a prompt, parsed into a label"}.get(head, "")
    if method == "zero-shot":
        intro = (f"This is `{base}` used zero-shot as a classifier: nothing was trained; it {how}. loraclf "
                 f"evaluated it on **{ds_name}**")
    elif method == "lora" and prompted:
        intro = f"This is a LoRA adapter for the causal LM `{base}` that {how}, trained with loraclf on **{ds_name}**"
    else:
        what = {"lora": f"a LoRA adapter (with its trained classification head) for `{base}`",
                "head": f"a classification head on a frozen `{base}`",
                "full": f"a fully fine-tuned `{base}`"}.get(method, f"`{base}`")
        intro = f"This is {what}, trained with loraclf on **{ds_name}**"
    out += [f"# {run}", "",
            f"{intro}, to classify text into {len(labels)} labels: " + ", ".join(f"`{x}`" for x in labels) + ".", ""]
    if split:
        m = metrics[split]
        out += [f"On the {split} split ({m['n']:,} texts) it reaches accuracy **{m['accuracy']:.4f}** and "
                f"macro-F1 **{m['macro_f1']:.4f}**.", ""]

    out += ["## Labels", "", _table([["id", "label"]] + [[str(i), f"`{x}`"] for i, x in enumerate(labels)]), ""]

    out += ["## How to use", "", "With loraclf:", "", "```python", "import loraclf", "",
            'clf = loraclf.load("path/to/this/folder")', 'clf.predict(["your text here"])        # label names',
            'clf.predict_proba(["your text here"])  # probabilities, columns = clf.labels', "```", ""]
    if prompted:
        out += ["The prompt template and the label words are in `loraclf.json`; loraclf applies them (and the "
                "chat template) for you." + (" The adapter is a standard PEFT LoRA adapter of the causal LM."
                                            if method == "lora" else ""), ""]
    elif method == "lora":
        out += ["With plain transformers and PEFT (the label names are in `config.json`):", "", "```python",
                "from peft import PeftModel",
                "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer", "",
                'path = "path/to/this/folder"', "config = AutoConfig.from_pretrained(path)",
                f'base = AutoModelForSequenceClassification.from_pretrained("{base}", config=config)',
                "model = PeftModel.from_pretrained(base, path).eval()",
                "tok = AutoTokenizer.from_pretrained(path)",
                'logits = model(**tok(["your text here"], return_tensors="pt")).logits',
                "print(model.config.id2label[logits.argmax(-1).item()])", "```", ""]
    elif method in ("head", "full"):
        out += ["With plain transformers:", "", "```python",
                "from transformers import pipeline", "",
                'clf = pipeline("text-classification", model="path/to/this/folder")',
                'clf("your text here")', "```", ""]

    data = metrics.get("data") or {}
    sizes = data.get("sizes") or {}
    out += ["## Training data", "",
            f"Dataset: **{ds_name}**, text column `{d.get('text_column', 'text')}`, label column "
            f"`{d.get('label_column', 'label')}`.", ""]
    if sizes:
        tl = data.get("token_lengths") or {}
        rows = [["split", "texts", "tokens: median", "p95", "max", "truncated"]]
        for s, n in sizes.items():
            t = tl.get(s) or {}
            rows.append([s, f"{n:,}", f"{t.get('median', float('nan')):.0f}" if t else "-",
                         f"{t.get('p95', float('nan')):.0f}" if t else "-", f"{t.get('max', '-')}",
                         f"{t.get('truncated', '-')}"])
        out += [_table(rows), ""]
    for note in data.get("notes") or []:
        out.append(f"- {note}")
    if data.get("notes"):
        out.append("")

    out += ["## Training procedure", ""]
    hp = [["setting", "value"], ["method", f"`{method}`"], ["base model", f"`{base}`"], ["head", f"`{head}`"]]
    prompt = meta.get("prompt") or {}
    if prompt.get("template"):
        hp.append(["prompt", "`" + " ".join(str(prompt["template"]).split()) + "`"])
    if prompt.get("label_words"):
        hp.append(["label words", "; ".join(f"`{k}`: {', '.join(map(str, v if isinstance(v, list) else [v]))}"
                                           for k, v in prompt["label_words"].items())])
    if method == "lora":
        hp += [["LoRA rank r / alpha / dropout", f"{lo.get('r')} / {lo.get('alpha')} / {lo.get('dropout')}"],
               ["target modules", ", ".join(f"`{x}`" for x in (model.get("target_modules") or []))],
               ["modules trained fully and saved", ", ".join(f"`{x}`" for x in (model.get("modules_to_save") or []))]]
    if method == "zero-shot":
        hp.append(["training", "none (zero-shot)"])
    else:
        best = metrics.get("best") or {}
        hp += [["epochs (run)", f"{tr.get('epochs')} ({best.get('epochs_run', '-')})"],
               ["batch size x grad accumulation", f"{tr.get('batch_size')} x {tr.get('grad_accum_steps')}"],
               ["learning rate, schedule, warmup", f"{tr.get('lr')}, {tr.get('scheduler')}, {tr.get('warmup_ratio')}"],
               ["weight decay, label smoothing", f"{tr.get('weight_decay')}, {tr.get('label_smoothing')}"],
               ["class weights", f"{tr.get('class_weights')}"],
               ["model selection", f"best validation `{tr.get('metric')}`"
                + (f" at step {best['step']}" if best.get("step") else "")]]
    hp += [["max length (tokens)", f"{d.get('max_length')}"], ["seed", f"{config.get('seed')}"]]
    if p:
        hp.append(["trainable parameters", f"{p.get('trainable', 0):,} of {p.get('total', 0):,} "
                   f"({p.get('trainable_pct', 0):.2f}%): LoRA {p.get('lora', 0):,}, head {p.get('head', 0):,}, "
                   f"other {p.get('other', 0):,}"])
    t = metrics.get("timing") or {}
    env = metrics.get("environment") or {}
    if t and method != "zero-shot":
        hp.append(["training time", f"{t.get('train_seconds', 0):.0f} s "
                   f"({t.get('train_samples_per_s', 0):.1f} samples/s) "
                   f"on {env.get('cuda_device') or env.get('device', '?')}, precision {env.get('precision', '?')}"])
    out += [_table(hp), ""]

    out += ["## Evaluation", ""]
    rows = [["split", "texts", "accuracy", "macro-F1", "weighted-F1", "macro recall", "ROC-AUC", "ECE"]]
    for s in ("validation", "test"):
        m = metrics.get(s)
        if m:
            rows.append([s, f"{m['n']:,}", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['weighted_f1']:.4f}",
                         f"{m['macro_recall']:.4f}", "-" if m.get("roc_auc") is None else f"{m['roc_auc']:.4f}",
                         f"{m['ece']:.4f}"])
    if len(rows) > 1:
        out += [_table(rows), ""]
    if split:
        pc = metrics[split].get("per_class") or {}
        rows = [["label", "precision", "recall", "F1", "support"]]
        rows += [[f"`{c}`", f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", f"{v['support']:,}"]
                 for c, v in pc.items()]
        out += [f"Per label ({split}):", "", _table(rows), ""]
    if findings:
        out += ["### Where it fails", ""] + [f"- {f}" for f in findings] + [""]
        out += ["The run directory's `report.html` has the plots and the most confident mistakes.", ""]

    out += ["## Intended use and limitations", "",
            f"- Intended for classifying texts like those in {ds_name} into the {len(labels)} labels above. "
            "It always answers with one of these labels, even for texts that fit none of them; use the "
            "probabilities (and a threshold) to abstain.",
            "- Accuracy was measured on the evaluation splits above; texts from another domain, period, "
            "language or style can score much lower. Check it on your own data before relying on it.",
            f"- Inputs longer than {d.get('max_length')} tokens are truncated: only their beginning is read.",
            "- Confidence is not certainty: see the ECE above and the reliability diagram in the report.",
            "- It inherits the biases of its base model and of its training data. Do not use it alone for "
            "decisions that affect people (moderation, hiring, credit, health) without human review.", ""]
    v = meta.get("versions") or {}
    if v:
        out += ["## Framework versions", ""] + [f"- {k} {val}" for k, val in v.items()] + [""]
    return "\n".join(out)
