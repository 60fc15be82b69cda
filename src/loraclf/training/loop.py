"""The training loop: Accelerate-native (DDP / FSDP via `accelerate launch` unchanged).

:class:`Trainer` trains a head's model on encoded data; its :class:`TrainerState` is both what a
checkpoint saves and what training returns. :func:`evaluate` scores one split through the head.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import TrainConfig
from ..data import Collator, Encoded, eval_batches, train_batches
from ..errors import CheckpointError, EnvironmentError_, TrainingDiverged
from ..evaluation.metrics import is_better
from .checkpoint import Checkpoints
from .faults import fault

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


def forget_foreign_precision(mixed_precision: str) -> None:
    """Drop Accelerate's process-wide state when another library set it with another precision.

    AcceleratorState is a singleton: once HF Trainer or SetFit has trained in this process (fp32), an
    Accelerator asking for bf16 raises "AcceleratorState has already been initialized". Only the mixed
    precision is forgotten; the process layout (PartialState: ranks, device) is kept.
    """
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state()


def make_accelerator(tcfg: TrainConfig, project_dir: Optional[str] = None):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    mixed_precision = choose_precision(tcfg.precision)
    forget_foreign_precision(mixed_precision)
    # cpu=True on machines without CUDA: it is what makes `torchrun --nproc_per_node N` a gloo DDP run
    # (Accelerate's MULTI_CPU) instead of N independent single-process runs. On a GPU, batches come
    # from pinned memory and are copied without blocking the host.
    return Accelerator(mixed_precision=mixed_precision, project_dir=project_dir, cpu=not cuda,
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


def predict_logits(head, enc: Encoded, batch_size: int, accelerator=None, progress: bool = False,
                   desc: str = "predict") -> np.ndarray:
    """Logits of `head.model` for every document, in input order (a chunked document's pooled from its
    windows')."""
    return enc.documents(input_logits(head, enc, batch_size, accelerator, progress, desc))


@torch.no_grad()
def input_logits(head, enc: Encoded, batch_size: int, accelerator=None, progress: bool = False,
                 desc: str = "predict") -> np.ndarray:
    """Logits of `head.model` for every model input, in input order; batches sorted by length to minimise
    padding."""
    from torch.utils.data import DataLoader

    from ..console import progress as progress_bar

    model = head.model
    was_training = model.training
    model.eval()
    batches = eval_batches(enc.lengths, batch_size)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    dl = DataLoader(range(len(enc)), batch_sampler=batches, pin_memory=device.type == "cuda",
                    collate_fn=Collator(enc, head.tokenizer.pad_token_id, head.pad_left), generator=_own_generator())
    if accelerator is not None:
        dl = accelerator.prepare_data_loader(dl)
    # Logits stay on the device until the end: no host synchronisation per batch, so the host
    # prepares the next batch while the device computes this one.
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    bar = progress_bar(total=len(dl), desc=desc, disable=not progress, leave=False, unit="batch")
    for batch in dl:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if accelerator is not None:
            with accelerator.autocast():
                logits = head.logits(model, batch).float()
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
            logits, idx = head.logits(model, batch).float(), batch["idx"]
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


def evaluate(head, enc: Encoded, batch_size: int, accelerator=None, progress: bool = False,
             desc: str = "eval") -> tuple[dict, np.ndarray]:
    """(metrics, probabilities) of one labelled split, with the head's own statistics."""
    head.start_evaluation()
    logits = predict_logits(head, enc, batch_size, accelerator, progress, desc)
    metrics, probs = head.task.evaluate(logits, enc.labels)
    metrics.update(head.statistics())
    return metrics, probs


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


def _check_checkpoint(folder: Path, saved: dict, current: dict, saved_keys: set[str], expected: set[str]) -> None:
    """Refuse a checkpoint that would load only part of the trainable weights, or pair them with
    another base, instead of training on silently (a resume with other LoRA targets, another number
    of processes, or a changed base model). `saved` and `current` are trainer states."""
    run = folder.parent.parent
    processes = current["num_processes"]
    if saved.get("num_processes", 1) != processes:
        raise CheckpointError(f"{run} was written by {saved.get('num_processes', 1)} process(es); "
                              f"resume it with the same number, not {processes} (the batch order depends on it too)")
    if current["base"] and saved.get("base") not in (None, current["base"]):
        raise CheckpointError(f"{run}: the base model changed since this checkpoint was written (its "
                              "config.json or weight files differ); the checkpoint holds only the trained "
                              "weights, so resume on the same base model")
    missing, unexpected = sorted(expected - saved_keys), sorted(saved_keys - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{run} does not match this model: {len(missing)} trainable weight(s) missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the "
            "config the run started with (LoRA targets, modules_to_save, method).")


@dataclass
class TrainerState:
    """Where training stands. Saved as checkpoints/trainer_state.json (history in history.jsonl
    beside it) and returned by :meth:`Trainer.fit` as the result."""

    step: int = 0  # optimizer steps
    micro: int = 0  # micro-batches of this process
    epoch: int = 0
    batch: int = 0  # micro-batches into the current epoch
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    bad_evals: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    train_tokens: int = 0
    padded_tokens: int = 0
    # the loss summed over the micro-batches since the last train record (its mean is logged next)
    log_loss_sum: float = 0.0
    log_loss_sums: list[float] = field(default_factory=list)  # each process's own sum (rank order), for a resume
    log_micro: int = 0
    # what a checkpoint's weights depend on: DDP's `module.` names and the batch order; the frozen base
    num_processes: int = 1
    base: Optional[str] = None
    done: bool = False
    stopped_early: bool = False
    epochs_run: float = 0.0
    history: list[dict] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "history"}

    @classmethod
    def from_json(cls, saved: dict) -> "TrainerState":
        """A state read back from trainer_state.json; a value of the wrong kind (a forged or damaged
        file) is a CheckpointError, never a step count training would act on."""
        if not isinstance(saved, dict):
            raise CheckpointError(f"trainer_state.json holds {type(saved).__name__}, not a trainer state")
        out = {}
        for f in fields(cls):
            if f.name == "history" or f.name not in saved:
                continue
            v = saved[f.name]
            if not _valid_field(f.type, v):
                raise CheckpointError(f"trainer_state.json: {f.name}={v!r} is not a valid value")
            out[f.name] = v
        return cls(**out)


def _valid_field(kind: str, v) -> bool:
    """A saved TrainerState value of its declared kind: counts are non-negative integers, times and
    sums finite numbers, flags booleans."""
    optional = kind.startswith("Optional")
    if v is None:
        return optional
    if kind.startswith("list[float]"):
        return isinstance(v, list) and all(_valid_field("float", x) for x in v)
    if "bool" in kind:
        return isinstance(v, bool)
    if "int" in kind:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if "float" in kind:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, str) if "str" in kind else True


class Trainer:
    """Trains `head.model` in place: length-grouped dynamic padding, evaluation on validation at a
    fixed cadence, the best weights kept, early stopping, and checkpoints that `--resume` continues
    exactly. Accelerate runs it on one device or many (DDP / FSDP via `accelerate launch`)."""

    def __init__(self, head, train: Encoded, val: Encoded, tcfg: TrainConfig, seed: int, accelerator,
                 ckpt_dir: Optional[Path] = None, quiet: bool = False,
                 on_log: Optional[Callable[[dict], None]] = None, max_length: Optional[int] = None,
                 base_id: Optional[str] = None):
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        set_seed(seed)
        self.head, self.train_enc, self.val, self.tcfg, self.seed = head, train, val, tcfg, seed
        self.acc, self.quiet, self.on_log = accelerator, quiet, on_log
        head.prepare_training(tcfg, train.labels, accelerator.device)
        optimizer = torch.optim.AdamW(_param_groups(head.model, tcfg.weight_decay), lr=tcfg.lr,
                                      fused=accelerator.device.type == "cuda")
        self.model, self.optimizer = accelerator.prepare(head.model, optimizer)
        # Checkpoints hold the trainable weights only (LoRA + head: megabytes, not the frozen base); the
        # frozen weights are rebuilt from the base model when a run resumes.
        self.checkpoints = Checkpoints(ckpt_dir, accelerator) if ckpt_dir is not None else None
        # The compiled module shares its parameters with `model`, which stays what is checkpointed and
        # evaluated (eager), so state-dict names do not depend on the compile switch.
        self.step_model = compile_model(self.model, tcfg.compile) if tcfg.compile else self.model
        self.collate = Collator(train, head.tokenizer.pad_token_id, head.pad_left,
                                pad_to_multiple_of=pad_multiple(tcfg, accelerator.device.type), max_width=max_length)
        n = accelerator.num_processes
        self.per_process = math.ceil(math.ceil(len(train.labels) / tcfg.batch_size) / n)  # an epoch: every document
        self.total_micro = max(1, round(tcfg.epochs * self.per_process))
        self.n_epochs = math.ceil(self.total_micro / self.per_process)
        # The last micro-batch of every epoch closes an accumulation, so no gradient is pending at an
        # epoch's evaluation and checkpoint (a resume then replays the uninterrupted run exactly).
        self.total_steps = max(1, sum(math.ceil(self._micro_in(e) / tcfg.grad_accum_steps)
                                      for e in range(self.n_epochs)))
        sched = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[tcfg.scheduler]
        self.scheduler = get_scheduler(sched, self.optimizer, num_training_steps=self.total_steps,
                                       num_warmup_steps=int(round(tcfg.warmup_ratio * self.total_steps)))
        self.state = TrainerState(num_processes=n, base=base_id)
        self.best_weights: Optional[dict] = None

    # ---------------------------------------------------------------- schedule and data
    def _micro_in(self, epoch: int) -> int:
        return min(self.per_process, self.total_micro - epoch * self.per_process)

    def _loader(self, epoch: int, skip: int = 0, limit: Optional[int] = None):
        from torch.utils.data import DataLoader

        t, enc = self.tcfg, self.train_enc
        rows = enc.chunks.epoch_rows(self.seed, epoch) if enc.chunks is not None else None
        lengths = enc.lengths if rows is None else enc.lengths[rows]
        batches = train_batches(lengths, t.batch_size, self.seed, epoch, t.group_by_length,
                                mega=t.length_group_batches)
        if rows is not None:  # one window of each document, length-grouped as documents would be
            batches = batches.over(rows)
        if limit is not None:
            batches = batches[:limit]
        n = self.acc.num_processes
        if len(batches) % n:  # even out the processes here, from the epoch's start, as a resume sees it too
            batches = batches + batches[: n - len(batches) % n]
        dl = DataLoader(range(len(self.train_enc)), batch_sampler=batches[skip:], collate_fn=self.collate,
                        pin_memory=self.acc.device.type == "cuda", generator=_own_generator())
        return self.acc.prepare_data_loader(dl)

    # ---------------------------------------------------------------- the loop
    def fit(self, resume: bool = False, on_resumed: Optional[Callable[[], None]] = None) -> TrainerState:
        """Train; on return the model holds the best weights seen on validation."""
        from ..console import progress

        if resume:
            self._resume()
            if on_resumed is not None:  # loaded, or nothing to load: training starts from here
                on_resumed()
        s = self.state
        self.model.train()
        self._bar = progress(total=self.total_steps, initial=s.step, desc="train", unit="step",
                             disable=self.quiet or not self.acc.is_local_main_process, dynamic_ncols=True)
        # each process continues its own partial sum (a checkpoint gathers them all; older ones hold rank 0's)
        sums = s.log_loss_sums or [s.log_loss_sum]
        rank = self.acc.process_index
        self._running = torch.zeros((), device=self.acc.device) + (sums[rank] if rank < len(sums) else 0.0)
        self._tokens = torch.zeros((), device=self.acc.device, dtype=torch.long) + s.train_tokens
        self._running_n, self._log_t0, self._log_samples = s.log_micro, time.perf_counter(), 0
        try:
            for epoch in range(self.n_epochs if s.done or s.stopped_early else s.epoch, self.n_epochs):
                if self._run_epoch(epoch):
                    s.stopped_early = True
                    break
        finally:  # an interrupt leaves the bar finished, so what is printed next starts on its own line
            self._bar.close()
        s.done = True
        self.checkpoint()  # a resume after this trains no more (e.g. a crash in the final evaluation)
        if self.best_weights is not None:
            load_trainable_state(self.acc.unwrap_model(self.model), self.best_weights)
        self.head.finish_training(self.train_enc, self.acc.device)
        s.epochs_run = s.micro / self.per_process
        return s

    def _run_epoch(self, epoch: int) -> bool:
        """One epoch (or what is left of it after a resume); True when training stops early."""
        s, t, n = self.state, self.tcfg, self.acc.num_processes
        micro = self._micro_in(epoch)
        dl = self._loader(epoch, skip=s.batch * n if epoch == s.epoch else 0,
                          limit=None if micro == self.per_process else micro * n)
        t0, stop = time.perf_counter(), False
        for batch in dl:
            if not self.step(batch, (s.batch + 1) % t.grad_accum_steps == 0 or s.batch + 1 == micro):
                continue
            if t.eval_steps and s.step % t.eval_steps == 0 and s.step < self.total_steps:
                s.train_seconds += time.perf_counter() - t0
                stop = s.stopped_early = self.evaluate()  # saved with the checkpoint: a resume stops too
                self.checkpoint()
                t0 = self._log_t0 = time.perf_counter()
                if stop:
                    break
        s.train_seconds += time.perf_counter() - t0
        s.epoch, s.batch = epoch + 1, 0
        if stop:
            return True
        if not t.eval_steps or s.micro >= self.total_micro:
            s.stopped_early = self.evaluate() and s.micro < self.total_micro
            self.checkpoint()
            return s.stopped_early
        return False

    def step(self, batch: dict, boundary: bool) -> bool:
        """Forward and backward one micro-batch; at an accumulation boundary also the optimizer step.
        Returns whether an optimizer step was taken."""
        s, acc, n = self.state, self.acc, self.acc.num_processes
        ctx = acc.no_sync(self.model) if not boundary and n > 1 else contextlib.nullcontext()
        with ctx:
            with acc.autocast():
                loss = self.head.loss(self.step_model, batch)
            acc.backward(loss / self.tcfg.grad_accum_steps)
        self._running += loss.detach()
        self._tokens += batch["attention_mask"].sum()  # stays on the device: no sync per step
        s.padded_tokens += batch["attention_mask"].numel()
        self._running_n += 1
        samples = batch["labels"].shape[0] * n
        s.train_samples += samples
        self._log_samples += samples
        s.micro += 1
        s.batch += 1
        if not boundary:
            return False
        if self.tcfg.max_grad_norm is not None:
            acc.clip_grad_norm_(self.model.parameters(), self.tcfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        self._bar.update(1)
        fault("train.step")
        if s.step % self.tcfg.log_every == 0 or s.step == self.total_steps:
            self._log_train()
        return True

    def _log(self, rec: dict) -> None:
        self.state.history.append(rec)
        if self.on_log:
            self.on_log(rec)

    def _log_train(self) -> None:
        s, now = self.state, time.perf_counter()
        # the mean over every process (one collective and one host sync per log interval), so that a
        # diverging loss stops all processes together
        avg = float(self.acc.reduce(self._running, "mean")) / max(self._running_n, 1)
        if not math.isfinite(avg):
            raise TrainingDiverged(f"the training loss became {avg} by step {s.step}; lower train.lr "
                                   "(or set train.max_grad_norm)")
        rec = {"type": "train", "step": s.step, "epoch": round(s.micro / self.per_process, 4), "loss": avg,
               "lr": self.scheduler.get_last_lr()[0],
               "samples_per_s": self._log_samples / max(now - self._log_t0, 1e-9)}
        self._log(rec)
        self._bar.set_postfix(loss=f"{avg:.4f}", lr=f"{rec['lr']:.2e}")
        self._running.zero_()
        self._running_n, self._log_t0, self._log_samples = 0, now, 0

    def evaluate(self) -> bool:
        """Score validation, keep the weights if they are the best so far; True when training should stop."""
        s, t = self.state, self.tcfg
        metrics, _ = evaluate(self.head, self.val, t.eval_batch_size, self.acc)
        metric = self.head.task.default_metric if t.metric == "auto" else t.metric  # run.train resolves it first
        value = metrics.get(metric)
        improved = is_better(metric, value, s.best_metric)
        epoch = s.micro / self.per_process
        logged = dict.fromkeys(("loss", *self.head.task.headline, metric))  # the selection metric too (pruning)
        self._log({"type": "eval", "step": s.step, "epoch": round(epoch, 4), "split": "validation",
                   **{k: metrics[k] for k in logged}, "improved": improved})
        if improved:
            s.best_metric, s.best_step, s.bad_evals = value, s.step, 0
            self.best_weights = trainable_state(self.acc.unwrap_model(self.model))
        else:
            s.bad_evals += 1
        if not self.quiet:
            from tqdm.auto import tqdm

            shown = "n/a" if value is None else f"{value:.4f}"
            tqdm.write(f"eval step {s.step} epoch {epoch:.2f}: {metric}={shown} loss={metrics['loss']:.4f}"
                       + (" *" if improved else ""))
        return t.early_stopping_patience is not None and s.bad_evals >= t.early_stopping_patience

    # ---------------------------------------------------------------- checkpoints
    def checkpoint(self) -> None:
        if self.checkpoints is None:
            return
        s = self.state
        s.train_tokens, s.log_loss_sum, s.log_micro = int(self._tokens), float(self._running), self._running_n
        s.log_loss_sums = [float(x) for x in self.acc.gather(self._running.reshape(1)).cpu()]
        self.checkpoints.save(self.state.to_json(), self.state.history, trainable_state(self._unwrapped()),
                              self.best_weights, self.optimizer, self.scheduler)

    def _unwrapped(self):
        return self.acc.unwrap_model(self.model)

    def _resume(self) -> None:
        folder = self.checkpoints.find() if self.checkpoints is not None else None
        if folder is None:  # interrupted before its first checkpoint: start from the beginning
            return
        saved, history, trainable, best = self.checkpoints.read(folder)
        state = TrainerState.from_json(saved)
        if state.step > self.total_steps or state.epoch > self.n_epochs:
            raise CheckpointError(f"{folder}: its step {state.step} (epoch {state.epoch}) is past this run's "
                                  f"{self.total_steps} steps; train the run again without --resume")
        expected = {n for n, p in self._unwrapped().named_parameters() if p.requires_grad}
        current = self.state
        _check_checkpoint(folder, saved, current.to_json(), set(trainable), expected)
        load_trainable_state(self._unwrapped(), trainable)
        self.checkpoints.restore(folder, self.optimizer, self.scheduler)
        self.state = state
        self.state.num_processes, self.state.base = current.num_processes, current.base or saved.get("base")
        self.state.history, self.best_weights = history, best
        log.info("resuming at step %d (epoch %d, batch %d)", self.state.step, self.state.epoch, self.state.batch)


def _own_generator() -> torch.Generator:
    """A DataLoader draws its base seed when an iterator is made; from a generator of its own, that
    draw leaves torch's global stream (dropout masks) alone, so a resume inside an epoch replays the
    same masks as the uninterrupted run."""
    return torch.Generator().manual_seed(0)
