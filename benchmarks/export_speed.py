"""Prediction speed of one trained classifier three ways, side by side in one run: PyTorch fp32
(``loraclf.load``, LoRA merged), its ONNX fp32 export and its ONNX int8 export (fused graph, onnxruntime's
dynamic quantizer; deploy/exporters/onnx.py), each through ``loraclf.load(...).predict_proba`` (same
tokenisation, same length-sorted batches).

    python benchmarks/export_speed.py --run runs/sst2-minilm --rows 25000
    python benchmarks/export_speed.py --run runs/sst2-minilm --rows 5000 --repeats 3

Speed: the three are loaded side by side in one process and predict the same `--rows` texts (SST-2
train texts in file order) in turns, chunk by chunk, so other work on the machine slows them alike.
`--repeats N` measures that N times over (each a full pass over the texts) and reports every pass's
ratio to PyTorch, min and max. Memory and accuracy: for each variant a fresh child process loads the
model, scores the SST-2 test split (872 rows) and predicts 5,000 texts, so each peak RSS is that
variant's alone. Prints a Markdown table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import loraclf  # noqa: E402
from loraclf.deploy.export import export  # noqa: E402

VARIANTS = ("pytorch-fp32", "onnx-fp32", "onnx-int8")


def read_split(data: Path, split: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    df = pd.read_csv(data / f"{split}.csv", keep_default_na=False)
    return df["text"].astype(str).tolist(), df["label"].astype(str).tolist()


def corpus(data: Path, rows: int) -> list[str]:
    """`rows` texts: SST-2 train in file order (60,610 rows), repeated if more are asked for."""
    texts, _ = read_split(data, "train")
    return (texts * (rows // len(texts) + 1))[:rows]


def weights_mb(path: Path, meta: dict) -> float:
    """Bytes of weights the variant loads: the export's graph, or for PyTorch the base model's weight
    files plus the adapter (what `loraclf.load` reads)."""
    files = [p for p in path.iterdir() if p.suffix in (".onnx", ".safetensors", ".bin", ".data")]
    if meta.get("method") == "lora":
        from loraclf.models import resolve

        base = Path(resolve(meta["base_model"], quiet=True).path)
        files += [p for p in base.iterdir() if p.suffix in (".safetensors", ".bin")]
    return sum(p.stat().st_size for p in files) / 1e6


def child(variant: str, path: Path, data: Path, rows: int, batch: int) -> dict:
    """Memory and accuracy of one variant, in a fresh process: load, score the test split, predict `rows`."""
    from loraclf.training.memory import PeakMemory

    mem = PeakMemory.start()
    t0 = time.perf_counter()
    clf = loraclf.load(path, device="cpu")
    load_s = time.perf_counter() - t0
    test_texts, gold = read_split(data, "test")
    pred = clf.predict(test_texts, batch_size=batch)
    accuracy = sum(p == g for p, g in zip(pred, gold)) / len(gold)
    clf.predict_proba(corpus(data, rows), batch_size=batch)
    art = loraclf.schema.artifact_dir(path)
    return {"variant": variant, "load_s": round(load_s, 2), "peak_rss_mb": mem.read()["peak_rss_mb"],
            "weights_mb": round(weights_mb(art, clf.meta), 1), "test_accuracy": round(accuracy, 4),
            "test_n": len(gold)}


def run_child(variant: str, path: Path, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--child", variant, "--path", str(path), "--data", str(args.data),
           "--rows", str(min(args.rows, 5000)), "--batch", str(args.batch), "--json", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    res = json.loads(out.read_text())
    out.unlink()
    return res


def speed(paths: dict[str, Path], texts: list[str], batch: int, rounds: int) -> dict[str, dict]:
    """texts/s of every variant, loaded side by side in this process and run in turns over the same
    chunks (the order rotating each round), so a change in the machine's load hits them all alike."""
    clfs = {v: loraclf.load(p, device="cpu") for v, p in paths.items()}
    for clf in clfs.values():  # warm-up: first-call allocations and onnxruntime's lazy initialisation
        clf.predict_proba(texts[:batch], batch_size=batch)
    seconds = dict.fromkeys(clfs, 0.0)
    size = -(-len(texts) // rounds)
    order = list(clfs)
    load_before = os.getloadavg()[0]
    for i in range(rounds):
        chunk = texts[i * size:(i + 1) * size]
        for v in order[i % len(order):] + order[:i % len(order)]:
            t0 = time.perf_counter()
            clfs[v].predict_proba(chunk, batch_size=batch)
            seconds[v] += time.perf_counter() - t0
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return {v: {"seconds": round(s, 2), "texts_per_s": round(len(texts) / s, 1), "loadavg_1min": load}
            for v, s in seconds.items()}


def exports(run: Path, work: Path) -> dict[str, tuple[Path, float]]:
    """The ONNX exports (made once, kept under `work`) and how long each export took."""
    made: dict[str, tuple[Path, float]] = {"pytorch-fp32": (run, 0.0)}
    for variant, quantize in (("onnx-fp32", None), ("onnx-int8", "int8")):
        dest = work / variant
        t0 = time.perf_counter()
        if not (dest / "loraclf.json").exists():
            export(run, dest, "onnx", quantize=quantize)
        made[variant] = (dest, round(time.perf_counter() - t0, 1))
    return made


def table(results: list[dict]) -> str:
    base = results[0]
    lines = ["| | texts/s | vs PyTorch | peak RSS (MB) | weights on disk (MB) | test accuracy (872) | "
             "accuracy vs PyTorch (points) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['texts_per_s']:,.1f} | {r['texts_per_s'] / base['texts_per_s']:.2f}x | "
                     f"{r['peak_rss_mb']:,.0f} | {r['weights_mb']:,.1f} | {r['test_accuracy']:.4f} | "
                     f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/sst2-minilm", help="a run directory or artifact (a classifier head)")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LORACLF_DATASETS", "../shared/datasets")) / "sst2")
    p.add_argument("--rows", type=int, default=25000)
    p.add_argument("--batch", type=int, default=128, help="prediction batch size (loraclf predict's default)")
    p.add_argument("--rounds", type=int, default=10, help="turns the variants take over the texts")
    p.add_argument("--repeats", type=int, default=1, help="speed passes over the texts (each reported)")
    p.add_argument("--work", type=Path, default=Path(".bench/export"), help="where the exports are kept")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        res = child(args.child, args.path, args.data, args.rows, args.batch)
        args.json.write_text(json.dumps(res))
        return res
    import onnxruntime
    import torch

    made = exports(Path(args.run), args.work)
    results = []
    for variant in VARIANTS:
        r = run_child(variant, made[variant][0], args)
        r["export_s"] = made[variant][1]
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    passes = [speed({v: made[v][0] for v in VARIANTS}, corpus(args.data, args.rows), args.batch, args.rounds)
              for _ in range(args.repeats)]
    for r in results:
        v = r["variant"]
        r.update(passes[0][v], rows=args.rows)  # texts/s of the first pass; every pass below
        r["passes"] = [t[v] for t in passes]
        r["speedup_passes"] = [round(t[v]["texts_per_s"] / t["pytorch-fp32"]["texts_per_s"], 3) for t in passes]
    env = {"date": date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(), "processor": platform.processor()}
    out = {"run": str(args.run), "rows": args.rows, "batch": args.batch, "env": env, "results": results}
    print(table(results))
    if args.repeats > 1:
        for r in results[1:]:
            ups = r["speedup_passes"]
            print(f"{r['variant']}: {args.repeats} passes, vs PyTorch {min(ups):.2f}x-{max(ups):.2f}x "
                  f"({', '.join(f'{u:.2f}x' for u in ups)})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
