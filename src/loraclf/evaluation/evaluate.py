"""`loraclf evaluate`: the metrics of a saved artifact on every row of a labelled file or split."""

from __future__ import annotations

from typing import Optional


def evaluate_artifact(path: str, data_cfg_overrides: Optional[list[str]] = None, split: str = "test",
                      batch_size: Optional[int] = None, quiet: bool = False) -> dict:
    """Metrics of a saved artifact on every row of one labelled file or split (data options as in a
    config); nothing is carved, capped or filtered. Labels are read the way the model was trained."""
    from ..deploy.artifact import evaluate_classifier, load

    return evaluate_classifier(load(path), data_cfg_overrides, split, batch_size=batch_size, quiet=quiet)
