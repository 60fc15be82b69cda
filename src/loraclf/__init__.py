"""loraclf: LoRA fine-tuning of transformers for text classification, with honest reporting.

    import loraclf
    clf = loraclf.fit(train_df, test=test_df, epochs=1)   # -> Classifier (clf.run: its run directory)
    clf.predict(["a gripping, funny film"])               # -> ["positive"]
    run = loraclf.train("my.yaml", ["train.lr=3e-4"])     # -> Run, from a config as `loraclf train` reads it
    clf = loraclf.load(run.path)                          # -> Classifier
"""

import importlib

from ._version import __version__
from .errors import LoraclfError

# The public API, by the module that holds it: importing loraclf stays fast, torch loads on first use.
_API = {"fit": "api", "from_pretrained": "deploy.artifact",
        "train": "training.run", "Run": "training.run", "evaluate_artifact": "evaluation.evaluate",
        "load": "deploy.artifact", "Classifier": "deploy.artifact", "load_config": "config", "Config": "config"}


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(name)


__all__ = ["Classifier", "Config", "LoraclfError", "Run", "evaluate_artifact", "fit", "from_pretrained", "load",
           "load_config", "train", "__version__"]
