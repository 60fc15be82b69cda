"""Training recipes: settings chosen from the data, before anything is built.

`train.recipe: auto` looks at the train split. With many rows per class the config is trained as given
(the standard recipe). With few (at most FEW_SHOT_ROWS_PER_CLASS a class, the range SetFit was made
for), a classification head on an untrained pooler and three epochs leave most of the accuracy on the
table, so the few-shot recipe changes the settings that matter there (docs/few-labels.md has the
ablation behind each one):

- model.head: embedding, the checkpoint's own pooled sentence embedding with a linear layer started at
  the class prototypes;
- train.contrastive: a supervised contrastive loss beside the cross-entropy, and the layer refitted to
  the class means of the trained embeddings after training;
- twenty passes over train instead of three (a few dozen rows make one optimizer step an epoch), at
  most FEW_SHOT_MAX_STEPS steps;
- batches of 16: twice the updates for the same passes;
- random batches (length grouping could put one class in a batch, which gives the contrastive loss
  nothing to contrast; the embedding head runs each through the encoder in runs of similar length, so
  their padding costs little on CPU) and one evaluation, at the end: choosing the best of many evaluations on a
  handful of validation rows picks noise.

Only fields still at their default are changed; a value the user set is kept and said so. What was
chosen, and why, is printed and recorded in metrics.json ("recipe"); config.yaml holds the resolved
values, so a rerun or a resume trains the same.
"""

from __future__ import annotations

import math
from typing import Optional

from ..config import Config, default, replace_fields
from ..models.heads import head_class
from ..models.methods import METHODS

FEW_SHOT_ROWS_PER_CLASS = 64
FEW_SHOT_HEAD = "embedding"
FEW_SHOT_EPOCHS = 20  # passes over train...
FEW_SHOT_MAX_STEPS = 300  # ...in at most this many optimizer steps (train.recipe=few-shot on a large train)
FEW_SHOT_SETTINGS = {"train.contrastive": 1.0, "train.group_by_length": False, "lora.dropout": 0.0,
                     "train.batch_size": 16}


def choose_recipe(cfg: Config, task, n_train: int, train_labels, is_encoder) -> tuple[Config, Optional[dict]]:
    """The config to train and what the recipe did (None: the standard recipe, nothing changed).
    `is_encoder()` says whether the model is an encoder (asked only when it matters: it reads its config)."""
    wanted = cfg.train.recipe
    if wanted == "standard" or not METHODS[cfg.model.method].trains or head_class(cfg.model.head).prompted:
        return replace_fields(cfg, {"train.recipe": "standard"}), None
    per_class = task.rows_per_class(train_labels)
    if wanted == "auto" and (per_class is None or per_class > FEW_SHOT_ROWS_PER_CLASS):
        return replace_fields(cfg, {"train.recipe": "standard"}), None
    if not is_encoder():
        if wanted == "auto":
            return replace_fields(cfg, {"train.recipe": "standard"}), None
        from ..errors import ConfigError

        raise ConfigError("train.recipe=few-shot trains an embedding head, which needs an encoder; "
                          f"{cfg.model.name} is a decoder")
    settings = _few_shot_settings(cfg, task, n_train)
    changed = {k: v for k, v in settings.items() if _value(cfg, k) == default(k)}
    kept = {k: _value(cfg, k) for k in settings if k not in changed}
    why = (f"train has {n_train:,} rows for {len(task.labels)} classes ({per_class:.1f} a class, at most "
           f"{FEW_SHOT_ROWS_PER_CLASS})" if per_class is not None else f"train.recipe={wanted}")
    out = replace_fields(cfg, {**changed, "train.recipe": "few-shot"})
    return out, {"name": "few-shot", "why": why, "changed": changed, "kept": kept}


def _few_shot_settings(cfg: Config, task, n_train: int) -> dict:
    at_default = cfg.train.batch_size == default("train.batch_size")
    batch = FEW_SHOT_SETTINGS["train.batch_size"] if at_default else cfg.train.batch_size
    steps_per_epoch = math.ceil(n_train / batch)
    steps = min(FEW_SHOT_MAX_STEPS, FEW_SHOT_EPOCHS * steps_per_epoch)
    if cfg.train.epochs != default("train.epochs"):  # the user's epochs stand: evaluate once, at their end
        steps = max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    settings = {"model.head": FEW_SHOT_HEAD, **FEW_SHOT_SETTINGS, "train.epochs": steps / steps_per_epoch,
                "train.eval_steps": steps}
    if not task.classes:
        settings.pop("train.contrastive")
    return settings


def _value(cfg: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def announce(record: dict) -> str:
    """The console line saying what the recipe chose and why."""
    changed = ", ".join(f"{k}={_show(v)}" for k, v in record["changed"].items())
    kept = "; kept as set: " + ", ".join(f"{k}={_show(v)}" for k, v in record["kept"].items()) if record["kept"] else ""
    return f"few-shot recipe ({record['why']}): {changed}{kept}. train.recipe=standard turns it off"


def _show(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
