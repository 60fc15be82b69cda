"""Heads: one protocol for every way a model produces a label.

A head owns how texts become model inputs, which loss trains it, where logits come from at
evaluation, its own statistics, how its parameters are counted, and what its artifact must hold to
be rebuilt. What the logits mean after that (probabilities, metrics, the predictions file) belongs
to its :class:`~loraclf.tasks.Task`. A head also declares what it can do (the methods and tasks it
trains for, the export formats it supports, whether adapters can share its base in the server), so
that the run, the loop, the artifact, the budget, export, the server and the model card read those
capabilities and never test which head they hold. A new head subclasses :class:`Head` and is one
:func:`register_head` line.

This module imports without torch: the model code is imported by the methods that build or load.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from ..data import Encoded
from ..data.long import STRATEGIES, LongText
from ..errors import ConfigError, DataError, ModelError
from ..tasks import TASKS, Task
from .methods import method_of

if TYPE_CHECKING:
    import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ChooseRank = Callable[..., Optional[dict]]  # lora.r: auto -> the choice (models.budget.resolve_auto_lora)


def model_inputs(batch: dict) -> dict:
    """The tensors of a collated batch that go into the model (not its labels or row indices)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def loss_targets(batch: dict) -> "torch.Tensor":
    """What the loss compares the logits with: the batch's soft targets (train.teacher) or its labels."""
    return batch["targets"] if "targets" in batch else batch["labels"]


class Head:
    """The protocol. `model` is the module that is trained and saved; `tokenizer` pads its batches.
    Class attributes declare its capabilities."""

    name = ""
    prompted = False  # answers a prompt (label words or generation) from a causal LM
    how = ""  # what it does, in a phrase for the model card ("scores each label's word(s) ...")
    methods: Sequence[str] = ("lora", "full")  # model.method choices it trains with
    tasks: Optional[Sequence[str]] = None  # tasks it can produce (and their subclasses); None: every task
    class_scores = True  # its logits score every class (a generated answer is one-hot: class biases only remap it)
    export_formats: Sequence[str] = ("hf",)  # loraclf export --format choices for its artifacts
    shares_base = False  # LoRA adapters of this head can share one base model in the server
    folds_output = False  # an export can fold the task's output scale into its last layer
    counts_missing_weights = False  # a checkpoint may lack weights of its model (trained too, so counted)
    transformers_class = "AutoModelForCausalLM"  # what its model is built as (parameter counts on the meta device)
    long_texts: Sequence[str] = STRATEGIES  # data.long_text choices it reads documents with
    refits_layer = False  # its last layer can be refitted on the trained embeddings (train.head_refit)
    soft_targets = True  # its loss takes a target distribution in place of the labels (train.teacher)

    @classmethod
    def check_config(cls, cfg, task: Task) -> None:
        """Refuse a task, or a task option, this head cannot serve, before anything is loaded."""
        if cls.tasks is not None and not any(isinstance(task, TASKS[n]) for n in cls.tasks if n in TASKS):
            raise ConfigError(f"model.head={cls.name} scores one label word per class: it needs task "
                              f"{' or '.join(cls.tasks)}, not {task.name}; use model.head="
                              f"{' or '.join(n for n, h in HEADS.items() if h.tasks is None)}")
        if cfg.data.long_text not in cls.long_texts:
            raise ConfigError(f"data.long_text={cfg.data.long_text} cuts the text outside a prompt; the {cls.name} "
                              f"head formats each text into its prompt: use data.long_text="
                              f"{' or '.join(cls.long_texts)}")
        if cfg.train.head_refit in ("prototypes", "logistic") and not cls.refits_layer:
            raise ConfigError(f"train.head_refit={cfg.train.head_refit} refits a layer on sentence embeddings; the "
                              f"{cls.name} head has none: use model.head="
                              f"{' or '.join(n for n, h in HEADS.items() if h.refits_layer)}")
        if cfg.train.teacher is not None and not cls.soft_targets:
            raise ConfigError(f"train.teacher trains on soft targets; the {cls.name} head learns the answer's words: "
                              f"use model.head={' or '.join(n for n, h in HEADS.items() if h.soft_targets)}")
        if cfg.train.calibrate == "bias" and not cls.class_scores:
            better = [n for n, h in HEADS.items() if h.prompted and h.class_scores]
            raise ConfigError(f"train.calibrate=bias needs class scores; the {cls.name} head's scores are its parsed "
                              f"answer, so biases would only remap labels: use the {' or '.join(better)} head")

    @classmethod
    def count_model(cls, model, method: str, lora, missing: Sequence[str] = ()) -> dict:
        """Trainable-parameter breakdown of `method` on a model built as :attr:`transformers_class` (on the
        meta device, by models.budget), with the LoRA targets and the modules trained whole."""
        from .build import apply_prompt_method, count_parameters

        model, targets = apply_prompt_method(model, method, lora)
        return {**count_parameters(model, []), "target_modules": targets, "modules_to_save": []}

    def __init__(self, model: "torch.nn.Module", tokenizer, task: Task):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self._loss: Optional[torch.nn.Module] = None
        self.contrastive = 0.0  # weight of a contrastive loss on an embedding (heads that have one)
        self.head_refit = "auto"  # how an embedding head's layer is refitted once trained (train.head_refit)
        self.quantize: Optional[str] = None  # model.quantize the base was loaded with (rebuilt the same way)
        self.long_text = LongText()  # how a text longer than max_length is read (data.long_text; loraclf.json)

    @classmethod
    def build(cls, cfg, data, task: Task, choose_rank: ChooseRank, quiet: bool = False
              ) -> tuple["Head", Any, Optional[dict]]:
        """The head on a freshly built model for `cfg`: (head, models.Built, the `lora.r: auto` choice).
        `choose_rank(cfg, id2label, quiet=, base=)` makes that choice (models.budget.resolve_auto_lora)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inputs
    @property
    def pad_left(self) -> bool:
        return getattr(self.tokenizer, "padding_side", "right") == "left"

    def encode(self, texts: Sequence[str], labels=None, max_length: int = 512,
               pairs: Optional[Sequence[str]] = None) -> Encoded:
        """Model inputs of `texts`: their tokens as the head reads them, long ones as data.long_text says."""
        return self.long_text.encode(self.tokenizer, texts, labels, max_length, pairs)

    # ---------------------------------------------------------------- training
    def prepare_training(self, tcfg, train_labels: np.ndarray, device) -> None:
        self._loss = self.task.loss_function(tcfg, train_labels, device)
        if getattr(tcfg, "gradient_checkpointing", False):
            from .build import enable_gradient_checkpointing

            enable_gradient_checkpointing(self.base_model())

    def finish_training(self, train: Encoded, device) -> None:
        """After the last step, with the kept weights loaded (a head derived from the trained model, such
        as class prototypes, is set here)."""

    def base_model(self) -> "torch.nn.Module":
        """The transformers model (under any PEFT wrapper) that memory levers apply to."""
        return self.model

    def loss(self, model, batch: dict) -> "torch.Tensor":
        """The training loss of one batch; `model` is the prepared (DDP, compiled) handle on self.model."""
        return self._loss(self.logits(model, batch).float(), loss_targets(batch))

    # ---------------------------------------------------------------- evaluation
    def logits(self, model, batch: dict) -> "torch.Tensor":
        return model(**model_inputs(batch)).logits

    def start_evaluation(self) -> None:
        """Called before each evaluated split; heads with statistics reset them here."""

    def statistics(self) -> dict:
        """Extra entries for the split's metrics (e.g. unparsed generations)."""
        return {}

    # ---------------------------------------------------------------- one base, many adapters (shares_base)
    def shared_model(self) -> "torch.nn.Module":
        """The PEFT model that other adapters of this head are added to when they share its base."""
        return self.model

    @classmethod
    def attach(cls, shared, art: Path, meta: dict, tokenizer, task: Task) -> "Head":
        """This head for the adapter of `art`, just added to `shared` (a base another model brought in)."""
        return cls(shared, tokenizer, task)

    @classmethod
    def mixed_logits(cls, shared, inputs: dict, adapter_names: list[str], heads: dict[str, "Head"]) -> "torch.Tensor":
        """One forward pass of `shared` over rows of several of its adapters (`adapter_names`, one per row;
        `heads`: each adapter's head): every row's logits, zero-padded to the widest head."""
        raise NotImplementedError

    # ---------------------------------------------------------------- artifact
    def artifact_meta(self) -> dict:
        """What loraclf.json must hold, beyond labels and base model, to rebuild this head."""
        return {"quantize": self.quantize} if self.quantize else {}

    def run_info(self, example: Encoded) -> dict:
        """Extra top-level entries for metrics.json."""
        return {}

    def save(self, dest: Path, meta: dict) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, art: Path, meta: dict, tokenizer, task: Task, base_model: Optional[str], merge: bool,
             allow_other_base: bool = False) -> "Head":
        raise NotImplementedError


class ClassifierHead(Head):
    """A sequence-classification head on the model (encoders; decoders pool the last real token)."""

    name = "classifier"
    methods = ("lora", "head", "full")
    export_formats = ("hf", "onnx")
    shares_base = True
    folds_output = True
    counts_missing_weights = True
    transformers_class = "AutoModelForSequenceClassification"

    @classmethod
    def count_model(cls, model, method: str, lora, missing: Sequence[str] = ()) -> dict:
        from .build import apply_method, count_parameters

        built = apply_method(model, None, None, method, lora, missing)
        names = [n for n, _ in built.model.named_modules()]
        present = [m for m in built.modules_to_save if any(n == m or n.endswith("." + m) for n in names)]
        return {**count_parameters(built.model, built.modules_to_save), "target_modules": built.target_modules,
                "modules_to_save": present}

    @classmethod
    def build(cls, cfg, data, task, choose_rank, quiet=False):
        import torch
        from accelerate.utils import set_seed

        from .build import apply_method, fingerprint_skip, load_base, weights_fingerprint

        set_seed(cfg.seed)
        model, tok, resolved, missing = load_base(cfg.model, task.num_outputs, data.labels.id2label, quiet=quiet,
                                                  modules_to_save=cfg.lora.modules_to_save,
                                                  problem_type=task.problem_type)
        with torch.random.fork_rng(devices=[]):  # choosing a rank leaves the seeded stream as it was
            auto_lora = choose_rank(cfg, data.labels.id2label, quiet=quiet, base=(model.config, missing))
        base_id = weights_fingerprint(model, fingerprint_skip(missing, cfg.lora.modules_to_save))
        built = apply_method(model, tok, resolved, cfg.model.method, with_choice(cfg.lora, auto_lora), missing)
        built.base_fingerprint = base_id
        head = cls(built.model, built.tokenizer, task)
        head.quantize = cfg.model.quantize
        return head, built, auto_lora

    @classmethod
    def mixed_logits(cls, shared, inputs, adapter_names, heads):
        from .mixed import per_row_adapters

        with per_row_adapters(shared, adapter_names) as extra:  # each row's own LoRA deltas and head, any width
            return shared(**inputs, **extra).logits

    def save(self, dest: Path, meta: dict) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            save_adapter(self.model, dest, meta)
            config = self.model.get_base_model().config
            config.save_pretrained(str(dest))
            if getattr(config, "quantization_config", None) is not None:  # loraclf.json says how the base was
                drop_json_key(dest / "config.json", "quantization_config")  # quantized; plain PEFT loads it full
        else:
            self.model.save_pretrained(str(dest))

    @classmethod
    def load(cls, art, meta, tokenizer, task, base_model, merge, allow_other_base=False) -> "ClassifierHead":
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from .registry import resolve

        check_weights(art, meta)
        if method_of(meta["method"]).adapters:
            from peft import PeftModel

            resolved = resolve(base_model or meta["base_model"])
            check_base(meta, resolved.path, base_model)
            config = AutoConfig.from_pretrained(str(art))
            if hasattr(config, "quantization_config"):  # saved by a quantized run: it would override the one
                del config.quantization_config          # below and load bitsandbytes layers holding fp32 weights
            with base_loading(base_model or meta["base_model"]):
                base, info = AutoModelForSequenceClassification.from_pretrained(
                    resolved.path, config=config, output_loading_info=True,
                    **quantized(meta, ["classifier", "score", "pooler"] + list(meta.get("modules_to_save") or [])))
            check_loaded(meta, info, base_model or meta["base_model"])
            check_fingerprint(meta, base, meta.get("modules_to_save") or [], base_model, allow_other_base)
            model = PeftModel.from_pretrained(base, str(art))
            if merge and not meta.get("quantize"):  # merging into 4/8-bit weights would round the adapter away
                model = model.merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(art))
        check_outputs(art, model, task)
        head = cls(model, tokenizer, task)
        head.quantize = meta.get("quantize")
        return head


class VerbalizerHead(Head):
    """A decoder's next-token scores of each label's word(s) after a prompt (models/decoder_heads.py)."""

    name = "verbalizer"
    prompted = True
    how = "scores each label's word(s) as the next tokens after a prompt"
    methods = ("lora", "full", "zero-shot")
    tasks = ("single-label",)
    long_texts = ("truncate",)  # the text sits inside a prompt the formatter truncates

    @classmethod
    def build(cls, cfg, data, task, choose_rank, quiet=False):
        from accelerate.utils import set_seed

        from .build import build_prompt_model

        auto_lora = choose_rank(cfg, data.labels.id2label, quiet=quiet)  # lora.r: auto -> a rank
        set_seed(cfg.seed)
        tr = data.splits["train"]
        if tr.pairs is not None:
            raise DataError("text pairs need model.head=classifier (prompt heads take one text column)")
        built = build_prompt_model(cfg.model, with_choice(cfg.lora, auto_lora), task.labels, tr.texts, tr.labels,
                                   cfg.seed, quiet=quiet)
        head = cls(built.model, built.tokenizer, task)
        head.quantize = cfg.model.quantize
        return head, built, auto_lora

    @property
    def formatter(self):
        return self.model.formatter

    def base_model(self) -> "torch.nn.Module":
        return self.model.lm

    def encode(self, texts, labels=None, max_length=512, pairs=None) -> Encoded:
        if pairs is not None:
            raise DataError("text pairs need model.head=classifier (prompt heads take one text column)")
        return self.formatter.encode(list(texts), labels, max_length)

    def artifact_meta(self) -> dict:
        return {**super().artifact_meta(), "prompt": self.formatter.spec.to_dict(),
                "max_new_tokens": self.model.max_new_tokens,
                "fallback_label": self.model.labels[self.model.fallback],
                "shared_prefix": self.model.prefix is not None}

    def run_info(self, example: Encoded) -> dict:
        return {"prompt": {**self.formatter.spec.to_dict(), "chat": self.formatter.chat,
                           "example_prompt": self.tokenizer.decode(example.input_ids[0])}}

    def save(self, dest: Path, meta: dict) -> None:
        from peft import PeftModel

        lm = self.model.lm
        if isinstance(lm, PeftModel):
            save_adapter(lm, dest, meta)
            config = lm.get_base_model().config
        else:
            if method_of(meta["method"]).weights_file:  # a whole checkpoint (nothing for zero-shot)
                lm.save_pretrained(str(dest))
            config = lm.config
        config.id2label = dict(enumerate(meta["labels"]))
        config.label2id = {n: i for i, n in enumerate(meta["labels"])}
        config.save_pretrained(str(dest))

    @classmethod
    def load(cls, art, meta, tokenizer, task, base_model, merge, allow_other_base=False) -> "VerbalizerHead":
        from transformers import AutoModelForCausalLM

        from .decoder_heads import PromptClassifier, greedy_generation
        from .prompting import PromptFormatter, PromptSpec
        from .registry import resolve

        tokenizer.padding_side = "left"
        check_weights(art, meta)
        method = method_of(meta["method"])
        if method.weights_file and not method.adapters:  # a whole checkpoint
            lm = AutoModelForCausalLM.from_pretrained(str(art))
        else:
            path = resolve(base_model or meta["base_model"]).path
            check_base(meta, path, base_model)
            with base_loading(base_model or meta["base_model"]):
                lm, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **quantized(meta))
            check_loaded(meta, info, base_model or meta["base_model"])
            check_fingerprint(meta, lm, [], base_model, allow_other_base)
            if method.adapters:
                from peft import PeftModel

                lm = PeftModel.from_pretrained(lm, str(art))
                if merge and not meta.get("quantize"):  # merging into 4/8-bit weights would round the adapter away
                    lm = lm.merge_and_unload()
        greedy_generation(lm)
        formatter = PromptFormatter(tokenizer, PromptSpec.from_dict(meta["prompt"]), meta["labels"])
        model = PromptClassifier(lm, formatter, meta["labels"], cls.name, meta.get("max_new_tokens", 8),
                                 meta.get("fallback_label"), meta.get("shared_prefix", True))
        head = cls(model, tokenizer, task)
        head.quantize = meta.get("quantize")
        return head


class GenerateHead(VerbalizerHead):
    """Free generation parsed into a label; trained as supervised fine-tuning on the label word."""

    name = "generate"
    how = "generates an answer to a prompt, parsed into a label"
    class_scores = False
    soft_targets = False

    def loss(self, model, batch: dict) -> "torch.Tensor":
        # full-vocabulary likelihood of the gold label word, not cross-entropy over the classes
        return model(**model_inputs(batch), labels=batch["labels"]).loss

    def start_evaluation(self) -> None:
        self.model.generation_log = []

    def statistics(self) -> dict:
        return {"generation": self.model.generation_stats()}


class EmbeddingHead(Head):
    """A linear layer on the checkpoint's own sentence embedding (its pooling, L2-normalised), initialised
    at the class prototypes; trains with the task's loss plus, with train.contrastive, a supervised
    contrastive loss on the embedding (models/embedding.py). Encoders."""

    name = "embedding"
    how = "scores each label from the text's sentence embedding"
    methods = ("lora", "head", "full")
    export_formats = ("onnx",)
    shares_base = True
    folds_output = True
    transformers_class = "AutoModel"
    refits_layer = True

    @classmethod
    def check_config(cls, cfg, task: Task) -> None:
        super().check_config(cfg, task)
        if cfg.train.contrastive and not task.classes:
            raise ConfigError(f"train.contrastive pulls texts of a class together; a {task.name} task has no "
                              "classes: set train.contrastive=0")
        if cfg.train.head_refit in ("prototypes", "logistic") and not task.prototype_init:
            raise ConfigError(f"train.head_refit={cfg.train.head_refit} refits one score per class under a softmax; "
                              f"a {task.name} task has none: set train.head_refit=none")

    @classmethod
    def count_model(cls, model, method: str, lora, missing: Sequence[str] = ()) -> dict:
        from .build import count_parameters
        from .embedding import EmbeddingClassifier, apply_embedding_method, drop_pooler

        wrapped = EmbeddingClassifier(drop_pooler(model), model.config.num_labels, "mean")
        targets = apply_embedding_method(wrapped, method, lora)
        return {**count_parameters(wrapped, ["classifier"]), "target_modules": targets, "modules_to_save": []}

    @classmethod
    def build(cls, cfg, data, task, choose_rank, quiet=False):
        import torch
        from accelerate.utils import set_seed

        from .build import Built, weights_fingerprint
        from .embedding import EmbeddingClassifier, apply_embedding_method, checkpoint_pooling, load_encoder

        set_seed(cfg.seed)
        encoder, tok, resolved = load_encoder(cfg.model, quiet)
        label_config(encoder.config, task)
        model = EmbeddingClassifier(encoder, task.num_outputs, checkpoint_pooling(resolved.path))
        base_id = weights_fingerprint(encoder)
        with torch.random.fork_rng(devices=[]):  # as in ClassifierHead.build: the seeded stream stays as it was
            auto_lora = choose_rank(cfg, data.labels.id2label, quiet=quiet, base=(encoder.config, []))
        targets = apply_embedding_method(model, cfg.model.method, with_choice(cfg.lora, auto_lora))
        head = cls(model, tok, task)
        head.quantize = cfg.model.quantize
        head.init_prototypes(data.splits["train"], cfg.data.max_length)
        built = Built(model, tok, resolved, encoder.config.model_type, targets, ["classifier"], [], base_id)
        return head, built, auto_lora

    def init_prototypes(self, train, max_length: int) -> None:
        """Start the linear layer at the class prototypes of the untrained embedding (tasks with classes
        scored by softmax; others keep the default initialisation)."""
        from .embedding import PROTOTYPE_TEXTS

        if not self.task.prototype_init:
            return
        n = min(len(train), PROTOTYPE_TEXTS)
        pairs = None if train.pairs is None else train.pairs[:n]
        enc = self.encode(train.texts[:n], train.labels[:n], max_length, pairs)
        self._refit(enc, next(self.model.parameters()).device)

    def _refit(self, enc: Encoded, device, how: str = "prototypes") -> None:
        """The linear layer refitted on the embeddings of `enc`'s texts: the nearest class mean (each class's
        mean embedding, by Euclidean distance) or a logistic regression."""
        import torch

        from .embedding import embed_all

        emb = embed_all(self.model, enc, self.tokenizer.pad_token_id, 64, device)
        labels = enc.input_labels(np.arange(len(enc)))  # a window has its document's label
        if how == "logistic" and len(np.unique(labels)) > 1:  # one class is its prototype
            self.model.set_logistic(emb, np.asarray(labels), self.task.num_outputs)
        else:
            self.model.set_class_means(emb, self.task.class_indicator(torch.as_tensor(labels)))

    def finish_training(self, train: Encoded, device) -> None:
        """Trained contrastively, the embedding clusters by class: by default the layer becomes the nearest
        class mean of the trained embeddings (which the layer trained beside it lags behind), or, with
        train.head_refit=logistic, a logistic regression on them (docs/few-labels.md)."""
        how = self.head_refit
        if how == "auto":
            how = "prototypes" if self.contrastive else "none"
        if how != "none" and self.task.prototype_init:
            self._refit(train, device, how)

    def base_model(self) -> "torch.nn.Module":
        return self.model.encoder

    def shared_model(self) -> "torch.nn.Module":
        return self.model.encoder

    @classmethod
    def attach(cls, shared, art, meta, tokenizer, task) -> "EmbeddingHead":
        from .embedding import EmbeddingClassifier, load_head

        model = EmbeddingClassifier(shared, task.num_outputs, meta["pooling"])
        load_head(model, art)
        model.classifier.to(next(shared.parameters()).device)  # the base may be on a GPU; the layer is built on CPU
        head = cls(model.eval(), tokenizer, task)
        head.quantize = meta.get("quantize")
        return head

    @classmethod
    def mixed_logits(cls, shared, inputs, adapter_names, heads):
        import torch.nn.functional as F

        from .embedding import pool
        from .mixed import padded, per_row_adapters, rows_of

        with per_row_adapters(shared, adapter_names) as extra:
            hidden = shared(**inputs, **extra).last_hidden_state
        parts = []
        for adapter, idx in rows_of(adapter_names).items():  # each adapter's pooling and linear layer
            m = heads[adapter].model
            e = F.normalize(pool(hidden[idx], inputs["attention_mask"][idx], m.pooling).float(), dim=-1)
            parts.append((idx, m.classifier(e.to(m.classifier.weight.dtype))))
        return padded(parts, len(adapter_names))

    def prepare_training(self, tcfg, train_labels: np.ndarray, device) -> None:
        super().prepare_training(tcfg, train_labels, device)
        self.contrastive, self.head_refit = float(tcfg.contrastive), tcfg.head_refit

    def loss(self, model, batch: dict) -> "torch.Tensor":
        from .embedding import supervised_contrastive

        out = model(**model_inputs(batch))
        loss = self._loss(out.logits.float(), loss_targets(batch))
        if self.contrastive:
            loss = loss + self.contrastive * supervised_contrastive(out.embedding,
                                                                    self.task.class_indicator(batch["labels"]))
        return loss

    def artifact_meta(self) -> dict:
        return {**super().artifact_meta(), "pooling": self.model.pooling}

    def save(self, dest: Path, meta: dict) -> None:
        from peft import PeftModel

        from .embedding import save_head

        encoder = self.model.encoder
        if isinstance(encoder, PeftModel):
            save_adapter(encoder, dest, meta)
            encoder.get_base_model().config.save_pretrained(str(dest))
        else:
            encoder.save_pretrained(str(dest))
        save_head(self.model, dest)

    @classmethod
    def load(cls, art, meta, tokenizer, task, base_model, merge, allow_other_base=False) -> "EmbeddingHead":
        from transformers import AutoModel

        from .embedding import POOLINGS, EmbeddingClassifier, drop_pooler, load_head
        from .registry import resolve

        check_weights(art, meta)
        if meta.get("pooling") not in POOLINGS:
            raise ModelError(f"artifact {art}: loraclf.json names pooling {meta.get('pooling')!r}; "
                             f"expected one of {', '.join(POOLINGS)}")
        if method_of(meta["method"]).adapters:
            from peft import PeftModel

            resolved = resolve(base_model or meta["base_model"])
            check_base(meta, resolved.path, base_model)
            with base_loading(base_model or meta["base_model"]):
                encoder = drop_pooler(AutoModel.from_pretrained(resolved.path, **quantized(meta)))
            check_fingerprint(meta, encoder, [], base_model, allow_other_base)
            encoder = PeftModel.from_pretrained(encoder, str(art))
            if merge and not meta.get("quantize"):
                encoder = encoder.merge_and_unload()
        else:
            with base_loading(str(art)):
                encoder = drop_pooler(AutoModel.from_pretrained(str(art)))
        label_config(encoder.config, task)
        model = EmbeddingClassifier(encoder, task.num_outputs, meta["pooling"])
        load_head(model, art)
        head = cls(model, tokenizer, task)
        head.quantize = meta.get("quantize")
        return head


def label_config(config, task: Task) -> None:
    """The labels and problem type on a model config, as transformers' classification configs hold them."""
    config.num_labels = task.num_outputs
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {n: i for i, n in enumerate(task.labels)}
    config.problem_type = task.problem_type


HEADS: dict[str, type[Head]] = {}


def drop_json_key(path: Path, key: str) -> None:
    """Remove one top-level key from a JSON file (written back in place)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def with_choice(lora, choice: Optional[dict]):
    """The LoRA section that trains what `lora.r: auto` chose (`lora` itself when nothing was chosen)."""
    import dataclasses

    if choice is None:
        return lora
    chosen = choice["chosen"]
    return dataclasses.replace(lora, r=chosen["r"], alpha=chosen["alpha"], target_modules=chosen["target_modules"])


def register_head(cls: type[Head]) -> type[Head]:
    """Make `cls` a choice of `model.head`."""
    HEADS[cls.name] = cls
    return cls


for _cls in (ClassifierHead, EmbeddingHead, VerbalizerHead, GenerateHead):
    register_head(_cls)


def head_class(name: str) -> type[Head]:
    """The head an artifact or config names."""
    if name not in HEADS:
        raise ModelError(f"head {name!r} is not known to this loraclf (heads: {', '.join(HEADS)})")
    return HEADS[name]


def save_adapter(model, dest: Path, meta: dict) -> None:
    """A PEFT adapter whose config names the base as plain-PEFT users can load it."""
    # No embedding layers are trained, so PEFT need not look anything up (it would go online).
    model.save_pretrained(str(dest), save_embedding_layers=False)
    acfg_path = dest / "adapter_config.json"
    acfg: dict[str, Any] = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = meta.get("base_model_hub_id") or meta["base_model"]
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True))


# What must match between an artifact's base model and the one it is loaded onto.
BASE_SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def base_shape(config) -> dict:
    return {k: getattr(config, k, None) for k in BASE_SHAPE}


def quantized(meta: dict, skip=()) -> dict:
    """from_pretrained keywords that load the base quantized as the artifact was trained on it."""
    from .build import quantization_config

    q = quantization_config(meta.get("quantize"), skip)
    return {} if q is None else {"quantization_config": q}


def check_weights(art: Path, meta: dict) -> None:
    """The weight file an artifact's method writes must be there (else PEFT looks for a hub repo)."""
    method = method_of(meta.get("method"))
    if method is None:
        raise ModelError(f"artifact {art} was trained with method {meta.get('method')!r}, which this loraclf "
                         "does not know")
    needed = method.weights_file
    if needed and not (art / needed).is_file() and not list(art.glob("model-*.safetensors")):
        raise ModelError(f"artifact {art} has no {needed}: its trained weights are missing")


def check_base(meta: dict, path: str, override: Optional[str]) -> None:
    """Refuse a base model of another architecture or size than the artifact was trained on: its
    adapter would load into nothing and predict from random weights."""
    expected = meta.get("base_shape")
    if not expected:  # an artifact from before base shapes were recorded
        return
    from transformers import AutoConfig

    got = base_shape(AutoConfig.from_pretrained(path))
    diff = [f"{k} {got.get(k)} (needs {v})" for k, v in expected.items() if got.get(k) != v]
    if diff:
        raise ModelError(f"base model {override or meta['base_model']} does not fit this artifact: {', '.join(diff)}; "
                         f"it was trained on {meta.get('base_model_hub_id') or meta['base_model']}")


def check_outputs(art: Path, model, task: Task) -> None:
    """The model must have one output per label the artifact names (a forged label list would index
    past them at the first prediction)."""
    n = getattr(getattr(model, "config", None), "num_labels", None)
    if n is not None and n != task.num_outputs:
        raise ModelError(f"{art}: loraclf.json names {task.num_outputs} output(s) ({', '.join(task.labels)}) but the "
                         f"model has {n}; the artifact is damaged")


@contextlib.contextmanager
def base_loading(name: str):
    """A base model that fails to load is named as the base, not as the artifact."""
    from .build import LOAD_ERRORS, load_error

    try:
        yield
    except LOAD_ERRORS as e:
        raise load_error(f"cannot load base model {name}", e) from None


def check_fingerprint(meta: dict, base, skip: Sequence[str], override: Optional[str], allow_other: bool) -> None:
    """Refuse a base of the right shape but other weights than the artifact was trained on: its adapter
    would load without a word and predict worse (artifacts from before fingerprints pass)."""
    from .build import weights_fingerprint

    want = meta.get("base_fingerprint")
    if not want or allow_other:
        return
    got = weights_fingerprint(base, skip)
    if got != want:
        raise ModelError(f"base model {override or meta['base_model']} has other weights than the one this artifact "
                         f"was trained on (fingerprint {got}, needs {want}); pass that base, or --allow-other-base "
                         "(loraclf.load(..., allow_other_base=True)) if you mean it")


def check_loaded(meta: dict, info: dict, base: str) -> None:
    """Every base weight must come from the checkpoint; only the head and the modules the adapter
    carries (modules_to_save) may be new."""
    from .build import _covered, _module_of

    carried = list(meta.get("modules_to_save") or [])
    missing = [k for k in info.get("missing_keys", []) if not _covered(_module_of(k), carried)]
    if missing:
        raise ModelError(f"base model {base} lacks {len(missing)} weight(s) this artifact needs (e.g. {missing[0]}); "
                         "pass the base model it was trained on")

