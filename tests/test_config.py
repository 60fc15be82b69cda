import pytest

from loraclf.config import (
    Config,
    check_field,
    choices,
    default,
    flatten,
    load_config,
    parse_override,
    reference,
    set_dotted,
)
from loraclf.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "lora.r=16", "train.eval_steps=50", "data.text_column=[a, b]",
                             "model.trust_remote_code=false"])
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
    ("train.metric=speed", "train.metric must be auto or one of"),
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


def test_default_and_choices_read_the_dataclasses():
    assert default("train.eval_batch_size") == Config().train.eval_batch_size == 128
    assert default("output_dir") == "runs" and default("lora.auto_ranks") == [1, 2, 4, 8, 16, 32, 64]
    default("lora.auto_ranks").append(128)  # a fresh list each time: defaults cannot be changed by callers
    assert default("lora.auto_ranks")[-1] == 64
    assert choices("model.method") == ("lora", "head", "full", "zero-shot") and choices("train.lr") == ()
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        default("train.lrr")


def test_check_field_uses_the_config_types():
    assert check_field("lora.r", "4") == 4 and check_field("train.lr", "1e-3") == pytest.approx(1e-3)
    assert check_field("lora.target_modules", ["query"]) == ["query"]
    for dotted, value, needle in [("train.lrr", 1, "unknown config field 'train.lrr' (did you mean 'train.lr'?)"),
                                  ("train.epochs", "many", "config field 'train.epochs' must be a number"),
                                  ("model.method", "qlora", "'model.method' must be one of")]:
        with pytest.raises(ConfigError) as e:
            check_field(dotted, value)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_set_dotted_and_flatten_are_inverse():
    tree: dict = {"train": 3}
    set_dotted(tree, "train.lr", 0.1)  # a non-mapping parent is replaced
    set_dotted(tree, "lora.target_modules", ["q"])
    set_dotted(tree, "seed", 1)
    assert tree == {"train": {"lr": 0.1}, "lora": {"target_modules": ["q"]}, "seed": 1}
    assert flatten(tree) == {"train.lr": 0.1, "lora.target_modules": ["q"], "seed": 1}


def test_a_named_tracker_need_not_be_installed_to_load(monkeypatch, tmp_path):
    """Reading a config never checks the machine: a W&B run's config.yaml loads without wandb
    (tracking.check_installed does that when a run starts)."""
    from loraclf.training import tracking

    monkeypatch.setattr(tracking, "tracker_installed", lambda name: False)
    cfg = load_config(None, ["report.trackers=[wandb, mlflow]"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").report.trackers == ["wandb", "mlflow"]
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        load_config(None, ["report.trackers=[neptune]"])
