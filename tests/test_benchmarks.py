"""The speed harness runs both sides end to end on random-weight shapes (the GPU rows' path), on CPU."""

import json

import pytest

from conftest import load_benchmark


@pytest.mark.parametrize("shape,tok", [("tiny-roberta", "bert"), ("tiny-llama", "llama"), (None, "bert-nopooler")])
def test_speed_harness_on_a_random_shape(shape, tok, tiny_models, synth_dir, tmp_path, capsys):
    """Random-weight shapes (the GPU rows' path), and a checkpoint without pooler: loraclf trains the
    new pooler, and the peer is given the same modules, so both sides train the same weights."""
    speed = load_benchmark("speed")
    out = tmp_path / "res.json"
    model = ["--shape", shape, "--tokenizer", str(tiny_models[tok])] if shape else ["--model", str(tiny_models[tok])]
    res = speed.main([*model, "--data", str(synth_dir),
                      "--train-samples", "0", "--epochs", "1", "--batch", "16", "--max-length", "32",
                      "--predict-rows", "150", "--json", str(out), "--set", "train.eval_batch_size=64"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for side in ("peer", "peer_tuned", "loraclf"):
        r = res[side]
        assert r["samples_per_s"] > 0 and r["predict_per_s"] > 0
    assert res["loraclf"]["predict_cli_per_s"] > 0
    # every side trains the same weights
    trainable = {side: res[side]["trainable_params"] for side in ("peer", "peer_tuned", "loraclf")}
    assert len(set(trainable.values())) == 1, trainable
    assert res["train_rows"] == 240 and res["predict_rows"] == 150
    out_text = capsys.readouterr().out
    assert "| ratio vs notebook peer |" in out_text and "| ratio vs tuned peer |" in out_text


def test_speed_harness_refuses_overrides_that_change_the_task():
    with pytest.raises(SystemExit):
        load_benchmark("speed").main(["--set", "train.epochs=5"])


def test_shapes_have_the_real_sizes(tmp_path, tiny_models):
    """The GPU rows' shapes match the published parameter counts of the architectures they stand for."""
    from transformers import AutoConfig, AutoModel

    speed = load_benchmark("speed")
    expect = {"roberta-base": 124.6e6, "distilbert-base": 66.4e6, "smollm2-360m": 361.8e6}
    vocab = {"roberta-base": 50265, "distilbert-base": 30522, "smollm2-360m": 49152}
    for shape, params in expect.items():
        model_type, dims = speed.SHAPES[shape]
        cfg = AutoConfig.for_model(model_type, vocab_size=vocab[shape], **dims)
        import torch

        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModel.from_config(cfg).parameters())
        assert abs(n - params) / params < 0.01, (shape, n)
