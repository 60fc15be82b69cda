"""Synthetic finished run directories for report tests and the report speed benchmark: any number
of rows and classes, realistic-looking probabilities (short texts are harder), a training history,
metrics computed by loraclf.evaluation.metrics, and an artifact loraclf.json (for the model card)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

WORDS = ("the film was quite good and bad but really not very much of a story plot actor scene music ending "
         "cast script okay dull brilliant boring lovely").split()


def _texts(rng: np.random.Generator, n: int, long_tail: bool) -> list[str]:
    lengths = np.clip(rng.lognormal(2.6 if not long_tail else 5.0, 0.6, n).astype(int), 1, 3000)
    vocab = np.array(WORDS)
    return [" ".join(vocab[rng.integers(0, len(vocab), size=k)]) for k in lengths]


def _probs(rng: np.random.Generator, y: np.ndarray, texts: Sequence[str], k: int) -> np.ndarray:
    lengths = np.array([len(t.split()) for t in texts])
    skill = np.clip(0.55 + 0.12 * np.log1p(lengths), 0.4, 0.97)  # longer texts are easier here
    logits = rng.normal(0, 1.0, (len(y), k))
    right = rng.random(len(y)) < skill
    target = np.where(right, y, (y + rng.integers(1, k, len(y))) % k)
    logits[np.arange(len(y)), target] += rng.uniform(1.0, 5.0, len(y))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def write_predictions(path: Path, texts, y, probs, labels) -> None:
    pred = probs.argmax(1)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "gold", "predicted", "correct"] + [f"p_{n}" for n in labels])
        for i, t in enumerate(texts):
            w.writerow([t, labels[y[i]], labels[pred[i]], int(pred[i] == y[i])] + [f"{p:.6f}" for p in probs[i]])


def fake_run(root: Path, n_test: int = 600, labels: Optional[Sequence[str]] = None, seed: int = 0,
             name: str = "fake", n_val: Optional[int] = None, long_texts: bool = False, method: str = "lora",
             trainable: int = 150_000) -> Path:
    """Write a complete run directory under root/name and return its path."""
    from loraclf.config import Config, DataConfig, ModelConfig
    from loraclf.evaluation.metrics import compute_metrics

    labels = list(labels or ["negative", "positive"])
    k = len(labels)
    rng = np.random.default_rng(seed)
    d = Path(root) / name
    (d / "predictions").mkdir(parents=True)
    (d / "artifact").mkdir()
    metrics: dict = {"run": name, "labels": labels}
    n_val = n_val if n_val is not None else max(n_test // 4, 50)
    for split, n in (("validation", n_val), ("test", n_test)):
        texts = _texts(rng, n, long_texts)
        y = np.arange(n) % k
        rng.shuffle(y)
        probs = _probs(rng, y, texts, k)
        write_predictions(d / "predictions" / f"{split}.csv", texts, y, probs, labels)
        metrics[split] = compute_metrics(y, probs, labels, loss=float(-np.log(probs[np.arange(n), y]).mean()))
    history, steps = [], 60
    for s in range(5, steps + 1, 5):
        history.append({"type": "train", "step": s, "epoch": round(s / 20, 4), "loss": 0.7 * np.exp(-s / 30) + 0.2,
                        "lr": 5e-4 * (1 - s / steps), "samples_per_s": 100.0})
        if s % 20 == 0:
            history.append({"type": "eval", "step": s, "epoch": s / 20, "split": "validation",
                            "loss": 0.3 + 0.1 / s, "accuracy": 0.8 + s / 1000, "macro_f1": 0.79 + s / 1000,
                            "weighted_f1": 0.8, "macro_recall": 0.8, "roc_auc": 0.9, "ece": 0.05, "improved": True})
    (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    cfg = Config(name=name, data=DataConfig(path="synthetic-data-that-does-not-exist"),
                 model=ModelConfig(method=method))
    cfg.save(d / "config.yaml")
    metrics.update({
        "model": {"name": "minilm", "resolved": "minilm", "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
                  "model_type": "bert", "method": method, "target_modules": ["query", "value"],
                  "modules_to_save": ["classifier", "pooler"], "newly_initialised": []},
        "params": {"trainable": trainable, "total": 22_000_000 + trainable, "trainable_pct": trainable / 22e6 * 100,
                   "lora": trainable // 2, "head": trainable - trainable // 2, "other": 0},
        "data": {"sizes": {"train": 5000, "validation": n_val, "test": n_test}, "notes": [],
                 "sources": {}, "token_lengths": {"test": {"mean": 20.0, "median": 18.0, "p95": 50.0, "max": 90,
                                                            "min": 1, "truncated": 3}}},
        "best": {"metric": "accuracy", "value": 0.86, "step": 60, "stopped_early": False, "epochs_run": 3.0,
                 "steps": steps},
        "timing": {"train_seconds": 42.0, "train_samples_per_s": 120.0, "eval_seconds": 3.0, "total_seconds": 50.0,
                   "padding_efficiency": 0.93},
        "environment": {"device": "cpu", "precision": "no", "num_processes": 1, "torch_threads": 2,
                        "cuda_device": None},
    })
    (d / "artifact" / "loraclf.json").write_text(json.dumps({
        "labels": labels, "base_model": "minilm", "base_model_hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "method": method, "max_length": 128, "versions": {"loraclf": "0.1.0", "torch": "x"}}))
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return d


def _common_meta(d: Path, name: str, method: str, labels, task: str) -> dict:
    """config.yaml, history.jsonl and artifact/loraclf.json of a synthetic run, and the metrics.json
    keys every run has (model, params, data, best, timing, environment)."""
    from loraclf.config import Config, DataConfig, ModelConfig

    cfg = Config(name=name, data=DataConfig(path="synthetic-data-that-does-not-exist"),
                 model=ModelConfig(method=method))
    cfg.save(d / "config.yaml")
    (d / "artifact" / "loraclf.json").write_text(json.dumps({
        "labels": list(labels), "task": task, "base_model": "minilm",
        "base_model_hub_id": "sentence-transformers/all-MiniLM-L6-v2", "method": method, "max_length": 128,
        "versions": {"loraclf": "0.1.0", "torch": "x"}}))
    return {"model": {"name": "minilm", "resolved": "minilm", "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
                      "model_type": "bert", "method": method, "target_modules": ["query", "value"],
                      "modules_to_save": ["classifier", "pooler"], "newly_initialised": []},
            "params": {"trainable": 150_000, "total": 22_150_000, "trainable_pct": 0.68, "lora": 75_000,
                       "head": 75_000, "other": 0},
            "timing": {"train_seconds": 42.0, "train_samples_per_s": 120.0, "eval_seconds": 3.0,
                       "total_seconds": 50.0, "padding_efficiency": 0.93},
            "environment": {"device": "cpu", "precision": "no", "num_processes": 1, "torch_threads": 2,
                            "cuda_device": None}}


def _history(d: Path, eval_metrics: dict, steps: int = 60) -> None:
    """A training history whose evaluations carry `eval_metrics` (a task's headline metrics)."""
    history = []
    for s in range(5, steps + 1, 5):
        history.append({"type": "train", "step": s, "epoch": round(s / 20, 4), "loss": 0.7 * np.exp(-s / 30) + 0.2,
                        "lr": 5e-4 * (1 - s / steps), "samples_per_s": 100.0})
        if s % 20 == 0:
            history.append({"type": "eval", "step": s, "epoch": s / 20, "split": "validation", "loss": 0.3 + 0.1 / s,
                            **{k: v * (0.9 + s / 600) for k, v in eval_metrics.items()}, "improved": True})
    (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def fake_multilabel_run(root: Path, n_test: int = 400, labels: Optional[Sequence[str]] = None, seed: int = 0,
                        name: str = "multi", thresholds: str = "per-label") -> Path:
    """A finished multi-label run: label sets (some texts with none), sigmoid-like probabilities that
    rank them, thresholds per label, metrics by loraclf.evaluation.metrics.multilabel_metrics."""
    from loraclf.evaluation.metrics import multilabel_metrics

    labels = list(labels or ["joy", "anger", "fear", "surprise", "love"])
    k = len(labels)
    rng = np.random.default_rng(seed)
    d = Path(root) / name
    (d / "predictions").mkdir(parents=True)
    (d / "artifact").mkdir()
    th = np.round(rng.uniform(0.3, 0.6, k), 2) if thresholds != "fixed" else np.full(k, 0.5)
    metrics: dict = {"run": name, "task": "multi-label", "labels": labels,
                     "thresholds": {"mode": thresholds, "objective": "macro_f1", "chosen_on": "validation",
                                    "values": {n: float(t) for n, t in zip(labels, th)}}}
    prevalence = np.linspace(0.35, 0.08, k)
    for split, n in (("validation", max(n_test // 2, 50)), ("test", n_test)):
        texts = _texts(rng, n, False)
        gold = (rng.random((n, k)) < prevalence).astype(np.int64)
        probs = np.where(gold > 0, rng.beta(4, 2, (n, k)), rng.beta(1, 6, (n, k)))  # ranks gold labels higher
        pred = probs >= th[None, :]
        with open(d / "predictions" / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "gold", "predicted", "correct"] + [f"p_{x}" for x in labels])
            for i, t in enumerate(texts):
                w.writerow([t, ";".join(labels[j] for j in np.flatnonzero(gold[i])),
                            ";".join(labels[j] for j in np.flatnonzero(pred[i])), int((pred[i] == gold[i]).all())]
                           + [f"{p:.6f}" for p in probs[i]])
        q = np.clip(probs, 1e-6, 1 - 1e-6)
        loss = float(-np.mean(gold * np.log(q) + (1 - gold) * np.log(1 - q)))
        metrics[split] = multilabel_metrics(gold, probs, th, labels, loss=loss)
    metrics.update(_common_meta(d, name, "lora", labels, "multi-label"))
    metrics["data"] = {"sizes": {"train": 3000, "validation": metrics["validation"]["n"], "test": n_test},
                       "notes": [], "sources": {}}
    metrics["best"] = {"metric": "macro_f1", "value": metrics["validation"]["macro_f1"], "step": 60,
                       "stopped_early": False, "epochs_run": 3.0, "steps": 60}
    _history(d, {k: metrics["validation"][k] or 0.0 for k in ("micro_f1", "macro_f1", "samples_f1",
                                                               "subset_accuracy", "roc_auc")})
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return d


def fake_regression_run(root: Path, n_test: int = 400, seed: int = 0, name: str = "sts", target: str = "score",
                        pairs: bool = True) -> Path:
    """A finished regression run on 0-5 similarity scores (STS-B-like, two text columns): predictions
    pulled toward the mean, metrics by loraclf.evaluation.metrics.regression_metrics."""
    from loraclf.evaluation.metrics import regression_metrics

    rng = np.random.default_rng(seed)
    d = Path(root) / name
    (d / "predictions").mkdir(parents=True)
    (d / "artifact").mkdir()
    metrics: dict = {"run": name, "task": "regression", "labels": [target]}
    for split, n in (("validation", max(n_test // 2, 50)), ("test", n_test)):
        texts, others = _texts(rng, n, False), _texts(rng, n, False)
        gold = np.round(rng.uniform(0, 5, n), 2)
        pred = np.clip(2.5 + 0.75 * (gold - 2.5) + rng.normal(0, 0.6, n), -0.5, 5.5)
        with open(d / "predictions" / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text"] + (["text_pair"] if pairs else []) + ["gold", "predicted", "error"])
            for i, t in enumerate(texts):
                w.writerow([t] + ([others[i]] if pairs else []) + [f"{gold[i]:.4f}", f"{pred[i]:.4f}",
                                                                    f"{pred[i] - gold[i]:.4f}"])
        metrics[split] = regression_metrics(gold, np.round(pred, 4))
    metrics.update(_common_meta(d, name, "lora", [target], "regression"))
    metrics["data"] = {"sizes": {"train": 3000, "validation": metrics["validation"]["n"], "test": n_test},
                       "notes": [], "sources": {}}
    metrics["best"] = {"metric": "rmse", "value": metrics["validation"]["rmse"], "step": 60, "stopped_early": False,
                       "epochs_run": 3.0, "steps": 60}
    _history(d, {k: metrics["validation"][k] for k in ("rmse", "mae", "r2", "pearson", "spearman")})
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return d


def add_calibration(run_dir: Path, temperature: float = 1.7, applied: bool = True) -> Path:
    """Make a fake_run single-label run look temperature-scaled: its probabilities are the calibrated
    ones; the 'raw' ones before scaling are recovered as softmax(log p * T)."""
    from loraclf.evaluation.metrics import expected_calibration_error, reliability_bins

    m = json.loads((run_dir / "metrics.json").read_text())
    labels = m["labels"]
    m["calibration"] = {"method": "temperature", "temperature": temperature, "applied": applied,
                        "reason": "lowers validation NLL" if applied else "would not lower validation NLL"}
    for split in ("validation", "test"):
        with open(run_dir / "predictions" / f"{split}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        probs = np.array([[float(r[f"p_{x}"]) for x in labels] for r in rows])
        y = np.array([labels.index(r["gold"]) for r in rows])
        z = np.log(np.clip(probs, 1e-12, 1)) * temperature
        raw = np.exp(z - z.max(1, keepdims=True))
        raw /= raw.sum(1, keepdims=True)
        if applied:
            cal = {}
            for when, p in (("before", raw), ("after", probs)):
                conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
                cal[f"nll_{when}"] = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
                cal[f"ece_{when}"] = expected_calibration_error(conf, correct)
                cal[f"reliability_{when}"] = reliability_bins(conf, correct)
            m[split]["calibration"] = cal
    (run_dir / "metrics.json").write_text(json.dumps(m, indent=2))
    return run_dir
