"""The data cache (data/store.py, data/tokens.py): same data and ids as reading in memory, hits and misses
on what changes the result, damaged entries rebuilt, concurrent builders, pieces in parallel."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_tokenizer, scored_rows, synthetic_rows, tagged_rows, write_csv
from loraclf.config import DataConfig
from loraclf.data import encode, load_data, store, token_lengths, tokens
from loraclf.errors import DataError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORACLF_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entries(cache: Path, kind: str) -> set[str]:
    folder = cache / kind
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def _long_rows(n: int, seed: int):
    """Texts of very different lengths, some past a small max_length."""
    rng = np.random.default_rng(seed)
    return [(" ".join([t] * int(rng.integers(1, 12))), lab) for t, lab in synthetic_rows(n, seed)]


def _same(a, b):
    assert a.task == b.task and a.labels.names == b.labels.names and a.notes == b.notes
    for split in a.splits:
        x, y = a.splits[split], b.splits[split]
        assert list(x.texts) == list(y.texts)
        np.testing.assert_array_equal(np.asarray(x.labels), np.asarray(y.labels))
        np.testing.assert_array_equal(x.rows, y.rows)


@pytest.mark.parametrize("kind", ["single", "multi", "regression", "pairs", "include"])
def test_cached_data_equals_reading_in_memory(tmp_path, kind, own_cache):
    rows = {"single": synthetic_rows(150, 1), "multi": tagged_rows(150, 1), "regression": scored_rows(150, 1),
            "include": synthetic_rows(150, 1, classes=("negative", "positive", "neutral"))}.get(kind)
    header = ("text", "label")
    if kind == "pairs":
        rows, header = [(t, t[::-1], lab) for t, lab in synthetic_rows(150, 1)], ("a", "b", "label")
    write_csv(tmp_path / "train.csv", rows, header)
    extra = {"text_column": ["a", "b"]} if kind == "pairs" else {}
    extra.update({"include_labels": ["negative", "positive"]} if kind == "include" else {})
    task = {"multi": "multi-label", "regression": "regression"}.get(kind, "auto")
    cached = load_data(DataConfig(path=str(tmp_path), **extra), 7, task)
    assert isinstance(cached.splits["train"].texts, store.TextColumn)
    _same(cached, load_data(DataConfig(path=str(tmp_path), cache=False, **extra), 7, task))
    again = load_data(DataConfig(path=str(tmp_path), **extra), 7, task)  # from the entries alone
    _same(cached, again)


def test_errors_name_the_file_row_past_the_first_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "READ_ROWS", 10)
    rows = synthetic_rows(40, 1)
    rows[24] = ("", "positive")
    write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError, match="row 25 has an empty 'text'"):
        load_data(DataConfig(path=str(tmp_path)))
    rows[24] = ("fine text", "positive")
    write_csv(tmp_path / "train.csv", rows)
    test = synthetic_rows(30, 2)
    test[21] = ("a text", "mystery")
    write_csv(tmp_path / "test.csv", test)
    with pytest.raises(DataError, match="row 22 has label 'mystery', which train lacks it"):
        load_data(DataConfig(path=str(tmp_path)))


@pytest.mark.parametrize("decoder", [False, True])
@pytest.mark.parametrize("max_length", [4, 9, 64])
def test_cached_ids_equal_the_tokenizer(tmp_path, decoder, max_length):
    tok = make_tokenizer(decoder)
    write_csv(tmp_path / "train.csv", _long_rows(120, 3))
    texts = load_data(DataConfig(path=str(tmp_path)), 1).splits["train"].texts
    enc = encode(tok, texts, None, max_length)
    plain = encode(tok, list(texts), None, max_length)
    assert [list(map(int, x)) for x in enc.input_ids] == plain.input_ids
    np.testing.assert_array_equal(enc.lengths, plain.lengths)
    np.testing.assert_array_equal(enc.full_lengths, token_lengths(tok, list(texts)))


def test_pair_ids_and_types_equal_the_tokenizer(tmp_path):
    tok = make_tokenizer()
    write_csv(tmp_path / "train.csv", [(a, b[::-1], lab) for (a, lab), (b, _) in
                                       zip(_long_rows(80, 1), _long_rows(80, 2))], ("a", "b", "label"))
    s = load_data(DataConfig(path=str(tmp_path), text_column=["a", "b"]), 1).splits["train"]
    enc = encode(tok, s.texts, None, 10, s.pairs)
    plain = encode(tok, list(s.texts), None, 10, list(s.pairs))
    assert [list(map(int, x)) for x in enc.input_ids] == plain.input_ids
    assert [list(map(int, x)) for x in enc.token_type_ids] == plain.token_type_ids


def test_hits_and_misses(tmp_path, own_cache):
    tok = make_tokenizer()
    path = write_csv(tmp_path / "train.csv", _long_rows(100, 1))
    cfg = DataConfig(path=str(tmp_path))
    encode(tok, load_data(cfg, 1).splits["train"].texts, None, 16)
    tables, token_entries = _entries(own_cache, "tables"), _entries(own_cache, "tokens")
    assert len(tables) == 1 and len(token_entries) == 1
    encode(tok, load_data(cfg, 2).splits["train"].texts, None, 16)  # another carve: same table, same ids
    assert _entries(own_cache, "tables") == tables and _entries(own_cache, "tokens") == token_entries
    encode(tok, load_data(cfg, 1).splits["train"].texts, None, 24)  # max_length
    assert len(_entries(own_cache, "tokens")) == 2
    encode(make_tokenizer(decoder=True), load_data(cfg, 1).splits["train"].texts, None, 16)  # tokenizer
    assert len(_entries(own_cache, "tokens")) == 3
    write_csv(path, _long_rows(100, 2))  # the data
    os.utime(path, ns=(1, 1))
    encode(tok, load_data(cfg, 1).splits["train"].texts, None, 16)
    assert len(_entries(own_cache, "tables")) == 2 and len(_entries(own_cache, "tokens")) == 4


def _fresh_fingerprint(tok) -> str:
    tokens._BACKEND_DIGEST.clear()
    return tokens.tokenizer_fingerprint(tok)


def test_a_tokenizer_changed_in_place_gets_a_new_fingerprint():
    """The hash of a tokenizer is kept between calls; every change that moves its ids must still show."""
    from tokenizers import AddedToken

    tok = make_tokenizer()
    seen = [_fresh_fingerprint(tok)]
    assert tokens.tokenizer_fingerprint(tok) == seen[0]  # kept
    edits = [lambda b: b.add_tokens(["goodfilm"]),  # a new token: the vocabulary grows
             lambda b: b.add_tokens([AddedToken("good", single_word=True, lstrip=True)]),  # same size, new flags
             lambda b: setattr(b.model, "unk_token", "[PAD]")]  # the model's settings
    for edit in edits:
        before = tok("zzz good")["input_ids"]
        edit(tok.backend_tokenizer)
        kept = tokens.tokenizer_fingerprint(tok)
        assert kept not in seen and kept == _fresh_fingerprint(tok)
        seen.append(kept)
    assert tok("zzz good")["input_ids"] != before  # the last edit moved the ids


def test_a_small_capped_split_tokenizes_only_its_rows(tmp_path, own_cache):
    tok = make_tokenizer()
    write_csv(tmp_path / "train.csv", _long_rows(400, 1))
    s = load_data(DataConfig(path=str(tmp_path), max_train_samples=50), 1).splits["train"]
    enc = encode(tok, s.texts, None, 16)
    (entry,) = _entries(own_cache, "tokens")
    assert tokens.entry_stats(own_cache / "tokens" / entry)["rows"] == 50
    assert [list(map(int, x)) for x in enc.input_ids] == encode(tok, list(s.texts), None, 16).input_ids


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_entry_is_rebuilt_never_trusted(tmp_path, own_cache, damage):
    tok = make_tokenizer()
    write_csv(tmp_path / "train.csv", _long_rows(100, 1))
    texts = load_data(DataConfig(path=str(tmp_path)), 1).splits["train"].texts
    want = [list(map(int, x)) for x in encode(tok, texts, None, 16).input_ids]
    (entry,) = _entries(own_cache, "tokens")
    ids = own_cache / "tokens" / entry / "ids-00000.npy"
    orig = ids.read_bytes()
    raw = bytearray(orig)
    if damage == "flip":
        raw[-3] ^= 0xFF
        ids.write_bytes(bytes(raw))
    elif damage == "truncate":
        ids.write_bytes(bytes(raw[:-8]))
    else:
        (own_cache / "tokens" / entry / "manifest.json").write_text("{not json")
    texts = load_data(DataConfig(path=str(tmp_path)), 1).splits["train"].texts
    assert [list(map(int, x)) for x in encode(tok, texts, None, 16).input_ids] == want
    assert ids.read_bytes() == orig  # rebuilt whole


def test_pieces_in_parallel_equal_one_process(tmp_path, monkeypatch, own_cache):
    monkeypatch.setattr(tokens, "PIECE_ROWS", 37)
    tok = make_tokenizer()
    write_csv(tmp_path / "train.csv", _long_rows(300, 1))
    texts = load_data(DataConfig(path=str(tmp_path), validation_fraction=0.1), 1).splits["train"].texts
    two = _as_encoded(tokens.cached_ids(tok, texts, 8, num_proc=2))
    stats = tokens.entry_stats(next((own_cache / "tokens").iterdir()))
    assert stats["processes"] == 2 and stats["pieces"] == 9  # the whole table: 300 rows in pieces of 37
    one = encode(tok, list(texts), None, 8)
    assert [list(map(int, x)) for x in two.input_ids] == one.input_ids
    np.testing.assert_array_equal(two.lengths, one.lengths)


def _as_encoded(cached):
    from loraclf.data import Encoded

    ids, types, full = cached
    return Encoded(ids, np.zeros(len(ids)), types, full)


CONCURRENT = """
import sys
from loraclf.config import DataConfig
from loraclf.data import encode, load_data
from conftest import make_tokenizer
s = load_data(DataConfig(path=sys.argv[1]), 1).splits["train"]
enc = encode(make_tokenizer(), s.texts, None, 12)
print(sum(int(x.sum()) for x in enc.input_ids), len(enc))
"""


def test_two_runs_build_one_cache_concurrently(tmp_path, own_cache):
    write_csv(tmp_path / "train.csv", _long_rows(3000, 1))
    env = {**os.environ, "LORACLF_DATA_CACHE": str(own_cache), "PYTHONPATH": str(REPO / "tests")}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    assert len(_entries(own_cache, "tokens")) == 1 and len(_entries(own_cache, "tables")) == 1
    assert not [p for p in (own_cache / "tokens").iterdir() if p.name.startswith(".")]  # no staging left


def test_text_column_reads_rows_on_demand(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "READ_ROWS", 7)  # a table of 8 chunks
    rows = synthetic_rows(50, 1)
    path = write_csv(tmp_path / "train.csv", rows)
    s = load_data(DataConfig(train=str(path), validation=str(path)), 1).splits["train"]
    col = s.texts
    assert col.array.num_chunks == 8 and list(col) == [t for t, _ in rows]
    assert col[0] == rows[0][0] and col[-1] == rows[-1][0] and col[3:16] == [t for t, _ in rows[3:16]]
    pick = [49, 2, 8, 7, 30, 2]  # across chunks, unsorted, repeated
    sub = col.take(pick)
    assert list(sub) == [rows[i][0] for i in pick] and sub.fingerprint == col.fingerprint
    assert store.take_rows(col.array, np.array([5, 6, 7, 8])) == [rows[i][0] for i in (5, 6, 7, 8)]
    with pytest.raises(IndexError):
        col[50]


RANKS = """
import json, os, sys
import torch.distributed as dist
from loraclf.config import DataConfig
from loraclf.data import encode, load_data, tokens
from loraclf.data.batching import set_num_proc
from conftest import make_tokenizer
dist.init_process_group("gloo", rank=int(sys.argv[2]), world_size=2, init_method="tcp://127.0.0.1:" + sys.argv[3])
tokens.PIECE_ROWS = 40
set_num_proc(1)  # pieces built in this process, so the patched method sees them
built = []
piece = tokens._Job.piece
tokens._Job.piece = lambda self, p, out: built.append(p) or piece(self, p, out)
s = load_data(DataConfig(path=sys.argv[1]), 1).splits["train"]
enc = encode(make_tokenizer(), s.texts, None, 12)
print(json.dumps({"built": built, "sum": sum(int(x.sum()) for x in enc.input_ids), "n": len(enc)}))
dist.destroy_process_group()
"""


def test_each_rank_tokenizes_only_its_own_pieces(tmp_path, own_cache):
    """Two gloo processes share one cache: the pieces are split between them, none built twice, and both
    read the same ids."""
    import socket

    write_csv(tmp_path / "train.csv", _long_rows(400, 1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LORACLF_DATA_CACHE": str(own_cache), "PYTHONPATH": str(REPO / "tests")}
    procs = [subprocess.Popen([sys.executable, "-c", RANKS, str(tmp_path), str(r), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ranks = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(ranks[0]["built"] + ranks[1]["built"]) == list(range(10))  # 400 rows in pieces of 40
    assert set(ranks[0]["built"]) == set(range(0, 10, 2)) and set(ranks[1]["built"]) == set(range(1, 10, 2))
    assert ranks[0]["sum"] == ranks[1]["sum"] and ranks[0]["n"] == ranks[1]["n"] == 360


def test_a_label_column_that_changes_type_between_chunks_is_read_in_memory(tmp_path, monkeypatch):
    """JSON labels: strings in the first chunk, numbers later. Casting them to one Arrow type could change a
    value ("01" -> 1), so the file is read in memory, with the same result as data.cache: false."""
    monkeypatch.setattr(store, "READ_ROWS", 10)
    lines = [{"text": f"{t} {i}", "label": lab} for i, (t, lab) in enumerate(synthetic_rows(10, 1))]
    lines += [{"text": f"{t} {i}", "label": int(lab == "positive")} for i, (t, lab) in enumerate(synthetic_rows(10, 2))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = dict(path=str(tmp_path), validation_fraction=0.2)
    cached = load_data(DataConfig(**cfg), 1)
    assert not isinstance(cached.splits["train"].texts, store.TextColumn)
    _same(cached, load_data(DataConfig(cache=False, **cfg), 1))
