"""Errors a user can cause. The CLI prints them as one line, without a traceback, and exits 2."""


class LoraclfError(Exception):
    """Base class: one actionable line describing what the user should fix."""


class ConfigError(LoraclfError):
    """A config field is unknown, mistyped or out of range."""


class DataError(LoraclfError):
    """A data file is missing, unreadable, or has bad rows, columns or labels."""


class InputError(LoraclfError, TypeError):
    """A Python API argument of the wrong kind (a string where a list of texts is expected, a tuple that is
    not a pair). Also a TypeError, which is what Python code catches for that."""


class ModelError(LoraclfError):
    """A model cannot be resolved or loaded."""


class BudgetError(LoraclfError):
    """The config trains more parameters than max_trainable_params allows."""


class EnvironmentError_(LoraclfError):
    """The machine lacks something the config needs (for example a GPU for bf16)."""


class CheckpointError(LoraclfError):
    """A checkpoint that cannot be resumed with this model or this number of processes."""


def printable(message: str) -> str:
    """A message as one line whatever it quotes: characters that break or hide a line (a newline, \x85,
    \u2028, a terminal escape) are shown escaped, as Python writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def import_extra(module: str, extra: str):
    """Import an optional dependency, or raise one line naming the extra that installs it, e.g.
    import_extra("optuna", "search") -> "optuna is not installed: pip install 'loraclf[search]'"."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:  # the module is there but something it imports is not
            raise
        raise EnvironmentError_(f"{module} is not installed: pip install 'loraclf[{extra}]'") from None


class TrainingDiverged(LoraclfError):
    """The loss or the outputs became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the CLI names the run directory to --resume."""

    def __init__(self, run_dir):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
