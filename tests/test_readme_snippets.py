"""Every snippet in the README runs, offline, and gives loraclf's outputs.

Each fenced ```python and ```bash block is taken from README.md as written. Placeholders are filled in
(`runs/<run>` is a real run of the bundled MiniLM made by the README's own `loraclf.fit` snippet, input
files are written, the server gets a free port), and commands that train get small caps appended so the
whole README runs in a few minutes (see CAPS). A command that cannot run here (GPUs, the network, the
test suite itself) is listed in SKIPPED with its reason; any other snippet that is added to the README
and not run here makes the test fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import loraclf
from conftest import DATASETS, REPO, free_cores
from loraclf.cli import main

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BIN = Path(sys.executable).parent
# Appended to every command that trains: a few rows, one epoch (the last --set wins).
CAPS = ["--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=32", "--set",
        "data.max_test_samples=32", "--set", "train.epochs=1", "--set", "train.eval_batch_size=64"]
DECODER_CAPS = ["--set", "data.max_train_samples=16", "--set", "data.max_eval_samples=16", "--set",
                "data.max_test_samples=16"]  # SmolLM2-135M trains at a few texts a second here
SKIPPED = {
    "make demo": "the quickstart (3-4 minutes); tests/test_recipes.py validates examples/quickstart.yaml",
    "make test": "the test suite that runs this test (what CI runs)",
    "pip install": "installation: `make install` does it in CI",
    "accelerate launch": "needs GPUs (or an Accelerate config); tests/training/test_distributed.py runs CPU DDP",
    "torchrun": "CPU DDP with torchrun is tested by tests/training/test_distributed.py",
    "--data ag_news --model roberta-base": "downloads roberta-base from the Hugging Face hub (no network here)",
    "--resume": "needs an interrupted run: tests/training/test_checkpoint.py kills and resumes real runs",
    "data.long_text=chunks": "5,000 IMDB reviews at 128 tokens take 30 minutes on 2 cores: "
                             "tests/training/test_long_text.py trains every strategy on a tiny model, "
                             "benchmarks/long_documents.py runs this one",
    "--storage postgresql://": "needs a PostgreSQL server: tests/studies/test_search_postgres.py starts one and runs "
                               "two search workers against it",
}


def snippets(kind: str, doc: Path = README) -> list[tuple[int, str]]:
    """(line, code) of every ```kind block of the README (or another Markdown file)."""
    text = doc.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(rf"```{kind}\n(.*?)```", text, re.S)]


def commands(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def skip_reason(cmd: str):
    return next((why for key, why in SKIPPED.items() if key in cmd), None)


@pytest.fixture(scope="module", autouse=True)
def absolute_datasets():
    """The commands run in a working folder of their own: $LORACLF_DATASETS (relative in CI) made absolute."""
    before = os.environ.get("LORACLF_DATASETS")
    os.environ["LORACLF_DATASETS"] = str(DATASETS.resolve())
    yield
    if before is None:
        os.environ.pop("LORACLF_DATASETS", None)
    else:
        os.environ["LORACLF_DATASETS"] = before


@pytest.fixture(scope="module", autouse=True)
def both_cores():
    """The README's commands run as a user runs them, on every core this test may use (conftest keeps tiny-model
    tests to one; under xdist the other worker holds the other core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, free_cores()))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working folder laid out as the README assumes: input files, a config, small datasets."""
    root = tmp_path_factory.mktemp("readme")
    sst2 = pd.read_csv(DATASETS / "sst2" / "test.csv")
    sst2.head(20).to_csv(root / "reviews.csv", index=False)
    sst2.head(20).to_csv(root / "test.csv", index=False)
    sst2.head(20).to_csv(root / "texts.csv", index=False)
    sst2.head(5).assign(id=range(5))[["id", "text"]].to_csv(root / "unlabelled.csv", index=False)
    (root / "texts.txt").write_text("\n".join(sst2.text.head(5)) + "\n", encoding="utf-8")
    (root / "my.yaml").write_text("data: {path: sst2, max_train_samples: 64, max_eval_samples: 32, "
                                  "max_test_samples: 32}\ntrain: {epochs: 1}\n", encoding="utf-8")
    forty = pd.read_csv(DATASETS / "sst2" / "train.csv").groupby("label").head(20)
    for name in ("my-40-texts", "my-data"):
        (root / name).mkdir()
        forty.to_csv(root / name / "train.csv", index=False)
    return root


def _python(code: str, cwd: Path, ns: dict) -> str:
    """Run a README Python block in `cwd` with the namespace `ns`; returns what it printed."""
    code = code.replace("../shared/datasets", str(DATASETS.resolve()))
    out = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own code
    finally:
        os.chdir(old)
    return out.getvalue()


@pytest.fixture(scope="module")
def fitted(work):
    """The README's `loraclf.fit` block, run as written (2,000 SST-2 sentences on the bundled MiniLM)."""
    (line, code), = [s for s in snippets("python") if "loraclf.fit(" in s[1]]
    ns: dict = {}
    _python(code, work, ns)
    return ns


def test_the_fit_snippet_trains_and_its_outputs_agree(fitted):
    clf, test = fitted["clf"], fitted["test"]
    assert clf.run.metrics["test"]["n"] == len(test) == 872
    assert clf.run.metrics["test"]["accuracy"] > 0.62  # chance is 0.51; 0.68 measured (one epoch, 2,000 rows)
    probs = clf.predict_proba(["a gripping, funny film"])
    assert clf.predict(["a gripping, funny film"]) == [clf.labels[int(np.argmax(probs[0]))]]
    assert clf.evaluate(test)["accuracy"] == pytest.approx(clf.run.metrics["test"]["accuracy"], abs=1e-9)
    # the quickstart's "real output" has the columns and lines a single-label run prints
    from loraclf.training.run import results_table

    shown = README.read_text(encoding="utf-8").split("ends with this table")[1].split("```")[1].strip().splitlines()
    printed = results_table(clf.run.metrics).splitlines()
    assert shown[0].split() == printed[0].split() and [ln.split(":")[0] for ln in shown[3:7]] == [
        ln.split(":")[0] for ln in printed[3:7]]
    saved = loraclf.load(Path(clf.run.path).parent.parent / "sst2-minilm")  # the block's save_pretrained
    assert (saved.predict_proba(["dull"]) == clf.predict_proba(["dull"])).all()


def _fill(cmd: str, work: Path, run: Path, port: int) -> str:
    cmd = cmd.replace(".venv/bin/loraclf", "loraclf").replace("runs/<run>", str(run))
    cmd = re.sub(r"(?<=\s)(examples|recipes)/", lambda m: f"{REPO}/{m.group(1)}/", cmd)
    cmd = cmd.replace("runs/<zero-shot run>", "runs/zero-shot").replace("runs/<lora run>", "runs/lora")
    return cmd.replace("--port 8000", f"--port {port}").replace("localhost:8000", f"localhost:{port}")


def _named(argv: list[str], i: int) -> list[str]:
    """A train command's run gets a name the later commands use (runs/a, runs/b, ..., the two SmolLM2 runs)."""
    if argv[:2] != ["loraclf", "train"] or "--name" in argv:
        return argv
    name = "zero-shot" if "method=zero-shot" in " ".join(argv) else (
        "lora" if "smollm2" in " ".join(argv) else f"t{i}")
    return argv + ["--set", f"name={name}"]


def _run_cli(cmd: str, i: int) -> None:
    argv = shlex.split(cmd)
    assert argv[0] == "loraclf", cmd
    trains = argv[1] in ("train", "sweep", "search", "audit")
    extra = (CAPS if trains else []) + (DECODER_CAPS if "smollm2" in cmd else [])
    extra += {"search": ["--trials", "2"], "sweep": ["--in-process"]}.get(argv[1], [])  # one process: no re-import
    assert main(_named(argv, i)[1:] + extra) == 0, cmd


def _run_shell(cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_named_runs(work: Path) -> None:
    """runs/a, runs/b, runs/c and runs/sweep-folder/ for the report and compare commands (copies of the runs
    the train commands made)."""
    def comparable(p: Path) -> bool:  # single runs (no cross-validation) of one task
        return (p / "metrics.json").exists() and json.loads((p / "metrics.json").read_text()).get(
            "test", {}).get("accuracy") is not None

    runs = sorted(p for p in (work / "runs").iterdir() if p.name.startswith("t") and comparable(p))
    for name, src in zip("abc", runs + runs):
        if not (work / "runs" / name).exists():
            shutil.copytree(src, work / "runs" / name)
    for name in "ab":  # a folder of finished runs, as a sweep leaves (the README shows `report` before `sweep`)
        if not (work / "runs" / "sweep-folder" / name).exists():
            shutil.copytree(work / "runs" / name, work / "runs" / "sweep-folder" / name)


@contextlib.contextmanager
def _serving(cmd: str, cwd: Path, port: int):
    import httpx

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", "-c", f"exec {cmd} -q"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("the server did not start in 120 s")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_command_and_snippet_runs(fitted, work, monkeypatch):
    """README order: every bash command (CLI in process, pipes and curl in bash), then the Python blocks that
    need its outputs (exports, the server), each checked against loraclf's own outputs."""
    monkeypatch.chdir(work)
    clf, run, port = fitted["clf"], fitted["clf"].run.path, _free_port()
    seen, i = [], 0
    for line, code in snippets("bash"):
        for cmd in commands(code):
            if skip_reason(cmd):
                continue
            cmd = _fill(cmd, work, run, port)
            t0 = time.perf_counter()
            if cmd.startswith("loraclf report runs/a") or cmd.startswith("loraclf report runs/sweep"):
                _prepare_named_runs(work)
            if cmd.startswith("loraclf compare runs/a"):
                _prepare_named_runs(work)
            if cmd.startswith("loraclf serve"):
                seen.append(("serve", line))
                with _serving(cmd, work, port):
                    _check_server_snippets(work, clf, port)
            elif cmd.startswith("curl"):
                continue  # run inside the server's block above
            elif "|" in cmd:
                out = _run_shell(cmd, work)
                assert out.splitlines()[0].startswith("text,label"), cmd
            else:
                i += 1
                _run_cli(cmd, i)
            seen.append((cmd, line))
            print(f"README:{line} {time.perf_counter() - t0:.1f} s {cmd}")  # what each costs (pytest -s)
    assert any(c == "serve" for c, _ in seen) and i >= 15
    _check_python_blocks(work, clf, monkeypatch)
    _check_deploy_doc(work)
    assert not [c for c, _ in seen if "<" in c and ">" in c and "|" not in c], "a placeholder left unfilled"


def _check_server_snippets(work: Path, clf, port: int) -> None:
    (curl,) = [c for _, code in snippets("bash") for c in commands(code) if c.startswith("curl")]
    body = json.loads(_run_shell(_fill(curl, work, Path("."), port), work))
    assert body["results"][0]["label"] == clf.predict(["a gripping, funny film"])[0]
    assert body["results"][0]["score"] == pytest.approx(float(clf.predict_proba(["a gripping, funny film"]).max()),
                                                        abs=1e-4)
    (code,) = [c for _, c in snippets("python") if "httpx" in c]
    printed = _python(code.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), work, {})
    assert printed.strip() == clf.predict(["dull"])[0]


def _check_python_blocks(work: Path, clf, monkeypatch) -> None:
    """The blocks after the commands: the config-file API, plain PEFT, pipeline() on the hf export."""
    for line, code in snippets("python"):
        code = code.replace("runs/<run>", str(clf.run.path))
        if "loraclf.fit(" in code or "httpx" in code:
            continue  # run above
        ns: dict = {}
        if "push_to_hub" in code:
            _offline_hub(ns, monkeypatch)
        printed = _python(code, work, ns)
        if "PeftModel" in code:
            _same_as_loraclf(ns, printed, clf, line)
        elif "pipeline(" in code:
            out = eval("pipeline('text-classification', model='exports/hf')(['a gripping, funny film'])",  # noqa: S307
                       ns)
            probs = clf.predict_proba(["a gripping, funny film"])[0]
            assert out[0]["label"] == clf.labels[int(probs.argmax())] and out[0]["score"] == pytest.approx(
                float(probs.max()), abs=1e-4)
        elif "loraclf.train(" in code:
            assert ns["clf"].labels == ["negative", "positive"] and ns["run"].metrics["test"]["n"] == 32


def _offline_hub(ns: dict, monkeypatch) -> None:
    """push_to_hub up to the HfApi boundary: there is no network here."""
    import huggingface_hub

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            ns.setdefault("_pushed", []).append(repo_id)

        def upload_folder(self, folder_path, repo_id, **kw):
            assert (Path(folder_path) / "loraclf.json").exists()
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)


def _same_as_loraclf(ns: dict, printed: str, clf, line: int) -> None:
    """The plain PEFT block: its answer (and probabilities, when it computes them) are loraclf's."""
    text = ns.get("texts", ["great film"])
    if "probs" in ns:
        got = np.asarray(ns["probs"].detach() if hasattr(ns["probs"], "detach") else ns["probs"], dtype=float)
        assert np.allclose(got.reshape(-1, len(clf.labels)), clf.predict_proba(text), atol=1e-4), f"README:{line}"
    assert printed.split()[0] == clf.predict(text)[0], f"README:{line}"


def test_the_notebook_example_compiles_and_calls_the_api_the_readme_runs():
    """examples/python_api.py walks through the calls the README's fit block makes (run above, with the real
    model); here it must at least compile and call nothing the API lacks."""
    import ast

    tree = ast.parse((REPO / "examples" / "python_api.py").read_text(encoding="utf-8"))
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    for name in {"fit", "from_pretrained"} & called:
        assert hasattr(loraclf, name)
    for name in {"predict", "predict_proba", "evaluate", "save_pretrained"}:
        assert name in called and hasattr(loraclf.Classifier, name)


def _check_deploy_doc(work: Path) -> None:
    """docs/deploy.md's copy-paste snippets for the exports (pipeline() on the hf export, onnxruntime on the
    ONNX one) give loraclf's probabilities of the export, on the exports the README's commands made."""
    blocks = [code for _, code in snippets("python", REPO / "docs" / "deploy.md")]
    (onnx,) = [c for c in blocks if "InferenceSession" in c]
    ns: dict = {}
    _python(onnx.replace("exports/sst2-onnx", "exports/onnx"), work, ns)
    want = loraclf.load(work / "exports" / "onnx").predict_proba(ns["texts"])
    assert np.allclose(ns["probs"], want, atol=1e-4)
    (hf,) = [c for c in blocks if "pipeline(" in c and "exports/sst2-hf" in c]
    ns = {}
    _python(hf.replace("exports/sst2-hf", "exports/hf"), work, ns)
    out = ns["clf"](["a gripping, funny film"], top_k=None, truncation=True)
    got = {d["label"]: d["score"] for d in (out[0] if isinstance(out[0], list) else out)}
    clf = loraclf.load(work / "exports" / "hf")
    want = clf.predict_proba(["a gripping, funny film"])[0]
    assert all(abs(got[name] - want[i]) < 1e-4 for i, name in enumerate(clf.labels))
