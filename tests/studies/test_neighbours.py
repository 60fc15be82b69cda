"""The audit's second opinion (loraclf.studies.neighbours): each text's nearest other texts, their labels
blended into its out-of-fold probabilities, and a flip that the fold model cannot see found by its
neighbours."""

import dataclasses

import numpy as np
import pytest

from loraclf.config import ModelConfig
from loraclf.studies import neighbours as nb
from loraclf.tasks import Predictions, make_task


def _groups(n_groups: int, size: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors in `n_groups` tight clusters of `size` rows each, the clusters far apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    e = np.repeat(centres, size, axis=0) + 0.01 * rng.normal(size=(n_groups * size, dim))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_nearest_are_the_other_rows_of_the_cluster_never_the_row_itself():
    emb = _groups(6, 4)
    idx = nb.nearest(emb, 3)
    assert idx.shape == (24, 3)
    for i, row in enumerate(idx):
        assert i not in row and set(row) == set(range(i // 4 * 4, i // 4 * 4 + 4)) - {i}


def test_nearest_gives_the_same_rows_in_blocks_as_at_once(monkeypatch):
    emb = _groups(40, 5)
    at_once = nb.nearest(emb, 4)
    monkeypatch.setattr(nb, "SIMILARITIES", 1)  # blocks of 64 rows
    assert (np.sort(nb.nearest(emb, 4), axis=1) == np.sort(at_once, axis=1)).all()


def test_nearest_searches_a_seeded_pool_when_there_are_too_many_rows(monkeypatch):
    monkeypatch.setattr(nb, "POOL_MAX", 10)
    emb = _groups(5, 6)
    idx = nb.nearest(emb, 2)
    pool = set(np.unique(idx))
    assert len(pool) <= 10 and all(i not in row for i, row in enumerate(idx))
    assert (nb.nearest(emb, 2) == idx).all()  # the same draw every time


def test_label_indicator_makes_class_ids_one_hot_and_keeps_label_sets():
    single = Predictions(["a", "b"], np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert nb.label_indicator(single).tolist() == [[0, 1], [1, 0]]
    sets = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.float32)
    assert nb.label_indicator(Predictions(["a", "b"], sets, np.full((2, 3), 0.5))).tolist() == sets.tolist()


def _blind_fold_model(monkeypatch, emb: np.ndarray) -> None:
    """Neighbours from `emb` in place of a checkpoint's embeddings."""
    monkeypatch.setattr(nb, "neighbour_model", lambda cfg: cfg)
    monkeypatch.setattr(nb, "embed_texts", lambda texts, cfg, max_length, quiet: emb)


def test_a_flip_the_fold_model_cannot_see_is_found_by_its_neighbours(monkeypatch):
    # 20 clusters of 5 near-identical texts, one label a cluster; in 8 clusters one row's label is flipped.
    # The fold model says 50/50 for every text, so confident learning alone has nothing to go on.
    emb = _groups(20, 5)
    gold = np.repeat(np.arange(20) % 2, 5)
    flipped = [c * 5 + 2 for c in range(0, 16, 2)]
    gold[flipped] = 1 - gold[flipped]
    p = Predictions([f"t{i}" for i in range(100)], gold, np.full((100, 2), 0.5))
    task = make_task("single-label", ["negative", "positive"])
    assert task.label_issues(p) == []
    _blind_fold_model(monkeypatch, emb)
    blended, agree, done = nb.blend_with_neighbours(p, ModelConfig(), k=4, weight=0.4)
    assert done["k"] == 4 and done["weight"] == 0.4
    assert set(np.flatnonzero(agree == 0)) == set(flipped)  # none of a flipped row's neighbours shares its label
    found = [x["row"] for x in task.label_issues(blended)]
    assert set(found[:len(flipped)]) == set(flipped)
    assert all(x["suggested"] != x["given"] for x in task.label_issues(blended)[:len(flipped)])


def test_neighbours_move_a_label_set_towards_the_sets_around_it(monkeypatch):
    emb = _groups(4, 5)
    gold = np.repeat(np.eye(4, 3, dtype=np.float32), 5, axis=0)  # cluster c carries label c (the last: none)
    gold[0] = [0, 1, 0]  # a wrong set in cluster 0
    p = Predictions([f"t{i}" for i in range(20)], gold, np.full((20, 3), 0.5))
    _blind_fold_model(monkeypatch, emb)
    blended, agree, _ = nb.blend_with_neighbours(p, ModelConfig(), k=4, weight=0.5)
    assert agree[0] == 0 and agree[1] == pytest.approx(0.75)
    assert blended.outputs[0].tolist() == pytest.approx([0.75, 0.25, 0.25])


@pytest.mark.parametrize("arch,own", [("distilbert", True), ("llama", False)])
def test_a_decoder_run_finds_neighbours_with_the_bundled_sentence_encoder(tiny_models, arch, own):
    cfg = dataclasses.replace(ModelConfig(), name=str(tiny_models[arch]))
    assert nb.neighbour_model(cfg).name == (cfg.name if own else nb.FALLBACK_MODEL)


def test_embeddings_are_unit_length_and_equal_for_equal_texts(tiny_models):
    cfg = dataclasses.replace(ModelConfig(), name=str(tiny_models["bert"]))
    e = nb.embed_texts(["a good film", "bad", "a good film"] * 30, cfg, 32, quiet=True)
    assert e.shape[0] == 90 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(e[0], e[2], atol=1e-5) and not np.allclose(e[0], e[1], atol=1e-3)
