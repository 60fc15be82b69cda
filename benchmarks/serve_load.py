"""Load test of `loraclf serve` on loopback: 1, 8 and 32 concurrent clients sending one text per
request, against the same model served with micro-batching and with max batch size 1, in one run.

    python benchmarks/serve_load.py --model runs/sst2-minilm --requests 2000 --seconds 20

Each server is a `loraclf serve` process (as users start it); the clients are asyncio tasks with one
httpx connection each, in this process. Every client count runs until `--requests` answers or
`--seconds` have passed, whichever comes first, after a short warm-up. Texts are SST-2 validation
sentences. Prints a Markdown table (throughput, p50 / p99 latency, errors); --json writes the numbers.

``--memory N`` instead measures memory: one server holding the N given LoRA runs on one shared base
against N servers of one merged model each (resident memory after one request to every model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIGS = {"micro-batching": ["--max-batch-size", "32", "--max-wait-ms", "5"],
           "batch size 1": ["--max-batch-size", "1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `loraclf serve` child process on a free loopback port."""

    def __init__(self, models: list[str], flags: list[str], timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
        # a file, not a pipe: a pipe nobody reads fills up and blocks the server on its next log line
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "loraclf", "serve", *models, "--port", str(self.port),
                                      "-q", *flags], env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError("server did not start in time")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        return kb * 1024 / 1e6

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, model: str | list[str], texts: list[str], clients: int, requests: int,
               seconds: float) -> dict:
    """`clients` concurrent clients, one text per request, until `requests` answers or `seconds` pass.
    With a list of models, request k goes to model k mod their number (spread uniformly)."""
    models = [model] if isinstance(model, str) else list(model)
    latencies: list[float] = []
    errors = server_errors = 0
    sent = 0
    stop_at = float("inf")  # set when the warm-up is over

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, server_errors, sent
        while sent < requests and time.monotonic() < stop_at:
            text, name = texts[(sent + i) % len(texts)], models[sent % len(models)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/classify", json={"model": name, "input": [text]})
                ok = r.status_code == 200
                server_errors += r.status_code >= 500
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        for _ in range(3):  # warm-up: connections and the first batches
            await asyncio.gather(*(http.post("/v1/classify", json={"model": models[j % len(models)],
                                                                   "input": [texts[j]]}) for j in range(clients)))
        stop_at = time.monotonic() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "throughput": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": errors,
            "errors_5xx": server_errors}


def throughput_table(rows: list[dict]) -> str:
    out = ["| server | clients | requests | req/s | p50 (ms) | p99 (ms) | errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['server']} | {r['clients']} | {r['requests']:,} | {r['throughput']:,.1f} "
                   f"| {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['errors']} |")
    return "\n".join(out)


def run_load(args, texts: list[str]) -> list[dict]:
    rows = []
    for name, flags in CONFIGS.items():
        server = Server([f"m={args.model}"], flags + args.server_flag)
        try:
            for c in args.clients:
                r = {"server": name, **asyncio.run(load(server.url, "m", texts, c, args.requests, args.seconds))}
                print(json.dumps(r), file=sys.stderr)
                rows.append(r)
        finally:
            server.stop()
    return rows


def run_memory(args) -> dict:
    """One server with every run on a shared base against one merged server per run (RSS, MB)."""
    names = [f"m{i}={p}" for i, p in enumerate(args.memory)]

    def warm(server: Server, models: list[str]) -> None:
        for m in models:
            httpx.post(server.url + "/v1/classify", json={"model": m, "input": ["a fine film"]}, timeout=60)

    shared = Server(names, [])
    try:
        warm(shared, [n.split("=")[0] for n in names])
        shared_mb = shared.rss_mb()
    finally:
        shared.stop()
    servers = []
    try:  # all N separate servers up at once, as they would run side by side
        for n in names:
            servers.append(Server([n], ["--no-share-base"]))
            warm(servers[-1], [n.split("=")[0]])
        separate = [s.rss_mb() for s in servers]
    finally:
        for s in servers:
            s.stop()
    return {"n": len(names), "shared_rss_mb": round(shared_mb, 1), "separate_rss_mb": [round(x, 1) for x in separate],
            "separate_total_mb": round(sum(separate), 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/sst2-minilm", help="run directory, artifact or export to serve")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LORACLF_DATASETS", "../shared/datasets")) / "sst2")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2000, help="answers per client count (at most)")
    p.add_argument("--seconds", type=float, default=20.0, help="time per client count (at most)")
    p.add_argument("--server-flag", action="append", default=[], help="extra `loraclf serve` flag (repeatable)")
    p.add_argument("--memory", nargs="+", metavar="RUN", help="measure memory of these LoRA runs instead")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    env = {"date": date.today().isoformat(), "python": platform.python_version(), "cpus": os.cpu_count()}
    if args.memory:
        out = {"env": env, "memory": run_memory(args)}
        print(json.dumps(out["memory"], indent=2))
    else:
        import pandas as pd

        texts = pd.read_csv(args.data / "validation.csv", keep_default_na=False)["text"].astype(str).tolist()
        rows = run_load(args, texts)
        out = {"env": env, "model": args.model, "rows": rows}
        print(throughput_table(rows))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
