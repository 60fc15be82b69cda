"""Refit a finished single-label run's calibration as `train.calibrate: bias` from its saved predictions.

    .venv/bin/python benchmarks/refit_bias.py RUN_DIR [RUN_DIR ...]

Rebuilds each text's logits (up to a per-text constant, which softmax ignores) from the run's
predictions/validation.csv and test.csv and the temperature it applied, fits a temperature and one
bias per class on validation with the function the run would have used (`fit_temperature_bias`),
and prints test accuracy and macro-F1 before and after. No model is run: this answers "what would a
bias-corrected zero-shot baseline score" for a run that took half an hour to score, without
scoring it again. Test data chooses nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _split(run: Path, split: str, labels: list[str], temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(run / "predictions" / f"{split}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows])
    gold = np.array([labels.index(r["gold"]) for r in rows])
    pred = np.array([labels.index(r["predicted"]) for r in rows])
    if (probs < 1e-4).any():  # the files keep 6 decimals: below this a logit keeps few digits
        print(f"warning: {run.name}/{split}: {(probs < 1e-4).sum()} probabilities below 1e-4 lose precision "
              "in the 6-decimal predictions file; the rebuilt logits are approximate", file=sys.stderr)
    return np.log(np.clip(probs, 1e-12, None)) * temperature, gold, pred


def refit(run: Path) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    from loraclf.tasks import fit_temperature_bias, softmax

    m = json.loads((run / "metrics.json").read_text())
    labels = m["labels"]
    cal = m.get("calibration") or {}
    if cal.get("method") == "bias":
        raise SystemExit(f"{run}: already calibrated with biases")
    t_applied = cal["temperature"] if cal.get("applied") else 1.0
    val_z, val_y, _ = _split(run, "validation", labels, t_applied)
    test_z, test_y, before = _split(run, "test", labels, t_applied)
    t, b = fit_temperature_bias(val_z, val_y)
    after = softmax(test_z / t + b).argmax(1)
    ks = list(range(len(labels)))
    return {"run": run.name, "n_validation": len(val_y), "n_test": len(test_y), "temperature": t,
            "bias": dict(zip(labels, map(float, b))),
            "test_accuracy": [accuracy_score(test_y, before), accuracy_score(test_y, after)],
            "test_macro_f1": [f1_score(test_y, before, labels=ks, average="macro", zero_division=0),
                              f1_score(test_y, after, labels=ks, average="macro", zero_division=0)],
            "test_f1_per_class_after": dict(zip(labels, f1_score(test_y, after, labels=ks, average=None,
                                                                 zero_division=0).tolist()))}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    out = [refit(r) for r in args.runs]
    print("| run | n test | T | biases | test accuracy before → after | test macro-F1 before → after |")
    print("|---|---|---|---|---|---|")
    for r in out:
        bias = ", ".join(f"{k} {v:+.2f}" for k, v in r["bias"].items())
        print(f"| {r['run']} | {r['n_test']:,} | {r['temperature']:.3f} | {bias} | {r['test_accuracy'][0]:.4f} → "
              f"{r['test_accuracy'][1]:.4f} | {r['test_macro_f1'][0]:.4f} → {r['test_macro_f1'][1]:.4f} |")
    return out


if __name__ == "__main__":
    main()
