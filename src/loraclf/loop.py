"""The training loop: Accelerate-native (DDP / FSDP via `accelerate launch` unchanged).

One function, :func:`fit`, trains a model on encoded data with length-grouped dynamic padding,
evaluates on validation at a fixed cadence, keeps the best weights, stops early if asked, and
checkpoints so that ``--resume`` continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .config import TrainConfig
from .data import Collator, Encoded, eval_batches, train_batches
from .errors import CheckpointError, EnvironmentError_
from .metrics import compute_metrics, is_better

log = logging.getLogger("loraclf")


def choose_precision(requested: str) -> str:
    """Accelerate's mixed_precision value for a config's train.precision."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp32":
        return "no"
    if not cuda:
        raise EnvironmentError_(f"train.precision={requested} needs a CUDA GPU; none is visible (use auto or fp32)")
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise EnvironmentError_("train.precision=bf16: this GPU does not support bf16 (use fp16 or auto)")
    return requested


def make_accelerator(tcfg: TrainConfig, project_dir: Optional[str] = None):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    # cpu=True on machines without CUDA: it is what makes `torchrun --nproc_per_node N` a gloo DDP run
    # (Accelerate's MULTI_CPU) instead of N independent single-process runs. On a GPU, batches come
    # from pinned memory and are copied without blocking the host.
    return Accelerator(mixed_precision=choose_precision(tcfg.precision), project_dir=project_dir, cpu=not cuda,
                       dataloader_config=DataLoaderConfiguration(non_blocking=cuda))


def pad_multiple(tcfg: TrainConfig, device_type: str) -> int:
    """The batch-length rounding in use: the config's, else 16 when compiling, 8 on GPU, 1 on CPU."""
    if tcfg.pad_to_multiple_of:
        return int(tcfg.pad_to_multiple_of)
    if tcfg.compile:
        return 16
    return 8 if device_type == "cuda" else 1


def compile_model(model, mode: bool | str):
    """torch.compile for the training step (train.compile: true or a mode); shapes are bucketed
    (:func:`pad_multiple`), so it recompiles rarely."""
    import torch._dynamo

    mode = "default" if mode is True else mode

    dyn = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dyn, name):
            setattr(dyn, name, max(getattr(dyn, name), 64))
    if mode == "reduce-overhead" and not torch.cuda.is_available():
        log.warning("train.compile=reduce-overhead: CUDA graphs need a GPU; compiling without them")
        mode = "default"
    if mode in ("reduce-overhead", "max-autotune") and torch.distributed.is_initialized():
        log.warning("train.compile=%s records CUDA graphs, which are untested with several processes here; "
                    "use train.compile=true if the run misbehaves", mode)
    return torch.compile(model, mode=None if mode == "default" else mode)


def pad_side_left(tokenizer) -> bool:
    return getattr(tokenizer, "padding_side", "right") == "left"


def _forward(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
    return model(**inputs).logits


@torch.no_grad()
def predict_logits(model, enc: Encoded, tokenizer, batch_size: int, accelerator=None,
                   progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits for every example, in input order; batches sorted by length to minimise padding."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    batches = eval_batches(enc.lengths, batch_size)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    dl = DataLoader(range(len(enc)), batch_sampler=batches, pin_memory=device.type == "cuda",
                    collate_fn=Collator(enc, tokenizer.pad_token_id, pad_side_left(tokenizer)))
    if accelerator is not None:
        dl = accelerator.prepare_data_loader(dl)
    # Logits stay on the device until the end: no host synchronisation per batch, so the host
    # prepares the next batch while the device computes this one.
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    bar = tqdm(total=len(dl), desc=desc, disable=not progress, leave=False, unit="batch")
    for batch in dl:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if accelerator is not None:
            with accelerator.autocast():
                logits = _forward(model, batch).float()
            idx = batch["idx"]
            if accelerator.num_processes > 1:
                # Processes can hold batches of different sizes (length-sorted batches, a short last
                # one): pad to a common size, gather, and drop the padding rows (idx -1). Batches that
                # Accelerate repeats to even out the processes write the same rows twice, harmlessly.
                logits = accelerator.pad_across_processes(logits, dim=0)
                idx = accelerator.pad_across_processes(idx, dim=0, pad_index=-1)
                logits, idx = accelerator.gather((logits, idx))
                keep = idx >= 0
                logits, idx = logits[keep], idx[keep]
        else:
            logits, idx = _forward(model, batch).float(), batch["idx"]
        parts.append((idx, logits))
        bar.update(1)
    bar.close()
    idx = torch.cat([p[0] for p in parts]).cpu().numpy()
    logits = torch.cat([p[1] for p in parts]).cpu().numpy()
    out = np.zeros((len(enc), logits.shape[-1]), dtype=np.float32)
    out[idx] = logits
    if was_training:
        model.train()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_encoded(model, enc: Encoded, tokenizer, labels: list[str], batch_size: int, accelerator=None,
                     progress: bool = False, desc: str = "eval") -> tuple[dict, np.ndarray]:
    logits = predict_logits(model, enc, tokenizer, batch_size, accelerator, progress, desc)
    probs = softmax(logits)
    y = enc.labels
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return compute_metrics(y, probs, labels, loss=loss), probs


def class_weights(spec, labels: np.ndarray, k: int) -> Optional[torch.Tensor]:
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        w = len(labels) / (k * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    if len(spec) != k:
        from .errors import ConfigError

        raise ConfigError(f"train.class_weights has {len(spec)} values but there are {k} labels")
    return torch.tensor([float(x) for x in spec], dtype=torch.float32)


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _check_checkpoint(state_dir: Path, saved: dict, current: dict, expected: set[str], known: set[str]) -> None:
    """Refuse a checkpoint that would load only part of the trainable weights, or pair them with
    another base, instead of training on silently (a resume with other LoRA targets, another number
    of processes, or a changed base model). `saved` and `current` are trainer states."""
    processes = current["num_processes"]
    if saved.get("num_processes", 1) != processes:
        raise CheckpointError(f"{state_dir.parent} was written by {saved.get('num_processes', 1)} process(es); "
                              f"resume it with the same number, not {processes} (the batch order depends on it too)")
    if current["base"] and saved.get("base") not in (None, current["base"]):
        raise CheckpointError(f"{state_dir.parent}: the base model changed since this checkpoint was written (its "
                              "config.json or weight files differ); the checkpoint holds only the trained "
                              "weights, so resume on the same base model")
    weights = state_dir / "model.safetensors"
    if not weights.exists():  # FSDP / DeepSpeed write their own formats, full-size
        return
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
    missing, unexpected = sorted(expected - keys), sorted(keys - known)  # frozen weights may be present too
    if missing or unexpected:
        raise CheckpointError(
            f"{state_dir.parent} does not match this model: {len(missing)} trainable weight(s) missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the "
            "config the run started with (LoRA targets, modules_to_save, method).")


def _partial_load_kwargs(accelerator) -> dict:
    """strict=False lets a checkpoint of trainable weights load into the full model; DeepSpeed and
    Megatron load through their own engines, which take no such argument."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        return {}
    return {"strict": False}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_eval: Optional[dict] = None
    steps: int = 0
    epochs_run: float = 0.0
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_samples: int = 0
    train_tokens: int = 0
    padded_tokens: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


def fit(model, tokenizer, train: Encoded, val: Encoded, labels: list[str], tcfg: TrainConfig, seed: int,
        accelerator, ckpt_dir: Optional[Path] = None, resume: bool = False, quiet: bool = False,
        on_log: Optional[Callable[[dict], None]] = None, max_length: Optional[int] = None,
        on_resumed: Optional[Callable[[], None]] = None, base_id: Optional[str] = None) -> FitResult:
    """Train `model` in place; on return it holds the best weights seen on validation."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    set_seed(seed)
    k = len(labels)
    weights = class_weights(tcfg.class_weights, train.labels, k)
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=weights.to(accelerator.device) if weights is not None else None, label_smoothing=tcfg.label_smoothing)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr,
                                  fused=accelerator.device.type == "cuda")
    own_loss = bool(getattr(model, "loraclf_own_loss", False))  # e.g. the generate head's SFT loss
    model, optimizer = accelerator.prepare(model, optimizer)
    # Checkpoints hold the trainable weights only (LoRA + head: megabytes, not the frozen base); the
    # frozen weights are rebuilt from the base model when a run resumes.
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}

    def keep_trainable(_models, weights: list[dict], _dir) -> None:
        for w in weights:
            for key in [k for k in w if k not in trainable_names]:
                del w[key]

    # The compiled module shares its parameters with `model`, which stays what is checkpointed and
    # evaluated (eager), so state-dict names do not depend on the compile switch.
    step_model = compile_model(model, tcfg.compile) if tcfg.compile else model
    collate = Collator(train, tokenizer.pad_token_id, pad_side_left(tokenizer),
                       pad_to_multiple_of=pad_multiple(tcfg, accelerator.device.type), max_width=max_length)
    lengths = train.lengths

    def loader(epoch: int, skip: int = 0, limit: Optional[int] = None):
        batches = train_batches(lengths, tcfg.batch_size, seed, epoch, tcfg.group_by_length,
                                mega=tcfg.length_group_batches)
        if limit is not None:
            batches = batches[:limit]
        dl = DataLoader(range(len(train)), batch_sampler=batches[skip:], collate_fn=collate,
                        pin_memory=accelerator.device.type == "cuda")
        return accelerator.prepare_data_loader(dl)

    n_batches_epoch = math.ceil(len(train) / tcfg.batch_size)
    per_process = math.ceil(n_batches_epoch / accelerator.num_processes)
    total_micro = max(1, round(tcfg.epochs * per_process))
    n_epochs = math.ceil(total_micro / per_process)

    def micro_in(epoch: int) -> int:
        return min(per_process, total_micro - epoch * per_process)

    # The last micro-batch of every epoch closes an accumulation, so no gradient is pending at an
    # epoch's evaluation and checkpoint (a resume then replays the uninterrupted run exactly).
    total_steps = max(1, sum(math.ceil(micro_in(e) / tcfg.grad_accum_steps) for e in range(n_epochs)))
    warmup = int(round(tcfg.warmup_ratio * total_steps))
    sched_name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[tcfg.scheduler]
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)

    res = FitResult()
    state = {"step": 0, "micro": 0, "epoch": 0, "batch": 0, "best_metric": None, "best_step": None,
             "bad_evals": 0, "train_seconds": 0.0, "train_samples": 0, "train_tokens": 0, "padded_tokens": 0,
             # what a checkpoint's weights depend on: DDP's `module.` names and batch order; the frozen base
             "num_processes": accelerator.num_processes, "base": base_id}
    best_weights: Optional[dict] = None
    state_file = ckpt_dir / "trainer_state.json" if ckpt_dir else None
    if resume and state_file is not None and state_file.exists() and (ckpt_dir / "state").exists():
        saved_state = json.loads(state_file.read_text())
        _check_checkpoint(ckpt_dir / "state", saved_state, state, trainable_names, set(model.state_dict()))
        state.update(saved_state, num_processes=state["num_processes"], base=state["base"] or saved_state.get("base"))
        accelerator.load_state(str(ckpt_dir / "state"), **_partial_load_kwargs(accelerator))
        if (ckpt_dir / "best_trainable.safetensors").exists():
            best_weights = load_file(str(ckpt_dir / "best_trainable.safetensors"))
        hist = ckpt_dir / "history.jsonl"
        if hist.exists():
            res.history = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
        log.info("resuming at step %d (epoch %d, batch %d)", state["step"], state["epoch"], state["batch"])
    if resume and on_resumed is not None:  # loaded, or nothing to load: training starts from here
        on_resumed()

    def write_state() -> None:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)

    def checkpoint() -> None:
        if ckpt_dir is None:
            return
        accelerator.wait_for_everyone()
        state["train_tokens"], state["padded_tokens"] = int(tokens_t), padded_n
        # Write the new state beside the old one and swap: an interrupt never leaves a mix of both.
        tmp_dir, final = ckpt_dir / "state.tmp", ckpt_dir / "state"
        hook = accelerator.register_save_state_pre_hook(keep_trainable)
        try:
            accelerator.save_state(str(tmp_dir), safe_serialization=True)
        finally:
            hook.remove()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            import shutil

            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp_dir, final)
            if best_weights is not None:
                save_file(best_weights, str(ckpt_dir / "best_trainable.safetensors"))
            (ckpt_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in res.history))
            write_state()

    def evaluate_now(epoch_f: float) -> bool:
        """Evaluate on validation; returns True when training should stop early."""
        nonlocal best_weights
        metrics, _ = evaluate_encoded(model, val, tokenizer, labels, tcfg.eval_batch_size, accelerator,
                                      progress=False)
        value = metrics.get(tcfg.metric)
        improved = is_better(tcfg.metric, value, state["best_metric"])
        rec = {"type": "eval", "step": state["step"], "epoch": round(epoch_f, 4), "split": "validation",
               **{m: metrics[m] for m in ("loss", "accuracy", "macro_f1", "weighted_f1", "macro_recall",
                                           "roc_auc", "ece")}, "improved": improved}
        res.history.append(rec)
        if on_log:
            on_log(rec)
        if improved:
            state["best_metric"], state["best_step"], state["bad_evals"] = value, state["step"], 0
            res.best_eval = metrics
            best_weights = trainable_state(accelerator.unwrap_model(model))
        else:
            state["bad_evals"] += 1
        if not quiet:
            shown = "n/a" if value is None else f"{value:.4f}"
            tqdm.write(f"eval step {state['step']} epoch {epoch_f:.2f}: {tcfg.metric}={shown} "
                       f"loss={metrics['loss']:.4f}" + (" *" if improved else ""))
        return tcfg.early_stopping_patience is not None and state["bad_evals"] >= tcfg.early_stopping_patience

    model.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step",
               disable=quiet or not accelerator.is_local_main_process, dynamic_ncols=True)
    running = torch.zeros((), device=accelerator.device)
    tokens_t = torch.zeros((), device=accelerator.device, dtype=torch.long) + state["train_tokens"]
    padded_n = state["padded_tokens"]
    running_n = 0
    stop = False
    log_t0, log_samples = time.perf_counter(), 0
    for epoch in range(n_epochs if state.get("done") else state["epoch"], n_epochs):
        limit = None if micro_in(epoch) == per_process else micro_in(epoch) * accelerator.num_processes
        dl = loader(epoch, skip=state["batch"] * accelerator.num_processes if epoch == state["epoch"] else 0,
                    limit=limit)
        t0 = time.perf_counter()
        for batch in dl:
            accum_boundary = (state["batch"] + 1) % tcfg.grad_accum_steps == 0 or state["batch"] + 1 == micro_in(epoch)
            labels_t = batch["labels"]
            ctx = accelerator.no_sync(model) if not accum_boundary and accelerator.num_processes > 1 else _null()
            with ctx:
                with accelerator.autocast():
                    if own_loss:
                        loss = step_model(**{k: v for k, v in batch.items() if k != "idx"}).loss
                    else:
                        loss = loss_fn(_forward(step_model, batch).float(), labels_t)
                accelerator.backward(loss / tcfg.grad_accum_steps)
            running += loss.detach()
            tokens_t += batch["attention_mask"].sum()  # stays on the device: no sync per step
            padded_n += batch["attention_mask"].numel()
            running_n += 1
            n = labels_t.shape[0]
            state["train_samples"] += n * accelerator.num_processes
            log_samples += n * accelerator.num_processes
            state["micro"] += 1
            state["batch"] += 1
            if not accum_boundary:
                continue
            if tcfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            bar.update(1)
            if state["step"] % tcfg.log_every == 0 or state["step"] == total_steps:
                now = time.perf_counter()
                avg = float(running / max(running_n, 1))  # one host sync per log interval
                rec = {"type": "train", "step": state["step"], "epoch": round(state["micro"] / per_process, 4),
                       "loss": avg, "lr": scheduler.get_last_lr()[0],
                       "samples_per_s": log_samples / max(now - log_t0, 1e-9)}
                res.history.append(rec)
                if on_log:
                    on_log(rec)
                bar.set_postfix(loss=f"{avg:.4f}", lr=f"{rec['lr']:.2e}")
                running.zero_()
                running_n, log_t0, log_samples = 0, now, 0
            if tcfg.eval_steps and state["step"] % tcfg.eval_steps == 0 and state["step"] < total_steps:
                state["train_seconds"] += time.perf_counter() - t0
                stop = evaluate_now(state["micro"] / per_process)
                checkpoint()
                t0 = time.perf_counter()
                log_t0 = t0
                if stop:
                    break
        state["train_seconds"] += time.perf_counter() - t0
        state["epoch"], state["batch"] = epoch + 1, 0
        if stop:
            res.stopped_early = True
            break
        if not tcfg.eval_steps or state["micro"] >= total_micro:
            stop = evaluate_now(state["micro"] / per_process)
            checkpoint()
            if stop and state["micro"] < total_micro:
                res.stopped_early = True
                break
    bar.close()
    state["done"], state["stopped_early"] = True, res.stopped_early or state.get("stopped_early", False)
    state["train_tokens"], state["padded_tokens"] = int(tokens_t), padded_n
    if state_file is not None and accelerator.is_main_process:  # a resume after this trains no more
        write_state()
    res.stopped_early = state["stopped_early"]
    unwrapped = accelerator.unwrap_model(model)
    if best_weights is not None:
        load_trainable_state(unwrapped, best_weights)
    res.best_metric, res.best_step = state["best_metric"], state["best_step"]
    res.steps = state["step"]
    res.epochs_run = state["micro"] / per_process
    res.train_seconds, res.train_samples = state["train_seconds"], state["train_samples"]
    res.train_tokens, res.padded_tokens = state["train_tokens"], state["padded_tokens"]
    if res.best_eval is None and best_weights is not None:
        res.best_eval, _ = evaluate_encoded(unwrapped, val, tokenizer, labels, tcfg.eval_batch_size, accelerator)
    return res


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
