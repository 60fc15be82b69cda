"""The models a server can reach, loaded when first asked for, and inference over mixed batches of them.

- Models come from ``NAME=PATH`` arguments (loaded at start, never evicted) and from a models folder
  (``--models-dir``: every sub-folder holding an artifact or a run is a model named after the folder;
  loaded on first request, at most ``max_loaded`` of them kept, least recently used evicted). A
  request names a model, never a path: a name is checked against :data:`NAME_RE` (no separators)
  before it is joined to the folder.
- LoRA classifiers on one base share one copy of its weights (a :class:`BaseGroup`): the first is
  loaded unmerged, the others are added as PEFT adapters. Adapters of a group may differ in rank,
  target modules, task and number of labels.
- :meth:`ModelPool.infer` runs one batch of requests for any mix of models. Rows of LoRA classifiers
  on one base go through the base once, each row with its own adapter's LoRA deltas (PEFT's
  ``adapter_names``) and its own head (``Head.mixed_logits``; models/mixed.py allows heads of
  different widths); each model's task then turns its rows' logits into answers (temperature, thresholds,
  target scale). Other models run on their own. A failed batch is retried request by request, so
  only the request that fails gets an error.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import LoraclfError, printable

log = logging.getLogger("loraclf")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch (no trailing newline slips by)


class UnknownModel(LookupError):
    """A request named a model this server does not serve (the only error the server answers with 404)."""


@dataclass
class Served:
    """One model clients can name. `clf` has ``labels``, ``task`` (which words its answers) and
    ``predict_proba(texts, batch_size=)``; `adapter` is its PEFT adapter on a shared base (`group`)."""

    name: str
    clf: Any
    adapter: Optional[str] = None
    info: dict = field(default_factory=dict)
    group: Optional["BaseGroup"] = None
    pinned: bool = True  # named at start-up: never evicted
    mixable: bool = False  # its rows can share a forward pass with other adapters of its group
    tokenizer_key: str = ""
    signature: Optional[str] = None  # adapters of equal signature can take over each other's slot

    def predict_proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.adapter is not None:
            from ..models.mixed import set_adapter

            set_adapter(self.group.model if self.group is not None else self.clf.model, self.adapter)
        return self.clf.predict_proba(texts, batch_size=batch_size)


@dataclass
class BaseGroup:
    """LoRA classifiers sharing one base model (a PEFT model holding each as an adapter)."""

    key: tuple
    model: Any  # the PeftModel
    first: str  # the model whose loading brought the base in
    members: dict[str, Served] = field(default_factory=dict)
    tokenizers: dict[str, Any] = field(default_factory=dict)  # by tokenizer_key
    counter: int = 0

    def adapter_name(self) -> str:
        # PEFT adapter names become module-dict keys: served names may hold '.', these never do
        self.counter += 1
        return f"adapter{self.counter}"


# --------------------------------------------------------------------------- naming


def parse_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``[NAME=]PATH`` arguments as (name, path); the default name is the run's folder name."""
    from ..schema import artifact_dir

    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        art = artifact_dir(path)
        if not name:
            name = art.parent.name if art.name == "artifact" else art.name
        if not NAME_RE.fullmatch(name):
            raise LoraclfError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (at most 64); "
                               "give one as NAME=PATH")
        if name in {n for n, _ in out}:
            raise LoraclfError(f"two models are named {name!r}; give one another name as NAME=PATH")
        out.append((name, art))
    return out


def folder_artifact(folder: Path) -> Optional[Path]:
    """The artifact inside a models-folder entry (the folder itself, or a run's artifact/), if any."""
    for cand in (folder, folder / "artifact"):
        if (cand / "loraclf.json").is_file():
            return cand
    return None


def describe_meta(meta: dict) -> dict:
    """What /v1/models says about a model, from its loraclf.json alone (no weights loaded)."""
    from ..tasks import make_task

    info = {k: meta.get(k) for k in ("base_model", "method", "head", "format")}
    info.update(make_task(meta["task"], meta["labels"], meta.get("task_state") or {}).describe())
    return info


def _share_key(meta: dict, art: Path, base_model: Optional[str]) -> Optional[tuple]:
    """Adapters that can live on one base: same base weights and the same head (a head whose LoRA
    adapters can share its base; exports carry their own weights). Labels, ranks and tasks may differ."""
    from ..models.heads import HEADS
    from ..models.methods import method_of

    method, head = method_of(meta["method"]), HEADS.get(meta["head"])
    if not (method and method.adapters and head and head.shares_base):
        return None
    # rows of one forward pass share the padding: the pad token (decoders pool the last token that is not
    # one) and the side it goes on
    config = _json(art / "config.json")
    side = _json(art / "tokenizer_config.json").get("padding_side", "right")
    return (base_model or meta["base_model"], meta.get("base_fingerprint"), meta["head"], meta.get("quantize"),
            config.get("pad_token_id"), side)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tokenizer_key(art: Path) -> str:
    """A digest of an artifact's tokenizer files: equal digests load equal tokenizers."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(art.iterdir()):
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens"))
                            or f.suffix == ".model"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _mixable(art: Path) -> bool:
    """PEFT mixes adapters in one batch for plain LoRA (not DoRA, not other adapter kinds)."""
    acfg = _json(art / "adapter_config.json")
    return acfg.get("peft_type") == "LORA" and not acfg.get("use_dora")


# --------------------------------------------------------------------------- the pool


class ModelPool:
    """Every model a server can name; loading and eviction happen on the inference thread (`get`,
    `infer`), listing on the event loop (`names`, `describe`, `knows`): a lock keeps them consistent."""

    def __init__(self, opts, base_model: Optional[str] = None, models_dir: Optional[str | Path] = None,
                 max_loaded: Optional[int] = None):
        self.opts, self.base_model = opts, base_model
        self.models_dir = Path(models_dir) if models_dir else None
        if self.models_dir is not None and not self.models_dir.is_dir():
            raise LoraclfError(f"--models-dir {self.models_dir}: no such folder")
        if max_loaded is not None and max_loaded < 1:
            raise LoraclfError(f"--max-loaded must be at least 1, not {max_loaded}")
        self.max_loaded = max_loaded
        self.fixed: dict[str, Path] = {}
        self.loaded: OrderedDict[str, Served] = OrderedDict()  # least recently used first
        self.groups: dict[tuple, BaseGroup] = {}
        self.lock = threading.RLock()
        self.loads = self.evictions = self.refills = 0
        self._parked: list[Served] = []  # evicted adapters whose slot the load that follows may take over
        self._listing: tuple[int, frozenset[str]] = (-1, frozenset())  # (folder mtime, entry names)

    @classmethod
    def from_specs(cls, specs: Sequence[str], opts, base_model: Optional[str] = None,
                   models_dir: Optional[str | Path] = None, max_loaded: Optional[int] = None) -> "ModelPool":
        pool = cls(opts, base_model, models_dir, max_loaded)
        for name, art in parse_specs(specs):
            pool.fixed[name] = art
            pool.load(name, art, pinned=True)
        return pool

    def add(self, served: Served) -> None:
        """Serve an already loaded model under its name (tests and embedding in other programs)."""
        with self.lock:
            self.fixed.setdefault(served.name, Path("."))
            self.loaded[served.name] = served

    # ---------------------------------------------------------------- names
    def _entries(self) -> frozenset[str]:
        """The models folder's entry names, listed again only when the folder changed (its mtime)."""
        try:
            mtime = self.models_dir.stat().st_mtime_ns
            if mtime != self._listing[0]:
                self._listing = (mtime, frozenset(e.name for e in self.models_dir.iterdir()))
        except OSError:  # the folder went away: nothing in it is servable
            return frozenset()
        return self._listing[1]

    def locate(self, name: str) -> Optional[Path]:
        """The artifact a name stands for, or None. A models-folder name must be an entry of the folder
        exactly as listed (no separators, no leading dot, no other case of an entry's name)."""
        if name in self.fixed:
            return self.fixed[name]
        if self.models_dir is None or not NAME_RE.fullmatch(name) or name not in self._entries():
            return None
        return folder_artifact(self.models_dir / name)

    def knows(self, name: str) -> bool:
        return name in self.loaded or self.locate(name) is not None

    def names(self) -> list[str]:
        """Every servable name: those named at start-up, then the models folder's entries as they are now."""
        out = list(self.fixed)
        if self.models_dir is not None:
            for entry in sorted(self._entries()):
                if entry not in self.fixed and NAME_RE.fullmatch(entry) and folder_artifact(self.models_dir / entry):
                    out.append(entry)
        return out

    def describe(self) -> list[dict]:
        from ..schema import read_meta

        out = []
        for name in self.names():
            with self.lock:
                served = self.loaded.get(name)
            if served is not None:
                out.append({"name": name, "loaded": True, **served.info})
                continue
            try:
                out.append({"name": name, "loaded": False, **describe_meta(read_meta(self.locate(name)))})
            except Exception as e:  # a folder being copied in, or a broken artifact: listed, with why
                out.append({"name": name, "loaded": False, "error": printable(f"{type(e).__name__}: {e}")})
        return out

    # ---------------------------------------------------------------- loading and eviction
    def get(self, name: str, keep: Sequence[str] = ()) -> Served:
        """The loaded model, loading it first if needed; models in `keep` (the batch's) are not evicted."""
        with self.lock:
            served = self.loaded.get(name)
            if served is not None:
                self.loaded.move_to_end(name)
                return served
        art = self.locate(name)
        if art is None:
            raise UnknownModel(name)
        self.evict(keep=set(keep), room=1, park=True)  # make room first: never max_loaded + 1 in memory
        try:
            return self.load(name, art, pinned=False)
        finally:
            self._flush_parked()

    def load(self, name: str, art: Path, pinned: bool) -> Served:
        from ..schema import read_meta
        from .artifact import reads_pairs

        meta = read_meta(art)
        if reads_pairs(meta):  # requests carry one text each: a pair model would score them wrong or fail
            raise LoraclfError(f"{name}={art}: the model reads text pairs ({', '.join(meta['text_column'])}); "
                               "loraclf serve takes one text per input (use loraclf predict or the Python API)")
        key = _share_key(meta, art, self.base_model) if self.opts.share_base else None
        info = describe_meta(meta)
        # Loading runs on the inference thread (it alone changes groups and PEFT models) and outside the
        # lock, which only guards what the event loop reads: /v1/models never waits for a load.
        group = self.groups.get(key) if key is not None else None
        served = self._join(group, name, art, meta) if group is not None else self._alone(name, art, meta, key)
        served.pinned = pinned
        served.info.update(info)
        if served.group is not None:  # once here, not per batch: a new adapter's modules start in training mode
            served.group.model.eval()
        with self.lock:
            if served.group is not None:
                self.groups[served.group.key] = served.group
            self.loaded[name] = served
            self.loads += 1
        log.info("loaded model %s from %s%s", name, art,
                 f" (adapter on the base of {served.group.first})" if served.group and served.group.first != name
                 else "")
        return served

    def _alone(self, name: str, art: Path, meta: dict, key: Optional[tuple]) -> Served:
        from .artifact import load

        opts = self.opts
        clf = load(art, base_model=self.base_model, device=opts.device, merge=key is None,
                   precision=opts.precision, allow_other_base=opts.allow_other_base)
        if key is None:
            return Served(name, clf)
        from ..models.mixed import adapter_signature

        group = BaseGroup(key, clf.head.shared_model(), name)
        tok_key = tokenizer_key(art)
        group.tokenizers[tok_key] = clf.tokenizer
        served = Served(name, clf, "default", group=group, mixable=_mixable(art), tokenizer_key=tok_key,
                        signature=adapter_signature(art))
        group.members[name] = served
        return served

    def _join(self, group: BaseGroup, name: str, art: Path, meta: dict) -> Served:
        from ..models.build import load_tokenizer
        from ..models.heads import check_weights, head_class
        from ..models.mixed import adapter_signature, add_adapter, delete_adapter, refill_adapter
        from ..tasks import make_task
        from .artifact import Classifier

        check_weights(art, meta)
        task = make_task(meta["task"], meta["labels"], meta["task_state"])
        tok_key = tokenizer_key(art)  # a tokenizer takes ~10 MB: adapters with the same files share one
        tokenizer = group.tokenizers.get(tok_key) or load_tokenizer(str(art))
        signature = adapter_signature(art)
        slot = next((p for p in self._parked if p.group is group and signature and p.signature == signature), None)
        adapter = slot.adapter if slot is not None else group.adapter_name()
        try:  # a model that fails to load leaves nothing behind on the shared base
            if slot is not None:  # an evicted adapter of the same shapes: copy the weights into its slot
                self._parked.remove(slot)
                refill_adapter(group.model, art, adapter)
                self.refills += 1
            else:
                add_adapter(group.model, art, adapter)
            head = head_class(meta["head"]).attach(group.model, art, meta, tokenizer, task)
            first = next(iter(group.members.values()))
            clf = Classifier(head, meta, first.clf.device, path=art)
            clf.precision = self.opts.precision
        except BaseException:
            if adapter in group.model.peft_config:
                delete_adapter(group.model, adapter)
            raise
        group.tokenizers.setdefault(tok_key, tokenizer)
        served = Served(name, clf, adapter, group=group, info={"shares_base_with": group.first},
                        mixable=_mixable(art), tokenizer_key=tok_key, signature=signature)
        group.members[name] = served
        return served

    def evict(self, keep: set = frozenset(), room: int = 0, park: bool = False) -> None:
        """Unload least recently used models-folder models until at most max_loaded - room remain
        (models in `keep` stay: a batch that names more models than max_loaded runs whole). With `park`,
        evicted adapters stay on their base until _flush_parked, so the next load can refill one."""
        if self.max_loaded is None:
            return
        with self.lock:
            loose = [n for n, s in self.loaded.items() if not s.pinned]
            excess = len(loose) - max(0, self.max_loaded - room)
            for name in [n for n in loose if n not in keep][:max(0, excess)]:
                self._unload(self.loaded.pop(name), park)

    def _flush_parked(self) -> None:
        from ..models.mixed import delete_adapter

        while self._parked:
            served = self._parked.pop()
            delete_adapter(served.group.model, served.adapter)

    def _unload(self, served: Served, park: bool = False) -> None:
        group = served.group
        if group is not None:
            del group.members[served.name]
            if group.members:
                from ..models.mixed import delete_adapter

                if park and served.signature:
                    self._parked.append(served)
                else:
                    delete_adapter(group.model, served.adapter)  # the base stays for the others
                if not any(m.tokenizer_key == served.tokenizer_key for m in group.members.values()):
                    group.tokenizers.pop(served.tokenizer_key, None)
            else:
                del self.groups[group.key]
        self.evictions += 1
        log.info("evicted model %s (least recently used)", served.name)

    # ---------------------------------------------------------------- inference
    def infer(self, requests: Sequence[tuple[str, list[str]]], batch_size: int) -> list[Any]:
        """Per request, in order: (its model's task, its outputs), or the exception it gets. Requests for
        LoRA classifiers on one base share one forward pass; a part that fails is retried request by
        request so that only the culprit fails."""
        results: list[Any] = [None] * len(requests)
        names = {n for n, _ in requests}
        parts: dict[Any, list[tuple[int, Served, list[str]]]] = defaultdict(list)
        for i, (name, texts) in enumerate(requests):
            try:
                served = self.get(name, keep=names)
            except Exception as e:  # noqa: BLE001 - one model that cannot load fails its requests only
                results[i] = e
                continue
            group = served.group
            parts[id(group) if group is not None and served.mixable else ("alone", name)].append((i, served, texts))
        for part in parts.values():
            try:
                outputs = self._run(part, batch_size)
            except Exception as e:  # noqa: BLE001
                if len(part) == 1:
                    results[part[0][0]] = e
                    continue
                outputs = [self._alone_or_error(s, t, batch_size) for _, s, t in part]
            for (i, served, _), out in zip(part, outputs):
                results[i] = out if isinstance(out, BaseException) else (served.clf.task, out)
        self.evict()  # a batch may hold more distinct models than max_loaded: back under it afterwards
        return results

    def _run(self, part, batch_size: int) -> list[np.ndarray]:
        served = {s.name for _, s, _ in part}
        if len(served) == 1:  # one model: its own path (merged weights, ONNX, prompt heads ...)
            texts = [t for _, _, ts in part for t in ts]
            out = part[0][1].predict_proba(texts, batch_size)
            return _split(out, [len(ts) for _, _, ts in part])
        out, chunk, rows = [], [], 0
        for _, s, texts in part:  # forward passes of at most batch_size rows (a request is never split)
            if chunk and rows + len(texts) > batch_size:
                out += mixed_outputs(chunk)
                chunk, rows = [], 0
            chunk.append((s, texts))
            rows += len(texts)
        return out + mixed_outputs(chunk)

    @staticmethod
    def _alone_or_error(served: Served, texts: list[str], batch_size: int) -> Any:
        try:
            return served.predict_proba(texts, batch_size)
        except Exception as e:  # noqa: BLE001
            return e


def _split(out: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    return np.split(out, np.cumsum(sizes)[:-1]) if sizes else []


# --------------------------------------------------------------------------- mixed batches


def mixed_outputs(part: Sequence[tuple[Served, list[str]]]) -> list[np.ndarray]:
    """One forward pass of a shared base over the texts of several of its adapters; each request's
    outputs as its model alone would give them (its max_length, LoRA deltas, head and task)."""
    import torch

    from ..data import Encoded
    from ..data.batching import Collator
    from ..models.heads import model_inputs

    first = part[0][0].clf
    ids, names, encs = [], [], []
    for served, texts in part:
        enc = served.clf.head.encode(texts, None, served.clf.max_length)  # a long text may be several windows
        ids.extend(enc.input_ids)
        names.extend([served.adapter] * len(enc))
        encs.append(enc)
    enc = Encoded(ids, np.zeros(len(ids), dtype=np.int64))
    batch = Collator(enc, first.tokenizer.pad_token_id, first.head.pad_left)(list(range(len(ids))))
    shared = part[0][0].group.model  # in eval mode since its load (ModelPool.load)
    heads = {s.adapter: s.clf.head for s, _ in part}
    with torch.inference_mode(), first.autocast():
        inputs = {k: v.to(first.device) for k, v in model_inputs(batch).items()}
        logits = type(first.head).mixed_logits(shared, inputs, names, heads).float().cpu().numpy()
    # each model's rows, cut back to its own width, through its own task (temperature, thresholds, scale)
    windows = _split(logits, [len(e) for e in encs])
    return [s.clf.task.probabilities(e.documents(rows[:, :s.clf.task.num_outputs]))
            for (s, _), rows, e in zip(part, windows, encs)]
