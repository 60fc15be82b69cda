"""Label columns per task: lists, JSON, 0/1 columns, scores, and what `task: auto` concludes."""

import json

import numpy as np
import pytest

from conftest import write_csv
from loraclf.config import load_config
from loraclf.data import load_data
from loraclf.errors import DataError


def _cfg(path, *sets):
    return load_config(None, [f"data.path={path}", *sets]).data


def _write(tmp_path, train, validation=None, header=("text", "labels")):
    write_csv(tmp_path / "train.csv", train, header)
    if validation is not None:
        write_csv(tmp_path / "validation.csv", validation, header)
    return tmp_path


TRAIN = [("happy and scared", "joy;fear"), ("calm day", ""), ("angry", "anger"), ("joyful", "joy"),
         ("afraid", "fear"), ("mad and glad", "anger;joy")]


def test_separator_joined_labels_are_detected_and_said(tmp_path):
    d = load_data(_cfg(_write(tmp_path, TRAIN, TRAIN), "data.label_column=labels"))
    assert d.task == "multi-label" and d.labels.names == ["anger", "fear", "joy"]
    assert any("multi-label, detected" in n for n in d.notes)
    np.testing.assert_array_equal(d.splits["train"].labels[:2], [[0, 1, 1], [0, 0, 0]])  # the empty set is valid


def test_json_lists_commas_and_zero_one_columns_read_alike(tmp_path):
    json_rows = [(t, json.dumps(labs.split(";") if labs else [])) for t, labs in TRAIN]
    a = load_data(_cfg(_write(tmp_path / "a", json_rows, json_rows), "data.label_column=labels"), task="multi-label")
    comma = [(t, labs.replace(";", ",")) for t, labs in TRAIN]
    b = load_data(_cfg(_write(tmp_path / "b", comma, comma), "data.label_column=labels",
                       "data.label_separator=','"), task="multi-label")
    cols = [(t, int("anger" in labs), int("fear" in labs), int("joy" in labs)) for t, labs in TRAIN]
    c = load_data(_cfg(_write(tmp_path / "c", cols, cols, ("text", "anger", "fear", "joy")),
                       "data.label_columns=[anger, fear, joy]"))
    assert c.task == "multi-label"
    for d in (a, b, c):
        assert d.labels.names == ["anger", "fear", "joy"]
        np.testing.assert_array_equal(d.splits["train"].labels, a.splits["train"].labels)


def test_include_labels_keeps_rows_and_drops_other_labels(tmp_path):
    d = load_data(_cfg(_write(tmp_path, TRAIN, TRAIN), "data.label_column=labels", "data.include_labels=[joy, fear]"),
                  task="multi-label")
    assert d.labels.names == ["fear", "joy"] and len(d.splits["train"]) == len(TRAIN)
    assert d.splits["train"].labels[2].sum() == 0  # 'angry' is left with no label


@pytest.mark.parametrize("rows,sets,needle", [
    ([("a", "joy"), ("b", "[joy, fear")], [], "not a valid JSON list"),
    ([("a", "joy"), ("b", "fear")], ["data.label_names=[joy]"], "not in data.label_names"),
])
def test_bad_multi_label_values_name_the_row(rows, sets, needle, tmp_path):
    with pytest.raises(DataError, match=needle):
        load_data(_cfg(_write(tmp_path, rows, rows), "data.label_column=labels", *sets), task="multi-label")


def test_a_label_only_in_validation_names_its_row(tmp_path):
    with pytest.raises(DataError, match=r"row 2 has label 'surprise', which train lacks it"):
        load_data(_cfg(_write(tmp_path, TRAIN, [("x", "joy"), ("y", "surprise")]), "data.label_column=labels"),
                  task="multi-label")


def test_zero_one_columns_hold_only_zero_or_one(tmp_path):
    rows = [("a", 1, 0), ("b", 2, 1)]
    with pytest.raises(DataError, match=r"row 2 has '2' in label column 'joy'"):
        load_data(_cfg(_write(tmp_path, rows, rows, ("text", "joy", "fear")), "data.label_columns=[joy, fear]"))


SCORES = [("a", "0.5"), ("b", "3.8"), ("c", "2"), ("d", "5.0")]


def test_scores_are_read_for_regression_and_never_guessed(tmp_path):
    d = load_data(_cfg(_write(tmp_path, SCORES, SCORES, ("text", "score")), "data.label_column=score"),
                  task="regression")
    assert d.task == "regression" and d.labels.names == ["score"]
    np.testing.assert_allclose(d.splits["train"].labels, [0.5, 3.8, 2.0, 5.0])
    with pytest.raises(DataError, match="look like continuous scores .* set task: regression"):
        load_data(_cfg(tmp_path, "data.label_column=score"))


@pytest.mark.parametrize("bad,needle", [("high", "not a finite number"), ("", "has no 'score' value"),
                                        ("inf", "not a finite number")])
def test_a_bad_score_names_its_row(bad, needle, tmp_path):
    rows = SCORES + [("e", bad)]
    with pytest.raises(DataError, match=f"row 5 .*{needle}"):
        load_data(_cfg(_write(tmp_path, rows, SCORES, ("text", "score")), "data.label_column=score"),
                  task="regression")


def test_sentence_pairs_with_scores(tmp_path):
    rows = [("a b", "a c", 1.0), ("x", "y", 4.5), ("p", "q", 2.0)]
    _write(tmp_path, rows, rows, ("s1", "s2", "score"))
    d = load_data(_cfg(tmp_path, "data.text_column=[s1, s2]", "data.label_column=score"), task="regression")
    assert d.splits["train"].pairs == ["a c", "y", "q"]
    np.testing.assert_allclose(d.splits["validation"].labels, [1.0, 4.5, 2.0])
