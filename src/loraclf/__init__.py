"""loraclf: LoRA fine-tuning of transformers for text classification, with honest reporting.

    import loraclf
    run = loraclf.train("my.yaml", ["train.lr=3e-4"])     # -> Run (a run directory)
    clf = loraclf.load(run.path)                          # -> Classifier
    clf.predict(["a gripping, funny film"])               # -> ["positive"]
"""

__version__ = "0.1.0"

from .errors import LoraclfError  # noqa: E402


def __getattr__(name):  # lazy: importing loraclf stays fast, torch loads on first use
    if name in ("train", "Run", "evaluate_artifact"):
        from . import run

        return getattr(run, name)
    if name in ("load", "Classifier"):
        from . import artifact

        return getattr(artifact, name)
    if name in ("load_config", "Config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["Classifier", "Config", "LoraclfError", "Run", "evaluate_artifact", "load", "load_config", "train",
           "__version__"]
