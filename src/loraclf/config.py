"""Typed configuration: YAML + dotted overrides, validated with errors that name the bad field.

Every knob lives here exactly once; the README's config reference is generated from the
``help`` metadata of these dataclasses (``loraclf config --reference``), so code and docs agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from .data.batching import LENGTH_GROUP_BATCHES
from .errors import ConfigError
from .yamlio import load_yaml


def _f(default: Any, help: str, choices: tuple | Callable[[], tuple] | None = None,  # noqa: A002 - argparse's name
       range: str | None = None):  # noqa: A002
    """A config field: its default, its help (the config reference), its choices (a tuple, or a function
    returning a registry's names), and the range a number must lie in (see :class:`Range`)."""
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    if range:
        meta["range"] = Range.parse(range)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Range:
    """Where a numeric field's value may lie, written once next to the field: ">0", ">=1", "[0,1)",
    "(0,1)" or "[0,4294967295]"."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    @classmethod
    def parse(cls, spec: str) -> "Range":
        s = spec.replace(" ", "")
        for op, open_ in ((">=", False), (">", True)):
            if s.startswith(op):
                return cls(lo=float(s[len(op):]), lo_open=open_)
        lo, hi = s[1:-1].split(",")
        return cls(float(lo), float(hi), s[0] == "(", s[-1] == ")")

    def holds(self, v: float) -> bool:
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def describe(self, integer: bool) -> str:
        def show(x: float) -> str:
            return f"{x:g}" if abs(x) < 1e6 else str(int(x))

        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {show(self.lo)}"
        if integer and not (self.lo_open or self.hi_open):
            return f"an integer from {show(self.lo)} to {show(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{show(self.lo)}, {show(self.hi)}{')' if self.hi_open else ']'}"


def _task_names() -> tuple:
    from .tasks import TASKS

    return ("auto", *TASKS)


def _method_names() -> tuple:
    from .models.methods import METHODS

    return tuple(METHODS)


def _head_names() -> tuple:
    from .models.heads import HEADS

    return tuple(HEADS)


@dataclass(frozen=True)
class DataConfig:
    path: Optional[str] = _f(
        None,
        "Dataset: a folder holding train/validation/test files, a single file (used as train), "
        "or `hf:{dataset id}` (online). A bare name such as `sst2` is also looked up under "
        "$LORACLF_DATASETS (default ../shared/datasets).",
    )
    train: Optional[str] = _f(None, "Explicit train file (overrides the one found in `path`).")
    validation: Optional[str] = _f(None, "Explicit validation file. Missing: carved from train.")
    test: Optional[str] = _f(None, "Explicit test file. Missing: no test evaluation.")
    format: str = _f(
        "auto",
        "File format; 'auto' infers it from the extension (.csv .tsv .jsonl .json .parquet, +.gz).",
        ("auto", "csv", "tsv", "jsonl", "json", "parquet"),
    )
    text_column: Union[str, list] = _f(
        "text", "Text column, or a list of columns joined with the tokenizer's separator (pairs)."
    )
    label_column: str = _f(
        "label", "Label column: strings, or integers (see label_names); multi-label: label lists (JSON lists or "
        "names joined by label_separator, empty for none); regression: numbers.")
    label_separator: str = _f(";", "Multi-label: the separator of label names joined in one string.")
    label_columns: Optional[list] = _f(
        None, "Multi-label: several 0/1 columns, one per label (their names are the labels), instead of label_column.")
    label_names: Optional[list] = _f(
        None, "Names for integer labels, in id order. Default: names as they appear (sorted)."
    )
    include_labels: Optional[list] = _f(
        None, "Keep only rows with these labels, in every split (e.g. [negative, positive] turns 3-class "
        "sentiment into binary). Applied before caps and carving.",
    )
    validation_fraction: float = _f(
        0.1, "Fraction of train carved (stratified, seeded) when there is no validation split.", range="(0,1)")
    max_labels: Optional[int] = _f(
        1000, "Refuse data with more labels than this, before anything is written (a classifier over 100,000 "
        "labels needs gigabytes for its confusion matrix alone); null: no limit.", range=">=1")
    max_train_samples: Optional[int] = _f(None, "Cap on train rows (a seeded stratified sample).", range=">=1")
    max_eval_samples: Optional[int] = _f(None, "Cap on validation rows (seeded stratified sample).", range=">=1")
    max_test_samples: Optional[int] = _f(None, "Cap on test rows (seeded stratified sample).", range=">=1")
    max_length: int = _f(128, "Truncation length in tokens. Batches are padded to their longest member, not to this.",
        range=">=2")
    cache: bool = _f(
        True, "Keep each data file's parsed table, encoded labels and token ids in the data cache ($LORACLF_CACHE/"
        "data, memory-mapped) and reuse them in later runs; false: read and tokenize in memory every run.")
    num_proc: Optional[int] = _f(
        None, "Processes that tokenize a cold cache in parallel; null: one per CPU core.", range=">=1")
    long_text: str = _f(
        "truncate", "What a text longer than max_length tokens becomes: truncate (its first tokens), head-tail "
        "(its first head_tokens and its last tokens), chunks (windows of max_length covering it, their logits "
        "pooled; training draws one window per document per epoch). docs/long-documents.md.",
        ("truncate", "head-tail", "chunks"))
    head_tokens: Optional[int] = _f(
        None, "head-tail: tokens kept from the start of a long text (the rest of the window from its end); "
        "null: a quarter of the window.", range=">=0")
    chunk_overlap: int = _f(0, "chunks: tokens each window shares with the one before.", range=">=0")
    chunk_pool: str = _f("mean", "chunks: a document's logits are the mean or the max of its windows'.",
                         ("mean", "max"))
    max_chunks: int = _f(
        32, "chunks: windows per document at most; a longer one is read through this many evenly spaced "
        "windows (its first and last among them).", range=">=1")
    chunk_windows: str = _f(
        "full", "chunks: full (windows of max_length, the last one moved back to end at the text's end) or even "
        "(the fewest windows of at most max_length that cover the text, of one width: each token read once "
        "beyond chunk_overlap, so a text just over max_length costs about one window, not two).",
        ("full", "even"))
    min_tokens: Optional[int] = _f(None, "Drop train rows shorter than this many tokens.", range=">=1")
    max_tokens: Optional[int] = _f(
        None, "Drop train rows longer than this many tokens (before truncation). Eval splits are never filtered.",
        range=">=1")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("minilm", "Base model: alias (see `loraclf models`), hub id, or local path.")
    method: str = _f(
        "lora",
        "lora: LoRA adapters + trained head; head: frozen encoder, train only the head; full: all weights; "
        "zero-shot: no training, evaluate the base model (decoders with head verbalizer or generate).",
        _method_names,
    )
    head: str = _f(
        "classifier",
        "How a label is produced. classifier: a classification head (encoders; decoders pool the last real "
        "token); embedding: a linear layer on the checkpoint's own pooled sentence embedding, started at the class "
        "means (encoders; the few-shot recipe's head); verbalizer: a decoder's next-token scores of each label's "
        "word(s) after a prompt; generate: free generation parsed into a label.",
        _head_names,
    )
    prompt: Optional[str] = _f(
        None,
        "Prompt template for verbalizer/generate, with {text} and optionally {labels}; null: a built-in "
        "instruction. Instruct models wrap it in their chat template.",
    )
    label_words: Optional[Union[list, dict]] = _f(
        None, "Answer word(s) per label for verbalizer/generate: a list in label order or a mapping label -> "
        "word or list of words; null: the label names.",
    )
    chat_template: bool = _f(True, "Use the tokenizer's chat template (when it has one) for prompt heads.")
    system_prompt: Optional[str] = _f(None, "System message for prompt heads (chat models) or a preamble.")
    few_shot: int = _f(0, "Number of examples drawn from train (seeded, round-robin over classes) put in the prompt.",
        range=">=0")
    max_new_tokens: int = _f(8, "Tokens generated per text by the generate head.", range=">=1")
    fallback_label: Optional[str] = _f(
        None, "Label used when a generated answer names no label; null: the most frequent train label."
    )
    shared_prefix: bool = _f(
        True, "Prompt heads: run the prompt's common prefix (chat header, instruction, few-shot examples) once per "
        "batch and reuse its key/value cache for every text; evaluation keeps it across batches. Same scores; "
        "training uses it only without dropout (lora.dropout: 0) or gradient checkpointing (docs/decoders.md).",
    )
    quantize: Optional[str] = _f(
        None, "Load the frozen base weights quantized with bitsandbytes (pip install 'loraclf[quantize]'): 4bit "
        "(NF4) or 8bit; LoRA adapters and the classification head stay full precision. null: no quantization.",
        ("4bit", "8bit"),
    )
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit) when `name` is a hub id.")
    trust_remote_code: bool = _f(False, "Allow custom model code from the hub. Off unless you ask.")
    attn_implementation: Optional[str] = _f(
        "sdpa", "Attention kernel passed to transformers ('sdpa', 'eager', ...); falls back to default if unsupported."
    )


@dataclass(frozen=True)
class LoraSection:
    r: Union[int, str] = _f(
        8,
        "LoRA rank, or 'auto': the largest candidate (lora.auto_ranks x lora.auto_targets) whose trainable "
        "parameters fit train.max_trainable_params; the choice is printed and stored in metrics.json (budget).",
        range="[1,65536]")
    alpha: float = _f(16, "LoRA scaling numerator (scale = alpha / r). With r: auto and alpha left at 16, alpha "
                      "follows the chosen rank (2 x r, the default scale 2).", range=">0")
    dropout: float = _f(0.1, "Dropout on the LoRA input.", range="[0,1)")
    target_modules: Optional[Union[str, list]] = _f(
        None, "Modules to adapt: a list of names, 'all-linear', or null for the per-architecture default."
    )
    bias: str = _f("none", "Which biases to train: none, all or lora_only.", ("none", "all", "lora_only"))
    modules_to_save: Optional[list] = _f(
        None,
        "Extra modules trained fully and saved with the adapter. The classification head and any "
        "weights the checkpoint lacks (e.g. MiniLM's pooler) are always added.",
    )
    auto_ranks: list = _f([1, 2, 4, 8, 16, 32, 64], "Ranks `r: auto` may choose from.")
    auto_targets: Optional[list] = _f(
        None,
        "Target-module sets `r: auto` may choose from (a list of lists, or 'all-linear' entries); "
        "null: only lora.target_modules. Among the candidates that fit, the one training the most "
        "parameters wins; ties go to more target modules, then the higher rank.",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = _f(3, "Number of passes over train (fractions allowed).", range=">0")
    batch_size: int = _f(32, "Train batch size per device.", range=">=1")
    eval_batch_size: int = _f(128, "Batch size for evaluation and prediction.", range=">=1")
    # Past 10 an AdamW step moves every weight by about lr: nothing trains, and float32 overflows near 1e38.
    lr: float = _f(5e-4, "Peak learning rate (AdamW).", range="(0,10]")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).", range=">=0")
    scheduler: str = _f("linear", "Learning-rate schedule after warmup.", ("linear", "cosine", "constant"))
    warmup_ratio: float = _f(0.06, "Fraction of optimizer steps spent warming up linearly.", range="[0,1)")
    label_smoothing: float = _f(0.0, "Cross-entropy label smoothing.", range="[0,1)")
    teacher: Optional[str] = _f(
        None, "A cross-validation run over the same data files (train.cv_folds, or loraclf audit's): each train "
        "row's target becomes its label blended with that run's out-of-fold probabilities for it, weighted by "
        "train.teacher_weight (soft labels from models that never saw the row). Classes and label sets. null: the "
        "labels alone.")
    teacher_weight: float = _f(0.5, "The out-of-fold probabilities' share of each target with train.teacher.",
                               range="(0,1]")
    contrastive: float = _f(
        0.0, "Weight of a supervised contrastive loss on the sentence embedding (model.head=embedding): texts of "
        "a class pulled together, other classes pushed apart within each batch. 0: off.", range=">=0")
    head_refit: str = _f(
        "auto", "Embedding head (model.head=embedding), once trained: its linear layer refitted on the trained "
        "embeddings of train. prototypes: the nearest class mean (Euclidean); logistic: an L2 logistic regression (the "
        "head SetFit fits); none: the layer as trained; auto: prototypes when train.contrastive is on, else "
        "none. Tasks with classes scored by softmax.", ("auto", "prototypes", "logistic", "none"))
    recipe: str = _f(
        "auto", "How training is set up. auto: the few-shot recipe when train has few rows per class (see "
        "docs/few-labels.md; what it chose is printed and recorded in metrics.json), else standard; standard: "
        "the settings as given; few-shot: always the few-shot recipe.", ("auto", "standard", "few-shot"))
    class_weights: Optional[Union[str, list]] = _f(
        None, "null, 'balanced' (inverse train frequency), or a list of weights in label-id order."
    )
    grad_accum_steps: int = _f(1, "Gradient accumulation steps (effective batch = batch_size x this x devices).",
        range=">=1")
    # A negative norm would flip every clipped gradient: training would climb the loss.
    max_grad_norm: Optional[float] = _f(1.0, "Gradient clipping norm; null disables clipping.", range=">0")
    precision: str = _f(
        "auto", "auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.", ("auto", "fp32", "fp16", "bf16")
    )
    eval_steps: Optional[int] = _f(None, "Evaluate every N optimizer steps; null: every epoch.", range=">=1")
    metric: str = _f(
        "auto", "Validation metric used for model selection and early stopping; auto: accuracy (single-label), "
        "average_precision (multi-label, threshold-free), rmse (regression).")
    calibrate: str = _f(
        "auto", "Single-label: fit a temperature on validation after training and apply it to every probability "
        "(accuracy is unchanged). auto: keep it only if it lowers validation NLL; temperature: always; bias: a "
        "temperature plus one bias per class, which moves predictions (corrects a zero-shot LLM's lean towards "
        "some labels); none: off.",
        ("auto", "temperature", "bias", "none"))
    pos_weight: Optional[Union[str, list]] = _f(
        None, "Multi-label: weight of each label's positive texts in the loss; null, 'balanced' (negatives / "
        "positives in train, capped at 100), or a list in label order.")
    thresholds: str = _f(
        "per-label", "Multi-label decision thresholds, chosen on validation after training: per-label, one global "
        "threshold, or fixed at 0.5.", ("per-label", "global", "fixed"))
    threshold_objective: str = _f(
        "macro_f1", "Multi-label: what the tuned thresholds maximise on validation.", ("macro_f1", "micro_f1"))
    regression_loss: str = _f("mse", "Regression loss.", ("mse", "huber"))
    huber_delta: float = _f(1.0, "Huber loss delta, in normalised target units.", range=">0")
    normalize_target: bool = _f(
        True, "Regression: train on the target standardised with train's mean and std; outputs are mapped back.")
    early_stopping_patience: Optional[int] = _f(
        None, "Stop after this many evaluations without improvement; the best weights are kept either way.",
        range=">=1")
    group_by_length: bool = _f(True, "Batch texts of similar length together (less padding, faster).")
    length_group_batches: int = _f(
        LENGTH_GROUP_BATCHES,
        "With group_by_length: how many batches' worth of shuffled texts are sorted by length together. "
        "More pads less (faster); fewer keeps batches closer to random (see docs/benchmarks.md).", range=">=1")
    compile: Union[bool, str] = _f(
        False, "torch.compile the model for training: false; true (Inductor); reduce-overhead (Inductor plus CUDA "
        "graphs, GPU only); max-autotune (slow to compile; also CUDA graphs on GPU).",
        (False, True, "reduce-overhead", "max-autotune"))
    pad_to_multiple_of: Optional[int] = _f(
        None, "Round each batch's padded length up to a multiple of this, never past data.max_length (few distinct "
        "shapes for compile, tensor-core sizes on GPU); null: 16 when compiling, 8 on GPU, else 1 (no rounding).",
        range=">=1")
    max_trainable_params: Optional[int] = _f(
        None, "Fail before training if the config trains more parameters than this (with lora.r: auto, the budget "
        "the rank and targets are chosen to fit).", range=">=1")
    log_every: int = _f(20, "Log loss / lr / throughput every N optimizer steps to history.jsonl.", range=">=1")
    num_threads: Optional[int] = _f(None, "CPU threads for torch; null keeps torch's default.", range="[1,1024]")
    cv_folds: Optional[int] = _f(
        None, "k-fold cross-validation: k models, each trained on the other folds (its validation carved from them) "
        "and scored on the fold it never saw; metrics.json gives every metric's mean and spread over folds (the "
        "honest number on small data) and predictions/oof.csv every row's out-of-fold prediction (loraclf audit "
        "reads it). null: one run.", range="[2,20]")
    gradient_checkpointing: bool = _f(
        False, "Recompute the base model's layer activations in the backward pass instead of keeping them: less "
        "memory, slower steps (methods lora and full).")


TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass(frozen=True)
class ReportConfig:
    enabled: bool = _f(
        True,
        "After training, write plots/, report.html, the error analysis (metrics.json) and the artifact's model "
        "card (README.md). `loraclf report <run>` regenerates them.",
    )
    trackers: Union[str, list] = _f(
        "auto",
        "Experiment trackers fed during training through Accelerate: 'auto' (TensorBoard when installed), "
        "'none', or a list of tensorboard, mlflow, wandb. All write inside the run directory.",
    )
    project: str = _f("loraclf", "MLflow experiment / W&B project name.")
    mlflow_tracking_uri: Optional[str] = _f(
        None,
        "MLflow tracking URI; null: $MLFLOW_TRACKING_URI if set, else a SQLite store in the run directory "
        "(mlflow/mlflow.db). Only a server URI you give makes MLflow use the network.",
    )
    wandb_mode: str = _f(
        "offline", "W&B mode: offline writes to the run's wandb/ (upload later with `wandb sync`); online uploads.",
        ("offline", "online"),
    )
    top_errors: int = _f(20, "Most confident mistakes listed in the report and metrics.json.", range=">=0")
    length_buckets: int = _f(5, "Word-length buckets (equal counts) for accuracy by length.", range=">=1")
    examples_per_confusion: int = _f(3, "Example texts kept per (gold, predicted) confusion pair.", range=">=0")
    license: Optional[str] = _f(
        None, "The model card's `license`: a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...) that the base "
        "model's and the training data's licenses allow. null: the card names no license.")
    language: Optional[Union[str, list]] = _f(
        None, "The model card's `language`: the language(s) of the texts, as ISO 639-1 codes (en, or a list). "
        "null: the card names none.")
    dataset_ids: Optional[Union[str, list]] = _f(
        None, "Hub ids of the datasets the model was trained on (e.g. stanfordnlp/sst2), for the model card's "
        "`datasets` and `model-index`. null: the id of a data.path of hf:<id>, else none (the card names a "
        "local folder, never as a Hub dataset).")
    card_examples: Optional[int] = _f(
        None, "Validation texts shown as the model card's widget examples (the Hub's inference box). null: 2 when "
        "the data is public (data.path hf:<id>, or report.dataset_ids set), else none, so a pushed card never "
        "shows private texts unasked; 0: none.", range=">=0")


def _validate_report(r: "ReportConfig") -> None:
    names = [r.trackers] if isinstance(r.trackers, str) else list(r.trackers)
    if names not in (["auto"], ["none"]):
        for n in names:
            if n not in TRACKERS:
                raise ConfigError(f"report.trackers: unknown tracker {n!r}; use auto, none, or a list of "
                                  f"{', '.join(TRACKERS)}")
    # Whether a named tracker is installed is checked when a run starts (tracking.check_installed),
    # not here: a W&B run's config.yaml must load on a machine without wandb.


@dataclass(frozen=True)
class Config:
    name: Optional[str] = _f(None, "Run name; default {data}-{model}-{method}-{timestamp}.")
    output_dir: str = _f("runs", "Parent folder of run directories.")
    seed: int = _f(42, "One seed for sampling, splits, initialisation and batch order.", range="[0,4294967295]")
    task: str = _f(
        "auto", "single-label, multi-label or regression. auto: multi-label when data.label_columns is set or the "
        "label column holds lists (said on the console), else single-label; regression is never guessed.",
        _task_names)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "lora": LoraSection, "train": TrainConfig,
            "report": ReportConfig}


def _declared(dotted: str) -> dataclasses.Field:
    """The dataclass field behind "section.field" or a top-level name such as "output_dir"."""
    section, _, name = dotted.rpartition(".")
    cls = SECTIONS[section] if section else Config
    return _field(cls, name, f"{section}." if section else "", "config field")


def default(dotted: str) -> Any:
    """The default of one field, e.g. default("train.eval_batch_size"): other modules (CLI flags,
    library keyword arguments) take their defaults from here, so each lives in one place."""
    f = _declared(dotted)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def choices(dotted: str) -> tuple:
    """The allowed values of a field with a fixed set (e.g. "model.method"); () for free fields."""
    return _choices_of(_declared(dotted))


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}


def _coerce(value: Any, tp: Any, what: str) -> Any:
    """Coerce a YAML value to the declared field type, or raise ConfigError naming the field
    (`what`, e.g. "config field 'train.lr'")."""
    if typing.get_origin(tp) is Union:
        return _coerce_union(value, tp, what)
    if value is None:
        raise ConfigError(f"{what} must not be null")
    coerce = _SCALARS.get(tp)
    if coerce is None:
        return value
    out = coerce(value)
    if out is _NO:
        raise ConfigError(f"{what} must be {_TYPE_NAMES[tp]}, got {value!r}")
    if tp is float and not math.isfinite(out):  # .inf epochs never end; an infinite lr trains NaNs
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return out


def _coerce_union(value: Any, tp: Any, what: str) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
        if len(args) < len(typing.get_args(tp)):
            return None
        raise ConfigError(f"{what} must not be null")
    for a in args:
        try:
            return _coerce(value, a, what)
        except ConfigError:
            pass
    names = " or ".join(_TYPE_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)
    raise ConfigError(f"{what} must be {names}, got {value!r}")


_NO = object()  # a value the type does not take


def _to_bool(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
        return v.lower() in ("true", "yes", "1")
    return _NO


def _to_int(v: Any) -> Any:
    if isinstance(v, bool):
        return _NO
    if isinstance(v, int):
        return v
    try:
        f = float(v) if isinstance(v, (float, str)) else None
    except ValueError:
        return _NO
    return int(f) if f is not None and f.is_integer() else _NO


def _to_float(v: Any) -> Any:
    if isinstance(v, bool):
        return _NO
    try:
        return float(v)
    except (TypeError, ValueError):
        return _NO


_SCALARS = {
    bool: _to_bool, int: _to_int, float: _to_float,
    str: lambda v: str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else _NO,
    list: lambda v: list(v) if isinstance(v, (list, tuple)) else _NO,
    dict: lambda v: dict(v) if isinstance(v, dict) else _NO,
}


def _show(choice: Any) -> str:
    """A choice as YAML spells it."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _field(cls: type, key: Any, prefix: str, kind: str) -> dataclasses.Field:
    """The dataclass field `key` of `cls`, or a ConfigError with the closest real name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {kind} '{prefix}{key}'{hint}")
    return fields[key]


def _build(cls: type, values: dict, prefix: str, kind: str = "config field") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        f = _field(cls, key, prefix, kind)
        if cls is Config and key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], value or {}, f"{key}.", kind)
            continue
        what = f"{kind} '{prefix}{key}'"
        v = _coerce(value, hints[key], what)
        allowed = _choices_of(f)
        if allowed and v is not None and v not in allowed:
            raise ConfigError(f"{what} must be one of {', '.join(map(_show, allowed))}; got {v!r}")
        _check_range(cls, f, v, f"{prefix}{key}")
        kwargs[key] = v
    return cls(**kwargs)


def _choices_of(f: dataclasses.Field) -> tuple:
    """A field's allowed values: a tuple, or a registry's names (tasks, heads, methods) at the time of asking."""
    c = f.metadata.get("choices") or ()
    return tuple(c() if callable(c) else c)


def _check_range(cls: type, f: dataclasses.Field, v: Any, dotted: str) -> None:
    rng = f.metadata.get("range")
    if rng is None or isinstance(v, (str, bool)) or not isinstance(v, (int, float)) or rng.holds(v):
        return
    args = typing.get_args(typing.get_type_hints(cls)[f.name])
    also = " or null" if type(None) in args else ""
    if str in args:  # a number or the word auto (lora.r, the one such field)
        also += " or 'auto'"
    raise ConfigError(f"{dotted} must be {rng.describe(isinstance(v, int))}{also}, got {v!r}")


def build_typed(cls: type, values: dict, kind: str = "config field") -> Any:
    """A dataclass declared with this module's field helper, from a YAML mapping: unknown keys (with
    the closest real one), types and choices checked as for a config. `kind` names a key in the
    messages, e.g. "sweep key" for the top level of a sweep file."""
    return _build(cls, values, "", kind)


def check_field(dotted: str, value: Any) -> Any:
    """`value` coerced for the config field `dotted` (e.g. a sweep's grid value for "lora.r"):
    an unknown field or a value of the wrong type or outside its choices is a ConfigError."""
    tree: dict = {}
    set_dotted(tree, dotted, value)
    node: Any = _build(Config, tree, "")
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set tree["a"]["b"] = value for "a.b", making (or replacing non-mapping) parents as needed."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as flat dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """Parse 'train.lr=3e-4' into ('train.lr', 0.0003); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.field=value, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml(raw, f"override '{key}'") if raw.strip() != "" else None
    except ConfigError as e:
        if "invalid YAML" not in str(e):  # a bomb or a self-containing alias is refused, not taken as text
            raise
        value = raw
    # YAML reads '3e-4' as a string (no dot); try a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key, value


def read_yaml_mapping(path: str | os.PathLike, kind: str, not_mapping: str) -> dict:
    """A YAML file whose top level is a mapping; one-line ConfigErrors for every way it can fail."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{kind} file not found: {p}")
    tree = load_yaml(p.read_bytes(), str(p)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: {not_mapping}")
    return tree


def load_config(
    path: str | os.PathLike | dict | None = None,
    overrides: list[str] | dict | None = None,
) -> Config:
    """Load a YAML config (optional; or a mapping of sections as one holds them), apply dotted overrides and
    validate every field."""
    import copy

    tree: dict = {}
    if isinstance(path, dict):
        tree = copy.deepcopy(path)
    elif isinstance(path, (str, os.PathLike)):
        tree = read_yaml_mapping(path, "config", "top level must be a mapping of config sections")
    elif path is not None:
        raise ConfigError(f"a config is a YAML file, a mapping of sections or a Config, not {type(path).__name__}")
    apply_overrides(tree, overrides)
    return config_from_dict(tree)


def apply_overrides(tree: dict, overrides: list[str] | dict | None) -> None:
    """Set dotted overrides ("section.field=value" strings, or a dict of dotted keys) in a mapping of sections."""
    if overrides is not None and not isinstance(overrides, (list, tuple, dict)):
        raise ConfigError(f"overrides are a list of 'section.field=value' strings or a dict, not "
                          f"{type(overrides).__name__}")
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in (overrides or [])]
    for key, value in items:
        set_dotted(tree, key, value)


def config_from_dict(tree: dict) -> Config:
    """A validated Config from a mapping of sections (as a YAML file holds them)."""
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def replace_fields(cfg: Config, values: dict[str, Any]) -> Config:
    """A new Config: `cfg` with dotted fields replaced (e.g. what a run resolved for each `auto`), checked
    like any config. Configs are frozen: nothing changes the one a caller holds."""
    tree = cfg.to_dict()
    for key, value in values.items():
        set_dotted(tree, key, value)
    return config_from_dict(tree)


def _validate_auto_rank(cfg: Config) -> None:
    """`lora.r: auto` needs a budget and well-formed candidates (see loraclf.models.budget)."""
    lo = cfg.lora
    if not lo.auto_ranks or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 65536
                                for r in lo.auto_ranks):
        raise ConfigError(f"lora.auto_ranks must be a non-empty list of integers from 1 to 65536, got "
                          f"{lo.auto_ranks!r}")
    if lo.auto_targets is not None:
        if not lo.auto_targets:
            raise ConfigError("lora.auto_targets must be null or a non-empty list of target-module lists")
        for t in lo.auto_targets:
            ok = t == "all-linear" or (isinstance(t, list) and t and all(isinstance(x, str) for x in t))
            if not ok:
                raise ConfigError(
                    f"lora.auto_targets: each entry must be a list of module names or 'all-linear', got {t!r}"
                )
    from .models.methods import METHODS

    if isinstance(lo.r, str) and lo.r != "auto":
        raise ConfigError(f"lora.r must be an integer >= 1 or 'auto', got {lo.r!r}")
    if lo.r == "auto" and METHODS[cfg.model.method].adapters and cfg.train.max_trainable_params is None:
        raise ConfigError("lora.r: auto needs train.max_trainable_params (the budget it chooses the rank to fit)")


NAME_MAX = 255  # bytes in one file or folder name (Linux and macOS file systems)


def check_run_name(name: Optional[str]) -> None:
    """A run name is one folder under output_dir: never a path that could reach outside it."""
    if name is None:
        return
    bad = (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")
           or Path(name).is_absolute() or name.startswith("."))
    if bad:
        raise ConfigError(f"name {name!r} must be a plain folder name (no '/', '\\', '..' or leading '.'); "
                          "the run directory is output_dir/name")
    if len(name.encode("utf-8")) > NAME_MAX:
        raise ConfigError(f"name is {len(name.encode('utf-8'))} bytes; a folder name is at most {NAME_MAX} "
                          "(the file system's limit)")


def validate(cfg: Config) -> None:
    """Cross-field checks that types, choices and ranges (declared with each field) cannot express."""
    check_run_name(cfg.name)
    _validate_method(cfg)
    _validate_auto_rank(cfg)
    t = cfg.train
    if isinstance(t.class_weights, list) and not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in t.class_weights):
        raise ConfigError("train.class_weights must be 'balanced' or a list of non-negative numbers")
    if isinstance(t.class_weights, str) and t.class_weights != "balanced":
        raise ConfigError("train.class_weights must be null, 'balanced' or a list of numbers")
    from .evaluation.metrics import METRIC_DIRECTIONS

    if t.metric != "auto" and t.metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"train.metric must be auto or one of {', '.join(METRIC_DIRECTIONS)}; got {t.metric!r}")
    if t.teacher is not None and t.cv_folds is not None:  # a fold's rows pool two files under one name
        raise ConfigError("train.teacher trains one model on a teacher's out-of-fold probabilities; a cross-validation "
                          "(train.cv_folds) does not take one")
    _validate_task_options(cfg)
    _validate_report(cfg.report)


def _validate_method(cfg: Config) -> None:
    """The method must suit the head, and the memory levers the method (capabilities, not names)."""
    from .models.heads import HEADS
    from .models.methods import METHODS

    m = cfg.model
    head, method = HEADS[m.head], METHODS[m.method]
    if m.method not in head.methods:
        fits = [n for n, h in HEADS.items() if m.method in h.methods]
        why = (f"a {m.head} head is untrained" if not method.trains else
               f"model.head={m.head} trains with {', '.join(head.methods)}")
        raise ConfigError(f"model.method={m.method} needs model.head {' or '.join(fits)} ({why})")
    if m.quantize is not None and method.trains_base:
        frozen = [n for n, x in METHODS.items() if x.trains and not x.trains_base]
        raise ConfigError(f"model.quantize={m.quantize} freezes the base weights; model.method={m.method} trains "
                          f"them (use {' or '.join(frozen)})")
    if cfg.train.gradient_checkpointing and not method.backprop_through_base:
        raise ConfigError(f"train.gradient_checkpointing saves memory in layers trained through; with "
                          f"model.method={m.method} none is (turn it off)")


def _validate_task_options(cfg: "Config") -> None:
    t, d = cfg.train, cfg.data
    if isinstance(t.pos_weight, str) and t.pos_weight != "balanced":
        raise ConfigError("train.pos_weight must be null, 'balanced' or a list of numbers")
    if isinstance(t.pos_weight, list) and not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in t.pos_weight):
        raise ConfigError("train.pos_weight must be 'balanced' or a list of positive numbers")
    if not d.label_separator or d.label_separator.strip() != d.label_separator:
        raise ConfigError("data.label_separator must be a non-empty string without surrounding spaces")
    if d.long_text != "truncate" and not isinstance(d.text_column, str) and len(d.text_column) == 2:
        raise ConfigError(f"data.long_text={d.long_text} reads one text per example; text pairs "
                          f"({', '.join(d.text_column)}) truncate: set data.long_text=truncate")
    if d.label_columns is not None:
        if not d.label_columns or not all(isinstance(c, str) and c for c in d.label_columns):
            raise ConfigError("data.label_columns must be a non-empty list of column names")
        if len(set(d.label_columns)) != len(d.label_columns):
            raise ConfigError("data.label_columns names a column twice")
        if cfg.task not in ("auto", "multi-label"):
            raise ConfigError(f"data.label_columns gives one 0/1 column per label: that is a multi-label task, "
                              f"not task={cfg.task}")


def reference() -> str:
    """Markdown table of every config field, its default and its meaning (for the README)."""
    from .evaluation.tables import markdown_table

    rows: list[list[str]] = []

    def add(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS and prefix == "":
                continue
            value = default(f"{prefix}{f.name}")
            help_ = f.metadata.get("help", "")
            if _choices_of(f):
                help_ += " One of: " + ", ".join(f"`{_show(c)}`" for c in _choices_of(f)) + "."
            if f.metadata.get("range"):
                integer = typing.get_type_hints(cls)[f.name] is not float
                help_ += f" Range: {f.metadata['range'].describe(integer)}."
            shown = yaml.safe_dump(value).strip().removesuffix('...').strip()
            rows.append([f"`{prefix}{f.name}`", f"`{shown}`", help_])

    add(Config, "")
    for name, cls in SECTIONS.items():
        add(cls, f"{name}.")
    return markdown_table(["field", "default", "meaning"], rows)
