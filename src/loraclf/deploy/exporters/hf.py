"""``loraclf export --format hf``: LoRA merged into the base, the trained head inside, labels in
config.json, the tokenizer, the model card and loraclf.json. transformers loads it without PEFT
(``pipeline("text-classification", model=...)``); ``loraclf.load`` too."""

from __future__ import annotations

from pathlib import Path

from ...evaluation.card import CardFormat
from ...models.heads import head_class
from ...models.methods import method_of
from ...schema import save_artifact
from .base import Exporter, export_meta, fold_task_output, write_card


class HfExporter(Exporter):
    name = "hf"
    title = "hf"
    card = CardFormat("hf", "card_format_hf.md.j2", "transformers")
    help = "LoRA merged into the base: a plain transformers checkpoint (loads with transformers alone)"

    def write(self, clf, art: Path, dest: Path, options: dict) -> None:
        source = method_of(clf.meta.get("method"))
        meta = export_meta(clf.meta, self.name, merged=bool(source and source.adapters))
        # pipeline() truncates to the tokenizer's model_max_length: make it the length loraclf trained with
        clf.tokenizer.model_max_length = clf.max_length
        if head_class(clf.meta["head"]).folds_output:
            fold_task_output(clf, meta)
            # pipeline() picks softmax, sigmoid or none from problem_type, as the task does
            clf.model.config.problem_type = clf.task.problem_type
        save_artifact(clf.head, dest, meta)
        write_card(art, dest, self)
