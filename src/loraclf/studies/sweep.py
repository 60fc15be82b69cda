"""Sweeps: a base config and the points to run, one run directory each, then one comparison table.

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
``results.md``, ``results.csv`` and ``accuracy_vs_params.png``. ``python -m loraclf.studies.sweep``
trains one point in a process of its own.
"""

from __future__ import annotations

import argparse
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
from typing import Callable, Optional, Sequence

from ..config import (
    Config,
    config_from_dict,
    flatten,
)
from ..errors import ConfigError, LoraclfError
from ..schema import RunDir
from ..training.checkpoint import has_checkpoint
from ..training.rundir import RunLock
from .compare import dotted, lora_columns, markdown_table, pick_split, plot_accuracy_vs_params, summarize_run, write_csv
from .specs import SweepFile, base_tree, check_fields, config_hash, read_spec, value_slug, with_overrides

log = logging.getLogger("loraclf")


# Columns the comparison table always has; other varied fields get a column of their own.
SHOWN_KEYS = {"model.method", "lora.r", "lora.alpha", "lora.target_modules", "name"}


RESULT_FILES = ("results.md", "results.csv", "accuracy_vs_params.png")


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


def point_name(overrides: dict) -> str:
    """A readable folder name from a point's changes: {model.method: lora, lora.r: 8} -> lora-r8."""
    parts = []
    for k, v in overrides.items():
        short = k.split(".")[-1]
        if k in ("model.method", "model.name", "data.path"):
            parts.append(value_slug(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{short}{value_slug(v)}")
        else:
            parts.append(f"{short}-{value_slug(v)}")
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
            check_fields(ov, f"{where}: point '{name}'")
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
    if RunDir(d).finished:
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
    lora = lora_columns(c.model.method, value_slug(c.lora.target_modules) if c.lora.target_modules else "default",
                         c.lora.r, c.lora.alpha)
    return {"run": point.name, "status": status, "method": c.model.method, "model": c.model.name, **lora,
            "extra": {k: dotted(c.to_dict(), k) for k in varied}, "split": split, "path": str(d)}


def write_results(sweep: Sweep, statuses: dict[str, str], title: Optional[str] = None) -> list[dict]:
    """Rewrite results.md / results.csv / accuracy_vs_params.png from the point folders."""
    done = {p.name: RunDir(sweep.out_dir / p.name).read_metrics()
            for p in sweep.points if statuses.get(p.name) == "done"}
    split = pick_split(list(done.values()), sweep.split)
    rows = [_row_for(p, sweep.out_dir, split, sweep.varied, statuses.get(p.name, "pending"), done.get(p.name))
            for p in sweep.points]
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, sweep.out_dir / "results.csv")
    from ..evaluation.metrics import METRICS
    from .compare import row_metrics

    shown = METRICS[row_metrics(rows)[0]].name  # accuracy; micro-F1 or RMSE for other tasks
    title = title or f"{sweep.path.stem}: {split} {shown} against trainable parameters"
    png = plot_accuracy_vs_params(rows, sweep.out_dir / "accuracy_vs_params.png", title)
    from .._version import __version__

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
    return [sys.executable, "-m", "loraclf.studies.sweep", *args]


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

    from ..training.run import train

    try:
        if resume:
            train(None, resume=str(out_dir / point.name), quiet=quiet)
        else:
            train(point.config, quiet=quiet)  # frozen: the run cannot change it
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
                changes = ", ".join(f"{k}={value_slug(v)}" for k, v in p.overrides.items()) or "base config"
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


def _child_main(argv: Optional[list[str]] = None) -> int:
    """`python -m loraclf.studies.sweep`: train one sweep point; user errors go to --error-file."""
    p = argparse.ArgumentParser(prog="loraclf.studies.sweep")
    p.add_argument("--config")
    p.add_argument("--resume")
    p.add_argument("--error-file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from ..console import setup_process

    setup_process(args.quiet)
    from ..training.run import train

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
