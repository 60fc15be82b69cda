"""The Task protocol, and what every task shares.

A task owns both sides of a run. The training side: the loss, how logits become outputs, the
metrics, what is fitted on validation. The reading side: how its label column is read, how its
predictions file is written and parsed, its error analysis and findings, its plots and report
sections, its model-card text, its comparison columns and how the server describes it. Nothing
outside ``tasks/`` compares task names; it asks the task.

Task modules import without torch (torch is imported inside the functions that train), so reading a
run directory, reporting, comparing and validating a config never load it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError, TrainingDiverged
from ..evaluation.metrics import Metric
from .labels import LabelSet

if TYPE_CHECKING:
    import torch

LABEL_JOIN = ";"  # how a label set is written in predictions files and `loraclf predict` output

# Options that belong to some tasks (each task declares those it takes, Task.options), with the values
# every task accepts. Setting one for a task that does not take it is refused rather than silently ignored.
TASK_OPTIONS = {
    "train.thresholds": ("per-label",),
    "train.threshold_objective": ("macro_f1",),
    "train.regression_loss": ("mse",),
    "train.huber_delta": (1.0,),
    "train.normalize_target": (True,),
    "train.calibrate": ("auto", "none"),  # temperature and bias
    "data.label_names": (None,),
}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # no overflow warnings for large |logits|


@dataclasses.dataclass
class Predictions:
    """One split's ``predictions/<split>.csv`` as arrays, as its task reads it back: `gold` in the
    task's label format (ids, a 0/1 matrix, scores), `outputs` what the model gave (probabilities or
    scores), `predicted` the decided answers where outputs alone do not give them (multi-label sets)."""

    texts: list[str]
    gold: np.ndarray
    outputs: np.ndarray
    predicted: Optional[np.ndarray] = None


# The registry of tasks by name (filled by loraclf.tasks.register_task).
TASKS: dict[str, type["Task"]] = {}

# A report figure sink: emit(figure, file, section, title, caption) (see evaluation.report.make_plots).
Emit = Callable[[Any, str, str, str, str], None]


class Task:
    """The protocol every task implements. Class attributes declare what readers need to know."""

    name: str = ""
    headline: Sequence[str] = ()  # metric keys a split is summarised by (tables, history, artifact meta)
    selectable: Sequence[str] = ()  # metric keys usable as train.metric
    default_metric: str = ""  # train.metric: auto
    problem_type: str = ""  # transformers' config.problem_type: plain transformers reloads the model the same way
    metric_rows: Sequence[Metric] = ()  # metrics this task adds to evaluation.metrics.METRICS when registered
    row_metrics: Sequence[str] = ()  # columns of a comparison table (besides F1 per label)
    label_noun: str = "labels"  # what the report and console call the label column's values
    fitted_key: Optional[str] = None  # metrics.json key of what :meth:`fit` chose on validation
    exact_answers: bool = True  # an answer is right or wrong (a score never is exactly right)
    decision_thresholds: bool = False  # answers are decided by thresholds a user may replace (predict --thresholds)
    fixed_outputs: Optional[int] = None  # model outputs whatever the labels (regression: one)
    distinct_needed: Optional[int] = None  # distinct train labels :meth:`label_set` needs (None: all of them)
    loss_name: str = "loss"  # the loss curve's axis
    report_template: str = ""  # templates/ file with this task's report sections (evaluation, errors, ...)
    report_sections: Sequence[tuple[str, str]] = (("evaluation", "Evaluation"), ("errors", "Error analysis"))
    card_template: str = ""  # templates/ file with this task's model-card macros
    card_task_name: str = "Text Classification"  # the Hub model-index task name
    card_tags: Sequence[str] = ()
    options: frozenset = frozenset()  # the TASK_OPTIONS this task takes
    classes = False  # its labels are classes texts belong to (contrastive pairs, class prototypes)
    prototype_init = False  # softmax over classes: a linear head on an embedding can start at the class means

    def __init__(self, labels: Sequence[str], state: Optional[dict] = None):
        self.labels = list(labels)

    @property
    def num_outputs(self) -> int:
        return self.fixed_outputs or len(self.labels)

    # ---------------------------------------------------------------- reading the label column
    @classmethod
    def read_labels(cls, df, cfg, names: Optional[list[str]], where: str) -> list:
        """Every row's label as this task reads it (a name, a list of names, a number); errors name the row."""
        raise NotImplementedError

    @classmethod
    def keep_labels(cls, texts: list[list[str]], labels: list, keep: list[str], where: str):
        """data.include_labels: the rows whose label is kept (a task may keep rows and drop labels)."""
        rows = [i for i, lab in enumerate(labels) if lab in keep]
        if not rows:
            raise DataError(f"{where}: no rows left after data.include_labels={keep}")
        return [[col[i] for i in rows] for col in texts], [labels[i] for i in rows]

    @classmethod
    def label_set(cls, cfg, train: list, names_cfg: Optional[list], keep: Optional[list[str]],
                  where: str) -> LabelSet:
        """The labels a run learns, checked against train: every label must occur there."""
        raise NotImplementedError

    @classmethod
    def label_array(cls, rows: list, labels: LabelSet, where: str, split: str) -> np.ndarray:
        """A split's labels as the loop batches them: ids, a 0/1 matrix, or float scores."""
        raise NotImplementedError

    @classmethod
    def strata(cls, labels: np.ndarray) -> Optional[np.ndarray]:
        """What a sample of rows is stratified on (None: a plain seeded sample)."""
        return None

    @classmethod
    def folds(cls, labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
        """Row indices of k held-out folds covering every row once, stratified on :meth:`strata` when
        every stratum can be (each has k rows or more), else a seeded plain split."""
        from sklearn.model_selection import KFold, StratifiedKFold

        strata = cls.strata(labels)
        idx = np.arange(len(labels))
        if strata is not None and np.unique(strata, return_counts=True)[1].min() >= k:
            split = StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, strata)
        else:
            split = KFold(k, shuffle=True, random_state=seed).split(idx)
        return [np.sort(test) for _, test in split]

    def class_indicator(self, labels: "torch.Tensor") -> Optional["torch.Tensor"]:
        """A batch's labels as a texts x classes 0/1 tensor (None for a task without classes)."""
        return None

    def rows_per_class(self, labels: np.ndarray) -> Optional[float]:
        """Train rows per class, which chooses train.recipe: auto (None: the few-shot recipe was not measured
        for this task, so auto never chooses it)."""
        return None

    @classmethod
    def single_class(cls, labels: np.ndarray) -> bool:
        """Train labels this task cannot learn from (one class of a classification)."""
        return False

    # ---------------------------------------------------------------- training
    def state(self) -> dict:
        """What the task fitted (temperature, thresholds, target scale), for loraclf.json."""
        return {}

    def output_affine(self) -> Optional[tuple[float, Any]]:
        """(scale, shift) the task applies to raw logits before its activation, when it applies one
        (a temperature, a target scale): an export folds it into the model's last layer."""
        return None

    def folded_state(self) -> dict:
        """The state once :meth:`output_affine` is folded into the weights."""
        return self.state()

    def check_config(self, cfg) -> None:
        """Refuse options that do not fit this task or its labels, before anything is written."""
        t = cfg.train
        if t.metric != "auto" and t.metric not in self.selectable:
            raise ConfigError(f"train.metric={t.metric} does not score a {self.name} task; use one of "
                              f"{', '.join(self.selectable)}")
        for option, neutral in TASK_OPTIONS.items():
            section, field = option.split(".")
            value = getattr(getattr(cfg, section), field)
            if option not in self.options and value not in neutral:
                takers = sorted(n for n, t in TASKS.items() if option in t.options)
                raise ConfigError(f"{option}={value} applies to {' and '.join(takers)} tasks; this run is {self.name}")

    def loss_function(self, tcfg, train_labels: np.ndarray, device) -> "torch.nn.Module":
        """The training loss over (logits, labels) batches, built once per run."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The task's outputs: class probabilities, label probabilities, or scores."""
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, gold: np.ndarray) -> tuple[dict, np.ndarray]:
        """(metrics, outputs) of one split."""
        raise NotImplementedError

    def fit(self, tcfg, logits: np.ndarray, gold: np.ndarray) -> Optional[dict]:
        """After training, fit what the task chooses on validation (never on test); returns what
        metrics.json records about it under :attr:`fitted_key` (None: nothing to fit)."""
        return None

    def fitted_line(self, fitted: dict) -> Optional[str]:
        """What :meth:`fit` chose, in one line for the console."""
        return None

    def set_thresholds(self, values: dict) -> None:
        """Decision thresholds from a user's file (`loraclf predict --thresholds`), for tasks that have them."""
        raise ConfigError(f"a {self.name} task has no decision thresholds")

    # ---------------------------------------------------------------- answers
    def predicted(self, outputs: np.ndarray) -> list[str]:
        """The answer per row, as users read it."""
        raise NotImplementedError

    def answer_columns(self) -> list[str]:
        """Columns `loraclf predict` writes after the text."""
        raise NotImplementedError

    def answers(self, outputs: np.ndarray) -> list[list]:
        """One row of those columns per text."""
        raise NotImplementedError

    def values(self, outputs: np.ndarray) -> list:
        """The answer per row as Python values (`Classifier.predict`): a label name, a list of names, a float."""
        return self.predicted(outputs)

    def records(self, outputs: np.ndarray) -> list[dict]:
        """One JSON object per text, as the HTTP server answers."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the server's /v1/models says about a model of this task."""
        return {"task": self.name, "labels": self.labels}

    # ---------------------------------------------------------------- predictions files
    def gold_names(self, gold: np.ndarray) -> list[str]:
        """The gold answer per row, written as :meth:`predicted` writes answers."""
        raise NotImplementedError

    def correct(self, gold: np.ndarray, outputs: np.ndarray) -> list:
        """The predictions file's last fixed column: right (1/0) or, for scores, the signed error."""
        raise NotImplementedError

    def prediction_columns(self, gold: np.ndarray, outputs: np.ndarray) -> dict[str, list]:
        """The predictions file's columns after text, gold and predicted: right or wrong, every output."""
        cols: dict[str, list] = {"correct": self.correct(gold, outputs)}
        for j, n in enumerate(self.labels):
            cols[f"p_{n}"] = [f"{p:.6f}" for p in outputs[:, j]]
        return cols

    def write_predictions(self, path: Path, texts: Sequence[str], gold: np.ndarray, outputs: np.ndarray,
                          pairs: Optional[Sequence[str]] = None) -> None:
        """predictions/<split>.csv (the layout is the run directory's: see loraclf.schema)."""
        from ..schema import write_predictions

        write_predictions(path, texts, pairs, self.gold_names(gold), self.predicted(outputs),
                          self.prediction_columns(gold, outputs))

    def parse_predictions(self, table, path: Path) -> Predictions:
        """A predictions file read back (loraclf.schema.read_predictions) as this task's arrays."""
        raise NotImplementedError

    def _output_matrix(self, table, path: Path):
        from ..errors import LoraclfError

        cols = [f"p_{n}" for n in self.labels]
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise LoraclfError(f"{path}: missing columns {missing}; is it a loraclf predictions file?")
        return table[cols].to_numpy(dtype=np.float64)

    # ---------------------------------------------------------------- the report
    def analyse(self, p: Predictions, metrics: dict, opts: dict) -> dict:
        """The error analysis of one split (metrics.json's error_analysis[split])."""
        raise NotImplementedError

    def findings(self, metrics: dict, analysis: dict, split: str) -> list[str]:
        """Plain-language observations backed by the numbers, each only when the data supports it."""
        return []

    def plots(self, emit: Emit, run, ea: dict, split: str, suffix: str) -> None:
        """This task's figures of the report's split, through `emit`."""

    def loss_note(self) -> str:
        """What the loss curve's caption must add for this task."""
        return ""

    def subtitle(self) -> str:
        """What the report's header says about the labels."""
        return f"{len(self.labels)} labels"

    def report_context(self, run, ea: dict, split: Optional[str]) -> dict:
        """What this task's report template needs beyond the common context."""
        return {}

    # ---------------------------------------------------------------- label errors (loraclf audit)
    def label_issues(self, p: Predictions) -> list[dict]:
        """Rows whose given label is likely wrong, most likely first, from out-of-fold predictions: each
        {"row", "given", "suggested", "p_given", "p_suggested", "quality"}."""
        raise ConfigError(f"loraclf audit ranks wrong labels among classes; a {self.name} task has none")

    def soft_targets(self, gold: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
        """Training targets blending `gold` (as label_array gives it) with a teacher's probabilities
        (rows x labels, in this task's label order): (1 - weight) x gold + weight x teacher (train.teacher)."""
        raise ConfigError(f"train.teacher blends labels with a teacher's probabilities; a {self.name} task has no "
                          "labels to blend")

    def write_labels(self, df, rows: list[int], labels: list[str], cfg, names: Optional[list[str]]) -> None:
        """Give `rows` of a data file's table (as read) the `labels` audit.csv suggests, written in the
        file's own form (`cfg`: the data section; `names`: data.label_names), so the file reads back as before."""
        raise ConfigError(f"loraclf audit relabels classes; a {self.name} task has none")

    # ---------------------------------------------------------------- the model card
    def card_label_table(self, metrics: dict, split: str) -> Optional[str]:
        """The card's per-label scores of `split` (Markdown), or None."""
        return None


def state_number(state: dict, key: str, default, positive: bool = False) -> float:
    """A number of a task's saved state (loraclf.json's task_state), or a ModelError naming it: a damaged
    or forged artifact is refused when it loads, never at the first prediction."""
    from ..errors import ModelError

    v = state.get(key, default)
    if v is None and default is None:
        return None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and (v > 0 or not positive)
    if not ok:
        raise ModelError(f"loraclf.json: task_state.{key} is {v!r}, not a {'positive ' if positive else ''}number; "
                         "the artifact is damaged")
    return float(v)


def refuse_single_label_options(cfg, task: str) -> None:
    t = cfg.train
    if t.class_weights is not None:
        raise ConfigError(f"train.class_weights weighs classes of a single-label task; a {task} task "
                          + ("uses train.pos_weight" if task == "multi-label" else "has no classes"))
    if t.label_smoothing:
        raise ConfigError(f"train.label_smoothing applies to single-label cross-entropy, not to a {task} task")


def check_finite(logits: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        raise TrainingDiverged("the model's outputs are not finite numbers (NaN or inf): training diverged; "
                               "lower train.lr (or set train.max_grad_norm)")


def check_label_names(cfg, seen: set, names_cfg: Optional[list], keep: Optional[list[str]], where: str) -> list[str]:
    """The label names of a classification task: data.label_columns, data.label_names (each must occur in
    train, and train must hold no other), or the names train holds, sorted."""
    if cfg.label_columns:
        names_cfg = list(cfg.label_columns)
    if keep is not None and names_cfg is not None:
        names_cfg = [n for n in names_cfg if str(n) in keep]
    if names_cfg is None:
        return sorted(seen)
    names = [str(n) for n in names_cfg]
    unknown = sorted(seen - set(names))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not in data.label_names {names}")
    unseen = [n for n in names if n not in seen]
    if unseen:  # a class that train never shows cannot be learned, only predicted at random
        source = "data.label_columns" if cfg.label_columns else "data.label_names"
        raise DataError(f"{where}: label {unseen[0]!r} of {source} never occurs in train; drop it from {source} "
                        "(or data.include_labels)")
    return names


