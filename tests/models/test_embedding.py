"""The embedding head: the checkpoint's own pooling, class-prototype start, the contrastive loss, and an
artifact that reloads and exports to ONNX with the scores it was trained to give."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ENCODERS, tiny_overrides
from loraclf.errors import ConfigError, LoraclfError, ModelError
from loraclf.models.embedding import (
    HEAD_FILE,
    PROTOTYPE_SCALE,
    EmbeddingClassifier,
    checkpoint_pooling,
    length_runs,
    pool,
    supervised_contrastive,
)


def test_pooling_is_read_from_the_sentence_transformers_files(tmp_path):
    assert checkpoint_pooling(str(tmp_path)) == "mean"  # a plain checkpoint
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert checkpoint_pooling(str(tmp_path)) == "cls"
    (tmp_path / "1_Pooling" / "config.json").write_text("{not json")
    assert checkpoint_pooling(str(tmp_path)) == "mean"


def test_mean_and_max_pooling_ignore_padding():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(pool(hidden, mask, "max"), torch.tensor([[3.0, 2.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 0.0]]))


def _mask(lengths, left=False):
    width = max(lengths)
    m = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            m[i, width - n:] = 1
        else:
            m[i, :n] = 1
    return m


def _cheapest(sizes, overhead):
    """Brute force: the least cost of cutting sorted sizes into consecutive runs."""
    import itertools

    n, best = len(sizes), float("inf")
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        best = min(best, sum((b - a) * sizes[b - 1] + overhead for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize("lengths,overhead", [([3, 45, 7, 4, 26, 11, 8, 14], 16), ([5, 60, 6, 58, 7], 0),
                                              ([12, 3, 40, 41, 2, 39, 5], 64), ([9, 31, 17, 22, 4], 8)])
def test_length_runs_cut_the_fewest_tokens_and_keep_every_row_once(lengths, overhead):
    runs = length_runs(_mask(lengths), overhead)
    assert runs is not None
    rows = torch.cat([r for r, _ in runs]).tolist()
    assert sorted(rows) == list(range(len(lengths)))
    assert all(w == max(lengths[i] for i in r.tolist()) for r, w in runs)
    cost = sum(len(r) * w + overhead for r, w in runs)
    assert cost == _cheapest(sorted(lengths), overhead) < len(lengths) * max(lengths) + overhead


def test_length_runs_leave_even_or_left_padded_batches_whole():
    assert length_runs(_mask([7, 7, 7]), 0) is None  # no padding: one run
    assert length_runs(_mask([3, 40], left=True), 0) is None  # a decoder's left padding: positions would move
    assert length_runs(_mask([30, 31, 32]), 64) is None  # one more call costs more than the padding saved


def test_a_training_batch_in_runs_embeds_and_backpropagates_as_the_padded_batch(tiny_models):
    """Without dropout, the rows cut into runs give the padded batch's embeddings and gradients."""
    from transformers import AutoModel

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_models["bert"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = EmbeddingClassifier(encoder, 2, "mean")
    mask = _mask([3, 30, 4, 28, 5, 2])
    ids = torch.randint(5, 30, mask.shape) * mask
    types = torch.zeros_like(ids)
    assert length_runs(mask) is not None and len(length_runs(mask)) == 2

    def embed_and_grad(train: bool):
        model.train(train)
        model.zero_grad()
        e = model.embed(ids, mask, types)
        weights = torch.arange(1, e.shape[0] + 1)[:, None] * torch.arange(e.shape[1])
        (e * weights).sum().backward()  # a loss that weighs every row and dimension differently
        return e.detach(), encoder.embeddings.word_embeddings.weight.grad.clone()

    runs, whole = embed_and_grad(True), embed_and_grad(False)  # eval mode pads the batch as given
    torch.testing.assert_close(runs[0], whole[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(runs[1], whole[1], atol=1e-5, rtol=1e-4)


def test_supervised_contrastive_rewards_classes_that_cluster():
    labels = F.one_hot(torch.tensor([0, 0, 1, 1]), 2)
    together = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]]), dim=-1)
    mixed = together[[0, 2, 1, 3]]
    assert supervised_contrastive(together, labels) < supervised_contrastive(mixed, labels)
    # by hand for the first text: one positive (text 1) against texts 1..3
    sim = together @ together.T / 0.1
    first = -(sim[0, 1] - torch.logsumexp(sim[0, 1:], 0))
    rows = [-(sim[i, j] - torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1:]]), 0))
            for i, j in ((0, 1), (1, 0), (2, 3), (3, 2))]
    torch.testing.assert_close(supervised_contrastive(together, labels), torch.stack(rows).mean())
    assert rows[0] == pytest.approx(first.item())


def test_supervised_contrastive_without_pairs_is_zero_and_keeps_the_graph():
    e = F.normalize(torch.randn(3, 4, requires_grad=True), dim=-1)
    loss = supervised_contrastive(e, F.one_hot(torch.tensor([0, 1, 2]), 3))
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("classes,num", [((0, 1), 2), ((0, 1, 2), 3), ((0, 2), 3)])
def test_logistic_refit_scores_as_sklearn_does(classes, num):
    """train.head_refit=logistic: the layer's softmax is the fitted regression's probabilities (a binary
    fit's sigmoid included); a class train never shows gets no probability."""
    from sklearn.linear_model import LogisticRegression

    from loraclf.models.embedding import EmbeddingClassifier

    rng = np.random.default_rng(0)
    labels = np.repeat(classes, 10)
    emb = F.normalize(torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
                      + 2 * torch.as_tensor(rng.normal(size=(max(classes) + 1, 8)))[labels].float(), dim=-1)
    no_encoder = SimpleNamespace(config=SimpleNamespace(hidden_size=8))  # the layer alone is under test
    layer = EmbeddingClassifier(no_encoder, num, "mean")
    layer.set_logistic(emb, labels, num)
    probs = torch.softmax(layer.classifier(emb), -1).detach().numpy()
    want = LogisticRegression(max_iter=1000).fit(emb.numpy(), labels).predict_proba(emb.numpy())
    np.testing.assert_allclose(probs[:, list(classes)], want, atol=1e-5)
    assert probs[:, [c for c in range(num) if c not in classes]].max(initial=0.0) < 1e-6


def _train(tiny_models, synth_dir, tmp_path, arch="bert", **extra):
    import loraclf

    sets = {"model.head": "embedding", "train.epochs": 2, **extra}
    return loraclf.train(None, tiny_overrides(tiny_models[arch], synth_dir, tmp_path, **sets), quiet=True)


@pytest.mark.parametrize("arch", [a for a in ENCODERS if a != "bert"])
def test_every_encoder_trains_the_embedding_head(arch, tiny_models, synth_dir, tmp_path):
    run = _train(tiny_models, synth_dir, tmp_path, arch)
    assert run.metrics["test"]["accuracy"] >= 0.0 and (run.path / "artifact" / HEAD_FILE).is_file()


def test_prototype_start_and_refit(tiny_models, synth_dir, tmp_path):
    """Built, the layer scores the nearest class mean, 20 x (e . m - |m|^2 / 2); trained with contrastive, it
    is refitted to the class means of the trained embeddings, so the saved layer has that shape again."""
    import loraclf
    from loraclf.config import load_config
    from loraclf.data import load_data
    from loraclf.models.embedding import embed_all
    from loraclf.training.run import build_head

    cfg = load_config(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **{"model.head": "embedding"}))
    data = load_data(cfg.data, cfg.seed)
    _, head, *_ = build_head(cfg, data, quiet=True)
    tr = data.splits["train"]
    emb = embed_all(head.model, head.encode(tr.texts, tr.labels, 32), head.tokenizer.pad_token_id, 64, "cpu")
    means = torch.stack([emb[torch.as_tensor(tr.labels) == c].mean(0) for c in range(2)])
    torch.testing.assert_close(head.model.classifier.weight, PROTOTYPE_SCALE * means, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(head.model.classifier.bias, -PROTOTYPE_SCALE * means.pow(2).sum(1) / 2,
                               atol=1e-5, rtol=1e-4)

    run = _train(tiny_models, synth_dir, tmp_path, **{"train.contrastive": 1.0, "name": "refit"})
    clf = loraclf.load(run.path / "artifact")
    w, b = clf.model.classifier.weight.detach(), clf.model.classifier.bias.detach()
    means = w / PROTOTYPE_SCALE  # means of unit vectors: no longer than 1, and the bias follows their length
    assert (torch.linalg.vector_norm(means, dim=1) <= 1 + 1e-5).all()
    torch.testing.assert_close(b, -PROTOTYPE_SCALE * means.pow(2).sum(1) / 2)


def test_class_means_refit_is_the_nearest_mean_by_euclidean_distance():
    """A wide class (short mean) keeps the texts nearer its mean, which cosine to the normalised means
    would give away; a class train never shows never wins."""
    from loraclf.models.embedding import EmbeddingClassifier

    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(2, 16, generator=g), dim=-1)
    spread = torch.tensor([0.3, 2.0])  # class 1 spreads wide
    labels = torch.arange(200) % 2
    emb = F.normalize(centre[labels] + spread[labels, None] * torch.randn(200, 16, generator=g), dim=-1)
    layer = EmbeddingClassifier(SimpleNamespace(config=SimpleNamespace(hidden_size=16)), 3, "mean")
    layer.set_class_means(emb, F.one_hot(labels, 3))
    means = torch.stack([emb[labels == c].mean(0) for c in range(2)])
    nearest = torch.cdist(emb, means).argmin(1)
    assert torch.equal(layer.classifier(emb).argmax(1), nearest)
    cosine = (emb @ F.normalize(means, dim=-1).T).argmax(1)
    assert (nearest == labels).float().mean() > (cosine == labels).float().mean()


def test_artifact_reloads_and_exports_to_onnx_with_the_same_scores(tiny_models, synth_dir, tmp_path):
    import loraclf
    from loraclf.deploy.export import export

    run = _train(tiny_models, synth_dir, tmp_path, **{"train.contrastive": 0.5})
    art = run.path / "artifact"
    meta = json.loads((art / "loraclf.json").read_text())
    assert meta["head"] == "embedding" and meta["pooling"] == "mean"
    texts = ["good film and a great cast", "awful", "the plot was dull and boring"]
    clf = loraclf.load(art)
    probs = clf.predict_proba(texts)
    out = tmp_path / "onnx"
    export(art, out, "onnx")
    torch.testing.assert_close(torch.tensor(loraclf.load(out).predict_proba(texts)), torch.tensor(probs),
                               atol=1e-4, rtol=1e-3)
    with pytest.raises(LoraclfError, match="export it with --format onnx"):
        export(art, tmp_path / "hf", "hf")


def test_damaged_head_file_is_one_line(tiny_models, synth_dir, tmp_path):
    import loraclf

    art = _train(tiny_models, synth_dir, tmp_path).path / "artifact"
    (art / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read its embedding head"):
        loraclf.load(art)


def test_refusals(tiny_models, synth_dir, tmp_path):
    import loraclf

    with pytest.raises(ConfigError, match="needs an encoder"):
        _train(tiny_models, synth_dir, tmp_path, "llama")
    with pytest.raises(ConfigError, match="has no classes"):
        sets = {"model.head": "embedding", "train.contrastive": 1, "task": "regression",
                "data.path": str(_scores(tmp_path))}
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **sets), quiet=True)
    with pytest.raises(ConfigError, match="the classifier head has none: use model.head=embedding"):
        sets = {"model.head": "classifier", "train.head_refit": "logistic"}
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **sets), quiet=True)
    with pytest.raises(ConfigError, match="train.head_refit=logistic refits one score per class"):
        sets = {"model.head": "embedding", "train.head_refit": "logistic", "task": "regression",
                "data.path": str(_scores(tmp_path))}
        loraclf.train(None, tiny_overrides(tiny_models["bert"], synth_dir, tmp_path, **sets), quiet=True)


def _scores(tmp_path):
    from conftest import write_csv

    rng = np.random.default_rng(0)
    return write_csv(tmp_path / "scores.csv", [(f"text {i}", f"{rng.uniform(0, 5):.2f}") for i in range(40)])


def test_parameter_count_without_loading_matches_the_built_model(tiny_models, synth_dir, tmp_path):
    from loraclf.models.budget import param_report

    run = _train(tiny_models, synth_dir, tmp_path)
    report = param_report(run.config, num_labels=2)
    assert report["trainable"] == run.metrics["params"]["trainable"] > 0
