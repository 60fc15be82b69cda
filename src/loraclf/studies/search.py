"""Optuna searches with pruning.

A **search file** has a sweep's ``base``/``config`` plus ``space`` (see :func:`suggest`), ``trials``
and Optuna's ``storage`` (default: a SQLite file in the output folder; PostgreSQL or MySQL for machines
that share one), so several processes or machines that point at one storage share the study: a
:class:`StudyLock` makes their check-then-start of a trial atomic, so together they start exactly
``trials``, and a heartbeat lets a survivor fail and retry a killed worker's trial. See docs/experiments.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from ..config import (
    config_from_dict,
)
from ..errors import ConfigError, EnvironmentError_, LoraclfError, import_extra
from ..schema import RunDir
from ..tasks import task_class
from .compare import dotted, markdown_table, plot_accuracy_vs_params, summarize_run, write_csv
from .specs import SearchFile, base_tree, check_fields, read_spec, value_slug, with_overrides

log = logging.getLogger("loraclf")


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
                check_fields({k: choice}, f"{where}: space")
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
        check_fields({k: s["low"]}, f"{where}: space")
        check_fields({k: s["high"]}, f"{where}: space")
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
    heartbeat: int = 60
    grace_period: int = 180


def load_search(path: str | Path, sets: Sequence[str] = (), output_dir: Optional[str] = None) -> Search:
    from ..evaluation.metrics import METRIC_DIRECTIONS

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
    grace = 3 * spec.heartbeat if spec.grace_period is None else spec.grace_period
    if grace <= spec.heartbeat:  # a live trial would be failed as stale between two of its heartbeats
        raise ConfigError(f"{path}: grace_period ({grace}) must be longer than heartbeat ({spec.heartbeat})")
    if metric == "auto":  # last: it may read the data to learn the task
        metric = _default_metric(tree, str(path))
        tree = with_overrides(tree, {"train.metric": metric})
    return Search(path, tree, spec.space, out_dir, spec.trials, spec.timeout, storage,
                  str(spec.study_name or path.stem), metric,
                  "maximize" if METRIC_DIRECTIONS[metric] == "max" else "minimize",
                  spec.pruner, spec.sampler, spec.split, (spec.description or "").strip(), spec.heartbeat, grace)


def _default_metric(tree: dict, where: str) -> str:
    """`metric: auto` of a search: the task's own selection metric (reading the data when the task is
    `auto`, since the label column decides it)."""
    from ..data import load_data
    from ..tasks import TASKS

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


def _grid(space: dict, trials: int) -> dict:
    """GridSampler's search space: every space entry a list of choices (as the labels `suggest` passes)."""
    grid = {}
    for k, s in space.items():
        if not (isinstance(s, list) or (isinstance(s, dict) and "choices" in s)):
            raise ConfigError(f"sampler grid: space '{k}' must be a list of choices (a grid has no ranges)")
        grid[k] = [_label(c) for c in (s if isinstance(s, list) else s["choices"])]
    n = 1
    for values in grid.values():
        n *= len(values)
    if trials > n:
        raise ConfigError(f"sampler grid: the space has {n} points; trials must be <= {n}, got {trials}")
    return grid


def _make_sampler(spec: Any, space: Optional[dict] = None, trials: int = 1):
    """`grid` visits each combination of the space's choices once, in an order every worker derives alike
    (its seed defaults to 0), so a study shared by workers sees the same configs as one worker alone."""
    optuna = _optuna()
    makers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
              "grid": lambda **kw: optuna.samplers.GridSampler(_grid(space or {}, trials), **kw)}
    return _make_optuna("sampler", spec, makers, "tpe")


def shown(url: str) -> str:
    """A storage URL fit for logs and files: its password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the storage itself will say so
        return url


def _driver_missing(url: str, e: ImportError) -> EnvironmentError_:
    """One line naming the pip command for a database driver SQLAlchemy could not import."""
    name = e.name or str(e)
    hint = {"psycopg": "pip install 'loraclf[search]' (it brings psycopg[binary])",  # SQLAlchemy >= 2.1's default
            "psycopg2": "pip install psycopg2-binary, or write the URL postgresql+psycopg:// (loraclf[search])",
            }.get(name, f"pip install {name}")
    return EnvironmentError_(f"storage {shown(url)}: its database driver {name} is not installed: {hint}")


def _make_storage(url: str, heartbeat: int = 60, grace_period: int = 180):
    """An RDBStorage whose running trials beat every `heartbeat` seconds; a trial silent for `grace_period`
    (its process killed) is failed by the next worker that starts a trial, and retried once."""
    optuna = _optuna()

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        st = optuna.storages
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(st, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": st.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": st.RetryFailedTrialCallback(max_retry=1)}
            return st.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace_period, **retry)
    except ModuleNotFoundError as e:
        raise _driver_missing(url, e) from None
    except (ImportError, ValueError) as e:
        raise ConfigError(f"storage {shown(url)!r}: {str(e).splitlines()[0][:200]}") from None


class StudyLock:
    """Serialises, across every worker of one study, what must not interleave: creating the tables and
    the study, and counting the trials then starting one (so workers together start exactly `trials`, and
    a grid point goes to one worker). PostgreSQL and MySQL: a server-side lock on a connection of its
    own, which the server drops when its holder dies; SQLite: a file lock beside the database; other
    databases: none (workers may then overshoot `trials` by one each)."""

    def __init__(self, url: str, study_name: str):
        self.held, self._fh, self._engine, self._conn, self._sql = False, None, None, None, None
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        key = hashlib.sha1(f"loraclf-study:{study_name}".encode()).digest()
        if dialect == "sqlite" and url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
            db = Path(url[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(f"{db}.lock", "a")
        elif dialect in ("postgresql", "mysql", "mariadb"):
            import sqlalchemy as sa

            try:
                self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
                self._connect()
            except ModuleNotFoundError as e:
                raise _driver_missing(url, e) from None
            except sa.exc.SQLAlchemyError as e:
                raise ConfigError(f"storage {shown(url)}: {str(e).splitlines()[0][:200]}") from None
            if dialect == "postgresql":
                self._sql = ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)",
                             int.from_bytes(key[:8], "big", signed=True))
            else:
                self._sql = ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", key.hex()[:60])

    def _connect(self) -> None:
        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def acquire(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_EX)
        elif self._conn is not None:
            import sqlalchemy as sa

            try:
                self._conn.execute(sa.text(self._sql[0]), {"k": self._sql[2]})
            except sa.exc.SQLAlchemyError:  # the idle connection was dropped (a server restart): once more
                self._conn.invalidate()
                self._connect()
                self._conn.execute(sa.text(self._sql[0]), {"k": self._sql[2]})
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
        elif self._conn is not None:
            import sqlalchemy as sa

            try:
                self._conn.execute(sa.text(self._sql[1]), {"k": self._sql[2]})
            except sa.exc.OperationalError:  # connection gone: the server dropped the lock with it
                self._conn.invalidate()

    def close(self) -> None:
        self.release()
        for h in (self._fh, self._conn):
            if h is not None:
                h.close()

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # -q: the results and errors only
    try:
        return optuna.create_study(study_name=search.study_name,
                                   storage=_make_storage(search.storage, search.heartbeat, search.grace_period),
                                   direction=search.direction, load_if_exists=True,
                                   sampler=_make_sampler(search.sampler, search.space, search.trials),
                                   pruner=_make_pruner(search.pruner))
    except ValueError as e:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {search.study_name!r} in {shown(search.storage)}: {e}") from None


def _objective(search: Search, quiet: bool, echo: Callable[[str], None]) -> Callable[[Any], float]:
    """One trial: suggest the space's values, train them as a run under <out>/trials, return the
    best validation value; validation metrics at each evaluation feed the pruner."""
    optuna = _optuna()
    out = search.out_dir

    def objective(trial) -> float:
        from ..training.run import train

        overrides = {k: suggest(trial, k, s) for k, s in search.space.items()}
        name = f"trial-{trial.number:04d}"
        tree = with_overrides(search.tree, overrides)
        tree["name"], tree["output_dir"] = name, str(out / "trials")
        trial.set_user_attr("overrides", json.loads(json.dumps(overrides, default=str)))
        trial.set_user_attr("run_dir", str(out / "trials" / name))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, in a shared study
        cfg = config_from_dict(tree)
        if not quiet:
            echo(f"\ntrial {trial.number}: " + ", ".join(f"{k}={value_slug(v)}" for k, v in overrides.items()))

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
            if not RunDir(run_dir).finished:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        m = run.metrics
        for split in ("validation", "test"):
            if m.get(split):
                for key in task_class(m.get("task")).headline[:2]:
                    trial.set_user_attr(f"{split}_{key}", m[split][key])
        trial.set_user_attr("trainable_params", m["params"]["trainable"])
        value = m["best"]["value"]
        if value is None:
            raise LoraclfError("the run recorded no validation metric")
        return float(value)

    return objective


def _counted(study) -> tuple[int, int]:
    """(finished, running) trials toward `trials`. A trial failed because its worker died and retried
    (RetryHeartbeatStaleTrialCallback) counts through its retry, not twice."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    finished = sum(t.state.name in FINISHED and t.number not in retried for t in trials)
    return finished, sum(t.state.name == "RUNNING" for t in trials)


def _fail_stale(study) -> None:
    """Fail (and queue a retry of) every running trial whose worker stopped beating."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _work(search: Search, study, lock: StudyLock, objective: Callable[[Any], float]) -> None:
    """Start trials one at a time while finished + running trials (all workers') are short of `trials`; the
    count and Optuna's ask (which takes a queued retry first) run under the lock, released as the trial
    starts. Then wait for the other workers' running trials: each ends, or goes stale (its worker killed)
    and comes back as a retry to run here, so the study is complete when any worker returns."""
    start = time.monotonic()

    def run(trial) -> float:
        lock.release()  # this trial is taken: other workers may count and start theirs
        return objective(trial)

    while search.timeout is None or time.monotonic() - start < search.timeout:
        with lock:
            _fail_stale(study)
            finished, running = _counted(study)
            if finished + running < search.trials:
                study.optimize(run, n_trials=1, catch=(LoraclfError,), gc_after_trial=True)
                continue
        if finished >= search.trials:
            return
        time.sleep(min(search.heartbeat, 5))


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
    lock = StudyLock(search.storage, search.study_name)
    try:
        with lock:  # two workers starting at once on an empty database would both create the tables
            study = _open_study(search, quiet)
            _fail_stale(study)
            done = _counted(study)[0]
        if done < search.trials:
            if not quiet:
                echo(f"search {search.study_name}: {done} of {search.trials} trials finished; "
                     f"storage {shown(search.storage)}")
            try:
                _work(search, study, lock, _objective(search, quiet, echo))
            except KeyboardInterrupt:  # keep what finished: rerunning the command continues the study
                write_search_results(search, study)
                raise
    finally:
        lock.close()
    best_path, rows = write_search_results(search, study)
    return SearchResult(study, search.out_dir, best_path, rows)


def _search_rows(search: Search, study) -> list[dict]:
    from optuna.trial import TrialState

    rows = []
    keys = list(search.space)
    for t in study.get_trials(deepcopy=False):
        d = Path(t.user_attrs.get("run_dir", search.out_dir / "trials" / f"trial-{t.number:04d}"))
        if t.state == TrialState.COMPLETE and RunDir(d).finished:
            r = summarize_run(d, search.split, d.name, keys)
        else:
            r = {"run": d.name, "extra": {k: t.user_attrs.get("overrides", {}).get(k) for k in keys},
                 "split": search.split or "test", "path": str(d)}
        r["status"] = t.state.name.lower() + ("" if t.state != TrialState.COMPLETE or RunDir(d).finished
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
        header = (f"# Best trial of Optuna study '{search.study_name}' ({shown(search.storage)}): trial {best.number}, "
                  f"validation {search.metric} = {best.value:.4f}\n# chosen: "
                  + ", ".join(f"{k}={value_slug(v)}" for k, v in best.user_attrs.get("overrides", {}).items())
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
