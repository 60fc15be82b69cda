import pytest

from loraclf.config import Config, load_config, parse_override, reference
from loraclf.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "lora.r=16", "train.eval_steps=50", "data.text_column=[a, b]",
                             "model.trust_remote_code=false"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.lora.r == 16 and isinstance(cfg.lora.r, int)
    assert cfg.train.eval_steps == 50
    assert cfg.data.text_column == ["a", "b"]
    assert cfg.model.trust_remote_code is False


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: minilm\n  method: head\ntrain:\n  epochs: 1\n")
    cfg = load_config(f, ["train.epochs=2"])
    assert cfg.model.method == "head" and cfg.train.epochs == 2


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "did you mean 'train.lr'"),
    ("trian.lr=1", "unknown config field 'trian'"),
    ("lora.r=abc", "lora.r"),
    ("model.method=qlora", "'model.method' must be one of"),
    ("train.epochs=0", "train.epochs must be > 0"),
    ("train.metric=speed", "train.metric must be one of"),
    ("train.class_weights=sometimes", "class_weights"),
    ("nonsense", "section.field=value"),
    ("train.compile=fast", "'train.compile' must be one of false, true, reduce-overhead, max-autotune"),
])
def test_bad_fields_are_named(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


@pytest.mark.parametrize("value,expect", [("off", False), ("false", False), ("true", True), ("on", True),
                                          ("reduce-overhead", "reduce-overhead")])
def test_compile_switch_reads_yaml_spellings(value, expect):
    assert load_config(None, [f"train.compile={value}"]).train.compile == expect


def test_parse_override_values():
    assert parse_override("train.lr=5e-4") == ("train.lr", 5e-4)
    assert parse_override("lora.target_modules=all-linear") == ("lora.target_modules", "all-linear")
    assert parse_override("train.max_grad_norm=null") == ("train.max_grad_norm", None)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["lora.r=4", "data.label_names=[neg, pos]"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_reference_documents_every_field():
    import dataclasses

    from loraclf.config import SECTIONS

    ref = reference()
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{name}.{f.name}`" in ref
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
