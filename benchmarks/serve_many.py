"""Many LoRA classifiers behind one `loraclf serve`: mixed batches, eviction under load, memory per adapter.

    python benchmarks/serve_many.py --work runs/serve-many --seconds 20 --json serve_many.json

Three adapters are trained on the bundled MiniLM, one per task: single-label (SST-2, 2 labels),
multi-label (GoEmotions, 28 labels) and regression (TweetEval sentiment as a score -1/0/1), on
--train-rows rows each, one epoch. Each is copied into ten adapters whose LoRA and head weights carry
a seeded perturbation (so each computes other outputs, at the same cost): 30 adapters of three tasks,
and 100 for the eviction row. Throughput does not depend on the weights' values, only on their shapes.

Rows (one `loraclf serve --models-dir` process each, 32 concurrent single-text clients on loopback,
each row until --requests answers or --seconds, after a warm-up):
- one adapter: every request to one adapter;
- 30 adapters: requests spread uniformly over the 30 (mixed batches on the shared base);
- 30 adapters, --no-share-base: the same spread with each model merged into its own base (each
  model's rows in its own forward pass: what per-model batching gives);
- 100 adapters, --max-loaded 20: spread over 100 with at most 20 in memory (eviction under load).
Then the offline batched throughput of the same single-label adapter (Classifier.predict_proba, batch
32, as `loraclf predict`) in this process, and the server's resident memory after one request to each
of N = 1, 10, 30, 100 adapters against base + N x adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Server, load  # noqa: E402

DATA = Path(os.environ.get("LORACLF_DATASETS", "../shared/datasets"))
TASKS = {  # name: (dataset, overrides)
    "single": ("sst2", {}),
    "multi": ("go_emotions", {"task": "multi-label", "data.label_column": "labels"}),
    "score": (None, {"task": "regression"}),
}


def score_data(work: Path) -> Path:
    """TweetEval sentiment as a score (-1, 0, 1): a single-text regression set."""
    import pandas as pd

    out = work / "data-score"
    out.mkdir(parents=True, exist_ok=True)
    scores = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    for split in ("train", "validation", "test"):
        df = pd.read_csv(DATA / "tweet_eval_sentiment" / f"{split}.csv", keep_default_na=False)
        df.assign(label=df["label"].map(scores)).to_csv(out / f"{split}.csv", index=False)
    return out


def train_bases(work: Path, rows: int) -> dict[str, Path]:
    """The three trained adapters (reused when already in `work`)."""
    import loraclf

    runs = {}
    for name, (dataset, extra) in TASKS.items():
        path = work / "trained" / name
        if not (path / "artifact" / "loraclf.json").exists():
            data = DATA / dataset if dataset else score_data(work)
            over = {"model.name": "minilm", "data.path": str(data), "output_dir": str(work / "trained"), "name": name,
                    "train.epochs": 1, "data.max_train_samples": rows, "data.max_eval_samples": 200,
                    "data.max_test_samples": 200, "report.enabled": False, "train.recipe": "standard", **extra}
            loraclf.train(None, [f"{k}={v}" for k, v in over.items()], quiet=True)
        runs[name] = path / "artifact"
    return runs


def perturbed_copy(src: Path, dest: Path, seed: int, scale: float = 0.05) -> None:
    """An adapter like `src` with seeded noise on every trained tensor: the same shapes, other outputs."""
    import torch
    from safetensors.torch import load_file, save_file

    if (dest / "loraclf.json").exists():
        return
    shutil.copytree(src, dest, dirs_exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(str(src / "adapter_model.safetensors"))
    noisy = {k: (t + scale * t.float().std() * torch.randn(t.shape, generator=gen)).to(t.dtype) if t.numel() > 1
             else t for k, t in weights.items()}
    save_file(noisy, str(dest / "adapter_model.safetensors"))


def models_dir(work: Path, runs: dict[str, Path], n: int) -> tuple[Path, list[str]]:
    """A folder of n adapters, the three tasks in turn."""
    root = work / f"models-{n}"
    names = []
    kinds = list(runs)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name = f"{kind}-{i:03d}"
        perturbed_copy(runs[kind], root / name, seed=i)
        names.append(name)
    return root, names


def offline_throughput(art: Path, texts: list[str], n: int = 2000) -> float:
    import loraclf

    clf = loraclf.load(art)
    sample = [texts[i % len(texts)] for i in range(n)]
    clf.predict_proba(sample[:64], batch_size=32)  # warm-up
    t0 = time.perf_counter()
    clf.predict_proba(sample, batch_size=32)
    return n / (time.perf_counter() - t0)


async def http_ceiling(url: str, clients: int, seconds: float) -> float:
    """Requests/s of the HTTP stack alone on this machine (GET /health, no inference): the clients and
    the server share the cores, so this bounds any load test of the server here."""
    done, stop_at = 0, time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            (await http.get("/health")).raise_for_status()
            done += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return done / (time.perf_counter() - t0)


def warm_all(server: Server, names: list[str]) -> None:
    for name in names:
        r = httpx.post(server.url + "/v1/classify", json={"model": name, "input": ["a fine film"]}, timeout=120)
        r.raise_for_status()


def load_rows(args, work: Path, runs: dict[str, Path], texts: list[str]) -> list[dict]:
    n, many, cap = args.adapters, args.many, args.max_loaded
    dn, names = models_dir(work, runs, n)
    dmany, names_many = models_dir(work, runs, many)
    plans = [  # (row, folder, flags, models the clients spread over)
        (f"one adapter (of {n} served)", dn, [], [names[0]]),
        (f"{n} adapters, uniform", dn, [], names),
        (f"{n} adapters, uniform, --no-share-base", dn, ["--no-share-base"], names),
        (f"{many} adapters, uniform, --max-loaded {cap}", dmany, ["--max-loaded", str(cap)], names_many),
    ]
    rows = []
    for row, folder, flags, spread in plans:
        server = Server(["--models-dir", str(folder)], ["--max-batch-size", "32", "--max-wait-ms", "5", *flags])
        try:
            if "--max-loaded" not in flags:
                warm_all(server, spread)  # loading is not what this row measures; eviction rows load under load
            if not rows:  # once: what HTTP alone allows on these cores
                args.http_ceiling = round(asyncio.run(http_ceiling(server.url, args.clients, args.seconds / 2)), 1)
            r = asyncio.run(load(server.url, spread, texts, args.clients, args.requests, args.seconds))
            metrics = httpx.get(server.url + "/metrics", timeout=30).text
            r.update({"server": row, "adapters": len(spread), "rss_mb": round(server.rss_mb(), 1),
                      "server_errors_logged": server.stderr().count("inference failed"), **_gauges(metrics)})
        except Exception:
            print(f"row {row!r} failed; the server said:\n{server.stderr()[-3000:]}", file=sys.stderr)
            raise
        finally:
            server.stop()
        print(json.dumps(r), file=sys.stderr)
        rows.append(r)
    return rows


def _gauges(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("loraclf_model_loads", "loraclf_model_evictions", "loraclf_model_refills"):
                out[s.name.replace("loraclf_model_", "")] = int(s.value)
            if s.name == "loraclf_batch_models_sum":
                out["models_per_batch_sum"] = s.value
            if s.name == "loraclf_batch_models_count":
                out["batches"] = int(s.value)
    if out.get("batches"):
        out["models_per_batch"] = round(out.pop("models_per_batch_sum") / out["batches"], 2)
    return out


def memory_rows(work: Path, runs: dict[str, Path], ns: list[int]) -> list[dict]:
    """Server RSS after one request to each of N adapters; the prediction is RSS(1) + (N-1) x adapter,
    with the adapter's size as its weights file (fp32 tensors held once in memory)."""
    rows = []
    for n in ns:
        folder, names = models_dir(work, runs, max(ns))
        server = Server(["--models-dir", str(folder)], [])
        try:
            warm_all(server, names[:n])
            rows.append({"n": n, "rss_mb": round(server.rss_mb(), 1),
                         "adapter_mb": round(np.mean([(folder / m / "adapter_model.safetensors").stat().st_size
                                                      for m in names[:n]]) / 1e6, 2)})
        finally:
            server.stop()
        print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]["rss_mb"] - rows[0]["adapter_mb"]
    for r in rows:
        r["predicted_mb"] = round(base + r["n"] * r["adapter_mb"], 1)
        r["ratio"] = round(r["rss_mb"] / r["predicted_mb"], 3)
    return rows


def tables(out: dict) -> str:
    lines = ["| server | adapters | requests | req/s | vs one adapter | p50 (ms) | p99 (ms) | errors | 5xx "
             "| models per batch | loads | evictions | RSS (MB) |", "|---" * 13 + "|"]
    one = out["load"][0]["throughput"]
    for r in out["load"]:
        lines.append(f"| {r['server']} | {r['adapters']} | {r['requests']:,} | {r['throughput']:,.1f} "
                     f"| {r['throughput'] / one:.2f}x | {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['errors']} "
                     f"| {r['errors_5xx']} | {r.get('models_per_batch', '')} | {r.get('loads', '')} "
                     f"| {r.get('evictions', '')} | {r['rss_mb']:,.0f} |")
    off = out["offline_texts_per_s"]
    lines += ["", f"offline batched throughput of the one-adapter row's model (predict_proba, batch 32): {off:,.1f} "
              f"texts/s; one-adapter server {one / off:.2f}x of it, {out['load'][1]['adapters']}-adapter server "
              f"{out['load'][1]['throughput'] / off:.2f}x; the HTTP stack alone (GET /health, {out['args']['clients']} "
              f"clients on the same cores): {out['http_ceiling_req_per_s']:,.1f} req/s", "",
              "| adapters loaded | RSS (MB) | base + N x adapter (MB) | ratio |", "|---|---|---|---|"]
    for r in out["memory"]:
        lines.append(f"| {r['n']} | {r['rss_mb']:,.1f} | {r['predicted_mb']:,.1f} | {r['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/serve-many"), help="trained adapters and their copies")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--runs", nargs="+", metavar="KIND=RUN", help="use these trained runs instead of training")
    p.add_argument("--texts", type=Path, default=DATA / "sst2" / "validation.csv", help="CSV with a text column")
    p.add_argument("--adapters", type=int, default=30)
    p.add_argument("--many", type=int, default=100, help="adapters of the eviction row")
    p.add_argument("--max-loaded", type=int, default=20, help="--max-loaded of the eviction row")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=3000, help="answers per row (at most)")
    p.add_argument("--seconds", type=float, default=20.0, help="time per row (at most)")
    p.add_argument("--memory-n", type=int, nargs="+", default=[1, 10, 30, 100])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import pandas as pd

    texts = pd.read_csv(args.texts, keep_default_na=False)["text"].astype(str).tolist()
    if args.runs:
        runs = {k: Path(v) / "artifact" if (Path(v) / "artifact").is_dir() else Path(v)
                for k, v in (r.split("=", 1) for r in args.runs)}
    else:
        runs = train_bases(args.work, args.train_rows)
    out = {"env": {"date": date.today().isoformat(), "python": platform.python_version(), "cpus": os.cpu_count()},
           "args": {k: str(v) for k, v in vars(args).items()}}
    args.http_ceiling = None
    out["load"] = load_rows(args, args.work, runs, texts)
    out["http_ceiling_req_per_s"] = args.http_ceiling
    first = args.work / f"models-{args.adapters}" / f"{next(iter(runs))}-000"  # the one-adapter row's model
    out["offline_texts_per_s"] = round(offline_throughput(first, texts), 1)
    out["memory"] = memory_rows(args.work, runs, args.memory_n)
    print(tables(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
