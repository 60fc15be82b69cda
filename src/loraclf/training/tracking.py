"""Experiment tracking through Accelerate's trackers: TensorBoard, MLflow, Weights & Biases.

Every tracker writes inside the run directory unless the user points it elsewhere:
TensorBoard to ``<run>/tensorboard``, MLflow to a local SQLite store ``<run>/mlflow/mlflow.db``
(or ``report.mlflow_tracking_uri`` / ``$MLFLOW_TRACKING_URI``), W&B offline to ``<run>/wandb``
(``report.wandb_mode=online`` uploads). Nothing here opens a network connection unless the user
configured one.

Trackers are fed the history records of the training loop as they are written (``train/loss``,
``train/lr``, ``validation/accuracy``, ...) and, when the run is complete, its final validation
and test metrics.

Whoever starts the trackers closes them: :func:`start` returns a :class:`Tracking` (or None) and
the caller calls its :meth:`Tracking.finish`, in a ``finally`` so that an interrupted or failed
run still flushes what it logged::

    tracking = start(cfg, accelerator, run_dir)
    try:
        ...  # train, passing `tracking` as the loop's callback
    finally:
        if tracking is not None:
            tracking.finish(metrics, files)  # metrics/files None when the run did not finish
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..config import TRACKERS, flatten
from ..errors import ConfigError

log = logging.getLogger("loraclf")

# Importable modules that provide each tracker (any one suffices).
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def tracker_installed(name: str) -> bool:
    """Whether the library behind tracker `name` (one of config.TRACKERS) can be imported."""
    return any(importlib.util.find_spec(m) is not None for m in TRACKER_MODULES[name])


def check_installed(report_cfg) -> None:
    """Raise ConfigError if ``report.trackers`` names a tracker that is not installed.

    Called when a run starts, before its run directory exists; reading a config never checks the
    machine, so a W&B run's config.yaml still loads where wandb is absent.
    """
    for name in resolve_trackers(report_cfg.trackers):
        if name in TRACKERS and not tracker_installed(name):
            raise ConfigError(f"report.trackers: {name} is not installed (pip install {name}), or drop it from "
                              "report.trackers")


def resolve_trackers(spec: Any) -> list[str]:
    """The tracker names a ``report.trackers`` value asks for: 'auto' is TensorBoard when installed."""
    names = [spec] if isinstance(spec, str) else list(spec or [])
    if names == ["none"] or not names:
        return []
    if names == ["auto"]:
        return ["tensorboard"] if tracker_installed("tensorboard") else []
    return list(dict.fromkeys(names))


def tracker_params(tree: dict) -> dict[str, Any]:
    """Config as flat ``section.field`` keys with scalar values (what trackers accept as params)."""
    out: dict[str, Any] = {}
    for key, v in flatten(tree).items():
        if isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = "null" if v is None else v
    return out


def record_values(rec: dict) -> dict[str, float]:
    """History record -> ``{split}/{name}`` scalars (bools, strings and nulls are dropped)."""
    prefix = "train" if rec.get("type") == "train" else rec.get("split", "validation")
    skip = {"type", "step", "split", "improved"}
    return {f"{prefix}/{k}": float(v) for k, v in rec.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracking:
    """The callback handed to the training loop: logs each history record to every tracker."""

    def __init__(self, trackers: list, run_dir: Path):
        self.trackers = trackers
        self.run_dir = run_dir
        self.last_step = 0
        self.closed = False

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def log(self, values: dict[str, float], step: Optional[int]) -> None:
        for t in self.trackers:
            try:
                t.log(values, step=step)
            except Exception as e:  # a tracker failing must never stop training
                log.warning("tracker %s failed to log: %s", t.name, e)

    def __call__(self, rec: dict) -> None:
        step = int(rec.get("step", self.last_step))
        self.last_step = max(self.last_step, step)
        values = record_values(rec)
        if values:
            self.log(values, step)

    def finish(self, metrics: Optional[dict] = None, files: Optional[list[Path]] = None) -> None:
        """Log final metrics (and report files, for MLflow) and close every tracker. Safe to call
        more than once (later calls do nothing) and without metrics (an interrupted run)."""
        if self.closed:
            return
        self.closed = True
        if metrics:
            final = {}
            for split in ("validation", "test"):
                for k, v in (metrics.get(split) or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
                        final[f"final/{split}_{k}"] = float(v)
            if final:
                self.log(final, self.last_step)
        for t in self.trackers:
            try:
                if files and t.name == "mlflow":
                    for f in files:
                        if f.is_dir():
                            t.log_artifacts(str(f), artifact_path=f.name)
                        elif f.exists():
                            t.log_artifact(str(f))
                t.finish()
            except Exception as e:
                log.warning("tracker %s failed to finish: %s", t.name, e)


def _make(name: str, rcfg, run_dir: Path, run_name: str):
    from accelerate import tracking as at

    if name == "tensorboard":
        return at.TensorBoardTracker("tensorboard", str(run_dir))
    if name == "mlflow":
        # MLflow logs at INFO by default ("Creating initial MLflow database tables..." on every new store);
        # read when it is imported. $MLFLOW_LOGGING_LEVEL set by the user wins, as `-q` (ERROR) does.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        import mlflow

        uri = rcfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:  # a local SQLite store (MLflow 3 retired the plain-file store) and artifacts in the run
            local = (run_dir / "mlflow").resolve()
            local.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{local / 'mlflow.db'}", str(local / "artifacts")
        mlflow.set_tracking_uri(uri)
        return at.MLflowTracker(experiment_name=rcfg.project, run_name=run_name, logging_dir=artifacts)
    if name == "wandb":
        return at.WandBTracker(rcfg.project, name=run_name, dir=str(run_dir), mode=rcfg.wandb_mode)
    raise ValueError(name)


def start(cfg, accelerator, run_dir: Path) -> Optional[Tracking]:
    """Start the configured trackers on the main process; None when there are none. The caller
    owns the result and must call its ``finish`` (in a ``finally``; see the module docstring)."""
    if not accelerator.is_main_process:
        return None
    names = resolve_trackers(cfg.report.trackers)
    if not names:
        return None
    trackers = []
    params = tracker_params(cfg.to_dict())
    for name in names:
        try:
            t = _make(name, cfg.report, Path(run_dir), cfg.name or Path(run_dir).name)
            t.start()
            if name == "tensorboard":  # hparams without metrics would add an empty run; keep the config as text
                import yaml

                t.writer.add_text("config", "```yaml\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```")
            else:
                t.store_init_configuration(params)
            trackers.append(t)
        except Exception as e:  # a tracker that cannot start must not cost the user their training run
            log.warning("tracker %s could not start (%s); training continues without it", name, e)
    if not trackers:
        return None
    return Tracking(trackers, Path(run_dir))

