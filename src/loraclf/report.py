"""Run reports: ``plots/*.png``, the error analysis in ``metrics.json``, a self-contained
``report.html`` and the artifact's model card, all made from a finished run directory after
training (nothing here runs during training). Also the comparison report of several runs.

Everything is read from the run directory (``metrics.json``, ``history.jsonl``,
``predictions/<split>.csv``, ``config.yaml``), so ``loraclf report <run>`` can regenerate it at
any time, on any machine, without the model or the data.
"""

from __future__ import annotations

import base64
import functools
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
from .metrics import HEADLINE, METRICS

log = logging.getLogger("loraclf")
SPLITS = ("validation", "test")


# ---------------------------------------------------------------- reading a run


@dataclass
class Predictions:
    """One split's ``predictions/<split>.csv`` as arrays, by task:

    - single-label: `gold` label ids (n,), `outputs` probabilities (n, k); `predicted` None (argmax);
    - multi-label: `gold` and `predicted` (n, k) booleans (the run's own thresholds decided the
      predicted sets), `outputs` one probability per label (n, k);
    - regression: `gold` and `outputs` scores (n,) in the target's units; `predicted` None.
    """

    texts: list[str]
    gold: np.ndarray
    outputs: np.ndarray
    predicted: Optional[np.ndarray] = None


@dataclass
class RunData:
    path: Path
    metrics: dict
    history: list[dict]
    config: dict
    predictions: dict[str, Predictions] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metrics.get("run") or self.path.name

    @property
    def labels(self) -> list[str]:
        return list(self.metrics["labels"])

    @property
    def task(self) -> str:
        return an.task_of(self.metrics)


def read_predictions(path: Path, labels: Sequence[str], task: str = "single-label") -> Predictions:
    """The arrays of a predictions/<split>.csv written by a run of `task` (see :class:`Predictions`)."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"text": str, "gold": str, "predicted": str}, keep_default_na=False,
                     na_values=[], engine="c")
    cols = [] if task == "regression" else [f"p_{n}" for n in labels]
    need = ["text", "gold"] + ([] if task == "single-label" else ["predicted"]) + cols
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise LoraclfError(f"{path}: missing columns {missing}; is it a loraclf predictions file?")
    texts = df["text"].tolist()
    if task == "regression":
        try:
            return Predictions(texts, df["gold"].astype(np.float64).to_numpy(),
                               df["predicted"].astype(np.float64).to_numpy())
        except ValueError:
            raise LoraclfError(f"{path}: gold and predicted must be numbers in a regression run") from None
    probs = df[cols].to_numpy(dtype=np.float64)
    if task == "multi-label":
        try:
            return Predictions(texts, an.label_matrix(df["gold"], labels), probs,
                               an.label_matrix(df["predicted"], labels))
        except ValueError as e:
            raise LoraclfError(f"{path}: {e} {list(labels)}") from None
    index = {n: i for i, n in enumerate(labels)}
    try:
        y = df["gold"].map(index).to_numpy()
        y = y.astype(np.int64)
    except (ValueError, TypeError):
        raise LoraclfError(f"{path}: gold labels outside the run's labels {list(labels)}") from None
    return Predictions(texts, y, probs)


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
                run.predictions[split] = read_predictions(f, run.labels, run.task)
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
        cfg = config_from_dict({k: v for k, v in config.items() if k in ("seed", "data", "task")})
        data = load_data(cfg.data, cfg.seed, cfg.task)
        return list(data.splits["train"].texts)
    except Exception as e:  # the report must not fail because the data moved
        log.info("train texts not available for the length plot: %s", e)
        return None


# ---------------------------------------------------------------- error analysis


def error_analysis(run: RunData, opts: dict, train: Optional[list[str]] = None) -> dict:
    """The ``error_analysis`` block of metrics.json: per split, plus length histograms and findings."""
    out: dict[str, Any] = {"length_unit": an.LENGTH_UNIT}
    for split, p in run.predictions.items():
        out[split] = _analyse(run, p, opts)
    old = (run.metrics.get("error_analysis") or {}).get("text_lengths") or {}
    if train is None and "train" in (old.get("counts") or {}):
        out["text_lengths"] = old  # predictions never change; keep the train histogram from training time
    else:
        lengths = {}
        if train is not None:
            lengths["train"] = an.word_counts(train)
        for split, p in run.predictions.items():
            lengths[split] = an.word_counts(p.texts)
        out["text_lengths"] = an.length_histograms(lengths)
        dcfg = run.config.get("data") or {}
        if train is not None and (dcfg.get("min_tokens") or dcfg.get("max_tokens")):
            out["text_lengths"]["note"] = "train shown before the data.min_tokens/max_tokens filter"
    split = an.primary_split(run.metrics)
    out["findings"] = an.findings(run.metrics, out, split) if split else []
    return out


def _analyse(run: RunData, p: Predictions, opts: dict) -> dict:
    """The error analysis of one split, by the run's task."""
    if run.task == "multi-label":
        thresholds = (run.metrics.get("thresholds") or {}).get("values")
        return an.analyse_multilabel_split(p.texts, p.gold, p.predicted, p.outputs, run.labels, thresholds,
                                           opts["top_errors"], opts["length_buckets"], opts["examples_per_confusion"])
    if run.task == "regression":
        return an.analyse_regression_split(p.texts, p.gold, p.outputs, opts["top_errors"], opts["length_buckets"])
    return an.analyse_split(p.texts, p.gold, p.outputs, run.labels, opts["top_errors"], opts["length_buckets"],
                            opts["examples_per_confusion"])


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


# What the loss curve's y axis is, by task (regression trains on the normalised target: see the caption).
LOSS_LABELS = {"single-label": "cross-entropy loss", "multi-label": "binary cross-entropy loss", "regression": "loss"}


def make_plots(run: RunData, ea: dict, out_dir: Path) -> list[Plot]:
    """Write every figure of a run into `out_dir`; returns those made, in report order."""
    from . import plots as pl

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
    scores = tuple(k for k in an.headline(run.task) if an.metric(k).direction == "max")
    selected = best.get("metric") or scores[0]
    if selected not in scores and an.metric(selected).direction == "max":
        scores += (selected,)  # e.g. multi-label's default, average precision: the thick line must be there
    emit(pl.loss_curves(h, best.get("step"), LOSS_LABELS.get(run.task, "loss")), "loss.png", "training", "Loss",
         "Train loss (mean over each log interval) and validation loss at each evaluation. The dashed line "
         "marks the evaluation whose weights were kept."
         + (" Both are on the standardised target when train.normalize_target is on (validation: its mean "
            "squared error; train: the chosen loss, MSE or Huber)." if run.task == "regression" else ""))
    emit(pl.learning_rate(h), "learning_rate.png", "training", "Learning rate", "Learning rate per optimizer step.")
    emit(pl.validation_metrics(h, best.get("step"), selected, scores),
         "validation_metrics.png", "training", "Validation metrics", "Validation metrics at each evaluation; the "
         "thick line is the metric used to pick the best weights.")
    if split:
        plots_of_task = {"multi-label": _multilabel_plots, "regression": _regression_plots}
        plots_of_task.get(run.task, _single_label_plots)(emit, run, ea, split, suffix)
    return made


def _single_label_plots(emit, run: RunData, ea: dict, split: str, suffix: str) -> None:
    from . import plots as pl
    from .metrics import reliability_bins

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
        p = run.predictions[split]
        y, probs = p.gold, p.outputs
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
    cal = m.get("calibration") or {}
    if cal.get("reliability_before") and cal.get("reliability_after"):
        emit(pl.reliability_before_after(cal["reliability_before"], cal["ece_before"], cal["reliability_after"],
                                         cal["ece_after"], (run.metrics.get("calibration") or {}).get("temperature"),
                                         suffix), "reliability_before_after.png", "calibration",
             *(("Temperature and class-bias correction", "Reliability of the model's raw probabilities (left) and "
                "of the corrected ones the run reports (right); the biases move some predictions.")
               if cal.get("accuracy_before") is not None else
               ("Temperature scaling", "Reliability of the model's raw probabilities (left) and of the temperature-"
                "scaled ones the run reports (right); the predicted labels are the same.")))
    emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
         "Length in words of every split (train as loaded for training).")
    if (ea.get(split) or {}).get("by_length"):
        emit(pl.accuracy_by_length(ea[split]["by_length"], m["accuracy"], suffix), "accuracy_by_length.png",
             "errors", "Accuracy by length", "Accuracy per word-length bucket (about equal numbers of texts "
             "each) with 95% Wilson intervals; red: significantly below overall, green: above.")


def _multilabel_plots(emit, run: RunData, ea: dict, split: str, suffix: str) -> None:
    from . import plots as pl

    m, a, labels = run.metrics[split], ea.get(split) or {}, run.labels
    emit(pl.per_label(m["per_label"], labels, f"Per-label precision, recall and F1{suffix}"), "per_label.png",
         "evaluation", "Per-label scores", "Precision, recall and F1 of each label at its decision threshold t, "
         "worst F1 first, with its number of texts n.")
    if split in run.predictions:
        p = run.predictions[split]
        emit(pl.multilabel_pr_curves(p.gold, p.outputs, labels, (run.metrics.get("thresholds") or {}).get("values"),
                                     suffix), "pr.png", "evaluation", "Precision-recall curves per label",
             "Each label's precision against recall as its threshold moves; AP is the average precision. The "
             "dots are the thresholds the run uses.")
    if a.get("mistake_cooccurrence"):
        emit(pl.mistake_cooccurrence(a["mistake_cooccurrence"], labels, f"Mistake co-occurrence{suffix}"),
             "mistake_cooccurrence.png", "errors", "Mistake co-occurrence",
             "Texts where the row's label was missed while the column's label was predicted wrongly: which "
             "label the model puts in place of the right one.")
    emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
         "Length in words of every split (train as loaded for training).")
    if a.get("by_length") and m.get("subset_accuracy") is not None:
        emit(pl.accuracy_by_length(a["by_length"], m["subset_accuracy"], suffix, "subset accuracy"),
             "subset_accuracy_by_length.png", "errors", "Subset accuracy by length",
             "Share of texts whose predicted label set is exactly right, per word-length bucket, with 95% Wilson "
             "intervals; red: significantly below overall, green: above.")


def _regression_plots(emit, run: RunData, ea: dict, split: str, suffix: str) -> None:
    from . import plots as pl

    m, a, target = run.metrics[split], ea.get(split) or {}, run.labels[0]
    if split in run.predictions:
        p = run.predictions[split]
        emit(pl.regression_scatter(p.gold, p.outputs, suffix, target), "predicted_vs_gold.png", "evaluation",
             "Predicted against gold", "Each text's predicted score against its gold score; on the dashed "
             "identity line the prediction is exact.")
        emit(pl.residuals_by_gold(p.gold, p.outputs, suffix, target), "residuals.png", "evaluation",
             "Residuals by gold value", "Predicted minus gold against gold, with the mean per gold bin: below 0 "
             "on the right and above 0 on the left means the extremes are pulled toward the mean.")
    emit(pl.length_distribution(ea.get("text_lengths") or {}), "lengths.png", "errors", "Text length per split",
         "Length in words of every split (train as loaded for training).")
    if a.get("by_length"):
        emit(pl.errors_by_length(a["by_length"], m.get("mae"), suffix), "errors_by_length.png", "errors",
             "Errors by length", "Mean absolute error and mean signed error per word-length bucket (about equal "
             "numbers of texts each).")


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- HTML


# Report sections in page order: (id, title in the navigation bar). Only single-label outputs are
# probabilities of one answer, so only its report has a calibration section.
NAV = (("summary", "Summary"), ("findings", "Findings"), ("training", "Training"), ("evaluation", "Evaluation"),
       ("calibration", "Calibration"), ("errors", "Error analysis"), ("config", "Config"))
NAV_NO_CALIBRATION = tuple(x for x in NAV if x[0] != "calibration")
MAX_PAIRS = 30  # confusion pairs shown; the rarer ones stay in metrics.json


def _number(value: Any, digits: int = 4) -> str:
    """An integer with thousands separators, anything else with `digits` decimals."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{value:.{digits}f}"


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


@functools.lru_cache(maxsize=1)
def _environment():
    """The Jinja2 environment of the report pages (templates/*.html.j2), escaping every value."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("loraclf", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(number=_number, fmt=_fmt, seconds=_fmt_seconds)
    env.globals.update(METRICS=METRICS, HEADLINE=HEADLINE, metric=an.metric)
    return env


def _data_uri(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _per_class_rows(m: dict, split: str, ranking: dict) -> list[dict]:
    """The per-label table of the report's split, worst F1 first."""
    s = m[split]
    pred = s.get("predicted_distribution") or {}
    return [{"name": c, **v, "low": v["f1"] < s["macro_f1"] - 0.1, "predicted": pred.get(c, 0),
             "roc_auc": (ranking.get(c) or {}).get("roc_auc"),
             "average_precision": (ranking.get(c) or {}).get("average_precision")}
            for c, v in sorted(s["per_class"].items(), key=lambda kv: kv[1]["f1"])]


def _per_label_rows(m: dict, split: str, a: dict) -> list[dict]:
    """The per-label table of a multi-label split, worst F1 first, with its missed and wrong counts."""
    s = m[split]
    errors = a.get("per_label_errors") or {}
    return [{"name": c, **v, "low": v["f1"] < s["macro_f1"] - 0.1, **(errors.get(c) or {})}
            for c, v in sorted(s["per_label"].items(), key=lambda kv: kv[1]["f1"])]


def _task_context(run: RunData, ea: dict, split: Optional[str]) -> dict:
    """What the templates need beyond the common context, by task."""
    m, a = run.metrics, ((ea.get(split) or {}) if split else {})
    if run.task == "multi-label":
        th = m.get("thresholds") or {}
        fixed = (m[split].get("at_0.5") or {}) if split else {}
        return {"per_label": _per_label_rows(m, split, a) if split else [], "thresholds": th,
                "at_05": [k for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
                          if k in fixed]}
    if run.task == "regression":
        return {"target": run.labels[0] if run.labels else "score"}
    ranking = (a.get("per_class_ranking") or {}) if split else {}
    return {"per_class": _per_class_rows(m, split, ranking) if split else [], "calibration": m.get("calibration"),
            "calibration_splits": [s for s in SPLITS if (m.get(s) or {}).get("calibration")]}


def render_html(run: RunData, ea: dict, plots: list[Plot], plot_dir: Path) -> str:
    """The self-contained report page (images embedded as data URIs), from templates/report.html.j2."""
    import yaml

    from . import __version__

    m = run.metrics
    split = an.primary_split(m)
    meta_f = run.path / "artifact" / "loraclf.json"
    trained = (datetime.fromtimestamp(meta_f.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if meta_f.exists() else "–")
    by_section: dict[str, list] = {s: [] for s, _ in NAV}
    for p in plots:
        by_section[p.section].append((p, _data_uri(plot_dir / p.file)))
    headline = an.headline(run.task)
    return _environment().get_template("report.html.j2").render(
        name=run.name, model=m.get("model") or {}, labels=run.labels, trained=trained, version=__version__,
        nav=NAV if run.task == "single-label" else NAV_NO_CALIBRATION, m=m, split=split, task=run.task,
        headline=headline, split_columns=(*headline, "loss"),
        splits=[s for s in SPLITS if m.get(s)], lora=run.config.get("lora") or {},
        data_path=(run.config.get("data") or {}).get("path"), findings=ea.get("findings") or [], plots=by_section,
        a=(ea.get(split) or {}) if split else {}, **_task_context(run, ea, split),
        max_pairs=MAX_PAIRS, config_path=str(run.path / "config.yaml"),
        config_text=yaml.safe_dump(run.config, sort_keys=False) if run.config else "(no config.yaml)",
        versions=(json.loads(meta_f.read_text()).get("versions") or {}) if meta_f.exists() else {})


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
    """The post-training hook: the report, unless report.enabled is false. Returns what an experiment
    tracker should upload with the run (report.html and plots/); [] when there is no report.
    `train` is the run's train texts, as loaded before any token-length filter."""
    if not cfg.report.enabled:
        return []
    try:
        return [make_report(run_dir, quiet=quiet, train=train), Path(run_dir) / "plots"]
    except Exception as ex:  # the run itself is complete and valid; never lose it to a plotting error
        log.warning("the report could not be made (%s: %s); the run is complete. Retry with: loraclf report %s",
                    type(ex).__name__, ex, run_dir)
        return []


# ---------------------------------------------------------------- comparison


COMPARE_COLUMNS = HEADLINE  # the metric columns of a single-label comparison table (best of each in green)


def _best_values(runs: list[RunData], split: str, columns: Sequence[str] = COMPARE_COLUMNS) -> dict:
    """Each metric's best value over the runs, by the metric's direction."""
    best = {}
    for k in columns:
        vals = [v for v in ((r.metrics.get(split) or {}).get(k) for r in runs) if v is not None]
        if vals:
            best[k] = max(vals) if an.metric(k).direction == "max" else min(vals)
    return best


def compare_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, split: Optional[str] = None,
                   quiet: bool = True) -> Path:
    """One HTML page comparing runs: metric bars, accuracy against trainable parameters, confusion
    matrices side by side, validation curves and a table (best values in green)."""
    import tempfile

    from . import __version__
    from . import plots as pl
    from .compare import pick_split, same_task

    t0 = time.perf_counter()
    if len(run_dirs) < 2:
        raise LoraclfError("a comparison needs at least two run directories")
    runs = [read_run(d, predictions=False) for d in run_dirs]
    columns = an.headline(same_task([r.metrics for r in runs], [r.name for r in runs]))
    first = an.metric(columns[0])
    split = pick_split([r.metrics for r in runs], split)
    missing = [r.name for r in runs if not r.metrics.get(split)]
    if missing:
        raise LoraclfError(f"no {split} metrics in run(s) {', '.join(missing)}; use --split validation")
    as_dicts = [{"name": r.name, "metrics": r.metrics, "history": r.history} for r in runs]
    figs = [Plot("compare_metrics.png", "", "Metrics by run", ""),
            Plot("compare_params.png", "", f"{first.name[0].upper()}{first.name[1:]} against trainable parameters", ""),
            Plot("compare_curves.png", "", "Validation curves", ""),
            Plot("compare_confusion.png", "", "Confusion matrices", "")]
    made = [pl.compare_metrics(as_dicts, split, columns), pl.compare_params(as_dicts, split, first.key),
            pl.compare_curves(as_dicts, first.key), pl.compare_confusions(as_dicts, split)]
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, fig in zip(figs, made):
            if fig is not None:
                images.append((p, _data_uri(pl.save(fig, Path(tmp) / p.file))))
    page = _environment().get_template("compare.html.j2").render(
        runs=[{"name": r.name, "path": str(r.path), "metrics": r.metrics,
               "report": (r.path / "report.html").resolve().as_uri() if (r.path / "report.html").exists() else None}
              for r in runs],
        split=split, columns=columns, best=_best_values(runs, split, columns), plots=images, version=__version__)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, page)
    if not quiet:
        print(f"comparison report: {out} ({len(runs)} runs, {time.perf_counter() - t0:.1f} s)")
    return out
