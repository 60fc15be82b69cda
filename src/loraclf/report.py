"""Run reports: ``plots/*.png``, the error analysis in ``metrics.json``, a self-contained
``report.html`` and the artifact's model card, all made from a finished run directory after
training (nothing here runs during training). Also the comparison report of several runs.

Everything is read from the run directory (``metrics.json``, ``history.jsonl``,
``predictions/<split>.csv``, ``config.yaml``), so ``loraclf report <run>`` can regenerate it at
any time, on any machine, without the model or the data.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import analysis as an
from .errors import LoraclfError

log = logging.getLogger("loraclf")
SPLITS = ("validation", "test")


# ---------------------------------------------------------------- reading a run


@dataclass
class RunData:
    path: Path
    metrics: dict
    history: list[dict]
    config: dict
    predictions: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metrics.get("run") or self.path.name

    @property
    def labels(self) -> list[str]:
        return list(self.metrics["labels"])


def read_predictions(path: Path, labels: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """texts, gold ids and probabilities from a predictions/<split>.csv."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"text": str, "gold": str, "predicted": str}, keep_default_na=False,
                     na_values=[], engine="c")
    cols = [f"p_{n}" for n in labels]
    missing = [c for c in ["text", "gold", *cols] if c not in df.columns]
    if missing:
        raise LoraclfError(f"{path}: missing columns {missing}; is it a loraclf predictions file?")
    index = {n: i for i, n in enumerate(labels)}
    try:
        y = df["gold"].map(index).to_numpy()
        y = y.astype(np.int64)
    except (ValueError, TypeError):
        raise LoraclfError(f"{path}: gold labels outside the run's labels {list(labels)}") from None
    probs = df[cols].to_numpy(dtype=np.float64)
    return df["text"].tolist(), y, probs


def read_run(run_dir: str | os.PathLike, predictions: bool = True) -> RunData:
    """Load a finished run directory (raises LoraclfError naming what is missing)."""
    import yaml

    p = Path(run_dir)
    if not p.is_dir():
        raise LoraclfError(f"run directory not found: {p}")
    mf = p / "metrics.json"
    if not mf.exists():
        raise LoraclfError(f"{p}: no metrics.json; not a finished run directory (still training, or --resume it)")
    metrics = json.loads(mf.read_text())
    hf = p / "history.jsonl"
    history = [json.loads(x) for x in hf.read_text().splitlines() if x.strip()] if hf.exists() else []
    cf = p / "config.yaml"
    config = (yaml.safe_load(cf.read_text()) or {}) if cf.exists() else {}
    run = RunData(p, metrics, history, config)
    if predictions:
        for split in SPLITS:
            f = p / "predictions" / f"{split}.csv"
            if f.exists() and metrics.get(split):
                run.predictions[split] = read_predictions(f, run.labels)
    return run


def report_options(config: dict) -> dict:
    """The report section of a run's config, defaults filled in (read leniently: never fails)."""
    from .config import ReportConfig

    opts = dict(vars(ReportConfig()))
    opts.update({k: v for k, v in ((config or {}).get("report") or {}).items() if k in opts})
    return opts


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def train_texts(config: dict) -> Optional[list[str]]:
    """The run's train texts, reloaded from its data config (None when the data is not reachable)."""
    from .config import config_from_dict
    from .data import load_data

    try:
        cfg = config_from_dict({k: v for k, v in config.items() if k in ("seed", "data")})
        data = load_data(cfg.data, cfg.seed)
        return list(data.splits["train"].texts)
    except Exception as e:  # the report must not fail because the data moved
        log.info("train texts not available for the length plot: %s", e)
        return None


# ---------------------------------------------------------------- error analysis


def error_analysis(run: RunData, opts: dict, train: Optional[list[str]] = None) -> dict:
    """The ``error_analysis`` block of metrics.json: per split, plus length histograms and findings."""
    out: dict[str, Any] = {"length_unit": an.LENGTH_UNIT}
    for split, (texts, y, probs) in run.predictions.items():
        out[split] = an.analyse_split(texts, y, probs, run.labels, opts["top_errors"], opts["length_buckets"],
                                      opts["examples_per_confusion"])
    old = (run.metrics.get("error_analysis") or {}).get("text_lengths") or {}
    if train is None and "train" in (old.get("counts") or {}):
        out["text_lengths"] = old  # predictions never change; keep the train histogram from training time
    else:
        lengths = {}
        if train is not None:
            lengths["train"] = an.word_counts(train)
        for split, (texts, _, _) in run.predictions.items():
            lengths[split] = an.word_counts(texts)
        out["text_lengths"] = an.length_histograms(lengths)
        dcfg = run.config.get("data") or {}
        if train is not None and (dcfg.get("min_tokens") or dcfg.get("max_tokens")):
            out["text_lengths"]["note"] = "train shown before the data.min_tokens/max_tokens filter"
    split = an.primary_split(run.metrics)
    out["findings"] = an.findings(run.metrics, out, split) if split else []
    return out


def update_metrics(run_dir: Path, key: str, value: Any) -> dict:
    """Add `key` to metrics.json, rewriting it atomically (a reader never sees half a file)."""
    mf = run_dir / "metrics.json"
    metrics = json.loads(mf.read_text())
    metrics[key] = value
    _atomic_write(mf, json.dumps(metrics, indent=2))
    return metrics


# ---------------------------------------------------------------- plots


@dataclass
class Plot:
    file: str
    section: str
    title: str
    caption: str


def make_plots(run: RunData, ea: dict, out_dir: Path) -> list[Plot]:
    """Write every figure of a run into `out_dir`; returns those made, in report order."""
    from . import plots as pl
    from .metrics import reliability_bins

    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Plot] = []
    best = (run.metrics.get("best") or {})
    split = an.primary_split(run.metrics)
    suffix = f" — {split}" if split else ""

    def emit(fig, file, section, title, caption):
        if fig is not None:
            pl.save(fig, out_dir / file)
            made.append(Plot(file, section, title, caption))

    h = run.history
    emit(pl.loss_curves(h, best.get("step")), "loss.png", "training", "Loss",
         "Train loss (mean over each log interval) and validation loss at each evaluation. The dashed line "
         "marks the evaluation whose weights were kept.")
    emit(pl.learning_rate(h), "learning_rate.png", "training", "Learning rate", "Learning rate per optimizer step.")
    emit(pl.validation_metrics(h, best.get("step"), best.get("metric") or "accuracy"), "validation_metrics.png",
         "training", "Validation metrics", "Validation metrics at each evaluation; the thick line is the metric "
         "used to pick the best weights.")
    if split:
        m = run.metrics[split]
        labels = run.labels
        emit(pl.confusion_matrix(m["confusion_matrix"], labels, False, f"Confusion matrix{suffix} (n={m['n']:,})"),
             "confusion_matrix.png", "evaluation", "Confusion matrix",
             "Counts: rows are true labels, columns predictions.")
        emit(pl.confusion_matrix(m["confusion_matrix"], labels, True, f"Confusion matrix, normalised{suffix}"),
             "confusion_matrix_normalized.png", "evaluation", "Confusion matrix, normalised",
             "Each row sums to 1; the diagonal is each label's recall.")
        emit(pl.per_class(m["per_class"], labels, f"Per-class precision, recall and F1{suffix}"), "per_class.png",
             "evaluation", "Per-class scores", "Precision, recall and F1 per label, with its number of texts.")
        if split in run.predictions:
            _, y, probs = run.predictions[split]
            conf = probs.max(axis=1)
            correct = (probs.argmax(axis=1) == y).astype(float)
            if len(np.unique(y)) >= 2:
                emit(pl.roc_curves(y, probs, labels, suffix), "roc.png", "evaluation", "ROC curves",
                     "True against false positive rate as the decision threshold moves." if len(labels) == 2 else
                     "One-vs-rest ROC curve per label.")
                emit(pl.pr_curves(y, probs, labels, suffix), "pr.png", "evaluation", "Precision-recall curves",
                     "Precision against recall; AP is the average precision. Dotted lines: prevalence (chance).")
            emit(pl.reliability(reliability_bins(conf, correct), m["ece"], suffix), "reliability.png", "calibration",
                 "Reliability diagram", "Accuracy within each confidence bin against its mean confidence. Bars "
                 "below the diagonal are over-confident. ECE is the count-weighted mean gap.")
            emit(pl.confidence_hist(conf, correct, len(labels), suffix), "confidence.png", "calibration",
                 "Confidence", "Confidence of the predicted label for correct and for wrong predictions.")
        emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
             "Length in words of every split (train as loaded for training).")
        if (ea.get(split) or {}).get("by_length"):
            emit(pl.accuracy_by_length(ea[split]["by_length"], m["accuracy"], suffix), "accuracy_by_length.png",
                 "errors", "Accuracy by length", "Accuracy per word-length bucket (about equal numbers of texts "
                 "each) with 95% Wilson intervals; red: significantly below overall, green: above.")
    return made


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- HTML


CSS = """
:root{--fg:#1d2330;--muted:#5d6675;--line:#e3e6eb;--bg:#f6f7f9;--card:#fff;--accent:#3569a8;--good:#2a9d5c;--bad:#d1495b}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px;font-weight:600;word-break:break-all}
header .sub{color:#c5cbd6;font-size:13px;margin-top:4px}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;font-size:13px}
nav a{margin-right:16px;color:var(--accent);text-decoration:none}
main{max-width:1320px;margin:0 auto;padding:20px 32px 60px}
section{margin-top:28px}
h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:18px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums}
.card .s{color:var(--muted);font-size:12px}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(320px,100%),1fr));gap:12px;margin-top:12px}
table{border-collapse:collapse;background:var(--card);font-variant-numeric:tabular-nums;width:100%}
th,td{border-bottom:1px solid var(--line);padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600;font-size:12.5px}
td.n,th.n{text-align:right;white-space:nowrap}
table.kv th{width:38%;background:#fafbfc}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(520px,100%),1fr));gap:16px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:var(--muted);font-size:12.5px;margin-top:6px}
.bar{display:inline-block;height:8px;background:var(--accent);border-radius:2px;vertical-align:middle;margin-right:6px}
.low{color:var(--bad);font-weight:600}
.findings li{margin:4px 0}
.text{max-width:640px;white-space:pre-wrap;word-break:break-word}
details summary{cursor:pointer;color:var(--accent)}
pre{background:#fff;border:1px solid var(--line);padding:10px;overflow:auto;font-size:12px}
.muted{color:var(--muted)}
.tag{display:inline-block;padding:1px 7px;border-radius:10px;background:#eef0f4;font-size:12px}
.wrap{overflow-x:auto}
@media print{nav{display:none}.plots{grid-template-columns:1fr}}
"""

# Marks the page once every image has loaded (or failed): the browser test reads these attributes.
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  imgs.forEach(function (i) { if (!(i.complete && i.naturalWidth > 0)) { i.setAttribute('data-broken', '1'); } });
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok.length);
  document.body.setAttribute('data-ready', '1');
});
"""

e = html.escape


def _num(value: Any, path: Sequence[str], digits: int = 4, cls: str = "") -> str:
    """A number tagged with its metrics.json path (the browser test checks it against the file)."""
    if value is None:
        return '<span class="muted">–</span>'
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{value:.{digits}f}"
    c = f' class="{cls}"' if cls else ""
    return f"<span{c} data-metric='{e(json.dumps(list(path)))}'>{text}</span>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{e(alt)}" loading="eager">'


def _figures(plots: list[Plot], plot_dir: Path, section: str) -> str:
    items = [f"<figure>{_img(plot_dir / p.file, p.title)}<figcaption><b>{e(p.title)}.</b> {e(p.caption)} "
             f'<span class="muted">(plots/{e(p.file)})</span></figcaption></figure>'
             for p in plots if p.section == section]
    return f'<div class="plots">{"".join(items)}</div>' if items else ""


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _summary(run: RunData, split: Optional[str]) -> str:
    m = run.metrics
    model = m.get("model") or {}
    p = m.get("params") or {}
    t = m.get("timing") or {}
    env = m.get("environment") or {}
    sizes = (m.get("data") or {}).get("sizes") or {}
    cards = []
    if split:
        s = m[split]
        for key, name, digits in (("accuracy", "accuracy", 4), ("macro_f1", "macro-F1", 4),
                                  ("weighted_f1", "weighted-F1", 4), ("roc_auc", "ROC-AUC", 4), ("ece", "ECE", 4)):
            if s.get(key) is not None or key != "roc_auc":
                cards.append(f'<div class="card"><div class="k">{name} ({split})</div><div class="v">'
                             f'{_num(s.get(key), [split, key], digits)}</div></div>')
    if p:
        cards.append(f'<div class="card"><div class="k">trainable params</div><div class="v">'
                     f'{_num(p.get("trainable"), ["params", "trainable"])}</div><div class="s">'
                     f'{_num(p.get("trainable_pct"), ["params", "trainable_pct"], 2)}% of '
                     f'{_num(p.get("total"), ["params", "total"])}</div></div>')
    if t:
        cards.append(f'<div class="card"><div class="k">train time</div><div class="v">'
                     f'{e(_fmt_seconds(t.get("train_seconds")))}</div><div class="s">'
                     f'{_num(t.get("train_samples_per_s"), ["timing", "train_samples_per_s"], 1)} samples/s'
                     "</div></div>")
    model_rows = [
        ("model", f"<code>{e(str(model.get('name')))}</code>"
         + (f" <span class='muted'>({e(str(model.get('hub_id')))})</span>" if model.get("hub_id") else "")),
        ("architecture", e(str(model.get("model_type", "–")))),
        ("method", f'<span class="tag">{e(str(model.get("method", "–")))}</span>'),
    ]
    lora = run.config.get("lora") or {}
    if model.get("method") == "lora":
        model_rows.append(("LoRA", f"r={e(str(lora.get('r')))}, alpha={e(str(lora.get('alpha')))}, "
                                   f"dropout={e(str(lora.get('dropout')))}; targets "
                                   + ", ".join(f"<code>{e(x)}</code>" for x in model.get("target_modules") or [])))
    if p:
        model_rows.append(("trainable by part", f"LoRA {_num(p.get('lora'), ['params', 'lora'])}, head "
                                                f"{_num(p.get('head'), ['params', 'head'])}, other "
                                                f"{_num(p.get('other'), ['params', 'other'])}"))
    if model.get("modules_to_save"):
        model_rows.append(("trained fully", ", ".join(f"<code>{e(x)}</code>" for x in model["modules_to_save"])))
    data_rows = [(f"{k} texts", _num(v, ["data", "sizes", k])) for k, v in sizes.items()]
    data_rows.append(("labels", ", ".join(f"<code>{e(x)}</code>" for x in run.labels)))
    src = run.config.get("data") or {}
    if src.get("path"):
        data_rows.insert(0, ("data", f"<code>{e(str(src['path']))}</code>"))
    best = m.get("best") or {}
    run_rows = [
        ("best validation", f"{e(str(best.get('metric')))} = {_num(best.get('value'), ['best', 'value'])} at step "
                            f"{e(str(best.get('step')))}" + (" (stopped early)" if best.get("stopped_early") else "")),
        ("epochs / steps", f"{e(str(best.get('epochs_run')))} / {e(str(best.get('steps')))}"),
        ("time", f"train {_fmt_seconds(t.get('train_seconds'))}, eval {_fmt_seconds(t.get('eval_seconds'))}, "
                 f"total {_fmt_seconds(t.get('total_seconds'))}"),
        ("padding efficiency", f"{_num(t.get('padding_efficiency'), ['timing', 'padding_efficiency'], 3)}"),
        ("device", e(f"{env.get('cuda_device') or env.get('device', '–')}, precision {env.get('precision', '–')}, "
                     f"{env.get('num_processes', 1)} process(es)")),
    ]
    notes = (m.get("data") or {}).get("notes") or []
    if notes:
        data_rows.append(("notes", "<br>".join(e(n) for n in notes)))
    return (f'<div class="cards">{"".join(cards)}</div><div class="facts">{_kv(model_rows)}{_kv(data_rows)}'
            f"{_kv(run_rows)}</div>")


def _splits_table(m: dict) -> str:
    cols = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
            ("macro_recall", "macro recall"), ("roc_auc", "ROC-AUC"), ("ece", "ECE"), ("loss", "loss"))
    head = "<tr><th>split</th><th class=n>texts</th>" + "".join(f"<th class=n>{n}</th>" for _, n in cols) + "</tr>"
    rows = ""
    for s in SPLITS:
        if m.get(s):
            rows += (f"<tr><td>{s}</td><td class=n>{_num(m[s]['n'], [s, 'n'])}</td>"
                     + "".join(f"<td class=n>{_num(m[s].get(k), [s, k])}</td>" for k, _ in cols) + "</tr>")
    return f'<div class="wrap"><table>{head}{rows}</table></div>'


def _per_class_table(m: dict, split: str, ranking: dict) -> str:
    pc = m[split]["per_class"]
    pred = m[split].get("predicted_distribution") or {}

    def rank(c: str, key: str) -> str:
        v = (ranking.get(c) or {}).get(key)
        return "–" if v is None else f"{v:.4f}"
    rows = ""
    for c, v in sorted(pc.items(), key=lambda kv: kv[1]["f1"]):
        low = ' class="low"' if v["f1"] < m[split]["macro_f1"] - 0.1 else ""
        rows += (f"<tr><td{low}>{e(c)}</td>"
                 + "".join(f"<td class=n>{_num(v[k], [split, 'per_class', c, k])}</td>"
                           for k in ("precision", "recall"))
                 + f"<td class=n><span class=bar style='width:{v['f1'] * 80:.0f}px'></span>"
                   f"{_num(v['f1'], [split, 'per_class', c, 'f1'])}</td>"
                 + f"<td class=n>{_num(v['support'], [split, 'per_class', c, 'support'])}</td>"
                 + f"<td class=n>{pred.get(c, 0):,}</td><td class=n>{rank(c, 'roc_auc')}</td>"
                   f"<td class=n>{rank(c, 'average_precision')}</td></tr>")
    return ('<div class="wrap"><table><tr><th>label (worst F1 first)</th><th class=n>precision</th>'
            '<th class=n>recall</th><th class=n>F1</th><th class=n>support</th><th class=n>predicted</th>'
            '<th class=n>ROC-AUC (vs rest)</th><th class=n>average precision</th></tr>'
            f"{rows}</table></div>")


def _text_cell(text: str, limit: int = 280) -> str:
    if len(text) <= limit:
        return f'<div class="text">{e(text)}</div>'
    return (f'<details class="text"><summary>{e(text[:limit].rstrip())}…</summary>{e(text)}</details>')


def _errors_section(ea: dict, split: str, m: dict) -> str:
    a = ea.get(split) or {}
    parts = [f"<p>{a.get('errors', 0):,} of {a.get('n', 0):,} {split} texts are misclassified "
             f"(error rate {a.get('error_rate') or 0:.4f}). Texts longer than shown are in "
             f"<code>predictions/{split}.csv</code> (row = index + 1).</p>"]
    bl = a.get("by_length") or []
    if bl:
        rows = "".join(f"<tr><td>{e(b['range'])}</td><td class=n>{b['n']:,}</td><td class=n>"
                       + ("–" if b["accuracy"] is None else f"{b['accuracy']:.4f}")
                       + f"</td><td class=n>{b['ci95'][0]:.3f}–{b['ci95'][1]:.3f}</td><td class=n>{b['errors']:,}</td>"
                       + "<td class=n>" + ("–" if b["mean_confidence"] is None else f"{b['mean_confidence']:.3f}")
                       + "</td></tr>" for b in bl)
        parts.append("<h3>Accuracy by length</h3><div class='wrap'><table><tr><th>words</th><th class=n>texts</th>"
                     "<th class=n>accuracy</th><th class=n>95% CI</th><th class=n>errors</th>"
                     f"<th class=n>mean confidence</th></tr>{rows}</table></div>")
    pairs = a.get("confusions") or []
    if pairs:
        rows = ""
        for p in pairs[:30]:
            ex = "".join(f"<li>{_text_cell(x['text'], 200)} <span class='muted'>(confidence {x['confidence']:.3f}, "
                         f"index {x['index']})</span></li>" for x in p["examples"])
            rows += (f"<tr><td>{e(p['gold'])}</td><td>{e(p['predicted'])}</td><td class=n>{p['count']:,}</td>"
                     f"<td class=n>{p['share_of_errors']:.1%}</td><td class=n>{p['rate_of_gold']:.1%}</td>"
                     f"<td><ul style='margin:0;padding-left:18px'>{ex}</ul></td></tr>")
        more = f"<p class=muted>{len(pairs) - 30} rarer pairs are in metrics.json.</p>" if len(pairs) > 30 else ""
        parts.append("<h3>Mistakes by true and predicted label</h3><div class='wrap'><table><tr><th>true</th>"
                     "<th>predicted</th><th class=n>errors</th><th class=n>share of errors</th>"
                     f"<th class=n>of true label</th><th>surest examples</th></tr>{rows}</table></div>{more}")
    mist = a.get("most_confident_mistakes") or []
    if mist:
        rows = "".join(f"<tr><td class=n>{x['index']}</td><td>{_text_cell(x['text'])}</td><td>{e(x['gold'])}</td>"
                       f"<td>{e(x['predicted'])}</td><td class=n>{x['confidence']:.3f}</td>"
                       f"<td class=n>{x['p_gold']:.3f}</td><td class=n>{x['words']:,}</td></tr>" for x in mist)
        parts.append(f"<h3>The {len(mist)} most confident mistakes</h3><p class=muted>Often label noise, sarcasm "
                     "or negation; worth reading before trusting the accuracy.</p><div class='wrap'><table>"
                     "<tr><th class=n>index</th><th>text</th><th>true</th><th>predicted</th><th class=n>confidence"
                     f"</th><th class=n>p(true)</th><th class=n>words</th></tr>{rows}</table></div>")
    return "".join(parts)


def render_html(run: RunData, ea: dict, plots: list[Plot], plot_dir: Path) -> str:
    """The self-contained report page (images embedded as data URIs)."""
    import yaml

    from . import __version__

    m = run.metrics
    split = an.primary_split(m)
    model = m.get("model") or {}
    meta_f = run.path / "artifact" / "loraclf.json"
    trained = (datetime.fromtimestamp(meta_f.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if meta_f.exists() else "–")
    sub = (f"{e(str(model.get('name')))} · {e(str(model.get('method')))} · {len(run.labels)} labels · "
           f"trained {trained} · report by loraclf {__version__}")
    nav = [("summary", "Summary"), ("findings", "Findings"), ("training", "Training"),
           ("evaluation", "Evaluation"), ("calibration", "Calibration"), ("errors", "Error analysis"),
           ("config", "Config")]
    body = [f'<header><h1>{e(run.name)}</h1><div class="sub">{sub}</div></header>',
            "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav) + "</nav><main>",
            f'<section id="summary"><h2>Summary</h2>{_summary(run, split)}<h3>Metrics by split</h3>'
            f"{_splits_table(m)}</section>"]
    fl = ea.get("findings") or []
    body.append('<section id="findings"><h2>Findings</h2>' + (
        '<ul class="findings">' + "".join(f"<li>{e(f)}</li>" for f in fl) + "</ul>" if fl else
        "<p class=muted>No test or validation predictions to analyse.</p>") + "</section>")
    tr = _figures(plots, plot_dir, "training")
    body.append('<section id="training"><h2>Training</h2>'
                + (tr or "<p class=muted>No training history (nothing was trained, or history.jsonl is missing).</p>")
                + "</section>")
    if split:
        ranking = (ea.get(split) or {}).get("per_class_ranking") or {}
        body.append(f'<section id="evaluation"><h2>Evaluation ({e(split)})</h2>{_per_class_table(m, split, ranking)}'
                    f'<div style="height:14px"></div>{_figures(plots, plot_dir, "evaluation")}</section>')
        conf = m[split].get("confidence") or {}
        body.append(f'<section id="calibration"><h2>Calibration ({e(split)})</h2><p>Mean confidence '
                    f"{_num(conf.get('mean'), [split, 'confidence', 'mean'], 3)} against accuracy "
                    f"{_num(m[split]['accuracy'], [split, 'accuracy'], 4)}; correct predictions "
                    f"{_num(conf.get('mean_correct'), [split, 'confidence', 'mean_correct'], 3)}, wrong ones "
                    f"{_num(conf.get('mean_wrong'), [split, 'confidence', 'mean_wrong'], 3)}; "
                    f"{_num(conf.get('wrong_above_0.9'), [split, 'confidence', 'wrong_above_0.9'])} mistakes with "
                    f"confidence above 0.9.</p>{_figures(plots, plot_dir, 'calibration')}</section>")
        body.append(f'<section id="errors"><h2>Error analysis ({e(split)})</h2>'
                    f'{_figures(plots, plot_dir, "errors")}{_errors_section(ea, split, m)}</section>')
    cfg_text = yaml.safe_dump(run.config, sort_keys=False) if run.config else "(no config.yaml)"
    versions = {}
    if meta_f.exists():
        versions = json.loads(meta_f.read_text()).get("versions") or {}
    body.append('<section id="config"><h2>Config and environment</h2><details><summary>config.yaml (rerun with '
                f'<code>loraclf train -c {e(str(run.path / "config.yaml"))}</code>)</summary><pre>{e(cfg_text)}</pre>'
                "</details>" + (f"<p class=muted>{e(', '.join(f'{k} {v}' for k, v in versions.items()))}</p>"
                                if versions else "") + "</section></main>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f'content="width=device-width, initial-scale=1"><title>{e(run.name)} — loraclf report</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>")


# ---------------------------------------------------------------- model card


def write_model_card(run: RunData, findings: Optional[list[str]] = None) -> Optional[Path]:
    """Write artifact/README.md (Hugging Face model card); None when the run has no artifact."""
    from .card import model_card

    art = run.path / "artifact"
    meta_f = art / "loraclf.json"
    if not meta_f.exists():
        return None
    text = model_card(run.metrics, run.config, json.loads(meta_f.read_text()), findings)
    _atomic_write(art / "README.md", text)
    return art / "README.md"


# ---------------------------------------------------------------- entry points


def make_report(run_dir: str | os.PathLike, output: Optional[str | os.PathLike] = None,
                reload_train: bool = True, quiet: bool = True, train: Optional[list[str]] = None) -> Path:
    """Error analysis (into metrics.json), plots/, report.html and the model card of one finished run.

    `output` writes the HTML elsewhere (plots still go to the run's plots/). `reload_train`
    re-reads the train split from the run's data config for the length plot when metrics.json
    does not have it yet (never needed again after the first report); `train` gives those texts
    when the caller holds them already (right after training), so nothing is re-read.
    """
    t0 = time.perf_counter()
    run = read_run(run_dir)
    opts = report_options(run.config)
    have_train = "train" in (((run.metrics.get("error_analysis") or {}).get("text_lengths") or {}).get("counts") or {})
    if have_train or not reload_train:
        train = None
    elif train is None:
        train = train_texts(run.config)
    ea = error_analysis(run, opts, train)
    run.metrics = update_metrics(run.path, "error_analysis", ea)
    stage = run.path / f".plots.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        plots = make_plots(run, ea, stage)
        page = render_html(run, ea, plots, stage)
        _replace_dir(stage, run.path / "plots")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    out = Path(output) if output else run.path / "report.html"
    _atomic_write(out, page)
    write_model_card(run, ea.get("findings"))
    if not quiet:
        print(f"report: {out} ({len(plots)} plots, {time.perf_counter() - t0:.1f} s)")
    return out


def after_run(run_dir: Path, cfg, quiet: bool = False, train: Optional[list[str]] = None) -> list[Path]:
    """The post-training report (unless report.enabled is false); returns the files a tracker should
    keep. `train` is the run's train texts, as loaded before any token-length filter."""
    if not cfg.report.enabled:
        return []
    try:
        return [make_report(run_dir, quiet=quiet, train=train), Path(run_dir) / "plots"]
    except Exception as ex:  # the run itself is complete and valid; never lose it to a plotting error
        log.warning("the report could not be made (%s: %s); the run is complete. Retry with: loraclf report %s",
                    type(ex).__name__, ex, run_dir)
        return []


# ---------------------------------------------------------------- comparison


def _compare_table(runs: list[RunData], split: str) -> str:
    cols = (("accuracy", "accuracy", "max"), ("macro_f1", "macro-F1", "max"), ("weighted_f1", "weighted-F1", "max"),
            ("roc_auc", "ROC-AUC", "max"), ("ece", "ECE", "min"))
    best = {}
    for k, _, d in cols:
        vals = [(r.metrics.get(split) or {}).get(k) for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            best[k] = max(vals) if d == "max" else min(vals)
    head = ("<tr><th>run</th><th>model</th><th>method</th><th class=n>trainable params</th><th class=n>train texts</th>"
            + "".join(f"<th class=n>{n}</th>" for _, n, _ in cols) + "<th class=n>train time</th>"
            "<th class=n>samples/s</th></tr>")
    rows = ""
    for i, r in enumerate(runs):
        m = r.metrics
        s = m.get(split) or {}
        cells = ""
        for k, _, _ in cols:
            v = s.get(k)
            b = ' style="font-weight:700;color:var(--good)"' if v is not None and v == best.get(k) else ""
            cells += f"<td class=n{b}>{_num(v, [split, k])}</td>"
        t = m.get("timing") or {}
        n_train = ((m.get("data") or {}).get("sizes") or {}).get("train")
        rows += (f"<tr data-run='{i}'><td><b>{e(r.name)}</b><br><span class=muted>{e(str(r.path))}</span></td>"
                 f"<td><code>{e(str((m.get('model') or {}).get('name')))}</code></td>"
                 f"<td>{e(str((m.get('model') or {}).get('method')))}</td>"
                 f"<td class=n>{_num((m.get('params') or {}).get('trainable'), ['params', 'trainable'])}</td>"
                 f"<td class=n>{_num(n_train, ['data', 'sizes', 'train'])}</td>"
                 f"{cells}<td class=n>{e(_fmt_seconds(t.get('train_seconds')))}</td>"
                 f"<td class=n>{_num(t.get('train_samples_per_s'), ['timing', 'train_samples_per_s'], 1)}</td></tr>")
    return f'<div class="wrap"><table>{head}{rows}</table></div>'


def compare_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, split: Optional[str] = None,
                   quiet: bool = True) -> Path:
    """One HTML page comparing runs: metric bars, accuracy against trainable parameters, confusion
    matrices side by side, validation curves and a table (best values in green)."""
    import tempfile

    from . import __version__
    from . import plots as pl
    from .compare import pick_split

    t0 = time.perf_counter()
    if len(run_dirs) < 2:
        raise LoraclfError("a comparison needs at least two run directories")
    runs = [read_run(d, predictions=False) for d in run_dirs]
    split = pick_split([r.metrics for r in runs], split)
    missing = [r.name for r in runs if not r.metrics.get(split)]
    if missing:
        raise LoraclfError(f"no {split} metrics in run(s) {', '.join(missing)}; use --split validation")
    as_dicts = [{"name": r.name, "metrics": r.metrics, "history": r.history} for r in runs]
    figs = [("compare_metrics.png", "Metrics by run", pl.compare_metrics(as_dicts, split)),
            ("compare_params.png", "Accuracy against trainable parameters", pl.compare_params(as_dicts, split)),
            ("compare_curves.png", "Validation curves", pl.compare_curves(as_dicts)),
            ("compare_confusion.png", "Confusion matrices", pl.compare_confusions(as_dicts, split))]
    out = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        imgs = []
        for file, title, fig in figs:
            if fig is None:
                continue
            pl.save(fig, Path(tmp) / file)
            imgs.append(f"<figure>{_img(Path(tmp) / file, title)}<figcaption><b>{e(title)}</b></figcaption></figure>")
    names = ", ".join(r.name for r in runs)
    body = (f'<header><h1>Comparison of {len(runs)} runs</h1><div class="sub">{e(names)} · {split} split · '
            f"report by loraclf {__version__}</div></header><main>"
            f'<section><h2>Runs ({e(split)})</h2>{_compare_table(runs, split)}</section>'
            '<section><h2>Plots</h2><div class="plots" style="grid-template-columns:1fr">' + "".join(imgs)
            + "</div></section>"
            + "<section><h2>Per-run reports</h2><ul>" + "".join(
                f"<li><a href='{e((r.path / 'report.html').resolve().as_uri())}'>{e(r.name)}</a></li>"
                for r in runs if (r.path / "report.html").exists()) + "</ul></section></main>")
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f'content="width=device-width, initial-scale=1"><title>loraclf comparison</title><style>{CSS}</style>'
            f"</head><body>{body}<script>{SCRIPT}</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, page)
    if not quiet:
        print(f"comparison report: {out} ({len(runs)} runs, {time.perf_counter() - t0:.1f} s)")
    return out
