"""Studies: sweeps over a grid or list of config changes, and Optuna searches with pruning.

A **sweep file** is a base config plus the points to run::

    base: ../examples/quickstart.yaml      # optional, relative to this file
    config: {data: {max_train_samples: 4000}, train: {epochs: 2}}   # optional, merged over base
    grid: {lora.r: [8, 16], lora.alpha: [16, 32]}                   # cartesian product, and/or
    points:                                                         # an explicit list
      - {name: head-only, model.method: head}
      - {model.method: lora}
    output_dir: runs/my-sweep       # default runs/<file stem>
    split: test                     # split of the comparison table (default test, else validation)

With both ``points`` and ``grid``, every point is crossed with every grid combination. Each point
is a run directory ``<output_dir>/<point name>``; rerunning the sweep skips finished points and
resumes interrupted ones from their checkpoint. After every point the table is rewritten:
``results.md``, ``results.csv`` and ``accuracy_vs_params.png``.

A **search file** has the same ``base``/``config`` plus ``space`` (see :func:`suggest`), ``trials``
and Optuna's ``storage`` (default: a SQLite file in the output folder), so several processes or
machines that point at one storage share the study. See docs/experiments.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from .checkpoint import has_checkpoint
from .compare import dotted, markdown_table, pick_split, plot_accuracy_vs_params, summarize_run, write_csv
from .config import (
    Config,
    build_typed,
    check_field,
    config_from_dict,
    flatten,
    parse_override,
    read_yaml_mapping,
    set_dotted,
)
from .errors import ConfigError, LoraclfError, import_extra
from .rundir import RunLock
from .tasks import HEADLINES

log = logging.getLogger("loraclf")

# Columns the comparison table always has; other varied fields get a column of their own.
SHOWN_KEYS = {"model.method", "lora.r", "lora.alpha", "lora.target_modules", "name"}
RESULT_FILES = ("results.md", "results.csv", "accuracy_vs_params.png")
SPLITS = {"choices": ("validation", "test")}


# ----------------------------------------------------------------------------- spec files
# The top level of sweep and search files, checked by the config's own machinery
# (config.build_typed): unknown keys with the closest real one, types, choices.


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


def _check_fields(overrides: dict, where: str) -> None:
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


# ----------------------------------------------------------------------------- sweeps


@dataclass
class SweepPoint:
    name: str
    overrides: dict
    config: Config

    @property
    def hash(self) -> str:
        return config_hash(self.config)


@dataclass
class Sweep:
    path: Path
    out_dir: Path
    points: list[SweepPoint]
    split: Optional[str] = None
    description: str = ""
    varied: list[str] = field(default_factory=list)


def _value_slug(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return Path(str(v)).name if isinstance(v, str) and "/" in v else str(v)


def point_name(overrides: dict) -> str:
    """A readable folder name from a point's changes: {model.method: lora, lora.r: 8} -> lora-r8."""
    parts = []
    for k, v in overrides.items():
        short = k.split(".")[-1]
        if k in ("model.method", "model.name", "data.path"):
            parts.append(_value_slug(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{short}{_value_slug(v)}")
        else:
            parts.append(f"{short}-{_value_slug(v)}")
    name = "-".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", name)[:120]


def expand_points(spec: dict, where: str) -> list[tuple[str, dict]]:
    """(name, dotted overrides) for every point: `points` crossed with the `grid` product."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: 'grid' must map config fields to lists of values")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: grid field '{k}' must be a non-empty list of values, got {vals!r}")
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    points = spec.get("points")
    if points is None:
        points = [{}]
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{where}: 'points' must be a list of mappings of config fields to values")
    if not grid and not spec.get("points"):
        raise ConfigError(f"{where}: a sweep needs 'grid' (fields -> lists of values) or 'points' (a list)")
    out, seen = [], set()
    for p in points:
        p = dict(p)
        given = p.pop("name", None)
        for g in combos:
            ov = {**p, **g}
            name = str(given) if given and len(combos) == 1 else (
                f"{given}-{point_name(g)}" if given else point_name(ov))
            name = re.sub(r"[^A-Za-z0-9._+=-]+", "_", name)
            base, k = name, 2
            while name in seen:
                name, k = f"{base}-{k}", k + 1
            seen.add(name)
            _check_fields(ov, f"{where}: point '{name}'")
            out.append((name, ov))
    return out


def load_sweep(path: str | Path, sets: Sequence[str] = (), output_dir: Optional[str] = None) -> Sweep:
    """Parse and validate a sweep file; every point's config is checked before anything runs."""
    path = Path(path)
    spec = read_spec(path, SweepFile, "sweep")
    tree = base_tree(spec, path, sets)
    out_dir = Path(output_dir or spec.output_dir or Path("runs") / path.stem)
    points = []
    for name, ov in expand_points(vars(spec), str(path)):
        t = with_overrides(tree, ov)
        t["name"], t["output_dir"] = name, str(out_dir)
        try:
            cfg = config_from_dict(t)
        except ConfigError as e:
            raise ConfigError(f"{path}: point '{name}': {e}") from None
        points.append(SweepPoint(name, ov, cfg))
    varied = list(dict.fromkeys(k for p in points for k in p.overrides if k not in SHOWN_KEYS))
    varied = [k for k in varied if len({json.dumps(p.overrides.get(k), default=str) for p in points}) > 1
              or any(k not in p.overrides for p in points)]
    return Sweep(path, out_dir, points, spec.split, (spec.description or "").strip(), varied)


def _state_file(out_dir: Path) -> Path:
    return out_dir / "points.json"


def _read_state(out_dir: Path) -> dict:
    f = _state_file(out_dir)
    return json.loads(f.read_text()) if f.exists() else {}


def _write_state(out_dir: Path, state: dict) -> None:
    f = _state_file(out_dir)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(f)


def point_status(point: SweepPoint, out_dir: Path, state: Optional[dict] = None) -> str:
    """done | resume (interrupted after a checkpoint) | partial (interrupted before one) | pending.

    Raises if the point's folder holds a run made from a different config, rather than mixing
    stale results into the table.
    """
    d = out_dir / point.name
    if not d.exists():
        return "pending"
    rec = (state if state is not None else _read_state(out_dir)).get(point.name)
    if rec and rec.get("hash") != point.hash:
        old, new = flatten(rec.get("config", {})), flatten(point.config.to_dict())
        diff = [k for k in sorted(set(old) | set(new)) if k not in ("name", "output_dir") and old.get(k) != new.get(k)]
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3]) or "config changed"
        raise LoraclfError(f"sweep point '{point.name}' in {out_dir} was run with a different config ({shown}); "
                           f"delete {d} or use another --output-dir")
    if (d / "metrics.json").exists():
        return "done"
    if has_checkpoint(d):
        return "resume"
    return "partial"


def _row_for(point: SweepPoint, out_dir: Path, split: Optional[str], varied: list[str], status: str,
             metrics: Optional[dict] = None) -> dict:
    d = out_dir / point.name
    if status == "done":
        return summarize_run(d, split, point.name, varied, metrics=metrics)
    c = point.config
    lora = c.model.method == "lora"
    return {"run": point.name, "status": status, "method": c.model.method, "model": c.model.name,
            "targets": (_value_slug(c.lora.target_modules) if lora and c.lora.target_modules
                        else ("default" if lora else None)),
            "r": c.lora.r if lora else None, "alpha": c.lora.alpha if lora else None,
            "extra": {k: dotted(c.to_dict(), k) for k in varied}, "split": split, "path": str(d)}


def write_results(sweep: Sweep, statuses: dict[str, str], title: Optional[str] = None) -> list[dict]:
    """Rewrite results.md / results.csv / accuracy_vs_params.png from the point folders."""
    done = {p.name: json.loads((sweep.out_dir / p.name / "metrics.json").read_text())
            for p in sweep.points if statuses.get(p.name) == "done"}
    split = pick_split(list(done.values()), sweep.split)
    rows = [_row_for(p, sweep.out_dir, split, sweep.varied, statuses.get(p.name, "pending"), done.get(p.name))
            for p in sweep.points]
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, sweep.out_dir / "results.csv")
    from .compare import row_metrics
    from .metrics import METRICS

    shown = METRICS[row_metrics(rows)[0]].name  # accuracy; micro-F1 or RMSE for other tasks
    title = title or f"{sweep.path.stem}: {split} {shown} against trainable parameters"
    png = plot_accuracy_vs_params(rows, sweep.out_dir / "accuracy_vs_params.png", title)
    from . import __version__

    n_done = sum(s == "done" for s in statuses.values())
    lines = [f"# {sweep.path.stem}", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    lines += [f"Sweep file `{sweep.path}`, {len(sweep.points)} points ({n_done} finished); metrics on the "
              f"**{split}** split. Written by loraclf {__version__} on "
              f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.", "", markdown_table(rows), ""]
    if png is not None:
        lines += [f"![{shown} against trainable parameters](accuracy_vs_params.png)", ""]
    lines += ["Trainable params count the LoRA weights, the head and any weights the checkpoint lacks. "
              "Artifact: the weight files in `artifact/` (LoRA: the adapter incl. head; head/full: a whole "
              "checkpoint). Full model: the base model's weights in fp32. Peak memory: peak RSS on CPU, "
              "`torch.cuda.max_memory_allocated` on GPU.", ""]
    (sweep.out_dir / "results.md").write_text("\n".join(lines))
    return rows


def _child_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "loraclf.experiments", *args]


def _run_point_subprocess(point: SweepPoint, out_dir: Path, resume: bool, quiet: bool) -> Optional[str]:
    """Train one point in a fresh Python process (own memory peak, nothing leaks between points).

    Returns None on success, else the error message.
    """
    tmp = out_dir / ".points"
    tmp.mkdir(parents=True, exist_ok=True)
    err = tmp / f"{point.name}.error"
    err.unlink(missing_ok=True)
    if resume:
        args = ["--resume", str(out_dir / point.name)]
    else:
        cfg_file = tmp / f"{point.name}.yaml"
        point.config.save(cfg_file)
        args = ["--config", str(cfg_file)]
    args += ["--error-file", str(err)] + (["--quiet"] if quiet else [])
    proc = subprocess.Popen(_child_cmd(args))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too; let it stop cleanly
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if rc == 0:
        return None
    return err.read_text().strip() if err.exists() else f"training process exited with code {rc}"


def _run_point_inprocess(point: SweepPoint, out_dir: Path, resume: bool, quiet: bool) -> Optional[str]:
    import gc

    from .run import train

    try:
        if resume:
            train(None, resume=str(out_dir / point.name), quiet=quiet)
        else:
            train(copy.deepcopy(point.config), quiet=quiet)
    except LoraclfError as e:
        return str(e)
    finally:
        gc.collect()
    return None


def _remove_point(d: Path) -> None:
    """Delete a point's folder, unless another process trains in it (its lock is held)."""
    if not d.exists():
        return
    lock = RunLock(d).acquire()  # raises "in use by another loraclf process"
    try:
        shutil.rmtree(d, ignore_errors=True)
    finally:
        lock.release()


def _prepare_point(p: SweepPoint, out: Path, status: str, state: dict) -> None:
    """Clear a point interrupted before its first checkpoint and record its config in points.json."""
    if status == "partial":  # nothing to resume
        d = out / p.name
        if any(d.iterdir()) and not (d / "config.yaml").exists():
            raise LoraclfError(f"{d} exists but is not a loraclf run; move it away")
        _remove_point(d)
    state[p.name] = {"hash": p.hash, "overrides": p.overrides, "config": p.config.to_dict()}
    _write_state(out, state)


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict]
    statuses: dict[str, str]
    failed: dict[str, str]
    ran: list[str]


def run_sweep(sweep: Sweep | str | Path, sets: Sequence[str] = (), output_dir: Optional[str] = None,
              isolate: bool = True, quiet: bool = False, fail_fast: bool = False,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run every unfinished point of a sweep, then write the comparison table and plot.

    `isolate` trains each point in its own process (clean per-run peak memory; a crash cannot take
    the sweep down). A point that fails with a user error (e.g. over budget) is recorded and the
    sweep goes on, unless `fail_fast`. Interrupting is safe: rerun to continue.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, sets, output_dir)
    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    statuses = {p.name: point_status(p, out, state) for p in sweep.points}
    failed: dict[str, str] = {}
    ran: list[str] = []
    todo = [p for p in sweep.points if statuses[p.name] != "done"]
    if not quiet:
        echo(f"sweep {sweep.path.name}: {len(sweep.points)} points, {len(sweep.points) - len(todo)} finished, "
             f"{len(todo)} to run -> {out}")
    run_one = _run_point_subprocess if isolate else _run_point_inprocess
    try:
        for i, p in enumerate(todo, 1):
            st = statuses[p.name]
            _prepare_point(p, out, st, state)
            if not quiet:
                what = "resuming" if st == "resume" else "running"
                changes = ", ".join(f"{k}={_value_slug(v)}" for k, v in p.overrides.items()) or "base config"
                echo(f"\n[{i}/{len(todo)}] {what} {p.name} ({changes})")
            error = run_one(p, out, st == "resume", quiet)
            ran.append(p.name)
            if error is None:
                statuses[p.name] = "done"
            else:
                statuses[p.name] = f"failed: {error.splitlines()[0][:200] if error else 'error'}"
                failed[p.name] = error
                if not has_checkpoint(out / p.name):
                    _remove_point(out / p.name)  # nothing trained yet: nothing to keep
                echo(f"point {p.name} failed: {error}")
                if fail_fast:
                    break
            if i < len(todo):  # after the last point, `finally` writes them
                write_results(sweep, statuses)
    finally:
        rows = write_results(sweep, statuses)
    return SweepResult(out, rows, statuses, failed, ran)


# ----------------------------------------------------------------------------- search (Optuna)


def _label(v: Any) -> Any:
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)


def suggest(trial, key: str, spec: Any) -> Any:
    """One value for `key` from its search-space spec.

    - a list, or ``{choices: [...]}``: categorical (values may be lists, e.g. target-module sets);
    - ``{low, high}``: a float, or an int when both bounds are ints; optional ``log: true`` and ``step``;
      ``type: int|float`` forces the kind.
    """
    if isinstance(spec, list) or (isinstance(spec, dict) and "choices" in spec):
        choices = spec if isinstance(spec, list) else spec["choices"]
        labels = [_label(c) for c in choices]
        picked = trial.suggest_categorical(key, labels)
        return choices[labels.index(picked)]
    lo, hi = spec["low"], spec["high"]
    kind = spec.get("type") or ("int" if isinstance(lo, int) and isinstance(hi, int) else "float")
    if kind == "int":
        return trial.suggest_int(key, int(lo), int(hi), step=int(spec.get("step", 1)), log=bool(spec.get("log", False)))
    return trial.suggest_float(key, float(lo), float(hi), step=spec.get("step"), log=bool(spec.get("log", False)))


def _check_space(space: Any, where: str) -> None:
    """Each key a real config field; each choice, and each range's bounds, of the field's type."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: 'space' must map config fields to ranges ({{low, high}}) or lists of choices")
    for k, s in space.items():
        if isinstance(s, dict) and "choices" in s:
            if set(s) != {"choices"} or not isinstance(s["choices"], list):
                raise ConfigError(f"{where}: space '{k}': choices must be a non-empty list (and alone)")
            s = s["choices"]
        if isinstance(s, list):
            if not s:
                raise ConfigError(f"{where}: space '{k}' has no choices")
            for choice in s:
                _check_fields({k: choice}, f"{where}: space")
            continue
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: space '{k}' must be a list of choices or {{low, high}}, got {s!r}")
        if "low" not in s or "high" not in s:
            raise ConfigError(f"{where}: space '{k}' needs low and high (or choices)")
        bad = set(s) - {"low", "high", "log", "step", "type"}
        if bad:
            raise ConfigError(f"{where}: space '{k}': unknown key {sorted(bad)[0]!r} (low, high, log, step, type)")
        if s.get("type") not in (None, "int", "float"):
            raise ConfigError(f"{where}: space '{k}': type must be int or float, got {s['type']!r}")
        if not all(isinstance(s[b], (int, float)) and not isinstance(s[b], bool) for b in ("low", "high")):
            raise ConfigError(f"{where}: space '{k}': low and high must be numbers, got {s['low']!r}, {s['high']!r}")
        _check_fields({k: s["low"]}, f"{where}: space")
        _check_fields({k: s["high"]}, f"{where}: space")
        if not s["low"] < s["high"]:
            raise ConfigError(f"{where}: space '{k}': low must be < high")


@dataclass
class Search:
    path: Path
    tree: dict
    space: dict
    out_dir: Path
    trials: int
    timeout: Optional[float]
    storage: str
    study_name: str
    metric: str
    direction: str
    pruner: Any
    sampler: Any
    split: Optional[str]
    description: str = ""


def load_search(path: str | Path, sets: Sequence[str] = (), output_dir: Optional[str] = None) -> Search:
    from .metrics import METRIC_DIRECTIONS

    path = Path(path)
    spec = read_spec(path, SearchFile, "search")
    tree = base_tree(spec, path, sets)
    _check_space(spec.space, str(path))
    metric = spec.metric or dotted(tree, "train.metric") or "auto"
    if metric != "auto" and metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"{path}: metric must be one of {', '.join(METRIC_DIRECTIONS)}; got {metric!r}")
    tree = with_overrides(tree, {"train.metric": metric})
    # The whole config must hold at both ends of every range (cross-field checks such as lora.dropout < 1).
    ends = {k: (s if isinstance(s, list) else s.get("choices") or [s["low"], s["high"]])
            for k, s in spec.space.items()}
    for smp in ({k: v[0] for k, v in ends.items()}, {k: v[-1] for k, v in ends.items()}):
        try:
            config_from_dict(with_overrides(tree, smp))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    out_dir = Path(output_dir or spec.output_dir or Path("runs") / path.stem)
    storage = spec.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if spec.trials < 1:
        raise ConfigError(f"{path}: trials must be >= 1")
    if metric == "auto":  # last: it may read the data to learn the task
        metric = _default_metric(tree, str(path))
        tree = with_overrides(tree, {"train.metric": metric})
    return Search(path, tree, spec.space, out_dir, spec.trials, spec.timeout, storage,
                  str(spec.study_name or path.stem), metric,
                  "maximize" if METRIC_DIRECTIONS[metric] == "max" else "minimize",
                  spec.pruner, spec.sampler, spec.split, (spec.description or "").strip())


def _default_metric(tree: dict, where: str) -> str:
    """`metric: auto` of a search: the task's own selection metric (reading the data when the task is
    `auto`, since the label column decides it)."""
    from .data import load_data
    from .tasks import TASKS

    task = dotted(tree, "task") or "auto"
    if task == "auto":
        try:
            cfg = config_from_dict(tree)
            task = load_data(cfg.data, cfg.seed).task
        except LoraclfError as e:
            raise ConfigError(f"{where}: {e}") from None
    return TASKS[task].default_metric


def _optuna():
    """optuna, or a one-line error naming the extra that installs it."""
    return import_extra("optuna", "search")


def _make_optuna(what: str, spec: Any, makers: dict, fallback: str, defaults: Optional[dict] = None):
    """An Optuna pruner or sampler from a search file's `pruner` / `sampler`: a name, or a mapping of
    `type` plus keyword arguments; errors name the field."""
    kw = {}
    if isinstance(spec, dict):
        kw = {k: v for k, v in spec.items() if k != "type"}
        spec = spec.get("type", fallback)
    if spec not in makers:
        raise ConfigError(f"{what} must be {'none or ' if what == 'pruner' else ''}one of "
                          f"{', '.join(makers)}; got {spec!r}")
    kw = {**(defaults or {}).get(spec, {}), **kw}
    try:
        return makers[spec](**kw)
    except TypeError as e:
        raise ConfigError(f"{what} {spec}: {e}") from None


def _make_pruner(spec: Any):
    optuna = _optuna()
    if spec in (None, "none", False):
        return optuna.pruners.NopPruner()
    makers = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
              "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
              "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner}
    return _make_optuna("pruner", spec, makers, "median", {"median": {"n_startup_trials": 3}})


def _make_sampler(spec: Any):
    optuna = _optuna()
    makers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    return _make_optuna("sampler", spec, makers, "tpe")


def _make_storage(url: str):
    optuna = _optuna()

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        # A heartbeat lets a restarted search mark trials of killed processes failed and retry them once.
        import warnings

        st = optuna.storages
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(st, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": st.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": st.RetryFailedTrialCallback(max_retry=1)}
            return st.RDBStorage(url, heartbeat_interval=60, grace_period=180, **retry)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"storage {url!r}: {str(e).splitlines()[0][:200]}") from None


FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class SearchResult:
    study: Any
    out_dir: Path
    best_config: Optional[Path]
    rows: list[dict]


def _open_study(search: Search, quiet: bool):
    """Create the study in its storage, or load it when another worker (or an earlier run) made it."""
    optuna = _optuna()
    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(study_name=search.study_name, storage=_make_storage(search.storage),
                                   direction=search.direction, load_if_exists=True,
                                   sampler=_make_sampler(search.sampler), pruner=_make_pruner(search.pruner))
    except ValueError as e:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {search.study_name!r} in {search.storage}: {e}") from None


def _objective(search: Search, quiet: bool, echo: Callable[[str], None]) -> Callable[[Any], float]:
    """One trial: suggest the space's values, train them as a run under <out>/trials, return the
    best validation value; validation metrics at each evaluation feed the pruner."""
    optuna = _optuna()
    out = search.out_dir

    def objective(trial) -> float:
        from .run import train

        overrides = {k: suggest(trial, k, s) for k, s in search.space.items()}
        name = f"trial-{trial.number:04d}"
        tree = with_overrides(search.tree, overrides)
        tree["name"], tree["output_dir"] = name, str(out / "trials")
        trial.set_user_attr("overrides", json.loads(json.dumps(overrides, default=str)))
        trial.set_user_attr("run_dir", str(out / "trials" / name))
        cfg = config_from_dict(tree)
        if not quiet:
            echo(f"\ntrial {trial.number}: " + ", ".join(f"{k}={_value_slug(v)}" for k, v in overrides.items()))

        def report(rec: dict) -> None:
            if rec.get("type") != "eval" or rec.get(search.metric) is None:
                return
            trial.report(float(rec[search.metric]), step=int(rec["step"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {rec['step']} ({search.metric}={rec[search.metric]:.4f})")

        run_dir = out / "trials" / name
        try:
            run = train(cfg, quiet=quiet, callback=report)
        except BaseException:
            if not (run_dir / "metrics.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        m = run.metrics
        for split in ("validation", "test"):
            if m.get(split):
                for key in HEADLINES[m.get("task", "single-label")][:2]:
                    trial.set_user_attr(f"{split}_{key}", m[split][key])
        trial.set_user_attr("trainable_params", m["params"]["trainable"])
        value = m["best"]["value"]
        if value is None:
            raise LoraclfError("the run recorded no validation metric")
        return float(value)

    return objective


def run_search(search: Search | str | Path, sets: Sequence[str] = (), output_dir: Optional[str] = None,
               trials: Optional[int] = None, timeout: Optional[float] = None, storage: Optional[str] = None,
               study_name: Optional[str] = None, quiet: bool = False,
               echo: Callable[[str], None] = print) -> SearchResult:
    """Run (or join) an Optuna study until it holds `trials` finished trials, then write best.yaml.

    Trials optimise the best *validation* value of `metric`; test metrics are reported, never used
    to choose. Validation metrics at each evaluation feed the pruner, so set train.eval_steps for
    pruning finer than once per epoch.
    """
    _optuna()  # a missing extra is named before any data is read
    if not isinstance(search, Search):
        search = load_search(search, sets, output_dir)
    for key, value in (("trials", trials), ("timeout", timeout), ("storage", storage), ("study_name", study_name)):
        if value is not None and value != "":
            setattr(search, key, value)
    search.out_dir.mkdir(parents=True, exist_ok=True)
    study = _open_study(search, quiet)
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    states = tuple(getattr(TrialState, s) for s in FINISHED)
    done = len(study.get_trials(deepcopy=False, states=states))
    if done < search.trials:
        if not quiet:
            echo(f"search {search.study_name}: {done} of {search.trials} trials finished; storage {search.storage}")
        try:
            study.optimize(_objective(search, quiet, echo), n_trials=search.trials - done, timeout=search.timeout,
                           catch=(LoraclfError,), callbacks=[MaxTrialsCallback(search.trials, states=states)],
                           gc_after_trial=True)
        except KeyboardInterrupt:  # keep what finished: rerunning the command continues the study
            write_search_results(search, study)
            raise
    best_path, rows = write_search_results(search, study)
    return SearchResult(study, search.out_dir, best_path, rows)


def _search_rows(search: Search, study) -> list[dict]:
    from optuna.trial import TrialState

    rows = []
    keys = list(search.space)
    for t in study.get_trials(deepcopy=False):
        d = Path(t.user_attrs.get("run_dir", search.out_dir / "trials" / f"trial-{t.number:04d}"))
        if t.state == TrialState.COMPLETE and (d / "metrics.json").exists():
            r = summarize_run(d, search.split, d.name, keys)
        else:
            r = {"run": d.name, "extra": {k: t.user_attrs.get("overrides", {}).get(k) for k in keys},
                 "split": search.split or "test", "path": str(d)}
        r["status"] = t.state.name.lower() + ("" if t.state != TrialState.COMPLETE or (d / "metrics.json").exists()
                                              else " (run on another machine)")
        r["validation_best"] = t.value
        rows.append(r)
    return rows


def write_search_results(search: Search, study) -> tuple[Optional[Path], list[dict]]:
    """best.yaml (rerun with `loraclf train -c`), results.md / results.csv / accuracy_vs_params.png.
    Returns best.yaml's path (None before a trial completes) and the result rows."""
    from optuna.trial import TrialState

    out = search.out_dir
    rows = _search_rows(search, study)
    if rows:
        write_csv(rows, out / "results.csv")
        plot_accuracy_vs_params([r for r in rows if r.get("status") == "complete"], out / "accuracy_vs_params.png",
                                f"{search.study_name}: trials")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_path = None
    lines = [f"# search {search.study_name}", ""]
    if search.description:
        lines += [search.description, ""]
    if complete:
        best = study.best_trial
        tree = with_overrides(search.tree, best.user_attrs.get("overrides", {}))
        tree["name"], tree["output_dir"] = None, "runs"
        cfg = config_from_dict(tree)
        best_path = out / "best.yaml"
        header = (f"# Best trial of Optuna study '{search.study_name}' ({search.storage}): trial {best.number}, "
                  f"validation {search.metric} = {best.value:.4f}\n# chosen: "
                  + ", ".join(f"{k}={_value_slug(v)}" for k, v in best.user_attrs.get("overrides", {}).items())
                  + f"\n# rerun: loraclf train -c {best_path}\n")
        best_path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        lines += [f"Best: trial {best.number}, validation {search.metric} = {best.value:.4f} "
                  f"(`loraclf train -c {best_path}` reruns it).", ""]
    counts = {s: len(study.get_trials(deepcopy=False, states=(getattr(TrialState, s),)))
              for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    lines += [f"Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
              f"{counts['RUNNING']} running. Objective: best validation {search.metric} ({search.direction}); "
              "test metrics are shown, never used to choose.", ""]
    if rows:
        lines += [markdown_table(rows), ""]
    (out / "results.md").write_text("\n".join(lines))
    return best_path, rows


# ----------------------------------------------------------------------------- child process entry


def _child_main(argv: Optional[list[str]] = None) -> int:
    """`python -m loraclf.experiments`: train one sweep point; user errors go to --error-file."""
    p = argparse.ArgumentParser(prog="loraclf.experiments")
    p.add_argument("--config")
    p.add_argument("--resume")
    p.add_argument("--error-file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from .cli import setup_process

    setup_process(args.quiet)
    from .run import train

    try:
        train(args.config, resume=args.resume, quiet=args.quiet)
    except LoraclfError as e:
        if args.error_file:
            Path(args.error_file).write_text(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main())
