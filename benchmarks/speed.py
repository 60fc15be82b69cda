"""Speed and accuracy: loraclf against two Trainer + PEFT peers, side by side in one process.

The peer ("notebook") implementation is written here from the reference projects' recipe: HF
``Trainer`` + PEFT LoRA (r=8, alpha=16, dropout 0.1, query/value), every input padded to
``max_length`` (128), batch 32, fp16 on GPU, AdamW at 5e-4 with linear decay, the classification
head saved through PEFT's ``modules_to_save`` and everything else frozen. loraclf runs the same
model, data, batch size, epochs and learning rate. Both train on the same rows and are tested on
the same test split.

The second peer ("tuned") is what a practitioner who knows Trainer runs: the same recipe with
length-grouped sampling (``train_sampling_strategy="group_by_length"``, the 5.x name of
``group_by_length``) and ``DataCollatorWithPadding`` (each batch padded to its longest member); it
predicts with ``Trainer.predict`` through the same collator. ``--peers`` picks which peers run.

    python benchmarks/speed.py --model minilm --data sst2 --train-samples 2000 --epochs 1
    python benchmarks/speed.py --model minilm --data sst2 --epochs 3            # full data (slow on CPU)
    python benchmarks/speed.py --model minilm --train-samples 2000 --predict-rows 25000  # + `loraclf predict`
    python benchmarks/speed.py --shape roberta-base --tokenizer minilm --data sst2 --train-samples 20000  # GPU

``--shape`` builds a randomly initialised model of a real architecture's size from its config (no
download: speed does not depend on weight values) with the vocabulary of ``--tokenizer``; both sides
train that same model. ``--predict-rows`` also times prediction over that many texts, in process
and through the ``loraclf predict`` command on a CSV file (model loading included).

It prints a Markdown table (samples/s, peak memory, accuracy, ratio) and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import loraclf  # noqa: E402
from loraclf.config import DataConfig  # noqa: E402
from loraclf.data import load_data  # noqa: E402
from loraclf.models import resolve  # noqa: E402
from loraclf.models.targets import default_targets  # noqa: E402
from loraclf.training.memory import PeakMemory  # noqa: E402

# Real architectures' sizes, for speed rows from random weights (vocabulary from --tokenizer; by
# default the bundled model of the same family: MiniLM's BERT vocabulary for encoders, SmolLM2's own).
SHAPE_TOKENIZER = {"llama": "smollm2-135m"}
SHAPES: dict[str, tuple[str, dict]] = {
    "roberta-base": ("roberta", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)),
    "distilbert-base": ("distilbert", dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                                           max_position_embeddings=512)),
    "smollm2-360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                   num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                                   rope_theta=100000.0, tie_word_embeddings=True)),
    # small shapes for checking the harness itself on CPU
    "tiny-roberta": ("roberta", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=514, type_vocab_size=1)),
    "tiny-llama": ("llama", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=512)),
}


def build_shape(shape: str, tokenizer: str | None, out: Path, seed: int = 0) -> Path:
    """A randomly initialised base model of `shape`, saved with `tokenizer`'s files under `out`."""
    from transformers import AutoConfig, AutoModel

    from loraclf.models.build import load_tokenizer, quiet_hf

    model_type, dims = SHAPES[shape]
    tokenizer = tokenizer or SHAPE_TOKENIZER.get(model_type, "minilm")
    tok = load_tokenizer(tokenizer if Path(tokenizer).is_dir() else resolve(tokenizer).path)  # folder or alias
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id, **dims)
    torch.manual_seed(seed)
    with quiet_hf():
        model = AutoModel.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# loraclf settings that change speed only; --set refuses anything else, which would make the two
# sides train different things.
SPEED_SWITCHES = ("train.compile", "train.pad_to_multiple_of", "train.precision", "train.group_by_length",
                  "train.length_group_batches",
                  "train.eval_batch_size", "train.num_threads", "model.attn_implementation")


def _release() -> None:
    """Drop what the first side left behind (compiled graphs, cached blocks) before the second runs."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _training_args(tuned: bool, **kw):
    """TrainingArguments; the tuned peer groups batches by length (5.x name, and the older flag)."""
    from transformers import TrainingArguments

    if not tuned:
        return TrainingArguments(**kw)
    try:
        return TrainingArguments(train_sampling_strategy="group_by_length", **kw)
    except TypeError:  # transformers before train_sampling_strategy
        return TrainingArguments(group_by_length=True, **kw)


def peer_train(model_path: str, train, test, labels, epochs: float, batch: int, lr: float, max_length: int,
               seed: int, out: str, targets: list[str], extra_modules: list[str], tuned: bool = False) -> dict:
    """The notebook recipe: Trainer + PEFT, padding='max_length'; or, `tuned`, length-grouped batches
    padded per batch. `extra_modules` are trained fully besides PEFT's default head (loraclf's weights
    missing from the checkpoint, e.g. an untrained pooler), so both sides train the same parameters."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, pad_token_id=tok.pad_token_id)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=targets, modules_to_save=extra_modules or None))

    def ds(split):  # feature dicts: padded to max_length as the notebooks do, or left to the collator
        enc = tok(list(split.texts), padding=False if tuned else "max_length", truncation=True, max_length=max_length)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": int(y)} for i, y in enumerate(split.labels)]

    tr, te = ds(train), ds(test)
    args = _training_args(tuned, output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
                          per_device_eval_batch_size=batch, learning_rate=lr, weight_decay=0.01,
                          lr_scheduler_type="linear", warmup_steps=0.06, fp16=torch.cuda.is_available(),
                          logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[], seed=seed,
                          disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=tr,
                      data_collator=DataCollatorWithPadding(tok) if tuned else None)
    mem = PeakMemory.start()
    t0 = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = mem.read()["peak_memory_mb"]
    pred = in_dataset_order(trainer, te, trainer.predict(te).predictions.argmax(-1))
    acc = float((pred == np.asarray(test.labels)).mean())
    return {"train_seconds": seconds, "samples_per_s": len(train) * epochs / seconds, "peak_mb": peak,
            "accuracy": acc, "model": model, "tokenizer": tok, "trainer": trainer,
            "precision": "fp16" if torch.cuda.is_available() else "fp32",
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def loraclf_train(model_name: str, data_path: str, n_train, epochs: float, batch: int, lr: float, max_length: int,
                  seed: int, out: str, targets: list[str], extra: list[str]) -> dict:
    sets = [f"data.path={data_path}", f"model.name={model_name}", f"train.epochs={epochs}", f"train.batch_size={batch}",
            f"train.lr={lr}", f"data.max_length={max_length}", f"seed={seed}", f"output_dir={out}", "name=loraclf",
            "report.enabled=false", "report.trackers=none", "model.head=classifier",
            f"lora.target_modules=[{', '.join(targets)}]", "lora.r=8", "lora.alpha=16", "lora.dropout=0.1", *extra]
    if n_train:
        sets.append(f"data.max_train_samples={n_train}")
    run = loraclf.train(None, sets, quiet=True)  # measures its own peak memory
    m = run.metrics
    return {"train_seconds": m["timing"]["train_seconds"], "samples_per_s": m["timing"]["train_samples_per_s"],
            "peak_mb": m["timing"]["peak_memory_mb"], "accuracy": m["test"]["accuracy"], "run": str(run.path),
            "precision": {"no": "fp32"}.get(m["environment"]["precision"], m["environment"]["precision"]),
            "trainable_params": m["params"]["trainable"], "total_params": m["params"]["total"],
            "modules_to_save": m["model"]["modules_to_save"]}


def peer_predict(model, tok, texts, batch: int, max_length: int) -> float:
    """Notebook-style inference: unmerged adapter, batches in file order, padded to max_length."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(dev).eval()
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt").to(dev)
            model(**enc).logits.float().softmax(-1).cpu()
    return len(texts) / (time.perf_counter() - t0)


def in_dataset_order(trainer, dataset, rows: np.ndarray) -> np.ndarray:
    """Trainer.predict's rows in the dataset's order. With train_sampling_strategy="group_by_length",
    transformers 5.x also evaluates through a (seeded) LengthGroupedSampler, so predictions come back
    shuffled; the sampler, rebuilt with the same seed, gives the order they came in."""
    sampler = trainer._get_eval_sampler(dataset)
    order = np.asarray(list(sampler)) if sampler is not None else np.arange(len(rows))
    out = np.empty_like(rows)
    out[order] = rows
    return out


def tuned_peer_predict(trainer, tok, texts, max_length: int) -> float:
    """The tuned peer's inference: `Trainer.predict` over texts padded per batch by its collator."""
    t0 = time.perf_counter()
    enc = tok(list(texts), truncation=True, max_length=max_length)
    feats = [{k: v[i] for k, v in enc.items()} for i in range(len(texts))]
    trainer.predict(feats)
    return len(texts) / (time.perf_counter() - t0)


def loraclf_predict(run_dir: str, texts, precision: str, batch: int) -> float:
    clf = loraclf.load(run_dir, precision=precision)
    t0 = time.perf_counter()
    clf.predict_proba(texts, batch_size=batch)
    return len(texts) / (time.perf_counter() - t0)


def loraclf_predict_cli(run_dir: str, texts, precision: str, batch: int, tmp: str) -> float:
    """Texts/s of the whole `loraclf predict` command over a CSV file: start-up and model loading included."""
    src, dst = Path(tmp) / "predict_in.csv", Path(tmp) / "predict_out.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    t0 = time.perf_counter()
    src_dir = str(Path(loraclf.__file__).parents[1])
    path = os.pathsep.join(p for p in (src_dir, os.environ.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-m", "loraclf", "predict", run_dir, "-i", str(src), "-o", str(dst), "-q",
                    "--precision", precision, "--batch-size", str(batch)], check=True,
                   env={**os.environ, "PYTHONPATH": path})
    seconds = time.perf_counter() - t0
    with open(dst, newline="", encoding="utf-8") as f:
        n = sum(1 for _ in csv.reader(f)) - 1  # rows, not lines: texts may hold newlines
    if n != len(texts):
        raise RuntimeError(f"loraclf predict wrote {n} rows for {len(texts)} texts")
    return len(texts) / seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="alias, path or hub id of the model to train")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="instead of --model: random weights of this size")
    ap.add_argument("--tokenizer", help="with --shape: whose vocabulary to use (alias or folder); default: MiniLM's "
                    "for encoder shapes, SmolLM2's for the llama shapes")
    ap.add_argument("--data", default="sst2")
    ap.add_argument("--train-samples", type=int, default=2000, help="0: the full train split")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--predict-rows", type=int, default=0, help="also time prediction over this many texts")
    ap.add_argument("--predict-batch", type=int, default=128, help="prediction batch size, the same for both sides")
    ap.add_argument("--peer-head", choices=["same", "default"], default="same",
                    help="same: the peer also trains the weights loraclf adds (e.g. an untrained pooler); "
                    "default: only PEFT's default head, as the notebooks do")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip-peer", action="store_true", help="run loraclf only")
    ap.add_argument("--peers", nargs="+", choices=["notebook", "tuned"], default=["notebook", "tuned"],
                    help="notebook: pad to max_length; tuned: group_by_length + DataCollatorWithPadding")
    ap.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                    help="a loraclf speed switch, e.g. train.compile=true (repeatable): "
                    + ", ".join(SPEED_SWITCHES))
    ap.add_argument("--predict-precision", default="bf16" if torch.cuda.is_available() else "fp32",
                    choices=["fp32", "bf16", "fp16"], help="loraclf's prediction precision (the peer uses fp16 on GPU)")
    args = ap.parse_args(argv)
    for item in args.set:
        if item.split("=", 1)[0].strip() not in SPEED_SWITCHES:
            ap.error(f"--set {item}: only speed switches keep the comparison fair ({', '.join(SPEED_SWITCHES)})")

    data = load_data(DataConfig(path=args.data, max_train_samples=args.train_samples or None,
                                max_length=args.max_length), args.seed)
    labels = data.labels.names
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape:
            model_path = str(build_shape(args.shape, args.tokenizer, Path(tmp) / "shape", args.seed))
            model_name = model_path
        else:
            model_path, model_name = resolve(args.model).path, args.model
        from transformers import AutoConfig

        targets = default_targets(AutoConfig.from_pretrained(model_path).model_type)
        res: dict = {"date": str(date.today()), "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                     else f"CPU ({os.cpu_count()} cores, torch {torch.__version__}, {platform.machine()})",
                     "model": args.shape or args.model, "data": args.data, "train_rows": len(data.splits["train"]),
                     "epochs": args.epochs, "batch": args.batch, "max_length": args.max_length,
                     "loraclf_overrides": args.set, "command": " ".join(sys.argv if argv is None else argv)}
        ours = loraclf_train(model_name, args.data, args.train_samples, args.epochs, args.batch, args.lr,
                             args.max_length, args.seed, tmp, targets, args.set)
        res["loraclf"] = {k: v for k, v in ours.items() if k != "run"}
        _release()
        peers = {}
        for kind in ([] if args.skip_peer else args.peers):
            _release()
            extra = [m for m in ours["modules_to_save"] if m not in ("classifier", "score")]
            peers[kind] = peer_train(model_path, data.splits["train"], data.splits["test"], labels, args.epochs,
                                     args.batch, args.lr, args.max_length, args.seed, f"{tmp}/peer-{kind}", targets,
                                     extra if args.peer_head == "same" else [], tuned=kind == "tuned")
            key = PEER_KEYS[kind]
            res[key] = {k: v for k, v in peers[kind].items() if k not in ("model", "tokenizer", "trainer")}
            res[f"train_speedup{SUFFIX[kind]}"] = ours["samples_per_s"] / peers[kind]["samples_per_s"]
        if args.predict_rows:
            pool = [t for s in data.splits.values() for t in s.texts]
            texts = (pool * (args.predict_rows // len(pool) + 1))[:args.predict_rows]
            res["predict_rows"] = len(texts)
            res["predict_batch"] = args.predict_batch
            res["loraclf"]["predict_per_s"] = loraclf_predict(ours["run"], texts, args.predict_precision,
                                                              args.predict_batch)
            res["loraclf"]["predict_cli_per_s"] = loraclf_predict_cli(ours["run"], texts, args.predict_precision,
                                                                      args.predict_batch, tmp)
            for kind, peer in peers.items():
                key, suffix = PEER_KEYS[kind], SUFFIX[kind]
                res[key]["predict_per_s"] = (
                    tuned_peer_predict(peer["trainer"], peer["tokenizer"], texts, args.max_length) if kind == "tuned"
                    else peer_predict(peer["model"], peer["tokenizer"], texts, args.predict_batch, args.max_length))
                res[f"predict_speedup{suffix}"] = res["loraclf"]["predict_per_s"] / res[key]["predict_per_s"]
                res[f"predict_cli_speedup{suffix}"] = res["loraclf"]["predict_cli_per_s"] / res[key]["predict_per_s"]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    _print_table(res, args.max_length)
    return res


PEER_KEYS = {"notebook": "peer", "tuned": "peer_tuned"}  # "peer" kept: earlier results and gpu.sh read it
SUFFIX = {"notebook": "", "tuned": "_tuned"}
PEER_NAMES = {"notebook": "peer: Trainer+PEFT, pad to {n} (notebook)",
              "tuned": "peer: Trainer+PEFT, group_by_length + dynamic padding (tuned)"}


def _print_table(res: dict, max_length: int) -> None:
    def cell(x: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if x is None else fmt.format(x)

    o = res["loraclf"]
    kinds = [k for k in PEER_KEYS if PEER_KEYS[k] in res]
    if not kinds:
        return
    print("\n| | samples/s | peak MB | test accuracy | predict texts/s |\n|---|---|---|---|---|")
    for kind in kinds:
        p = res[PEER_KEYS[kind]]
        print(f"| {PEER_NAMES[kind].format(n=max_length)} | {p['samples_per_s']:.1f} | {p['peak_mb']:.0f} | "
              f"{p['accuracy']:.4f} | {cell(p.get('predict_per_s'))} |")
    print(f"| loraclf | {o['samples_per_s']:.1f} | {o['peak_mb']:.0f} | {o['accuracy']:.4f} | "
          f"{cell(o.get('predict_per_s'))} |")
    for kind in kinds:
        p, sfx = res[PEER_KEYS[kind]], SUFFIX[kind]
        print(f"| ratio vs {kind} peer | {res['train_speedup' + sfx]:.2f}x | {o['peak_mb'] / p['peak_mb']:.2f}x | "
              f"{o['accuracy'] - p['accuracy']:+.4f} | {cell(res.get('predict_speedup' + sfx), '{:.2f}x')} |")
    if "predict_cli_per_s" in o:
        print(f"\n`loraclf predict` command over {res['predict_rows']:,} texts (start-up and loading included): "
              f"{o['predict_cli_per_s']:.1f} texts/s")


if __name__ == "__main__":
    main()
