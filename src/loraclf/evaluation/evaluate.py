"""`loraclf evaluate`: the metrics of a saved artifact on every row of a labelled file or split."""

from __future__ import annotations

import json
from typing import Optional

from ..errors import DataError


def evaluate_artifact(path: str, data_cfg_overrides: Optional[list[str]] = None, split: str = "test",
                      batch_size: Optional[int] = None, quiet: bool = False) -> dict:
    """Metrics of a saved artifact on every row of one labelled file or split (data options as in a
    config); nothing is carved, capped or filtered. Labels are read the way the model was trained."""
    from ..deploy.artifact import load

    return evaluate_classifier(load(path), data_cfg_overrides, split, batch_size=batch_size, quiet=quiet)


def evaluate_classifier(clf, data_cfg_overrides: Optional[list[str]] = None, split: str = "test", table=None,
                        batch_size: Optional[int] = None, quiet: bool = True) -> dict:
    """Metrics of a loaded classifier on a labelled split that the data options name, or on `table` (a
    DataFrame with the columns the model was trained on, unless the options say others)."""
    from ..config import load_config
    from ..data import load_labelled_split
    from ..tasks.labels import LabelSet

    overrides = list(data_cfg_overrides or [])
    for key, fallback in (("text_column", "text"), ("label_column", "label"), ("label_columns", None),
                          ("label_separator", ";")):  # as the model was trained, unless given
        value = clf.meta.get(key, fallback)
        if value is not None and not any(o.startswith(f"data.{key}=") for o in overrides):
            overrides.append(f"data.{key}={json.dumps(value)}")
    cfg = load_config(None, overrides)
    task = type(clf.task)
    texts, pairs, gold_rows, source = load_labelled_split(cfg.data, split, task, table)
    try:
        gold = task.label_array(gold_rows, LabelSet(clf.labels), source, split)
    except DataError as e:  # the same check as training, worded for a model rather than a train split
        raise DataError(str(e).replace(", which train lacks it", ", unknown to the model")) from None
    logits = clf.logits(texts, batch_size or cfg.train.eval_batch_size, pairs, progress=not quiet)
    return {"task": clf.task.name, **clf.task.evaluate(logits, gold)[0]}
