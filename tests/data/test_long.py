"""data/long.py: windows cut and merged back, head-tail, pooling, the epoch's window draw, and truncate
being exactly today's encoding."""

import numpy as np
import pytest

from conftest import make_tokenizer
from loraclf.data import encode
from loraclf.data.long import Chunks, LongText, chunked, special_frame, window_cuts
from loraclf.errors import ConfigError

WORDS = ["movie", "film", "plot", "actor", "scene", "story", "good", "bad", "music", "cast"]


def _doc(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


@pytest.fixture(params=["wordlevel", "bytelevel"], scope="module")
def tok(request):
    return make_tokenizer(decoder=request.param == "bytelevel")


def test_special_frame_finds_the_tokens_around_a_text(tok):
    frame = special_frame(tok)
    ids = tok("film plot")["input_ids"]
    assert list(frame.prefix) + tok("film plot", add_special_tokens=False)["input_ids"] + list(frame.suffix) == ids
    if tok.cls_token_id is not None:
        assert frame.prefix == (tok.cls_token_id,) and frame.suffix == (tok.sep_token_id,)
    else:
        assert frame.prefix == () and frame.suffix == ()


@pytest.mark.parametrize("n,room,overlap", [(1, 8, 0), (8, 8, 0), (9, 8, 0), (50, 8, 0), (50, 8, 3), (64, 8, 7),
                                            (17, 8, 0)])
def test_windows_cover_the_document_with_the_stride_and_end_at_its_end(n, room, overlap):
    starts, width = window_cuts(n, room, overlap, max_chunks=1000)
    assert width == room and starts[0] == 0 and np.all(np.diff(starts) > 0)
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        covered[s:s + room] = True
    assert covered.all()
    if n > room:
        assert starts[-1] == n - room  # the last window is a full one ending at the end, not a stub
        assert np.all(np.diff(starts)[:-1] == room - overlap)  # the stride, up to the last window
        assert np.diff(starts)[-1] <= room - overlap


def test_too_many_windows_keep_first_last_and_even_spacing():
    for even in (False, True):  # even windows over max_chunks fall back to full ones, evenly spaced
        starts, width = window_cuts(1000, 10, 0, max_chunks=5, even=even)
        assert width == 10 and len(starts) == 5 and starts[0] == 0 and starts[-1] == 990
        assert np.ptp(np.diff(starts)) <= 10  # evenly spaced, up to one stride's rounding


@pytest.mark.parametrize("n,room,overlap", [(1, 8, 0), (8, 8, 0), (9, 8, 0), (50, 8, 0), (50, 8, 3), (64, 8, 7),
                                            (17, 8, 0), (300, 126, 0), (301, 126, 16), (129, 128, 127)])
def test_even_windows_are_the_fewest_of_one_width_reading_each_token_once(n, room, overlap):
    starts, width = window_cuts(n, room, overlap, max_chunks=1000, even=True)
    full, _ = window_cuts(n, room, overlap, max_chunks=1000)
    assert len(starts) == len(full)  # as few windows as full ones need: the fewest that fit
    assert width <= room and starts[0] == 0 and (n <= room or starts[-1] + width == n)  # ending at the end
    covered = np.zeros(n, dtype=int)
    for s in starts:
        covered[s:s + width] += 1
    assert covered.min() == 1
    if n > room:
        shared = width - np.diff(starts)  # tokens each window shares with the one before
        assert shared.min() >= overlap and shared.max() <= overlap + 1  # the overlap, up to rounding
        assert width * len(starts) - n < len(starts) * (overlap + 1)  # each token read once beyond it


@pytest.mark.parametrize("overlap,windows", [(0, "full"), (2, "full"), (0, "even"), (2, "even")])
def test_chunks_round_trip_to_the_documents_tokens(tok, overlap, windows):
    texts = [_doc(n, n) for n in (3, 12, 40, 41)] + [""]
    max_length = 12
    enc = LongText("chunks", chunk_overlap=overlap, chunk_windows=windows).encode(tok, texts, np.arange(5), max_length)
    frame = special_frame(tok)
    whole = encode(tok, texts, None, 10_000)
    ch = enc.chunks
    assert np.all(np.diff(ch.doc) >= 0) and sorted(set(ch.doc.tolist())) == list(range(5))
    for d in range(5):
        body = frame.body(whole.input_ids[d])
        assert ch.doc_tokens[d] == len(body)
        rebuilt = np.full(len(body), -1)
        for w in np.flatnonzero(ch.doc == d):
            row = np.asarray(enc.input_ids[w])
            assert len(row) <= max_length
            assert tuple(row[:len(frame.prefix)]) == frame.prefix
            assert tuple(row[len(row) - len(frame.suffix):]) == frame.suffix or not frame.suffix
            part = frame.body(row)
            seen = rebuilt[ch.start[w]:ch.start[w] + len(part)]
            assert np.all((seen == -1) | (seen == part))  # overlapping windows agree
            rebuilt[ch.start[w]:ch.start[w] + len(part)] = part
        assert np.array_equal(rebuilt, body)
    assert np.array_equal(enc.labels, np.arange(5))  # labels stay one per document
    assert np.array_equal(enc.input_labels(np.arange(len(enc))), ch.doc)


def test_head_tail_keeps_the_start_and_the_end(tok):
    long, short = _doc(60, 1), _doc(4, 2)
    frame = special_frame(tok)
    body = frame.body(encode(tok, [long], None, 10_000).input_ids[0])
    room = 16 - len(frame.prefix) - len(frame.suffix)
    enc = LongText("head-tail", head_tokens=5).encode(tok, [long, short], None, 16)
    got = frame.body(enc.input_ids[0])
    assert len(enc.input_ids[0]) == 16
    assert np.array_equal(got, np.concatenate([body[:5], body[-(room - 5):]]))
    assert np.array_equal(np.asarray(enc.input_ids[1]), encode(tok, [short], None, 16).input_ids[0])
    default = LongText("head-tail").encode(tok, [long], None, 16)  # a quarter of the window from the start
    assert np.array_equal(frame.body(default.input_ids[0])[:room // 4], body[:room // 4])
    assert enc.full_lengths[0] == len(body) + len(frame.prefix) + len(frame.suffix)


def test_truncate_is_todays_encoding(tok):
    texts = [_doc(n, n) for n in (2, 30, 80)]
    a, b = LongText().encode(tok, texts, [0, 1, 0], 16), encode(tok, texts, [0, 1, 0], 16)
    assert a.chunks is None and [list(x) for x in a.input_ids] == [list(x) for x in b.input_ids]


def test_pooling_mean_max_and_the_deciding_window():
    ch = Chunks(np.array([0, 0, 0, 1, 2, 2]), np.zeros(6, dtype=np.int64), np.array([30, 5, 20]))
    logits = np.array([[0., 1.], [2., 0.], [0., 5.], [1., 1.], [3., 0.], [0., 0.]], dtype=np.float32)
    np.testing.assert_allclose(ch.pooled(logits), [[2 / 3, 2.], [1., 1.], [1.5, 0.]])
    ch.pool = "max"
    np.testing.assert_allclose(ch.pooled(logits), [[2., 5.], [1., 1.], [3., 0.]])
    assert ch.deciding(logits, np.array([1, 0, 0])).tolist() == [2, 0, 0]
    s = ch.summary(logits, ch.pooled(logits))
    assert s["windows"] == 6 and s["several_windows"] == 2 and s["deciding_window"] == {"first": 1, "middle": 0,
                                                                                          "last": 1}


def test_an_epoch_draws_one_window_per_document_seeded():
    ch = Chunks(np.repeat(np.arange(50), np.arange(1, 51)), np.zeros(1275, dtype=np.int64), np.ones(50, dtype=np.int64))
    a, b, c = ch.epoch_rows(1, 0), ch.epoch_rows(1, 0), ch.epoch_rows(1, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(ch.doc[a], np.arange(50))  # exactly one window of each document


def test_knobs_that_do_not_fit_the_window_are_refused(tok):
    frame = special_frame(tok)
    with pytest.raises(ConfigError, match="chunk_overlap"):
        LongText("chunks", chunk_overlap=30).check(16, frame)
    with pytest.raises(ConfigError, match="head_tokens"):
        LongText("head-tail", head_tokens=30).check(16, frame)
    with pytest.raises(ConfigError, match="pairs"):
        LongText("chunks").encode(tok, ["film"], None, 16, pairs=["plot"])


def test_chunked_helper_without_a_frame():
    from loraclf.data import Encoded
    from loraclf.data.long import Frame

    whole = Encoded([list(range(10))], np.zeros(1, dtype=np.int64))
    enc = chunked(whole, Frame((), ()), 4, 1, 32, "mean")
    assert [list(map(int, r)) for r in enc.input_ids] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
