"""Remote data through fsspec, against a real HTTP server on loopback: train, evaluate and predict read
https?:// inputs, and predict/evaluate outputs are uploaded whole (data/remote.py)."""

from __future__ import annotations

import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import loraclf
from conftest import tiny_overrides
from loraclf.cli import main
from loraclf.data.remote import _basename, is_url
from loraclf.errors import DataError, EnvironmentError_


class _Handler(SimpleHTTPRequestHandler):
    """GET serves the folder; POST/PUT store the body under the path (how fsspec's HTTP put_file uploads)."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        parts = []  # aiohttp streams a file upload in chunks
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _store(self):
        body = self._body()
        if self.path.startswith("/refuse/"):  # a server that refuses the upload
            self.send_response(500)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        dest = Path(self.directory) / self.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(body)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_POST = do_PUT = _store


@pytest.fixture
def http_root(tmp_path):
    """(folder served, base URL) of a real HTTP server on 127.0.0.1, stopped after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_urls_are_told_from_paths():
    assert is_url("s3://bucket/t.parquet") and is_url("https://x.org/a.csv?dl=1") and is_url("file:///tmp/a.csv")
    assert not is_url("hf:stanfordnlp/sst2") and not is_url("runs/a") and not is_url("C:/data/a.csv")
    assert _basename("https://x.org/data/train.csv.gz?token=1#x") == "train.csv.gz"


def test_train_predict_and_evaluate_over_http(http_root, tiny_models, synth_dir, tmp_path, capsys):
    root, url = http_root
    for split in ("train", "validation", "test"):
        (root / f"{split}.csv").write_bytes((synth_dir / f"{split}.csv").read_bytes())
    remote = tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
        "data.path": "null", "data.train": f"{url}/train.csv", "data.validation": f"{url}/validation.csv",
        "data.test": f"{url}/test.csv", "name": "remote"})
    run = loraclf.train(None, remote, quiet=True)
    local = loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, name="local"), quiet=True)
    assert run.metrics["test"]["accuracy"] == local.metrics["test"]["accuracy"]  # the same rows, the same run
    assert run.metrics["data"]["sources"]["train"] == f"{url}/train.csv"  # the URL, not the temporary copy
    # predict: input and output over HTTP; the output arrives whole
    assert main(["predict", str(run.path), "-i", f"{url}/test.csv", "-o", f"{url}/out/preds.csv", "-q"]) == 0
    preds = (root / "out" / "preds.csv").read_text(encoding="utf-8").splitlines()
    assert preds[0].startswith("text,label") and len(preds) == 1 + len((synth_dir / "test.csv").read_text(
        encoding="utf-8").splitlines()) - 1
    assert main(["evaluate", str(run.path), "--data", f"{url}/test.csv", "-o", f"{url}/out/m.json", "-q"]) == 0
    capsys.readouterr()
    # the input as the output is refused before anything is read; a refused upload keeps the finished file
    assert main(["predict", str(run.path), "-i", f"{url}/test.csv", "-o", f"{url}/test.csv", "-q"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(["predict", str(run.path), "-i", f"{url}/test.csv", "-o", f"{url}/refuse/p.csv", "-q"]) == 2
    err = capsys.readouterr().err
    kept = err.split("the output is kept in ")[1].strip()
    assert err.count("\n") == 1 and f"cannot write {url}/refuse/p.csv" in err
    assert Path(kept).read_text(encoding="utf-8").startswith("text,label")
    assert json.loads((root / "out" / "m.json").read_text())["accuracy"] == pytest.approx(
        local.metrics["test"]["accuracy"])


def test_remote_errors_are_one_line_naming_the_url(http_root, tiny_models, synth_dir, tmp_path, capsys):
    root, url = http_root
    (root / "bad.csv").write_text("text,label\nfine,positive\n,negative\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.train: not found: http://127\.0\.0\.1:\d+/missing\.csv"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
            "data.path": "null", "data.train": f"{url}/missing.csv"}), quiet=True)
    with pytest.raises(DataError, match=rf"^{url}/bad\.csv: row 2 has an empty 'text'"):
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
            "data.path": "null", "data.train": f"{url}/bad.csv"}), quiet=True)
    assert not (tmp_path / "run").exists()
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:  # the one-line error that names the package, not a mangled "s3:/bucket" path
        with pytest.raises(EnvironmentError_, match=r"s3://bucket/t\.parquet: s3:// needs s3fs: pip install s3fs"):
            loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{
                "data.path": "s3://bucket/t.parquet"}), quiet=True)
        assert main(["predict", str(tmp_path), "-o", "s3://bucket/t.parquet"]) == 2  # checked before anything
        assert "s3://bucket/t.parquet: s3:// needs s3fs" in capsys.readouterr().err
