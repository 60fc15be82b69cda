"""Study files: the shared shape of sweep and search files (a base config, inline config, CLI
overrides), checked by the config's own machinery: unknown keys with the closest real one, types and
choices. See docs/experiments.md."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import (
    Config,
    Range,
    build_typed,
    check_field,
    parse_override,
    read_yaml_mapping,
    set_dotted,
)
from ..errors import ConfigError

log = logging.getLogger("loraclf")


SPLITS = {"choices": ("validation", "test")}


@dataclass
class SweepFile:
    base: Optional[str] = None  # a config file, relative to the sweep file
    config: Optional[dict] = None  # config sections (or dotted keys) merged over base
    grid: Optional[dict] = None  # config field -> list of values; every combination is a point
    points: Optional[list] = None  # mappings of config field -> value (and an optional name)
    output_dir: Optional[str] = None
    split: Optional[str] = field(default=None, metadata=SPLITS)
    description: Optional[str] = None


@dataclass
class SearchFile:
    base: Optional[str] = None
    config: Optional[dict] = None
    space: Optional[dict] = None  # config field -> list of choices, {choices}, or {low, high, log, step, type}
    trials: int = 20
    timeout: Optional[float] = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    metric: Optional[str] = None
    pruner: Optional[Any] = "median"
    sampler: Optional[Any] = "tpe"
    output_dir: Optional[str] = None
    split: Optional[str] = field(default=None, metadata=SPLITS)
    description: Optional[str] = None
    # Seconds between a running trial's heartbeats, and without one before another worker fails and retries
    # it (default 3 x heartbeat). Short values let a test see a killed worker's trial retried in seconds.
    heartbeat: int = field(default=60, metadata={"range": Range.parse(">=1")})
    grace_period: Optional[int] = field(default=None, metadata={"range": Range.parse(">=1")})


def read_spec(path: str | Path, cls: type, kind: str) -> Any:
    """A sweep or search file as its typed spec (SweepFile / SearchFile); one-line ConfigErrors."""
    p = Path(path)
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    tree = read_yaml_mapping(p, kind, f"a {kind} file is a mapping ({keys})")
    try:
        return build_typed(cls, tree, f"{kind} key")
    except ConfigError as e:
        listing = f"; {kind} keys: {keys}" if str(e).startswith(f"unknown {kind} key") else ""
        raise ConfigError(f"{p}: {e}{listing}") from None


def file_kind(path: str | Path) -> str:
    """'sweep', 'search' or 'config': what a YAML file holds, from its top-level keys."""
    tree = read_yaml_mapping(path, "config", "top level must be a mapping")
    return "sweep" if "grid" in tree or "points" in tree else "search" if "space" in tree else "config"


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        elif "." in str(k):  # dotted keys are allowed in `config:` too
            set_dotted(out, str(k), copy.deepcopy(v))
        else:
            out[k] = copy.deepcopy(v)
    return out


def base_tree(spec: SweepFile | SearchFile, spec_path: str | Path, sets: Sequence[str] = ()) -> dict:
    """The base config as a plain tree: `base` file, then inline `config`, then CLI --set overrides."""
    tree: dict = {}
    if spec.base:
        b = Path(spec.base).expanduser()
        if not b.is_absolute() and not b.exists():
            b = Path(spec_path).parent / b
        if not b.is_file():
            raise ConfigError(f"{spec_path}: base config not found: {spec.base} (paths are relative to the file)")
        tree = read_yaml_mapping(b, "base config", "top level must be a mapping of config sections")
    if spec.config is not None:
        tree = _deep_merge(tree, spec.config)
    for item in sets or ():
        k, v = parse_override(item)
        set_dotted(tree, k, v)
    return tree


def with_overrides(tree: dict, overrides: dict) -> dict:
    out = copy.deepcopy(tree)
    for k, v in overrides.items():
        set_dotted(out, k, copy.deepcopy(v))
    return out


def check_fields(overrides: dict, where: str) -> None:
    """Every key a real config field and its value of the field's type (config.check_field)."""
    for k, v in overrides.items():
        try:
            check_field(str(k), v)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def config_hash(cfg: Config) -> str:
    d = cfg.to_dict()
    d.pop("name", None)
    d.pop("output_dir", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def value_slug(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return Path(str(v)).name if isinstance(v, str) and "/" in v else str(v)
