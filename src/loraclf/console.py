"""The console of a loraclf process: logging, warnings and progress bars, set up the same way for the
CLI and for each sweep point's child process (python -m loraclf.studies.sweep)."""

from __future__ import annotations

import logging
import os


def setup_process(quiet: bool = False) -> None:
    """Logging, environment and warning filters for a loraclf process: the CLI and each sweep
    point's child process (python -m loraclf.studies.sweep) set themselves up the same way."""
    logging.basicConfig(level=logging.WARNING, format="loraclf: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if quiet:
        logging.getLogger("loraclf").setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
