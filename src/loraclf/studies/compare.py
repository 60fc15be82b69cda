"""Compare finished runs: one row per run (Markdown, CSV, terminal), accuracy against trainable
parameters, confusion matrices side by side and sample predictions.

Everything here reads run directories (metrics.json, config.yaml, predictions/, artifact/) and
never loads a model, so comparing is instant and works on runs made elsewhere.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import LoraclfError
from ..evaluation import tables
from ..evaluation.metrics import METRICS
from ..models.budget import full_model_bytes
from ..models.methods import method_of
from ..schema import RunDir, is_run
from ..tasks import DEFAULT_TASK, task_class

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def _task_of(rows: Sequence[dict]):
    """The task of comparison rows: the first row's decides, since :func:`same_task` keeps tasks from mixing."""
    return task_class(next((r.get("task") for r in rows if r.get("task")), None))


def row_metrics(rows: Sequence[dict]) -> tuple[str, ...]:
    """The metric columns of comparison rows (besides F1 per label): their task's."""
    return tuple(_task_of(rows).row_metrics)


def same_task(metrics_list: Sequence[dict], names: Sequence[str]) -> str:
    """The task all these runs share; a LoraclfError when they differ (their metrics do not compare)."""
    tasks = [m.get("task") or DEFAULT_TASK for m in metrics_list]
    if len(set(tasks)) > 1:
        raise LoraclfError("runs of different tasks do not compare: "
                           + ", ".join(f"{n} ({t})" for n, t in zip(names, tasks)))
    return tasks[0] if tasks else DEFAULT_TASK


def dotted(tree: dict, key: str) -> Any:
    """``tree["a"]["b"]`` for the key ``"a.b"``; None when any part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def expand_run_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories as given; a folder of runs (a sweep's output) expands to its finished runs."""
    out: list[Path] = []
    for p in map(Path, paths):
        if is_run(p):
            out.append(p)
        elif p.is_dir() and any(is_run(c) for c in p.iterdir() if c.is_dir()):
            out += sorted(c for c in p.iterdir() if c.is_dir() and is_run(c))
        elif p.is_dir() and (p / "config.yaml").exists():
            raise LoraclfError(
                f"{p}: the run has not finished (no metrics.json); resume it with loraclf train --resume {p}"
            )
        else:
            raise LoraclfError(f"{p}: not a run directory (no metrics.json) or a folder of runs")
    if not out:
        raise LoraclfError("no runs to compare")
    return out


def artifact_bytes(run_dir: Path) -> Optional[int]:
    """Bytes of the weight files in the run's artifact/ (what must be shipped besides the base model)."""
    art = run_dir / "artifact"
    if not art.is_dir():
        return None
    return sum(f.stat().st_size for pat in WEIGHT_FILES for f in art.glob(pat)) or None


CV = "cv"  # the "split" of a cross-validation run's rows: the mean over folds of each fold's held-out scores


def pick_split(metrics_list: Sequence[dict], split: Optional[str] = None) -> str:
    if any("cv" in m for m in metrics_list):
        if not all("cv" in m for m in metrics_list):
            raise LoraclfError("cross-validation runs and single runs do not compare (a mean over folds against "
                               "one split's score); compare them apart")
        return CV
    if split:
        return split
    return "test" if all(m.get("test") for m in metrics_list) else "validation"


def summarize_run(path: str | Path, split: Optional[str] = None, name: Optional[str] = None,
                  extra_keys: Sequence[str] = (), metrics: Optional[dict] = None) -> dict:
    """One comparison row from a finished run directory (see :func:`csv_fields` for the keys);
    `metrics` is its metrics.json when the caller has read it already."""
    rd = RunDir(path)
    if not rd.finished:
        raise LoraclfError(f"{rd.path}: not a finished run (no metrics.json)")
    m = metrics if metrics is not None else rd.read_metrics()
    cfg = rd.read_config_tree()
    split = pick_split([m], split)
    sm = {**m["cv"]["mean"], "n": m["cv"]["rows"]} if split == CV else (m.get(split) or {})
    task = task_class(m.get("task"))
    model = m.get("model", {})
    method = model.get("method") or dotted(cfg, "model.method")
    params, timing = m.get("params", {}), m.get("timing", {})
    return {"run": name or rd.path.name, "path": str(rd.path), "status": "done",
            "model": model.get("name") or dotted(cfg, "model.name"),
            "method": _method_label(method, model.get("head") or dotted(cfg, "model.head")),
            **lora_columns(method, model.get("target_modules"), dotted(cfg, "lora.r"), dotted(cfg, "lora.alpha")),
            "extra": {k: dotted(cfg, k) for k in extra_keys},
            "trainable": params.get("trainable"), "total": params.get("total"),
            "trainable_pct": params.get("trainable_pct"), "task": task.name, "split": split, "n": sm.get("n"),
            "source": None if split == CV else ((m.get("data") or {}).get("sources") or {}).get(split),
            **{k: sm.get(k) for k in task.row_metrics},
            "sd": {k: m["cv"]["sd"].get(k) for k in task.row_metrics} if split == CV else {},
            "per_class_f1": {k: v.get("f1") for k, v in (sm.get("per_class") or sm.get("per_label") or {}).items()},
            "confusion_matrix": sm.get("confusion_matrix"),
            "labels": m.get("labels") or list((sm.get("per_class") or sm.get("per_label") or {}).keys()),
            "validation_best": (m.get("best") or {}).get("value"), "train_seconds": timing.get("train_seconds"),
            "peak_memory_mb": timing.get("peak_memory_mb"), "artifact_bytes": artifact_bytes(rd.path),
            "full_model_bytes": full_model_bytes(params) if params.get("total") else None}


def _method_label(method: Optional[str], head: Optional[str]) -> Optional[str]:
    """The method, with the head when it is not the default one: "lora (verbalizer)"."""
    from ..config import default

    return method if not head or head == default("model.head") else f"{method} ({head})"


def lora_columns(method: Optional[str], targets, r, alpha) -> dict:
    """targets, r and alpha of a run that trains LoRA adapters; None for other methods."""
    m = method_of(method)
    if not (m and m.adapters):
        return {"targets": None, "r": None, "alpha": None}
    return {"targets": targets if isinstance(targets, str) or targets is None else "+".join(targets), "r": r,
            "alpha": alpha}


def compare_rows(paths: Sequence[str | Path], split: Optional[str] = None) -> list[dict]:
    """Rows for several runs on one common split (test when every run has one)."""
    runs = expand_run_paths(paths)
    metrics = [RunDir(p).read_metrics() for p in runs]
    split = pick_split(metrics, split)
    names = [p.name for p in runs]
    if len(set(names)) < len(names):  # same folder names from different sweeps: use more of the path
        names = [str(Path(*p.parts[-2:])) for p in runs]
    same_task(metrics, names)
    return [summarize_run(p, split, n, metrics=m) for p, n, m in zip(runs, names, metrics)]


# ----------------------------------------------------------------------------- formatting


def _num(v, fmt: str = "{:,}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _mb(b) -> str:
    return "-" if b is None else (f"{b / 1e6:.2f} MB" if b < 10e6 else f"{b / 1e6:.1f} MB")


def _secs(s) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 100 else f"{s / 60:.1f} min"


def _ordered_keys(rows: Sequence[dict], field: str) -> list[str]:
    """The keys of every row's `field` mapping, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in (r.get(field) or {})))


def _labels(rows: Sequence[dict]) -> list[str]:
    return _ordered_keys(rows, "per_class_f1")


def _extra_keys(rows: Sequence[dict]) -> list[str]:
    return _ordered_keys(rows, "extra")


def _fmt_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def table_columns(rows: Sequence[dict]) -> list[tuple[str, Any]]:
    """(header, row -> cell text) for the comparison table."""
    split = next((r["split"] for r in rows if r.get("split")), "test")
    cols: list[tuple[str, Any]] = [
        ("run", lambda r: r["run"]),
        ("method", lambda r: _fmt_value(r.get("method"))),
        ("targets", lambda r: _fmt_value(r.get("targets"))),
        ("r", lambda r: _fmt_value(r.get("r"))),
        ("alpha", lambda r: _fmt_value(r.get("alpha"))),
    ]
    for k in _extra_keys(rows):
        cols.append((k, lambda r, k=k: _fmt_value((r.get("extra") or {}).get(k))))
    cols += [
        ("trainable params", lambda r: _num(r.get("trainable"))),
        ("% of total", lambda r: _num(r.get("trainable_pct"), "{:.2f}%")),
    ]
    for i, k in enumerate(row_metrics(rows)):  # the first is named with the split the numbers are from
        m = METRICS[k]
        cols.append((f"{m.name} ({split})" if i == 0 else m.name,
                     lambda r, m=m: _num(r.get(m.key), f"{{:.{m.digits}f}}")
                     + (f" ± {(r.get('sd') or {})[m.key]:.{m.digits}f}" if (r.get("sd") or {}).get(m.key) is not None
                        else "")))
    for lab in _labels(rows):
        cols.append((f"F1 {lab}", lambda r, lab=lab: _num((r.get("per_class_f1") or {}).get(lab), "{:.4f}")))
    cols += [
        (f"n ({split})", lambda r: _num(r.get("n"))),  # texts scored: metrics on different n do not compare
        ("train time", lambda r: _secs(r.get("train_seconds"))),
        ("peak memory", lambda r: _num(r.get("peak_memory_mb"), "{:,.0f} MB")),
        ("artifact on disk", lambda r: _mb(r.get("artifact_bytes"))),
        ("full model (fp32)", lambda r: _mb(r.get("full_model_bytes"))),
    ]
    if any(r.get("status", "done") != "done" for r in rows):
        cols.append(("status", lambda r: r.get("status", "done")))
    return cols


def markdown_table(rows: Sequence[dict]) -> str:
    """The comparison table in Markdown (one row per run; numbers right-aligned)."""
    cols = table_columns(rows)
    return tables.markdown_table([h for h, _ in cols], [[f(r) for _, f in cols] for r in rows], right_from=3)


def csv_fields(rows: Sequence[dict]) -> list[str]:
    return (["run", "status", "model", "method", "targets", "r", "alpha"] + _extra_keys(rows)
            + ["trainable_params", "total_params", "trainable_pct", "split", "n", *row_metrics(rows)]
            + [f"f1_{lab}" for lab in _labels(rows)]
            + ["validation_best", "train_seconds", "peak_memory_mb", "artifact_bytes", "full_model_bytes", "path"])


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """The comparison table as CSV with raw numbers (bytes, seconds, fractions)."""
    fields = csv_fields(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")  # not the csv module's '\r\n'
        w.writeheader()
        for r in rows:
            rec = {k: r.get(k) for k in ("run", "status", "model", "method", "targets", "r", "alpha", "split", "n",
                                         *row_metrics(rows), "trainable_pct", "validation_best", "train_seconds",
                                         "peak_memory_mb", "artifact_bytes", "full_model_bytes", "path")}
            rec["trainable_params"], rec["total_params"] = r.get("trainable"), r.get("total")
            for k in _extra_keys(rows):
                rec[k] = _fmt_value((r.get("extra") or {}).get(k))
            for lab in _labels(rows):
                rec[f"f1_{lab}"] = (r.get("per_class_f1") or {}).get(lab)
            w.writerow({k: ("" if v is None else v) for k, v in rec.items()})


def plot_accuracy_vs_params(rows: Sequence[dict], path: str | Path, title: Optional[str] = None) -> Optional[Path]:
    """The rows' first metric (accuracy; micro-F1 or RMSE for other tasks) against trainable
    parameters (see :func:`summarize_run`), as a PNG at `path`; None when no row has both numbers.
    Drawn by :func:`loraclf.evaluation.plots.compare_params`."""
    from ..evaluation import plots

    split = next((r["split"] for r in rows if r.get("split")), "test")
    key = row_metrics(rows)[0]
    fig = plots.compare_params([_as_run(r, split, key) for r in rows], split, key, title=title)
    return None if fig is None else plots.save(fig, Path(path))


def _as_run(row: dict, split: str, key: str = "accuracy") -> dict:
    """A comparison row in the shape the plots take: a name and a metrics.json-like dict."""
    return {"name": row["run"], "metrics": {"params": {"trainable": row.get("trainable")},
                                            "model": {"method": str(row.get("method"))},
                                            split: {key: row.get(key)}}}


# ----------------------------------------------------------------------------- loraclf compare (terminal)


def side_by_side_table(rows: Sequence[dict]) -> str:
    """Metrics as rows, runs as columns (what fits a terminal for a handful of runs)."""
    cols = table_columns(rows)
    body = [[h] + [f(r) for r in rows] for h, f in cols]
    return "\n".join(tables.text_table(body))


def confusion_block(row: dict) -> list[str]:
    cm, labels = row.get("confusion_matrix"), row.get("labels") or []
    if not cm:
        return [row["run"], "(no confusion matrix)"]
    body = [["gold \\ pred"] + list(labels)] + [[lab] + [str(v) for v in line] for lab, line in zip(labels, cm)]
    return [row["run"]] + tables.text_table(body)


def side_by_side_confusion(rows: Sequence[dict], per_line: int = 3) -> str:
    out = []
    for start in range(0, len(rows), per_line):
        blocks = [confusion_block(r) for r in rows[start:start + per_line]]
        height = max(len(b) for b in blocks)
        widths = [max(len(x) for x in b) for b in blocks]
        for i in range(height):
            out.append("    ".join((b[i] if i < len(b) else "").ljust(w) for b, w in zip(blocks, widths)).rstrip())
        out.append("")
    return "\n".join(out).rstrip()


def _read_predictions(path: Path, split: str):
    table = RunDir(path).read_predictions(split)
    if table is None:
        raise LoraclfError(f"{path}: no predictions/{split}.csv to draw examples from")
    return table


def sample_examples(rows: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """n texts with every run's prediction; texts the runs disagree on come first, then mistakes."""
    import numpy as np

    split = rows[0]["split"]
    frames = [_read_predictions(Path(r["path"]), split) for r in rows]
    same = all(len(f) == len(frames[0]) and (f["text"].values == frames[0]["text"].values).all() for f in frames)
    if same:
        texts, golds = list(frames[0]["text"]), list(frames[0]["gold"])
        preds = [list(f["predicted"]) for f in frames]
    else:  # different data or order: align on the text
        maps = [dict(zip(f["text"], zip(f["gold"], f["predicted"]))) for f in frames]
        texts = [t for t in dict.fromkeys(frames[0]["text"]) if all(t in m for m in maps[1:])]
        golds = [maps[0][t][0] for t in texts]
        preds = [[m[t][1] for t in texts] for m in maps]
    if not texts:
        raise LoraclfError("the runs' predictions share no texts; were they evaluated on the same data?")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    disagree = [i for i in order if len({p[i] for p in preds}) > 1]
    disagreeing = set(disagree)
    wrong = [i for i in order if i not in disagreeing and preds[0][i] != golds[i]]
    chosen = list(dict.fromkeys(disagree + wrong + list(order)))[:n]
    return [{"text": texts[i], "gold": golds[i], "predictions": [p[i] for p in preds]} for i in chosen]


def format_examples(rows: Sequence[dict], examples: list[dict], width: int = 110) -> str:
    names = [r["run"] for r in rows]
    scores = not _task_of(rows).exact_answers  # a score is never exactly right: no "(wrong)"
    out = []
    for k, ex in enumerate(examples, 1):
        text = " ".join(ex["text"].split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        out.append(f"[{k}] {text}")
        parts = [f"gold: {ex['gold']}"] + [f"{n}: {p}{'' if scores or p == ex['gold'] else ' (wrong)'}"
                                           for n, p in zip(names, ex["predictions"])]
        out.append("    " + " | ".join(parts))
    return "\n".join(out)


def split_warning(rows: Sequence[dict]) -> Optional[str]:
    """One line when the runs were scored on different texts: a different number of them (n), or different
    files recorded for the split (metrics.json data.sources); None when nothing says so. The comparison
    page (templates/compare.html.j2) words the same check the same way."""
    split = next((r["split"] for r in rows if r.get("split")), "test")
    ns = list(dict.fromkeys(r["n"] for r in rows if r.get("n") is not None))
    sources = list(dict.fromkeys(r["source"] for r in rows if r.get("source")))
    if len(ns) < 2 and len(sources) < 2:
        return None
    told = ([f"n = {', '.join(f'{n:,}' for n in ns)}"] if len(ns) > 1 else []) + (
        [f"files {', '.join(sources)}"] if len(sources) > 1 else [])
    return (f"warning: these runs were scored on different {split} sets ({'; '.join(told)}): "
            "their metrics are not directly comparable")


def compare_text(rows: Sequence[dict], examples: int = 0, seed: int = 0) -> str:
    """What `loraclf compare` prints for :func:`compare_rows`: a warning when the runs were scored on
    different texts, the side-by-side table, confusion matrices, and sample predictions."""
    warning = split_warning(rows)
    parts = ([warning, ""] if warning else []) + [side_by_side_table(rows)]
    if any(r.get("confusion_matrix") for r in rows):  # single-label only: other tasks have no such matrix
        parts += ["", f"confusion matrices ({rows[0]['split']}; rows: gold, columns: predicted)", "",
                  side_by_side_confusion(rows)]
    if examples > 0:
        exs = sample_examples(rows, examples, seed)
        parts += ["", f"examples ({rows[0]['split']}; texts the runs disagree on first, then mistakes, then others; "
                      f"seed {seed})", format_examples(rows, exs)]
    return "\n".join(parts)
