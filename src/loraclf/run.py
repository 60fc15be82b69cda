"""`train(config) -> Run`: data -> model -> loop -> evaluation -> run directory.

Everything a user can get wrong (data, config, budget) is checked before the run directory is
created. Final outputs are assembled in a hidden temporary folder and moved into place at the end,
so a crashed or interrupted run never leaves a half-written artifact or metrics file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .config import Config, load_config
from .data import Data, Encoded, encode, load_data, token_lengths
from .errors import ConfigError, DataError, LoraclfError
from .metrics import compute_metrics

log = logging.getLogger("loraclf")


@dataclass
class Run:
    """A finished run directory."""

    path: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def config(self) -> Config:
        return load_config(self.path / "config.yaml")

    @property
    def history(self) -> list[dict]:
        f = self.path / "history.jsonl"
        return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []

    def load(self, **kw):
        from .artifact import load

        return load(self.path / "artifact", **kw)


def default_name(cfg: Config) -> str:
    data = Path((cfg.data.path or cfg.data.train or "data").replace("hf:", "")).name.split(".")[0]
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
    for split, s in data.splits.items():
        lengths = token_lengths(tok, s.texts)
        if split == "train" and (cfg.data.min_tokens or cfg.data.max_tokens):
            keep = np.ones(len(lengths), dtype=bool)
            if cfg.data.min_tokens:
                keep &= lengths >= cfg.data.min_tokens
            if cfg.data.max_tokens:
                keep &= lengths <= cfg.data.max_tokens
            dropped = int((~keep).sum())
            if keep.sum() == 0:
                raise DataError(f"data.min_tokens/max_tokens removed every train row ({len(lengths)} rows)")
            if len(np.unique(s.labels[keep])) < 2:
                raise DataError("data.min_tokens/max_tokens left a single class in train")
            data.splits[split] = s.take(np.flatnonzero(keep))
            lengths = lengths[keep]
            data.notes.append(f"train: {dropped} rows outside the token-length filter dropped")
        stats[split] = _length_stats(lengths)
        stats[split]["truncated"] = int((lengths > cfg.data.max_length).sum())
    return stats


def _write_predictions(path: Path, split, probs: np.ndarray, labels: list[str]) -> None:
    pred = probs.argmax(axis=1)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "gold", "predicted", "correct"] + [f"p_{n}" for n in labels])
        for i, text in enumerate(split.texts):
            w.writerow([text, labels[split.labels[i]], labels[pred[i]], int(pred[i] == split.labels[i])]
                       + [f"{p:.6f}" for p in probs[i]])


def results_table(metrics: dict) -> str:
    """Plain-text summary of a run's metrics.json for the terminal."""
    rows = [("split", "n", "accuracy", "macro-F1", "weighted-F1", "macro-recall", "ROC-AUC", "ECE")]
    for split in ("validation", "test"):
        m = metrics.get(split)
        if not m:
            continue
        auc = "-" if m.get("roc_auc") is None else f"{m['roc_auc']:.4f}"
        rows.append((split, str(m["n"]), f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['weighted_f1']:.4f}",
                     f"{m['macro_recall']:.4f}", auc, f"{m['ece']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    last = metrics.get("test") or metrics.get("validation")
    if last:
        lines.append("")
        lines.append("per class (" + ("test" if metrics.get("test") else "validation") + "): " + ", ".join(
            f"{k} F1 {v['f1']:.3f}" for k, v in last["per_class"].items()))
    p = metrics["params"]
    t = metrics["timing"]
    lines.append(f"trainable params: {p['trainable']:,} of {p['total']:,} ({p['trainable_pct']:.2f}%): "
                 f"lora {p['lora']:,}, head {p['head']:,}, other {p['other']:,}")
    lines.append(f"train: {t['train_seconds']:.1f} s, {t['train_samples_per_s']:.1f} samples/s; "
                 f"total {t['total_seconds']:.1f} s")
    return "\n".join(lines)


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


def _make_on_log(cfg: Config, accelerator, run_dir: Path):
    """Hook: a callback that receives every history record during training (experiment trackers)."""
    from .tracking import start

    return start(cfg, accelerator, run_dir)


def _after_run(run_dir: Path, cfg: Config, quiet: bool, train_texts: Optional[list[str]] = None) -> None:
    """Hook: work done once a run directory is complete (plots, report.html, model card)."""
    from .report import after_run

    after_run(run_dir, cfg, quiet, train_texts)


def train(config: Config | str | os.PathLike, overrides: Optional[list[str]] = None, resume: Optional[str] = None,
          quiet: bool = False, callback: Optional[Callable[[dict], None]] = None) -> Run:
    """Train and evaluate one config; returns the finished :class:`Run`.

    `resume` is a run directory whose checkpoints/ holds the state to continue from; its
    config.yaml is used (overrides still apply on top). `callback` receives every history record
    during training (a search uses it to report validation metrics and prune).
    """
    from accelerate.utils import set_seed

    from .artifact import save_artifact
    from .loop import FitResult, evaluate_encoded, fit, make_accelerator
    from .models import apply_method, build_prompt_model, check_budget, count_parameters
    from .models.build import load_base
    from .models.registry import fingerprint

    t_start = time.perf_counter()
    from .memory import PeakMemory

    peak_mem = PeakMemory.start()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise LoraclfError(f"--resume {run_dir}: no config.yaml there; is it a run directory?")
        if (run_dir / "metrics.json").exists():
            raise LoraclfError(f"--resume {run_dir}: that run already finished")
        cfg = load_config(run_dir / "config.yaml", overrides)
    elif isinstance(config, Config):
        cfg = config
    else:
        cfg = load_config(config, overrides)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)

    data = load_data(cfg.data, cfg.seed)
    labels = data.labels.names
    from .budget import resolve_auto_lora

    prompt_head = cfg.model.head != "classifier"
    if prompt_head:
        auto_lora = resolve_auto_lora(cfg, data.labels.id2label, quiet=quiet)  # lora.r: auto -> a rank
        set_seed(cfg.seed)
        if data.splits["train"].pairs is not None:
            raise DataError("text pairs need model.head=classifier (prompt heads take one text column)")
        tr = data.splits["train"]
        built = build_prompt_model(cfg.model, cfg.lora, labels, tr.texts, tr.labels, cfg.seed, quiet=quiet)
    else:
        set_seed(cfg.seed)
        model, tok, resolved, missing = load_base(cfg.model, len(labels), data.labels.id2label, quiet=quiet)
        with torch.random.fork_rng(devices=[]):  # choosing a rank leaves the seeded stream as it was
            auto_lora = resolve_auto_lora(cfg, data.labels.id2label, quiet=quiet, base=(model.config, missing))
        built = apply_method(model, tok, resolved, cfg.model.method, cfg.lora, missing)
    counts = count_parameters(built.model, built.modules_to_save)
    check_budget(counts, cfg.train.max_trainable_params)
    tok = built.tokenizer
    _check_max_length(cfg, built)
    if isinstance(cfg.train.class_weights, list) and len(cfg.train.class_weights) != len(labels):
        raise ConfigError(f"train.class_weights has {len(cfg.train.class_weights)} values but there are "
                          f"{len(labels)} labels ({', '.join(labels)})")
    train_texts = data.splits["train"].texts  # for the report's length plot: as loaded, before the filter
    length_stats = _filter_train(data, tok, cfg)
    if prompt_head:
        enc: dict[str, Encoded] = {split: built.model.formatter.encode(s.texts, s.labels, cfg.data.max_length)
                                   for split, s in data.splits.items()}
    else:
        enc = {split: encode(tok, s.texts, s.labels, cfg.data.max_length, s.pairs) for split, s in data.splits.items()}

    accelerator = make_accelerator(cfg.train)
    main = accelerator.is_main_process
    if resume is None:
        name = cfg.name or default_name(cfg)
        if accelerator.num_processes > 1:  # every process must agree on a timestamped name
            from accelerate.utils import broadcast_object_list

            name = broadcast_object_list([name])[0]
        cfg.name = name
        run_dir = Path(cfg.output_dir) / name
        if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints" / "trainer_state.json").exists():
            raise LoraclfError(f"run directory {run_dir} already exists; choose another name or --resume it")
        accelerator.wait_for_everyone()
    ckpt = run_dir / "checkpoints"
    if main:
        ckpt.mkdir(parents=True, exist_ok=True)
        if resume is None:  # a resumed run's config is rewritten once its checkpoint has loaded
            cfg.save(run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    if not quiet and main:
        sizes = ", ".join(f"{k} {v:,}" for k, v in data.sizes().items())
        print(f"loraclf: {cfg.model.name} ({built.model_type}, {cfg.model.method}) on {sizes}; "
              f"labels: {', '.join(labels)}; trainable {counts['trainable']:,} params -> {run_dir}")

    on_log = _make_on_log(cfg, accelerator, run_dir)
    if callback is not None:
        on_log = callback if on_log is None else (lambda rec, _a=on_log, _b=callback: (_a(rec), _b(rec)))
    if cfg.model.method == "zero-shot":
        res = FitResult()
        built.model.to(accelerator.device)
    else:
        res = fit(built.model, tok, enc["train"], enc["validation"], labels, cfg.train, cfg.seed, accelerator,
                  ckpt_dir=ckpt, resume=resume is not None, quiet=quiet or not main, on_log=on_log,
                  on_resumed=(lambda: cfg.save(run_dir / "config.yaml")) if main else None,
                  base_id=fingerprint(built.resolved, cfg.model.revision) if built.resolved else None,
                  max_length=cfg.data.max_length)
    model = accelerator.unwrap_model(built.model)

    results: dict[str, dict] = {}
    probs_by_split: dict[str, np.ndarray] = {}
    t_eval = time.perf_counter()
    for split in ("validation", "test"):
        if split in enc:
            if hasattr(model, "generation_log"):
                model.generation_log = []
            m, probs = evaluate_encoded(model, enc[split], tok, labels, cfg.train.eval_batch_size, accelerator,
                                        progress=not quiet and main, desc=f"eval {split}")
            if cfg.model.head == "generate":
                m["generation"] = model.generation_stats()
            results[split], probs_by_split[split] = m, probs
    eval_seconds = time.perf_counter() - t_eval
    accelerator.wait_for_everyone()
    if not main:
        return Run(run_dir)

    metrics = {
        "run": cfg.name,
        "model": {"name": cfg.model.name, "resolved": built.resolved.portable, "hub_id": built.resolved.hub_id,
                  "model_type": built.model_type, "method": cfg.model.method,
                  "target_modules": built.target_modules, "modules_to_save": built.modules_to_save,
                  "newly_initialised": built.newly_initialised},
        "params": counts,
        "labels": labels,
        "data": {"sizes": data.sizes(), "notes": data.notes, "sources": {k: v.source for k, v in data.splits.items()},
                 "token_lengths": length_stats},
        **results,
        "best": {"metric": cfg.train.metric, "value": res.best_metric, "step": res.best_step,
                 "stopped_early": res.stopped_early, "epochs_run": res.epochs_run, "steps": res.steps},
        "timing": {"train_seconds": res.train_seconds, "train_samples_per_s": res.samples_per_s,
                   "eval_seconds": eval_seconds, "total_seconds": time.perf_counter() - t_start,
                   "padding_efficiency": res.train_tokens / max(res.padded_tokens, 1)},
        "environment": {"device": str(accelerator.device), "precision": accelerator.mixed_precision,
                        "num_processes": accelerator.num_processes, "torch_threads": torch.get_num_threads(),
                        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    metrics["timing"].update(peak_mem.read())  # peak_memory_mb: peak RSS on CPU, max allocated on CUDA
    if auto_lora:
        metrics["budget"] = auto_lora
    meta = {"labels": labels, "base_model": built.resolved.portable, "base_model_hub_id": built.resolved.hub_id,
            "method": cfg.model.method, "head": cfg.model.head, "model_type": built.model_type,
            "max_length": cfg.data.max_length,
            "text_column": cfg.data.text_column, "pooling": "model default (classification head of the architecture)",
            "target_modules": built.target_modules, "modules_to_save": built.modules_to_save,
            "metrics": {s: {k: results[s][k] for k in ("accuracy", "macro_f1")} for s in results}}
    if prompt_head:
        meta["prompt"] = built.model.formatter.spec.to_dict()
        meta["max_new_tokens"] = cfg.model.max_new_tokens
        meta["fallback_label"] = built.model.labels[built.model.fallback]
        metrics["prompt"] = {**meta["prompt"], "chat": built.model.formatter.chat,
                             "example_prompt": tok.decode(enc["test" if "test" in enc else "validation"].input_ids[0])}

    # Assemble everything in a hidden folder, then move into place.
    stage = run_dir / f".partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        save_artifact(model, tok, stage / "artifact", meta)
        (stage / "predictions").mkdir()
        for split, probs in probs_by_split.items():
            _write_predictions(stage / "predictions" / f"{split}.csv", data.splits[split], probs, labels)
        (stage / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in res.history))
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for item in ("artifact", "predictions", "history.jsonl", "metrics.json"):  # metrics.json last: "finished"
            target = run_dir / item
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(stage / item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete; its resume state is no longer needed
    _after_run(run_dir, cfg, quiet, train_texts)
    if not quiet:
        print(results_table(metrics))
        print(f"run directory: {run_dir}")
    return Run(run_dir)


def evaluate_artifact(path: str, data_cfg_overrides: Optional[list[str]] = None, split: str = "test",
                      batch_size: int = 128, quiet: bool = False) -> dict:
    """Metrics of a saved artifact on every row of one labelled file or split (data options as in a config)."""
    from .artifact import load
    from .data import load_labelled_split

    clf = load(path)
    overrides = list(data_cfg_overrides or [])
    if not any(o.startswith("data.text_column=") for o in overrides):
        overrides.append(f"data.text_column={clf.meta.get('text_column', 'text')}")
    cfg = load_config(None, overrides)
    texts, pairs, gold_names, source = load_labelled_split(cfg.data, split)
    gold = []
    for i, name in enumerate(gold_names):
        if name not in clf.labels:
            raise DataError(
                f"{source}: row {i + 1} has label {name!r}, unknown to the model (labels: {', '.join(clf.labels)})"
            )
        gold.append(clf.labels.index(name))
    probs = clf.predict_proba(texts, batch_size, pairs, progress=not quiet)
    return compute_metrics(np.array(gold), probs, clf.labels)
