"""Shared fixtures: tiny random models of every supported architecture, built from configs (no
download), a tiny word-level tokenizer, and a small synthetic sentiment dataset they can learn."""

from __future__ import annotations

import csv
import os
import random
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)


def pytest_configure(config):
    import torch

    # Tiny models are dominated by per-op overhead; one thread avoids oversubscribing 2 cores.
    torch.set_num_threads(1)
    # Under pytest-xdist every worker holds a core of its own, so the processes the tests start (the CLI,
    # servers) take one thread too: a second thread would spin on the core of the other worker.
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The data cache of this session only (a user's ~/.cache is never touched; workers share it).
    if "LORACLF_DATA_CACHE" not in os.environ:
        import tempfile

        os.environ["LORACLF_DATA_CACHE"] = tempfile.mkdtemp(prefix="loraclf-data-cache-")

REPO = Path(__file__).resolve().parents[1]


def free_cores() -> int:
    """The cores this test process may use as a user would (all of them, unless xdist workers share them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DATASETS = Path(os.environ.get("LORACLF_DATASETS", REPO.parent / "shared" / "datasets"))

POS = ["good", "great", "fine", "lovely", "superb", "brilliant"]
NEG = ["bad", "awful", "poor", "dull", "terrible", "boring"]
NEUTRAL = ["movie", "film", "plot", "actor", "scene", "story", "the", "a", "was", "is", "and", "very", "quite",
           "it", "this", "really", "ending", "music", "cast", "script"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>", "<|endoftext|>"]
VOCAB = SPECIALS + POS + NEG + NEUTRAL + ["neutral", "okay", "meh"]
DECODER_VOCAB = 384


def synthetic_rows(n: int, seed: int, classes=("negative", "positive")) -> list[tuple[str, str]]:
    """Texts whose label is decided by a sentiment word hidden among filler of varying length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        word = rng.choice(POS if label == "positive" else NEG if label == "negative" else ["neutral", "okay", "meh"])
        filler = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 14))]
        filler.insert(rng.randint(0, len(filler)), word)
        rows.append((" ".join(filler), label))
    rng.shuffle(rows)
    return rows


TAGS = {"positive": POS, "negative": NEG}


def tagged_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts carrying each tag's word with probability 1/2: both, one, or none (an empty label set)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = [t for t in TAGS if rng.random() < 0.5]
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(1, 6))]
        for t in tags:
            words.insert(rng.randint(0, len(words)), rng.choice(TAGS[t]))
        rows.append((" ".join(words), ";".join(tags)))
    return rows


def scored_rows(n: int, seed: int) -> list[tuple[str, float]]:
    """Score = positive words - negative words (-2..2): a count the model must read off the text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 2)
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 8))]
        for w in [rng.choice(POS) for _ in range(pos)] + [rng.choice(NEG) for _ in range(neg)]:
            words.insert(rng.randint(0, len(words)), w)
        rows.append((" ".join(words), float(pos - neg)))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_tokenizer(decoder: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if decoder:  # byte-level BPE like Llama/Qwen: no pad token, nothing added around the text
        from tokenizers import decoders, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=DECODER_VOCAB, special_tokens=["</s>", "<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tk.train_from_iterator([" ".join(VOCAB[7:])] * 20 + [t for t, _ in synthetic_rows(200, 0)], trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>")
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids",
                                                                                             "token_type_ids",
                                                                                             "attention_mask"])


def tiny_config(arch: str):
    import transformers as tf

    v = len(VOCAB)
    common = dict(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=128)
    if arch in ("bert", "bert-nopooler"):
        return tf.BertConfig(**common)
    if arch == "roberta":
        return tf.RobertaConfig(**{**common, "max_position_embeddings": 130}, pad_token_id=0, bos_token_id=2,
                                eos_token_id=3, type_vocab_size=1)
    if arch == "distilbert":
        return tf.DistilBertConfig(vocab_size=v, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                   max_position_embeddings=128, pad_token_id=0)
    if arch == "deberta-v2":
        return tf.DebertaV2Config(**common, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
                                  position_biased_input=False, pad_token_id=0, type_vocab_size=2)
    if arch == "electra":
        return tf.ElectraConfig(**common, embedding_size=32)
    if arch == "modernbert":
        return tf.ModernBertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                                   cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
                                   local_attention=16, global_attn_every_n_layers=2)
    if arch == "llama":
        return tf.LlamaConfig(vocab_size=DECODER_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                              eos_token_id=0, bos_token_id=0, pad_token_id=None)
    if arch == "qwen2":
        return tf.Qwen2Config(vocab_size=DECODER_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                              eos_token_id=0, bos_token_id=0, pad_token_id=None)
    raise ValueError(arch)


ENCODERS = ["bert", "bert-nopooler", "roberta", "distilbert", "deberta-v2", "electra", "modernbert"]
DECODERS = ["llama", "qwen2"]
ARCHS = ENCODERS + DECODERS


def build_tiny(arch: str, dest: Path) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tiny_config(arch)
    if arch in DECODERS:
        model = tf.AutoModelForCausalLM.from_config(cfg)
    elif arch == "bert-nopooler":  # like all-MiniLM-L6-v2 as published on the hub: no pooler weights
        model = tf.BertModel(cfg, add_pooling_layer=False)
    else:
        model = tf.AutoModel.from_config(cfg)
    model.save_pretrained(dest)
    make_tokenizer(decoder=arch in DECODERS).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """train / validation / test CSVs of the synthetic binary task."""
    root = tmp_path_factory.mktemp("synth")
    write_csv(root / "train.csv", synthetic_rows(240, 1))
    write_csv(root / "validation.csv", synthetic_rows(60, 2))
    write_csv(root / "test.csv", synthetic_rows(60, 3))
    return root


def tiny_overrides(model_path: Path, data: Path, out: Path, **extra) -> list[str]:
    """Overrides for a fast run on a tiny model."""
    base = {
        "model.name": str(model_path), "data.path": str(data), "output_dir": str(out), "name": "run",
        "train.epochs": 2, "train.batch_size": 16, "train.lr": 5e-3, "train.eval_batch_size": 64,
        "data.max_length": 32, "model.attn_implementation": "eager",
        # plots and report.html cost ~2 s a run; tests/evaluation/test_report.py turns them on where it checks them
        "report.enabled": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
