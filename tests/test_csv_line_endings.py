"""Every CSV loraclf writes ends its lines with '\\n', not the csv module's '\\r\\n' (predictions/<split>.csv,
audit.csv, a comparison's and a sweep's results.csv; `predict -o` in tests/test_console.py)."""

import csv

from loraclf.schema import write_predictions
from loraclf.studies import audit


def test_predictions_csv(tmp_path):
    f = tmp_path / "test.csv"
    write_predictions(f, ["a good film", 'a "quoted"\nline'], None, ["positive", "negative"],
                      ["positive", "positive"], {"correct": [True, False]})
    data = f.read_bytes()
    assert b"\r" not in data
    with open(f, newline="") as fh:
        assert [r["text"] for r in csv.DictReader(fh)] == ["a good film", 'a "quoted"\nline']


def test_audit_csv(tmp_path):
    issue = {"source": "train.csv", "row": 3, "fold": 1, "text": "dull", "given": "positive",
             "suggested": "negative", "p_given": 0.1, "p_suggested": 0.9, "quality": 0.1}
    audit._write_csv(tmp_path / "audit.csv", [issue, {**issue, "row": 7}])
    data = (tmp_path / "audit.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3 and data.startswith(b"rank,source,row,")
