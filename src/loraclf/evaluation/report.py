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
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import LoraclfError
from ..schema import RunDir, write_text_atomic
from ..tasks import Predictions, Task, task_class, task_of
from . import analysis as an
from .metrics import METRICS, metric

log = logging.getLogger("loraclf")
SPLITS = ("validation", "test")


# ---------------------------------------------------------------- reading a run


@dataclass
class RunData:
    """A finished run as the report reads it: metrics.json, history, config.yaml, and each split's
    predictions parsed by the run's task."""

    path: Path
    metrics: dict
    history: list[dict]
    config: dict
    task: Task
    predictions: dict[str, Predictions] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metrics.get("run") or self.path.name

    @property
    def labels(self) -> list[str]:
        return list(self.metrics["labels"])


def read_run(run_dir: str | os.PathLike, predictions: bool = True) -> RunData:
    """Load a finished run directory (raises LoraclfError naming what is missing)."""
    rd = RunDir(run_dir)
    metrics = rd.read_metrics()
    run = RunData(rd.path, metrics, rd.read_history(), rd.read_config_tree(), task_of(metrics))
    if predictions:
        for split in SPLITS:
            table = rd.read_predictions(split) if metrics.get(split) else None
            if table is not None:
                run.predictions[split] = run.task.parse_predictions(table, rd.predictions_path(split))
    return run


def report_options(config: dict) -> dict:
    """The report section of a run's config, defaults filled in (read leniently: never fails)."""
    from ..config import ReportConfig

    opts = dict(vars(ReportConfig()))
    opts.update({k: v for k, v in ((config or {}).get("report") or {}).items() if k in opts})
    return opts


def train_texts(config: dict) -> Optional[list[str]]:
    """The run's train texts, reloaded from its data config (None when the data is not reachable)."""
    from ..config import config_from_dict
    from ..data import load_data

    try:
        cfg = config_from_dict({k: v for k, v in config.items() if k in ("seed", "data", "task")})
        data = load_data(cfg.data, cfg.seed, cfg.task)
        return length_sample(data.splits["train"].texts)
    except Exception as e:  # the report must not fail because the data moved
        log.info("train texts not available for the length plot: %s", e)
        return None


# ---------------------------------------------------------------- error analysis


LENGTH_SAMPLE = 100_000  # train texts the length histogram is drawn from (a seeded sample beyond this)


def length_sample(texts, n: int = LENGTH_SAMPLE, seed: int = 0):
    """All texts, or a seeded sample of `n` (a histogram of millions of rows has the same shape)."""
    if len(texts) <= n:
        return texts
    pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    take = getattr(texts, "take", None)
    return list(take(pick)) if take is not None else [texts[i] for i in pick]


def error_analysis(run: RunData, opts: dict, train: Optional[list[str]] = None) -> dict:
    """The ``error_analysis`` block of metrics.json: per split, plus length histograms and findings."""
    out: dict[str, Any] = {"length_unit": an.LENGTH_UNIT}
    for split, p in run.predictions.items():
        out[split] = run.task.analyse(p, run.metrics, opts)
    old = (run.metrics.get("error_analysis") or {}).get("text_lengths") or {}
    if train is None and "train" in (old.get("counts") or {}):
        out["text_lengths"] = old  # predictions never change; keep the train histogram from training time
    else:
        lengths = {}
        if train is not None:
            lengths["train"] = an.word_counts(length_sample(train))
        for split, p in run.predictions.items():
            lengths[split] = an.word_counts(p.texts)
        out["text_lengths"] = an.length_histograms(lengths)
        dcfg = run.config.get("data") or {}
        if train is not None and (dcfg.get("min_tokens") or dcfg.get("max_tokens")):
            out["text_lengths"]["note"] = "train shown before the data.min_tokens/max_tokens filter"
    split = an.primary_split(run.metrics)
    out["findings"] = run.task.findings(run.metrics, out, split) if split and out.get(split) else []
    return out


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
    scores = tuple(k for k in run.task.headline if metric(k).direction == "max")
    selected = best.get("metric") or scores[0]
    if selected not in scores and metric(selected).direction == "max":
        scores += (selected,)  # e.g. multi-label's default, average precision: the thick line must be there
    emit(pl.loss_curves(h, best.get("step"), run.task.loss_name), "loss.png", "training", "Loss",
         "Train loss (mean over each log interval) and validation loss at each evaluation. The dashed line "
         "marks the evaluation whose weights were kept." + run.task.loss_note())
    emit(pl.learning_rate(h), "learning_rate.png", "training", "Learning rate", "Learning rate per optimizer step.")
    emit(pl.validation_metrics(h, best.get("step"), selected, scores),
         "validation_metrics.png", "training", "Validation metrics", "Validation metrics at each evaluation; the "
         "thick line is the metric used to pick the best weights.")
    if split:
        run.task.plots(emit, run, ea, split, suffix)
    return made


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- HTML


# Report sections in page order: (id, title in the navigation bar); the task's own sections
# (Task.report_sections) go between training and config.
NAV_START = (("summary", "Summary"), ("findings", "Findings"), ("training", "Training"))
NAV_END = (("config", "Config"),)
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
    env.globals.update(METRICS=METRICS, metric=metric)
    return env


def _data_uri(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(run: RunData, ea: dict, plots: list[Plot], plot_dir: Path) -> str:
    """The self-contained report page (images embedded as data URIs), from templates/report.html.j2 and
    the task's own sections (Task.report_template)."""
    import yaml

    from .._version import __version__
    from ..models.methods import method_of

    m = run.metrics
    split = an.primary_split(m)
    meta = RunDir(run.path).read_meta() or {}
    meta_f = run.path / "artifact" / "loraclf.json"
    trained = (datetime.fromtimestamp(meta_f.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
               if meta_f.exists() else "–")
    long_text = {s: m[s]["long_text"] for s in SPLITS if (m.get(s) or {}).get("long_text")}
    nav = NAV_START + tuple(run.task.report_sections) + ((("long-text", "Long documents"),) if long_text else ()) \
        + NAV_END
    by_section: dict[str, list] = {s: [] for s, _ in nav}
    for p in plots:
        by_section[p.section].append((p, _data_uri(plot_dir / p.file)))
    headline = run.task.headline
    return _environment().get_template("report.html.j2").render(
        name=run.name, model=m.get("model") or {}, labels=run.labels, trained=trained, version=__version__,
        nav=nav, m=m, split=split, subtitle=run.task.subtitle(), label_noun=run.task.label_noun,
        task_template=run.task.report_template, method=method_of((m.get("model") or {}).get("method")),
        headline=headline, split_columns=(*headline, "loss"),
        splits=[s for s in SPLITS if m.get(s)], lora=run.config.get("lora") or {},
        data_path=(run.config.get("data") or {}).get("path"), findings=ea.get("findings") or [], plots=by_section,
        a=(ea.get(split) or {}) if split else {}, **run.task.report_context(run, ea, split),
        max_pairs=MAX_PAIRS, config_path=str(run.path / "config.yaml"),
        config_text=yaml.safe_dump(run.config, sort_keys=False) if run.config else "(no config.yaml)",
        versions=meta.get("versions") or {}, run_config=run.config or {},
        long_text=long_text)


# ---------------------------------------------------------------- model card


def write_model_card(run: RunData, findings: Optional[list[str]] = None) -> Optional[Path]:
    """Write artifact/README.md (Hugging Face model card); None when the run has no artifact."""
    from .card import model_card, run_examples

    rd = RunDir(run.path)
    meta = rd.read_meta()
    if meta is None:
        return None
    card = model_card(run.metrics, run.config, meta, findings, examples=run_examples(run.path, run.config))
    write_text_atomic(rd.artifact_path / "README.md", card)
    return rd.artifact_path / "README.md"


# ---------------------------------------------------------------- entry points


def cv_report(run_dir: str | os.PathLike, output: Optional[str | os.PathLike] = None, quiet: bool = True) -> Path:
    """report.html of a cross-validation run: each metric's mean, spread and value per fold, and the
    folds' own reports."""
    from .._version import __version__

    rd = RunDir(run_dir)
    m = rd.read_metrics()
    folds = [RunDir(rd.path / p) for p in m["cv"]["runs"]]
    page = _environment().get_template("cv.html.j2").render(
        name=m.get("run") or rd.path.name, model=m.get("model") or {}, cv=m["cv"], version=__version__,
        audit=m.get("audit"),
        columns=[k for k in (*task_class(m.get("task")).headline, "loss") if k in m["cv"]["mean"]],
        folds=[{"name": f.path.name, "report": (f.path / "report.html").resolve().as_uri()
                if (f.path / "report.html").exists() else None} for f in folds])
    out = Path(output) if output else rd.path / "report.html"
    write_text_atomic(out, page)
    if not quiet:
        print(f"report: {out} (cross-validation, {len(folds)} folds)")
    return out


def make_report(run_dir: str | os.PathLike, output: Optional[str | os.PathLike] = None,
                reload_train: bool = True, quiet: bool = True, train: Optional[list[str]] = None) -> Path:
    """Error analysis (into metrics.json), plots/, report.html and the model card of one finished run.

    `output` writes the HTML elsewhere (plots still go to the run's plots/). `reload_train`
    re-reads the train split from the run's data config for the length plot when metrics.json
    does not have it yet (never needed again after the first report); `train` gives those texts
    when the caller holds them already (right after training), so nothing is re-read.
    """
    t0 = time.perf_counter()
    if "cv" in RunDir(run_dir).read_metrics():
        return cv_report(run_dir, output, quiet)
    run = read_run(run_dir)
    opts = report_options(run.config)
    have_train = "train" in (((run.metrics.get("error_analysis") or {}).get("text_lengths") or {}).get("counts") or {})
    if have_train or not reload_train:
        train = None
    elif train is None:
        train = train_texts(run.config)
    ea = error_analysis(run, opts, train)
    run.metrics = RunDir(run.path).update_metrics("error_analysis", ea)
    stage = run.path / f".plots.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        plots = make_plots(run, ea, stage)
        page = render_html(run, ea, plots, stage)
        _replace_dir(stage, run.path / "plots")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    out = Path(output) if output else run.path / "report.html"
    write_text_atomic(out, page)
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


def _best_values(runs: list[RunData], split: str, columns: Sequence[str]) -> dict:
    """Each metric's best value over the runs, by the metric's direction."""
    best = {}
    for k in columns:
        vals = [v for v in ((r.metrics.get(split) or {}).get(k) for r in runs) if v is not None]
        if vals:
            best[k] = max(vals) if metric(k).direction == "max" else min(vals)
    return best


def compare_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, split: Optional[str] = None,
                   quiet: bool = True) -> Path:
    """One HTML page comparing runs: metric bars, accuracy against trainable parameters, confusion
    matrices side by side, validation curves and a table (best values in green)."""
    import tempfile

    from .._version import __version__
    from ..studies.compare import pick_split, same_task, split_warning
    from . import plots as pl

    t0 = time.perf_counter()
    if len(run_dirs) < 2:
        raise LoraclfError("a comparison needs at least two run directories")
    runs = [read_run(d, predictions=False) for d in run_dirs]
    columns = task_class(same_task([r.metrics for r in runs], [r.name for r in runs])).headline
    first = metric(columns[0])
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
        split=split, columns=columns, best=_best_values(runs, split, columns), plots=images, version=__version__,
        split_warning=split_warning([{"split": split, "n": (r.metrics[split] or {}).get("n"),
                                      "source": ((r.metrics.get("data") or {}).get("sources") or {}).get(split)}
                                     for r in runs]))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    if not quiet:
        print(f"comparison report: {out} ({len(runs)} runs, {time.perf_counter() - t0:.1f} s)")
    return out
