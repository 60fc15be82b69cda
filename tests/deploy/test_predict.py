"""predict.py: chunked reading with row numbers that run on across chunks, an output that appears
only when complete, and stdin."""

import io
import os

import pytest

import loraclf.deploy.predict as P
from loraclf.errors import LoraclfError


class _Clf:
    """A stand-in for the artifact's Classifier: labels 'long' or 'short' by text length."""

    class task:
        @staticmethod
        def answer_columns():
            return ["label"]

        @staticmethod
        def answers(probs):
            return [["long" if p else "short"] for p in probs]

        @staticmethod
        def predicted(probs):
            return ["long" if p else "short" for p in probs]

    def predict_proba(self, texts, batch_size, pairs=None):
        return [len(t) > 3 for t in texts]


def test_rows_are_numbered_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "CHUNK_ROWS", 2)
    (tmp_path / "in.csv").write_text("text\na\nbb\nccc\n\"\"\n")  # the empty 4th row is in the 2nd chunk
    chunks = P.input_chunks(str(tmp_path / "in.csv"), "auto", ["text"], None)
    with pytest.raises(LoraclfError, match="row 4 has an empty 'text'"):
        list(chunks)


def test_output_appears_only_when_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "CHUNK_ROWS", 2)
    (tmp_path / "in.csv").write_text("text\na\nlonger\nxyz\nlongest\nq\n")
    (tmp_path / f".out.csv.partial-{2**22 + 7}").write_text("left by a killed process")
    n = P.predict_csv(_Clf(), P.input_chunks(str(tmp_path / "in.csv"), "auto", ["text"], None),
                      str(tmp_path / "out.csv"))
    assert n == 5
    assert (tmp_path / "out.csv").read_text().splitlines() == ["text,label", "a,short", "longer,long", "xyz,short",
                                                                "longest,long", "q,short"]
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.csv"]

    def boom(*a, **k):
        raise RuntimeError("crash mid-way")

    clf = _Clf()
    clf.predict_proba = boom
    with pytest.raises(RuntimeError):
        P.predict_csv(clf, P.input_chunks(str(tmp_path / "in.csv"), "auto", ["text"], None), str(tmp_path / "o2.csv"))
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.csv"]  # no o2.csv, no partial


def test_stdin_lines_drop_crlf(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("one\r\n\r\ntwo\n"))
    chunks = list(P.input_chunks(None, "auto", ["text"], None))
    assert [c.texts for c in chunks] == [["one", "two"]]
