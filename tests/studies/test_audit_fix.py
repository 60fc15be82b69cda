"""`loraclf audit --fix`: a copy of the audited data with the top of the ranking relabelled or dropped,
each file in its own format and readable as before, test copied untouched, and nothing written when
the file changed since the audit. Run directories are made by hand: the fix reads audit.csv alone."""

import json

import pandas as pd
import pytest

from loraclf.cli import main
from loraclf.config import load_config
from loraclf.data import load_data
from loraclf.studies.audit import fix_data


def _audited_run(tmp_path, data, task, labels, suspects, data_yaml=""):
    """A finished cross-validation run over `data` whose audit.csv holds `suspects` (source, row, given,
    suggested), likeliest first."""
    run = tmp_path / "runs" / "cv"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  path: {data}\n{data_yaml}")
    (run / "metrics.json").write_text(json.dumps({"task": task, "labels": labels, "cv": {}}))
    pd.DataFrame([{"rank": i + 1, "source": str(s), "row": r, "fold": 0, "text": "", "given": g, "suggested": x}
                  for i, (s, r, g, x) in enumerate(suspects)]).to_csv(run / "audit.csv", index=False)
    return run


@pytest.fixture
def sentiment(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = [f"text {i}" for i in range(8)]
    pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 4}).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"text": ["v0", "v1"], "label": ["pos", "neg"]}).to_csv(data / "validation.csv", index=False)
    pd.DataFrame({"text": ["t0", "t1"], "label": ["neg", "pos"]}).to_csv(data / "test.csv", index=False)
    # rows 1 and 4 of train and row 0 of validation are suspects, in that order
    suspects = [(data / "train.csv", 1, "neg", "pos"), (data / "validation.csv", 0, "pos", "neg"),
                (data / "train.csv", 4, "pos", "neg"), (data / "train.csv", 6, "pos", "neg")]
    return data, _audited_run(tmp_path, data, "single-label", ["neg", "pos"], suspects)


def test_relabel_fixes_the_top_share_of_every_audited_file_and_copies_test(sentiment):
    data, run = sentiment
    summary = fix_data(run, "relabel", 0.5)
    out = run / "fixed"
    assert summary["fixed"] == 2 and summary["flagged"] == 4
    train = pd.read_csv(out / "train.csv")
    assert train["label"].tolist() == ["pos", "pos", "pos", "neg", "pos", "neg", "pos", "neg"]  # row 1 only
    assert pd.read_csv(out / "validation.csv")["label"].tolist() == ["neg", "neg"]
    assert (out / "test.csv").read_bytes() == (data / "test.csv").read_bytes()
    fixes = pd.read_csv(out / "fixes.csv")
    assert fixes[["file", "row", "given", "now"]].values.tolist() == [["train.csv", 1, "neg", "pos"],
                                                                       ["validation.csv", 0, "pos", "neg"]]
    # the folder trains like the original: same splits, same labels, same texts
    loaded = load_data(load_config(None, [f"data.path={out}", "data.cache=false"]).data)
    assert loaded.sizes() == {"train": 8, "validation": 2, "test": 2}
    assert (data / "train.csv").read_text().count("neg") == 4  # the original is untouched


def test_drop_removes_the_rows_and_the_whole_list_when_asked(sentiment):
    _, run = sentiment
    fix_data(run, "drop", 1.0, run / "dropped")
    assert pd.read_csv(run / "dropped" / "train.csv")["text"].tolist() == [f"text {i}" for i in (0, 2, 3, 5, 7)]
    assert len(pd.read_csv(run / "dropped" / "validation.csv")) == 1
    assert set(pd.read_csv(run / "dropped" / "fixes.csv")["action"]) == {"drop"}


def test_integer_labels_stay_integers_in_json_lines(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(6)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = ["a", "b", "c"]
    run = _audited_run(tmp_path, data, "single-label", names, [(data / "train.jsonl", 2, "c", "a")],
                       "  label_names: [a, b, c]\n")
    fix_data(run, "relabel", 1)
    back = [json.loads(x) for x in (run / "fixed" / "train.jsonl").read_text().splitlines()]
    assert [r["label"] for r in back] == [0, 1, 0, 0, 1, 2]


def test_label_sets_keep_their_form(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"text": ["a", "b", "c"], "labels": ["joy;anger", "joy", ""]}).to_csv(data / "train.csv", index=False)
    run = _audited_run(tmp_path, data, "multi-label", ["anger", "joy"],
                       [(data / "train.csv", 0, "joy;anger", "joy"), (data / "train.csv", 2, "", "anger;joy")],
                       "  label_column: labels\n")
    fix_data(run, "relabel", 1)
    assert pd.read_csv(run / "fixed" / "train.csv", keep_default_na=False)["labels"].tolist() == \
        ["joy", "joy", "anger;joy"]

    wide = tmp_path / "wide"
    wide.mkdir()
    pd.DataFrame({"text": ["a", "b"], "joy": [1, 0], "anger": [0, 0]}).to_csv(wide / "train.csv", index=False)
    run = _audited_run(tmp_path / "w", wide, "multi-label", ["joy", "anger"], [(wide / "train.csv", 1, "", "anger")],
                       "  label_columns: [joy, anger]\n")
    fix_data(run, "relabel", 1)
    assert pd.read_csv(run / "fixed" / "train.csv")[["joy", "anger"]].values.tolist() == [[1, 0], [0, 1]]


def test_a_file_changed_since_the_audit_or_a_bad_share_is_one_line_and_writes_nothing(sentiment, capsys):
    data, run = sentiment
    pd.DataFrame({"text": ["x", "y"], "label": ["pos", "pos"]}).to_csv(data / "train.csv", index=False)
    from loraclf.errors import DataError

    with pytest.raises(DataError, match="changed since the audit"):
        fix_data(run, "relabel", 1)
    assert not any((run / "fixed").iterdir())
    assert main(["audit", str(run), "--fix", "drop", "--fix-top", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at most 1" in err and len(err.splitlines()) == 1


def test_regression_has_no_label_to_write():
    from loraclf.errors import ConfigError
    from loraclf.tasks import make_task

    with pytest.raises(ConfigError, match="has none"):
        make_task("regression", ["score"]).write_labels(pd.DataFrame(), [0], ["1"], None, None)


def test_edge_forms_sets_in_any_order_parquet_index_bare_integers_and_kept_labels(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # a label set audited in label order, written in another; labels outside data.include_labels stay
    pd.DataFrame({"text": ["a", "b"], "labels": ["joy;anger;other", "other"]}).to_csv(data / "train.csv", index=False)
    run = _audited_run(tmp_path, data, "multi-label", ["anger", "joy"], [(data / "train.csv", 0, "anger;joy", "joy")],
                       "  label_column: labels\n  include_labels: [anger, joy]\n")
    fix_data(run, "relabel", 1)
    assert pd.read_csv(run / "fixed" / "train.csv")["labels"].tolist() == ["joy;other", "other"]

    # Parquet with an index of its own: rows are positions; integer labels without names stay integers
    pq = tmp_path / "pq"
    pq.mkdir()
    frame = pd.DataFrame({"text": ["x", "y", "z"], "label": [0, 1, 1]}, index=[10, 20, 30])
    frame.to_parquet(pq / "train.parquet")
    run = _audited_run(tmp_path / "p", pq, "single-label", ["0", "1"], [(pq / "train.parquet", 1, "1", "0")])
    fix_data(run, "relabel", 1)
    back = pd.read_parquet(run / "fixed" / "train.parquet")
    assert back["label"].tolist() == [0, 0, 1] and back["text"].tolist() == ["x", "y", "z"]


def test_the_fix_never_writes_over_the_audited_files(sentiment, capsys):
    data, run = sentiment
    from loraclf.errors import ConfigError

    with pytest.raises(ConfigError, match="holds the audited files"):
        fix_data(run, "relabel", 0.5, data)
    assert main(["audit", str(run), "--fixed-to", str(tmp := run / "elsewhere")]) == 2
    assert "give --fix" in capsys.readouterr().err and not tmp.exists()
