"""The console of a loraclf process: logging, warnings and progress bars, set up the same way for the
CLI and for each sweep point's child process (python -m loraclf.studies.sweep).

- loraclf's own messages read ``loraclf: ...``; any other library's carry that library's logger name
  (``bitsandbytes.cextension: warning: ...``), so nothing a dependency says is taken for loraclf's.
- ``quiet`` (``-q``) silences every library's warnings and progress as well as loraclf's: what is
  left is what the command prints as its result, and errors.
- Progress bars are tqdm's on a terminal. Where stderr is a file or a pipe (CI, nohup, ``> log 2>&1``)
  they are plain lines instead, one every ``$LORACLF_PROGRESS_SECONDS`` (default 20) seconds at most,
  and one when the bar ends: a log holds a few lines, not thousands of carriage-return frames.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional

PROGRESS_SECONDS_ENV = "LORACLF_PROGRESS_SECONDS"
PROGRESS_SECONDS = 20.0

# Messages that are dropped whatever the verbosity, each with the reason.
NOISE = {
    # bitsandbytes >= 0.49 says this on import on every CPU with AVX512-BF16 unless the optional `kernels`
    # package is installed: its pure-PyTorch fallback computes the same 4-bit matmuls (only a 4-bit model
    # on CPU is slower). It is said on every command, quantized or not, where it tells the user nothing.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    # With `kernels` installed (a fresh install pulls in 0.19 since 2026-12-03), bitsandbytes' import asks it for
    # its CPU kernels, and offline it says on every command that it skipped the hub's publisher check.
    "kernels._internals.hf_hub": "Skipping publisher trust check",
}


# ---------------------------------------------------------------- logging

class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (as logging.lastResort does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Formatter(logging.Formatter):
    """``loraclf: message`` for loraclf's records, ``<logger>: <level>: message`` for anyone else's."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name == "loraclf" or record.name.startswith("loraclf."):
            return f"loraclf: {text}"
        return f"{record.name}: {record.levelname.lower()}: {text}"


def _wanted(record: logging.LogRecord) -> bool:
    """Not noise (NOISE), and not printed already by a handler of its own library's logger (transformers
    prints its records itself, "[transformers] ..."; under CI=true it also passes them on to the root)."""
    prefix = NOISE.get(record.name)
    if prefix is not None and record.getMessage().startswith(prefix):
        return False
    lg: Optional[logging.Logger] = logging.getLogger(record.name)
    while lg is not None and lg is not logging.root:
        if lg.handlers:
            return False
        if not lg.propagate:
            break
        lg = lg.parent
    return True


def _console_handler() -> Optional[logging.Handler]:
    """The root logger's console handler: ours, added when nobody else configured logging (a host
    program or pytest that did keeps its own handlers and levels; then None)."""
    root = logging.getLogger()
    for h in root.handlers:
        if getattr(h, "loraclf_console", False):
            return h
    if root.handlers:
        return None
    h = _Stderr()
    h.loraclf_console = True
    h.setFormatter(_Formatter())
    h.addFilter(_wanted)
    root.addHandler(h)
    root.setLevel(logging.WARNING)
    return h


def _silence_libraries() -> None:
    """Quiet: no warning, info or progress from the libraries loraclf uses. Environment variables for
    those not imported yet (children inherit them: a sweep point's process), calls for those imported."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"
    os.environ["WANDB_SILENT"] = "true"  # W&B prints its "wandb: ..." lines itself, not through logging
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "mlflow" in sys.modules:  # its loggers have their own handlers and levels, set when it is imported
        for name in ("mlflow", "alembic", "huey"):
            logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.simplefilter("ignore")  # Python warnings from any library (the -W / PYTHONWARNINGS ones too)


def _library_bars(quiet: bool) -> None:
    """No progress bars from transformers, huggingface_hub and datasets when quiet or in a log (weights
    load in seconds; a download's frames in a log help nobody). Quiet: transformers' warnings off too.
    The environment does it for a library not imported yet (it reads it on import), calls for one that is."""
    if not quiet and interactive():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if quiet or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if quiet:
            hf_logging.set_verbosity_error()


def setup_process(quiet: bool = False) -> None:
    """Logging, environment and warning filters for a loraclf process: the CLI and each sweep
    point's child process (python -m loraclf.studies.sweep) set themselves up the same way.

    A program that set up logging itself (or pytest) keeps its handlers and levels: then only loraclf's
    own logger and progress bars follow `quiet`, and other libraries are the host's to silence."""
    handler = _console_handler()
    if handler is not None:
        handler.setLevel(logging.ERROR if quiet else logging.NOTSET)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if quiet:
        logging.getLogger("loraclf").setLevel(logging.ERROR)
        if handler is not None:
            _silence_libraries()
    _library_bars(quiet)


# ---------------------------------------------------------------- progress

def interactive() -> bool:
    """Whether someone watches the progress as it happens: a terminal, or a notebook (Jupyter's stderr is
    no terminal, but tqdm.auto draws its widget there)."""
    return bool(sys.stderr is not None and sys.stderr.isatty()) or "ipykernel" in sys.modules


def progress_seconds() -> float:
    """Seconds between two progress lines where stderr is not a terminal ($LORACLF_PROGRESS_SECONDS)."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, PROGRESS_SECONDS)))
    except ValueError:
        return PROGRESS_SECONDS


def progress(total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
             disable: bool = False, leave: bool = True, **tqdm_options):
    """A progress bar on stderr with tqdm's update / set_postfix / close: tqdm's own on a terminal,
    a :class:`LineProgress` elsewhere. `leave=False` marks a passing bar (an evaluation, a prediction):
    as a LineProgress it prints its final line only when it printed a line before (it lasted)."""
    if disable or sys.stderr is None or interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    **tqdm_options)
    return LineProgress(total, desc, unit, initial, leave)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """Progress as plain lines on stderr, e.g. ``train: step 120/1,500 (8%), 3.1 step/s, 38s, eta 7m25s;
    loss=0.4312``: one at most every progress_seconds(), and a last one when closed."""

    def __init__(self, total: Optional[int], desc: str, unit: str, initial: int = 0, leave: bool = True):
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.n = self._start = initial
        self.every = progress_seconds()
        self._t0 = self._last = time.monotonic()
        self._postfix = ""
        self._printed = False
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every and not self._closed:
            self._last = now
            self._print(now, final=False)

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave or self._printed:
            self._print(time.monotonic(), final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float, final: bool) -> str:
        elapsed = now - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        if self.total:
            done = f"{self.unit} {self.n:,}/{self.total:,} ({self.n / self.total:.0%})"
        else:
            done = f"{self.n:,} {self.unit}{'es' if self.unit.endswith(('s', 'x', 'ch', 'sh')) else 's'}"
        text = f"{self.desc}: {done}, {rate:.3g} {self.unit}/s, " + ("done in " if final else "") + _duration(elapsed)
        if not final and self.total and rate > 0 and self.n < self.total:
            text += f", eta {_duration((self.total - self.n) / rate)}"
        return text + (f"; {self._postfix}" if self._postfix else "")

    def _print(self, now: float, final: bool) -> None:
        self._printed = True
        print(self.line(now, final), file=sys.stderr, flush=True)
