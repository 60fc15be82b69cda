"""`loraclf.fit`: the scikit-learn / SetFit shape of training, on data in memory or in files.

    clf = loraclf.fit(train_df, test=test_df, model="minilm", epochs=1)
    clf.predict(["a gripping, funny film"]); clf.evaluate(other_df); clf.save_pretrained("my-model")

It builds a config (the same one `loraclf train` reads, so the same checks and errors), saves in-memory
splits where that config can name them (data/tables.py), trains, and returns the loaded Classifier
with its run directory (``clf.run``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

SPLIT_ARGS = ("train", "validation", "test")


def _field_sections() -> dict[str, list[str]]:
    """Each config field name -> the sections that have it (e.g. "epochs" -> ["train"])."""
    from .config import Config

    out: dict[str, list[str]] = {}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            for sub in dataclasses.fields(f.default_factory):
                out.setdefault(sub.name, []).append(f.name)
    return out


def dotted_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as dotted config fields: `train={"lr": 1e-3}` (a section), `train__lr=1e-3`, or a bare
    field name that one section has (`epochs=1` -> train.epochs; `name`, `seed`, `output_dir`, `task` are top-level)."""
    from .config import Config

    top = {f.name for f in dataclasses.fields(Config)}
    sections = _field_sections()
    section_names = {s for secs in sections.values() for s in secs}
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in section_names:  # a whole section
            if not isinstance(value, dict):
                raise ConfigError(f"fit(): {key}= takes a mapping of {key} fields (e.g. {key}={{...}}), not "
                                  f"{type(value).__name__}; the data goes in train=, validation=, test=")
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif "__" in key:
            out[key.replace("__", ".")] = value
        elif key in top:
            out[key] = value
        elif len(sections.get(key, [])) == 1:
            out[f"{sections[key][0]}.{key}"] = value
        elif key in sections:
            raise ConfigError(f"fit(): '{key}' is a field of several sections ("
                              + ", ".join(f"{s}.{key}" for s in sections[key])
                              + f"); write {sections[key][0]}__{key}=...")
        else:
            from .config import flatten

            known = sorted({k.rsplit(".", 1)[-1] for k in flatten(Config().to_dict())})
            import difflib

            near = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"fit(): unknown setting '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
    return out


def _splits(train, validation, test) -> dict[str, Any]:
    from .data.tables import split_dict

    given = split_dict(train)
    if given is not None:  # a DatasetDict (or {"train": ..., "test": ...})
        if validation is not None or test is not None:
            raise ConfigError("fit(): give splits either as one DatasetDict or as train=, validation=, test=")
        return given
    if train is None:
        raise ConfigError("fit(): no training data (train=)")
    return {k: v for k, v in zip(SPLIT_ARGS, (train, validation, test)) if v is not None}


def fit(train, validation=None, test=None, *, model: Optional[str] = None, config=None, quiet: bool = False,
        **settings):
    """Train a classifier and return it, loaded (a :class:`loraclf.Classifier`; ``clf.run`` is its run directory).

    Each of `train`, `validation`, `test` may be a pandas DataFrame, a ``datasets.Dataset``, a list of
    (text, label) tuples (text, second text, label for pairs) or of dicts, a dict of columns, or a path or URL;
    `train` may also be a ``DatasetDict`` holding every split. Without `validation` one is carved from train.
    `config` is a YAML file or a mapping of sections; `settings` set any config field, by name when one
    section has it (``epochs=1``, ``r=16``, ``label_column="sentiment"``), as ``train__lr=1e-3``, or a section
    at a time (``lora={"r": 16}``). Errors are the CLI's (:class:`loraclf.LoraclfError` subclasses).
    """
    from .config import Config, load_config, set_dotted
    from .data.tables import place_tables
    from .training.run import train as train_config

    if isinstance(config, Config):
        tree = config.to_dict()
    else:
        tree = load_config(config).to_dict() if config is not None else {}
    dotted = dotted_settings(settings)
    if model is not None:
        dotted["model.name"] = model
    for key, value in dotted.items():
        set_dotted(tree, key, value)
    for key, value in place_tables(_splits(train, validation, test), tree).items():
        set_dotted(tree, key, value)
    from .training.run import Run

    run = Run(Path(train_config(tree, quiet=quiet).path).resolve())  # absolute: the caller may change folder
    clf = run.load()
    clf.run = run
    return clf
