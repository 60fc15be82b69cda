"""`train(config) -> Run`: data -> model -> loop -> evaluation -> run directory.

Everything a user can get wrong (data, config, budget) is checked before the run directory is
created. Final outputs are assembled in a hidden temporary folder and moved into place at the end,
so a crashed or interrupted run never leaves a half-written artifact or metrics file.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import Config, load_config, replace_fields, set_dotted
from ..data import Data, Encoded, load_data, token_lengths
from ..data.batching import set_num_proc
from ..data.long import LongText, special_frame
from ..data.tables import in_memory_splits
from ..errors import ConfigError, DataError, Interrupted, LoraclfError
from ..evaluation.metrics import METRICS
from ..evaluation.tables import text_table
from ..models.heads import head_class
from ..models.methods import METHODS
from ..schema import RunDir, write_jsonl
from ..tasks import Task, make_task, task_class
from .checkpoint import has_checkpoint
from .faults import fault
from .loop import Trainer, TrainerState, input_logits, make_accelerator
from .rundir import RunLock, check_resume_overrides, on_main, open_new, refuse_existing

log = logging.getLogger("loraclf")


class Run(RunDir):
    """A finished run directory: its metrics, config and history, and its classifier."""

    @property
    def metrics(self) -> dict:
        return self.read_metrics()

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def history(self) -> list[dict]:
        return self.read_history()

    def load(self, **kw):
        from ..deploy.artifact import load

        return load(self.artifact_path, **kw)


def default_name(cfg: Config) -> str:
    source = Path((cfg.data.path or cfg.data.train or "data").replace("hf:", ""))
    data = source.name.split(".")[0]
    if not cfg.data.path and data == "train":  # data.train=<folder>/train.csv: the folder names the data
        data = source.parent.name or data
    model = Path(cfg.model.name).name
    return f"{data}-{model}-{cfg.model.method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _length_stats(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {}
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()), "min": int(lengths.min())}


def _filter_train(data: Data, tok, cfg: Config) -> dict:
    """Apply data.min_tokens / data.max_tokens to train; return token-length stats per split."""
    stats = {}
    read = LongText.from_config(cfg.data).source_length(cfg.data.max_length)  # the entry encoding reads next
    for split, s in data.splits.items():
        lengths = token_lengths(tok, s.texts, max_length=read)  # of the first text, as before
        if split == "train" and (cfg.data.min_tokens or cfg.data.max_tokens):
            keep = np.ones(len(lengths), dtype=bool)
            if cfg.data.min_tokens:
                keep &= lengths >= cfg.data.min_tokens
            if cfg.data.max_tokens:
                keep &= lengths <= cfg.data.max_tokens
            dropped = int((~keep).sum())
            if keep.sum() == 0:
                raise DataError(f"data.min_tokens/max_tokens removed every train row ({len(lengths)} rows)")
            if task_class(data.task).single_class(s.labels[keep]):
                raise DataError("data.min_tokens/max_tokens left a single class in train")
            data.splits[split] = s.take(np.flatnonzero(keep))
            lengths = lengths[keep]
            data.notes.append(f"train: {dropped} rows outside the token-length filter dropped")
        stats[split] = _length_stats(lengths)
        stats[split]["truncated"] = int((lengths > cfg.data.max_length).sum())
    return stats


def results_table(metrics: dict) -> str:
    """Plain-text summary of a run's metrics.json for the terminal."""
    task = make_task(metrics.get("task"), metrics.get("labels") or [])
    headline = task.headline
    rows = [["split", "n"] + [METRICS[k].name for k in headline]]
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            rows.append([split, str(m["n"])] + [METRICS[k].format(m.get(k)) for k in headline])
    lines = text_table(rows, right_from=1)
    last = metrics.get("test") or metrics.get("validation")
    per = last and (last.get("per_class") or last.get("per_label"))
    if per:
        lines.append("")
        lines.append(("per class" if "per_class" in last else "per label") + " ("
                     + ("test" if metrics.get("test") else "validation") + "): " + ", ".join(
                         f"{k} F1 {v['f1']:.3f}" for k, v in per.items()))
    fitted = metrics.get(task.fitted_key) if task.fitted_key else None
    if fitted and task.fitted_line(fitted):
        lines.append(task.fitted_line(fitted))
    p = metrics["params"]
    t = metrics["timing"]
    lines.append(f"trainable params: {p['trainable']:,} of {p['total']:,} ({p['trainable_pct']:.2f}%): "
                 f"lora {p['lora']:,}, head {p['head']:,}, other {p['other']:,}")
    lines.append(f"train: {t['train_seconds']:.1f} s, {t['train_samples_per_s']:.1f} samples/s; "
                 f"total {t['total_seconds']:.1f} s")
    return "\n".join(lines)


def _check_steps(tcfg, n_train: int, processes: int) -> None:
    """train.epochs must cover at least one train batch (a fraction of an epoch is allowed, nothing is not)."""
    per_epoch = math.ceil(math.ceil(n_train / tcfg.batch_size) / processes)
    if round(tcfg.epochs * per_epoch) < 1:
        raise ConfigError(f"train.epochs={tcfg.epochs:g} trains no batch ({per_epoch} per epoch); use at least "
                          f"{1 / per_epoch:.3g}")


def _check_max_length(cfg: Config, built) -> None:
    """data.max_length must fit the model's position embeddings (else a shape error mid-training)."""
    mc = getattr(built.model, "config", None)
    limit = getattr(mc, "max_position_embeddings", None) if mc is not None else None
    if limit and built.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # positions start after the padding index
    tok_limit = getattr(built.tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limit = min(limit, tok_limit) if limit else tok_limit
    if limit and cfg.data.max_length > limit:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds what {cfg.model.name} supports ({limit} tokens)"
        )


def _resolve_config(config, overrides, resume: Optional[str]) -> Config:
    if resume is None:
        if isinstance(config, Config):  # a Config object, with overrides applied on top
            return load_config(config.to_dict(), overrides) if overrides else config
        if isinstance(config, dict) and in_memory_splits(config):  # DataFrames in data.train etc.: saved as
            return load_config(_tables_placed(config, overrides))   # files the config names
        return load_config(config, overrides)
    run = RunDir(resume)
    if not run.config_path.exists():
        raise LoraclfError(f"--resume {run.path}: no config.yaml there; is it a run directory?")
    if run.path.parent.name == "folds" and RunDir(run.path.parent.parent).config_path.exists():
        raise LoraclfError(f"--resume {run.path}: a fold of a cross-validation run trains on rows its config does "
                           "not name; train the cross-validation again")
    if run.finished:
        raise LoraclfError(f"--resume {run.path}: that run already finished")
    cfg = load_config(run.config_path, overrides)
    check_resume_overrides(load_config(run.config_path), cfg)
    return cfg


def _tables_placed(config: dict, overrides) -> dict:
    """A config mapping whose data section holds in-memory splits, with the overrides applied first (they may
    name output_dir, where the tables are saved) and each in-memory split replaced by the file saved for it."""
    import copy

    from ..config import apply_overrides
    from ..data.tables import place_tables

    given = in_memory_splits(config)
    tree = copy.deepcopy({**config, "data": {k: v for k, v in config["data"].items() if k not in given}})
    apply_overrides(tree, overrides)
    for key, value in place_tables(given, tree, "data.{split}").items():
        set_dotted(tree, key, value)
    return tree


def build_head(cfg: Config, data: Data, quiet: bool = False):
    """The model to train, behind its head: (the config with every `auto` the run resolves filled in, head,
    models.Built, parameter counts, the `lora.r: auto` choice, what `train.recipe` chose). Everything that can
    refuse the config (task options, the head, budget, max_length, class weights) is checked here, before a run
    directory exists. The config given is never changed: the one returned is a new, frozen one."""
    from ..models import check_budget, count_parameters
    from ..models.budget import resolve_auto_lora
    from ..models.build import is_encoder
    from .recipes import announce, choose_recipe

    task = make_task(data.task, data.labels.names)
    cfg = replace_fields(cfg, {"task": task.name,  # saved resolved: a resumed run reads its labels the same way
                               "train.metric": task.default_metric if cfg.train.metric == "auto" else cfg.train.metric})
    train = data.splits["train"]
    cfg, recipe = choose_recipe(cfg, task, len(train), train.labels, lambda: is_encoder(cfg.model))
    if recipe and not quiet:
        print(announce(recipe))
    task.check_config(cfg)
    head_cls = head_class(cfg.model.head)
    head_cls.check_config(cfg, task)
    head, built, auto_lora = head_cls.build(cfg, data, task, resolve_auto_lora, quiet=quiet)
    head.long_text = LongText.from_config(cfg.data)
    if not head.long_text.truncates:  # its knobs must fit the window before a run directory exists
        head.long_text.check(cfg.data.max_length, special_frame(head.tokenizer))
    if auto_lora:  # what `lora.r: auto` chose is what config.yaml records: rerunning it trains the same
        chosen = auto_lora["chosen"]
        cfg = replace_fields(cfg, {"lora.r": chosen["r"], "lora.alpha": chosen["alpha"],
                                   "lora.target_modules": chosen["target_modules"]})
    counts = count_parameters(built.model, built.modules_to_save)
    check_budget(counts, cfg.train.max_trainable_params)
    _check_max_length(cfg, built)
    return cfg, head, built, counts, auto_lora, recipe


def _run_dir_of(cfg: Config, resume: Optional[str], accelerator) -> tuple[Config, Path]:
    """The config with its run name, and the run's folder, named alike on every process; refused before
    any work when it cannot be used."""
    if resume is not None:
        return cfg, Path(resume)
    name = cfg.name or default_name(cfg)
    if accelerator.num_processes > 1:  # every process must agree on a timestamped name
        from accelerate.utils import broadcast_object_list

        name = broadcast_object_list([name])[0]
    cfg = replace_fields(cfg, {"name": name})
    run_dir = Path(cfg.output_dir) / name
    on_main(accelerator, lambda: refuse_existing(run_dir))
    return cfg, run_dir


def _open_run_dir(cfg: Config, run_dir: Path, resume: bool, accelerator, locks: list) -> None:
    """Create (and lock) a new run's folder with its config.yaml; a resumed run's config is rewritten
    only once its checkpoint has loaded."""
    def create() -> None:
        if not resume:
            locks.append(open_new(run_dir))
            RunDir(run_dir).write_config(cfg)
        (run_dir / "checkpoints").mkdir(exist_ok=True)

    on_main(accelerator, create)


def _fit(cfg: Config, head, built, enc: dict[str, Encoded], accelerator, run_dir: Path, resume: bool,
         quiet: bool, on_log) -> TrainerState:
    from ..models.registry import fingerprint

    if not METHODS[cfg.model.method].trains:
        head.model.to(accelerator.device)
        return TrainerState()
    main = accelerator.is_main_process
    trainer = Trainer(head, enc["train"], enc["validation"], cfg.train, cfg.seed, accelerator,
                      ckpt_dir=run_dir / "checkpoints", quiet=quiet or not main, on_log=on_log,
                      max_length=cfg.data.max_length,
                      base_id=fingerprint(built.resolved, cfg.model.revision) if built.resolved else None)
    return trainer.fit(resume=resume,
                       on_resumed=(lambda: RunDir(run_dir).write_config(cfg)) if main else None)


def _evaluate_splits(head, enc: dict[str, Encoded], cfg: Config, accelerator, quiet: bool):
    """Metrics and outputs of validation and test with the trained (best) weights, after the task has
    fitted what it chooses on validation (temperature, thresholds); and what it fitted."""
    logits: dict[str, np.ndarray] = {}
    stats: dict[str, dict] = {}
    progress = not quiet and accelerator.is_main_process
    for split in ("validation", "test"):
        if split in enc:
            head.start_evaluation()
            e = enc[split]
            windows = input_logits(head, e, cfg.train.eval_batch_size, accelerator, progress, f"eval {split}")
            logits[split] = e.documents(windows)
            stats[split] = head.statistics()
            if not head.long_text.truncates:
                stats[split]["long_text"] = _long_text_stats(head.long_text, e, windows, logits[split])
    fitted = head.task.fit(cfg.train, logits["validation"], enc["validation"].labels)
    results: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}
    for split, lg in logits.items():
        results[split], outputs[split] = head.task.evaluate(lg, enc[split].labels)
        results[split].update(stats[split])
    return results, outputs, fitted


def _long_text_stats(long_text: LongText, enc: Encoded, windows: np.ndarray, logits: np.ndarray) -> dict:
    """metrics.json's long_text of a split: the strategy and, for chunks, where the deciding window was (how many
    documents were longer than a window is data.token_lengths' `truncated`)."""
    out = {"strategy": long_text.strategy}
    return {**out, **enc.chunks.summary(windows, logits)} if enc.chunks is not None else out


def _run_metrics(cfg: Config, built, head, data: Data, counts: dict, length_stats: dict, results: dict,
                 state: TrainerState, timing: dict, accelerator, example: Encoded) -> dict:
    """metrics.json: what was trained on what, how it scored, how training went, where it ran."""
    return {
        "run": cfg.name,
        "model": {"name": cfg.model.name, "resolved": built.resolved.portable, "hub_id": built.resolved.hub_id,
                  "model_type": built.model_type, "method": cfg.model.method,
                  "target_modules": built.target_modules, "modules_to_save": built.modules_to_save,
                  "newly_initialised": built.newly_initialised},
        "task": head.task.name,
        "params": counts,
        "labels": head.task.labels,
        "data": {"sizes": data.sizes(), "notes": data.notes, "sources": {k: v.source for k, v in data.splits.items()},
                 "token_lengths": length_stats},
        **results,
        "best": {"metric": cfg.train.metric, "value": state.best_metric, "step": state.best_step,
                 "stopped_early": state.stopped_early, "epochs_run": state.epochs_run, "steps": state.step},
        "timing": {"train_seconds": state.train_seconds, "train_samples_per_s": state.samples_per_s,
                   "padding_efficiency": state.train_tokens / max(state.padded_tokens, 1), **timing},
        "environment": {"device": str(accelerator.device), "precision": accelerator.mixed_precision,
                        "num_processes": accelerator.num_processes, "torch_threads": torch.get_num_threads(),
                        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        **head.run_info(example),
    }


def _artifact_meta(cfg: Config, built, head, results: dict) -> dict:
    """loraclf.json: everything `loraclf.load` needs to rebuild the classifier (and to refuse a base
    model that does not fit it)."""
    from ..models.heads import base_shape

    return {"labels": head.task.labels, "task": head.task.name, "base_model": built.resolved.portable,
            "base_model_hub_id": built.resolved.hub_id, "method": cfg.model.method, "head": head.name,
            "model_type": built.model_type, "max_length": cfg.data.max_length, "text_column": cfg.data.text_column,
            "label_column": cfg.data.label_column, "label_columns": cfg.data.label_columns,
            "label_separator": cfg.data.label_separator,
            "target_modules": built.target_modules, "modules_to_save": built.modules_to_save,
            "metrics": {s: {k: results[s][k] for k in head.task.headline[:2]} for s in results},
            "task_state": head.task.state(),
            "base_shape": base_shape(built.model.config), "base_fingerprint": built.base_fingerprint,
            "long_text": head.long_text.to_meta(head.tokenizer, cfg.data.max_length), **head.artifact_meta()}


def _write_run(run_dir: Path, head, meta: dict, metrics: dict, probs: dict[str, np.ndarray], data: Data,
               history: list[dict]) -> None:
    """Assemble artifact/, predictions/, history.jsonl and metrics.json in a hidden folder, then move
    them into place (metrics.json last: it marks the run finished) and drop the resume state."""
    from ..schema import ARTIFACT_DIR, HISTORY_FILE, METRICS_FILE, PREDICTIONS_DIR, save_artifact

    for stale in run_dir.glob(".partial-*"):  # left by a process killed while assembling (the run is locked)
        shutil.rmtree(stale, ignore_errors=True)
    stage = RunDir(run_dir / f".partial-{os.getpid()}")
    stage.path.mkdir()
    try:
        save_artifact(head, stage.artifact_path, meta)
        fault("run.assemble")
        (stage.path / PREDICTIONS_DIR).mkdir()
        for split, p in probs.items():
            s = data.splits[split]
            head.task.write_predictions(stage.predictions_path(split), s.texts, s.labels, p, s.pairs)
        write_jsonl(stage.history_path, history)
        stage.write_metrics(metrics)
        for item in (ARTIFACT_DIR, PREDICTIONS_DIR, HISTORY_FILE, METRICS_FILE):
            target = run_dir / item
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(stage.path / item, target)
    finally:
        shutil.rmtree(stage.path, ignore_errors=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is complete; its resume state is not needed


def _announce(cfg: Config, built, data: Data, task: Task, counts: dict, run_dir: Path) -> None:
    sizes = ", ".join(f"{k} {v:,}" for k, v in data.sizes().items())
    print(f"loraclf: {cfg.model.name} ({built.model_type}, {cfg.model.method}) on {sizes}; {task.name}, "
          f"{task.label_noun}: {', '.join(task.labels)}; trainable {counts['trainable']:,} params -> {run_dir}")
    for note in data.notes:  # e.g. a task found from the labels, caps and carving
        print(f"loraclf: {note}")


def train(config: Config | dict | str | os.PathLike | None, overrides: Optional[list[str] | dict] = None,
          resume: Optional[str] = None, quiet: bool = False, callback: Optional[Callable[[dict], None]] = None,
          data: Optional[Data] = None) -> Run:
    """Train and evaluate one config; returns the finished :class:`Run`.

    `resume` is a run directory whose checkpoints/ holds the state to continue from; its
    config.yaml is used (overrides that would change what the checkpoint means are refused).
    `callback` receives every history record during training (a search uses it to prune).
    `data` replaces what the config's data section would load (cross-validation passes each fold's).
    With ``train.cv_folds`` the run is a cross-validation (:mod:`loraclf.training.cv`).
    """
    from .tracking import check_installed

    t_start = time.perf_counter()
    cfg = _resolve_config(config, overrides, resume)
    check_installed(cfg.report)  # here, not when a config is read: Run.config must load anywhere
    if cfg.train.cv_folds and data is None:
        if resume is not None:
            raise LoraclfError(f"--resume {resume}: a cross-validation run is not resumed; resume one of its "
                               "folds/ or train it again")
        from .cv import cross_validate

        return Run(cross_validate(replace_fields(cfg, {"name": cfg.name or default_name(cfg)}), train, quiet, callback))
    accelerator = make_accelerator(cfg.train)  # refuses fp16/bf16 without a GPU before any work
    cfg, run_dir = _run_dir_of(cfg, resume, accelerator)
    locks: list[RunLock] = []
    try:
        if resume is not None and accelerator.is_main_process:
            locks.append(RunLock(run_dir).acquire())
        return _train(cfg, run_dir, resume is not None, accelerator, locks, quiet, callback, t_start, data)
    except KeyboardInterrupt:
        if RunDir(run_dir).config_path.exists():
            raise Interrupted(run_dir) from None
        raise
    except Exception:  # whatever failed (a diverged loss, a bug, no memory): a new run with nothing to
        # resume from leaves no folder behind
        if resume is None and locks and not has_checkpoint(run_dir) and not RunDir(run_dir).finished:
            locks[0].remove_created()  # under the lock, released in `finally`
        raise
    finally:
        for lock in locks:
            lock.release()


def _read_teacher(cfg: Config, data: Data):
    """train.teacher's out-of-fold probabilities by file and row, read (and refused) before any model loads."""
    from .teacher import seen_by_teacher, teacher_probabilities, teacher_rows

    teacher = teacher_probabilities(cfg.train.teacher, make_task(data.task, data.labels.names))
    teacher_rows(cfg.train.teacher, teacher[0], data.splits["train"])
    seen = seen_by_teacher(teacher[0], data.splits["validation"])
    if seen:
        data.notes.append(f"train.teacher: {seen:,} validation rows were among the teacher's cross-validation rows, so "
                          "what it teaches knows their labels: validation scores (early stopping, calibration) may be "
                          "optimistic; give a validation file it never saw for honest ones")
    return teacher


def _use_teacher(cfg: Config, head, data: Data, train: Encoded, teacher) -> None:
    """train.teacher: the train inputs' soft targets, and a note on how much the teacher doubts the labels."""
    from .teacher import soft_targets

    train.targets, note = soft_targets(cfg.train.teacher, cfg.train.teacher_weight, head.task, data.splits["train"],
                                       teacher)
    data.notes.append(note)


def _train(cfg: Config, run_dir: Path, resume: bool, accelerator, locks: list, quiet: bool, callback,
           t_start: float, data: Optional[Data] = None) -> Run:
    from ..evaluation.report import after_run
    from .memory import PeakMemory
    from .tracking import start as start_tracking

    peak_mem = PeakMemory.start()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_num_proc(cfg.data.num_proc)
    data = data if data is not None else load_data(cfg.data, cfg.seed, cfg.task)
    teacher = _read_teacher(cfg, data) if cfg.train.teacher is not None else None
    cfg, head, built, counts, auto_lora, recipe = build_head(cfg, data, quiet)
    train_texts = data.splits["train"].texts  # for the report's length plot: as loaded, before the filter
    length_stats = _filter_train(data, head.tokenizer, cfg)
    if METHODS[cfg.model.method].trains:
        _check_steps(cfg.train, len(data.splits["train"]), accelerator.num_processes)
    enc = {split: head.encode(s.texts, s.labels, cfg.data.max_length, s.pairs) for split, s in data.splits.items()}
    if teacher is not None:
        _use_teacher(cfg, head, data, enc["train"], teacher)

    main = accelerator.is_main_process
    _open_run_dir(cfg, run_dir, resume, accelerator, locks)
    if not quiet and main:
        _announce(cfg, built, data, head.task, counts, run_dir)
    tracker = start_tracking(cfg, accelerator, run_dir)
    metrics, files = None, []
    try:
        on_log = callback if tracker is None else (
            tracker if callback is None else (lambda rec: (tracker(rec), callback(rec))))
        state = _fit(cfg, head, built, enc, accelerator, run_dir, resume, quiet, on_log)
        t_eval = time.perf_counter()
        results, probs, fitted = _evaluate_splits(head, enc, cfg, accelerator, quiet)
        eval_seconds = time.perf_counter() - t_eval
        accelerator.wait_for_everyone()
        if not main:
            return Run(run_dir)
        timing = {"eval_seconds": eval_seconds, "total_seconds": time.perf_counter() - t_start, **peak_mem.read()}
        metrics = _run_metrics(cfg, built, head, data, counts, length_stats, results, state, timing, accelerator,
                               enc["test" if "test" in enc else "validation"])
        if auto_lora:
            metrics["budget"] = auto_lora
        if recipe:
            metrics["recipe"] = recipe
        if fitted:  # what the task chose on validation (a temperature, thresholds)
            metrics[head.task.fitted_key] = fitted
        _write_run(run_dir, head, _artifact_meta(cfg, built, head, results), metrics, probs, data, state.history)
        files = after_run(run_dir, cfg, quiet, train_texts)
        metrics = Run(run_dir).metrics  # with the report's error analysis
    finally:  # an interrupted run still flushes what its trackers hold
        if tracker is not None:
            tracker.finish(metrics, files)
    if not quiet:
        print(results_table(metrics))
        print(f"run directory: {run_dir}")
    return Run(run_dir)
