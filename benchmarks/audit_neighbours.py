"""How many neighbours, and how much weight: the audit's blend on finished audits of planted noise.

Each audit is an --out folder of benchmarks/audit_noise.py (its cross-validation's out-of-fold
predictions, runs/audit/predictions/oof.csv) with the dataset, rows and seed it was made with; the
planted flips are drawn again from those. For every k and weight, every noisy row is ranked by its
blended probability of the given label (as loraclf audit blends it, before confident learning cuts the
flagged set), and the precision where the ranking first reaches recall 0.6 is printed, with the mean
over the audits. Choose on one seed's audits, read the choice on another's; no test split is read.

    python benchmarks/audit_neighbours.py runs/audit-full7:sst2:60610:7 runs/audit-cut7:sst2:4000:7 \\
        runs/audit-ag7:ag_news:4000:7
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_noise import noisy_slice, precision_at_recall  # noqa: E402

RECALLS = (0.3, 0.5, 0.6, 0.7)


def planted(spec: str, noise: float) -> tuple[pd.DataFrame, set, np.ndarray]:
    """The noisy slice, its flipped rows and the out-of-fold probabilities of an audit 'out:dataset:rows:seed'."""
    out, dataset, rows, seed = spec.split(":")
    part, flipped = noisy_slice(dataset, int(rows), noise, int(seed))
    oof = pd.read_csv(Path(out) / "runs" / "audit" / "predictions" / "oof.csv")
    oof = oof[oof["source"].map(lambda s: Path(s).name == "train.csv" and Path(s).parent.name == "noisy-audit")]
    oof = oof.sort_values("row")
    if len(oof) != len(part) or (oof["text"].astype(str).values != part["text"].astype(str).values).any():
        sys.exit(f"{spec}: its out-of-fold rows are not the noisy slice of {dataset}, {rows} rows, seed {seed}")
    labels = sorted(part["label"].unique())
    probs = oof[[f"p_{c}" for c in labels]].to_numpy()
    part["y"] = part["label"].map({c: i for i, c in enumerate(labels)})
    return part, flipped, probs / probs.sum(1)[:, None]


def grid(spec: str, ks: list[int], weights: list[float], noise: float) -> dict:
    """{(k, w): [precision at each recall]} for one audit; (0, 0) is the fold models alone."""
    from loraclf.config import load_config
    from loraclf.studies.neighbours import blend, embed_texts, label_indicator, nearest
    from loraclf.tasks import Predictions

    part, flipped, probs = planted(spec, noise)
    y = part["y"].to_numpy()
    emb = embed_texts(part["text"].astype(str).tolist(), load_config(None).model, 128, quiet=False)
    idx = nearest(emb, max(ks))
    onehot = label_indicator(Predictions(part["text"].tolist(), y, probs))
    out = {}
    for k, w in [(0, 0.0), *itertools.product(ks, weights)]:
        given = (blend(probs, onehot, idx[:, :k], w) if k else probs)[np.arange(len(y)), y]
        ranked = np.argsort(given, kind="stable").tolist()
        out[(k, w)] = [precision_at_recall(ranked, flipped, r) for r in RECALLS]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("audits", nargs="+", help="out:dataset:rows:seed of a finished benchmarks/audit_noise.py run")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--w", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--noise", type=float, default=0.1)
    args = p.parse_args()
    grids = [grid(spec, args.k, args.w, args.noise) for spec in args.audits]
    at = RECALLS.index(0.6)
    print("precision at recall 0.6: " + " / ".join(args.audits) + " (mean), best mean first")
    for c in sorted(grids[0], key=lambda c: -np.mean([g[c][at] for g in grids])):
        cells = " / ".join(f"{g[c][at]:.3f}" for g in grids)
        name = "no neighbours" if c[0] == 0 else f"k {c[0]}, w {c[1]:g}"
        print(f"  {name:14s} {cells} ({np.mean([g[c][at] for g in grids]):.3f})")


if __name__ == "__main__":
    main()
