"""Optuna searches with pruning.

A **search file** has a sweep's ``base``/``config`` plus ``space`` (see :func:`suggest`), ``trials``
and Optuna's ``storage`` (default: a SQLite file in the output folder), so several processes or
machines that point at one storage share the study. See docs/experiments.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from ..config import (
    config_from_dict,
)
from ..errors import ConfigError, LoraclfError, import_extra
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
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # -q: the results and errors only
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
        from ..training.run import train

        overrides = {k: suggest(trial, k, s) for k, s in search.space.items()}
        name = f"trial-{trial.number:04d}"
        tree = with_overrides(search.tree, overrides)
        tree["name"], tree["output_dir"] = name, str(out / "trials")
        trial.set_user_attr("overrides", json.loads(json.dumps(overrides, default=str)))
        trial.set_user_attr("run_dir", str(out / "trials" / name))
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
        header = (f"# Best trial of Optuna study '{search.study_name}' ({search.storage}): trial {best.number}, "
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
