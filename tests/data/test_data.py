import gzip
import json

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_rows, write_csv
from loraclf.config import DataConfig
from loraclf.data import (
    Collator,
    Encoded,
    carve_validation,
    eval_batches,
    load_data,
    load_labelled_split,
    train_batches,
)
from loraclf.errors import DataError


def _cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


@pytest.fixture
def folder(tmp_path):
    write_csv(tmp_path / "train.csv", synthetic_rows(100, 1))
    write_csv(tmp_path / "validation.csv", synthetic_rows(20, 2))
    write_csv(tmp_path / "test.csv", synthetic_rows(20, 3))
    return tmp_path


def test_folder_with_three_splits(folder):
    d = load_data(_cfg(path=str(folder)))
    assert d.sizes() == {"train": 100, "validation": 20, "test": 20}
    assert d.labels.names == ["negative", "positive"]
    assert set(d.splits["train"].labels.tolist()) == {0, 1}


@pytest.mark.parametrize("ext", ["tsv", "jsonl", "parquet", "csv.gz", "jsonl.gz"])
def test_formats(tmp_path, ext):
    df = pd.DataFrame(synthetic_rows(40, 1), columns=["text", "label"])
    path = tmp_path / f"train.{ext}"
    if ext == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif ext.startswith("jsonl"):
        payload = "".join(json.dumps(r) + "\n" for r in df.to_dict("records")).encode()
        path.write_bytes(gzip.compress(payload) if ext.endswith(".gz") else payload)
    elif ext == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False, compression="gzip")
    d = load_data(_cfg(path=str(tmp_path)))
    assert len(d.splits["train"]) + len(d.splits["validation"]) == 40
    assert d.splits["train"].texts[0] in set(df.text)


def test_shared_imdb_is_gzipped_and_loads(tmp_path):
    from conftest import DATASETS

    if not (DATASETS / "imdb").exists():
        pytest.skip("shared datasets not present")
    d = load_data(_cfg(path=str(DATASETS / "imdb"), max_train_samples=50, max_eval_samples=20, max_test_samples=20))
    assert d.sizes() == {"train": 50, "validation": 20, "test": 20}


def test_integer_labels_with_names_and_custom_columns(tmp_path):
    rows = [(t, 1 if lab == "positive" else 0, "x") for t, lab in synthetic_rows(40, 1)]
    write_csv(tmp_path / "train.csv", rows, header=("sentence", "y", "other"))
    d = load_data(_cfg(path=str(tmp_path), text_column="sentence", label_column="y", label_names=["neg", "pos"]))
    assert d.labels.names == ["neg", "pos"]
    with pytest.raises(DataError, match="label id 2 outside"):
        write_csv(tmp_path / "train.csv", rows + [("odd", 2, "x")], header=("sentence", "y", "other"))
        load_data(_cfg(path=str(tmp_path), text_column="sentence", label_column="y", label_names=["neg", "pos"]))


def test_text_pairs(tmp_path):
    rows = [(t, t[::-1], lab) for t, lab in synthetic_rows(30, 1)]
    write_csv(tmp_path / "train.csv", rows, header=("a", "b", "label"))
    d = load_data(_cfg(path=str(tmp_path), text_column=["a", "b"]))
    assert d.splits["train"].pairs is not None


def test_carve_is_stratified_and_seeded(tmp_path):
    write_csv(tmp_path / "train.csv", synthetic_rows(200, 1))
    d1 = load_data(_cfg(path=str(tmp_path / "train.csv"), validation_fraction=0.2), seed=7)
    d2 = load_data(_cfg(path=str(tmp_path / "train.csv"), validation_fraction=0.2), seed=7)
    d3 = load_data(_cfg(path=str(tmp_path / "train.csv"), validation_fraction=0.2), seed=8)
    v = d1.splits["validation"]
    assert len(v) == 40 and np.bincount(v.labels).tolist() == [20, 20]
    assert v.texts == d2.splits["validation"].texts and v.texts != d3.splits["validation"].texts
    assert not set(v.texts) & set(d1.splits["train"].texts) or len(set(d1.splits["train"].texts)) < 160
    assert any("carved" in n for n in d1.notes)


def test_caps_are_stratified(folder):
    d = load_data(_cfg(path=str(folder), max_train_samples=10, max_test_samples=4))
    assert len(d.splits["train"]) == 10 and np.bincount(d.splits["train"].labels).tolist() == [5, 5]
    assert len(d.splits["test"]) == 4


# ----------------------------------------------------------------------------------- bad input


def _expect(cfg, needle):
    with pytest.raises(DataError) as e:
        load_data(cfg)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    _expect(_cfg(path=str(tmp_path / "nope")), "data path not found")
    _expect(_cfg(path=str(tmp_path), train=str(tmp_path / "x.csv")), "file not found")


def test_wrong_columns(folder):
    _expect(_cfg(path=str(folder), text_column="sentence"), "no column 'sentence'")
    _expect(_cfg(path=str(folder), label_column="y"), "no column 'y'")


def test_empty_and_nan_text(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\nfine movie,positive\n,negative\n')
    msg = _expect(_cfg(path=str(tmp_path)), "row 2")
    assert "train.csv" in msg
    (tmp_path / "train.csv").write_text('text,label\nfine movie,positive\n"   ",negative\n')
    _expect(_cfg(path=str(tmp_path)), "row 2 has an empty 'text'")


def test_unknown_label_in_test(folder):
    write_csv(folder / "test.csv", synthetic_rows(5, 3) + [("so so", "mixed")])
    msg = _expect(_cfg(path=str(folder)), "'mixed', which train lacks it")
    assert "test.csv" in msg and "row 6" in msg


def test_single_class_train(tmp_path):
    write_csv(tmp_path / "train.csv", [(t, "positive") for t, _ in synthetic_rows(20, 1)])
    _expect(_cfg(path=str(tmp_path)), "single class")


def test_empty_split(folder):
    (folder / "validation.csv").write_text("text,label\n")
    _expect(_cfg(path=str(folder)), "no rows")
    (folder / "validation.csv").write_text("")
    _expect(_cfg(path=str(folder)), "empty")


def test_undecodable_bytes(folder):
    (folder / "train.csv").write_bytes(b"text,label\ngood film,positive\nbad \xff\xfe film,negative\n")
    msg = _expect(_cfg(path=str(folder)), "not valid UTF-8")
    assert "line 3" in msg


def test_unknown_extension(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    _expect(_cfg(path=str(tmp_path / "data.txt")), "cannot tell the format")


# ----------------------------------------------------------------------------------- batching


def test_train_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    b = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    flat = sorted(i for batch in b for i in batch)
    assert flat == list(range(1000))
    assert b == train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    assert b != train_batches(lengths, 32, seed=1, epoch=1, group_by_length=True)
    grouped_pad = sum(lengths[x].max() * len(x) for x in b)
    plain = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=False)
    plain_pad = sum(lengths[x].max() * len(x) for x in plain)
    assert grouped_pad < 0.7 * plain_pad


def test_eval_batches_sorted():
    lengths = np.array([5, 1, 9, 3])
    assert eval_batches(lengths, 2) == [[2, 0], [3, 1]]


@pytest.mark.parametrize("left", [False, True])
def test_collator_pads_on_the_right_side(left):
    enc = Encoded([[5, 6, 7], [8]], np.array([0, 1]))
    out = Collator(enc, pad_id=0, left=left)([0, 1])
    ids, mask = out["input_ids"].tolist(), out["attention_mask"].tolist()
    assert ids[0] == [5, 6, 7]
    assert ids[1] == ([0, 0, 8] if left else [8, 0, 0])
    assert mask[1] == ([0, 0, 1] if left else [1, 0, 0])
    assert out["labels"].tolist() == [0, 1] and out["idx"].tolist() == [0, 1]


def test_collator_rounds_length_up_but_never_past_the_cap():
    enc = Encoded([[1] * 5, [1] * 18, [1] * 25], np.array([0, 1, 0]))
    widths = [Collator(enc, 0, pad_to_multiple_of=16, max_width=20)([i])["input_ids"].shape[1] for i in range(3)]
    assert widths == [16, 20, 25]  # rounded; capped at max_width; a longer row is never cut
    assert Collator(enc, 0, pad_to_multiple_of=8)([0])["input_ids"].shape[1] == 8
    assert Collator(enc, 0, pad_to_multiple_of=1)([0])["input_ids"].shape[1] == 5


def test_carve_too_small():
    from loraclf.data import Split
    from loraclf.tasks import SingleLabel

    with pytest.raises(DataError):
        carve_validation(Split(["a"], np.array([0])), 0.5, 0, SingleLabel)


def test_include_labels_filters_every_split(tmp_path):
    classes = ("negative", "neutral", "positive")
    write_csv(tmp_path / "train.csv", synthetic_rows(60, 1, classes))
    write_csv(tmp_path / "test.csv", synthetic_rows(30, 2, classes))
    d = load_data(_cfg(path=str(tmp_path), include_labels=["negative", "positive"]))
    assert d.labels.names == ["negative", "positive"]
    assert len(d.splits["test"]) == 20 and len(d.splits["train"]) + len(d.splits["validation"]) == 40
    _expect(_cfg(path=str(tmp_path), include_labels=["mixed"]), "no rows left")


def test_hub_datasets_go_through_datasets_load_dataset(monkeypatch):
    """Offline stand-in for `hf:<id>`: the loader maps splits and ClassLabel names."""
    import datasets

    rows = synthetic_rows(40, 1)
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows],
                                     "label": [1 if lab == "positive" else 0 for _, lab in rows]}, features=feats)
    calls = []

    def fake_load(ident):
        calls.append(ident)
        return datasets.DatasetDict({"train": ds, "test": ds.select(range(10))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = load_data(_cfg(path="hf:org/sentiment"))
    assert calls == ["org/sentiment"]
    assert d.labels.names == ["negative", "positive"]
    assert len(d.splits["test"]) == 10 and "validation" in d.splits
    # `loraclf evaluate --data hf:<id>` reads one labelled split the same way, names included
    texts, pairs, labels, source = load_labelled_split(_cfg(path="hf:org/sentiment"), "test")
    assert len(texts) == 10 and pairs is None and source == "hf:org/sentiment[test]"
    assert labels == [lab for _, lab in rows[:10]]
    with pytest.raises(DataError, match="no validation split"):
        load_labelled_split(_cfg(path="hf:org/sentiment"), "validation")


def test_split_files_are_also_looked_up_under_the_datasets_root(tmp_path, monkeypatch):
    write_csv(tmp_path / "mine" / "eval.csv", synthetic_rows(12, 4))
    monkeypatch.setenv("LORACLF_DATASETS", str(tmp_path))
    texts, _, _, source = load_labelled_split(_cfg(test="mine/eval.csv"), "test")
    assert len(texts) == 12 and source == str(tmp_path / "mine" / "eval.csv")
    with pytest.raises(DataError, match="data.test: file not found"):
        load_labelled_split(_cfg(test="mine/none.csv"), "test")
