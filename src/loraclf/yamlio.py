"""YAML from users, read safely: PyYAML's safe loader, with bounds on what a small file can ask for.

A few hundred bytes of anchors and aliases can stand for billions of values (the "billion laughs"),
an alias can point into its own anchor (a structure that contains itself), and deep nesting
exhausts the stack of PyYAML's recursive composer. Each is refused in well under a second with one
line, before anything is built from the document.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

MAX_BYTES = 1_000_000  # a config, sweep or search file; configs are a few kB
MAX_DEPTH = 50  # nested mappings and lists; a config has 3
MAX_VALUES = 100_000  # scalars once every alias is expanded; a config has about 100


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer counts depth and refuses an alias into an anchor still being built."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._open: set = set()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            if anchor in self._open:
                raise ConfigError(f"the alias *{anchor} points into its own anchor &{anchor}: the structure would "
                                  "contain itself")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(self.peek_event(), "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)


def _expanded(node, memo: dict) -> int:
    """How many scalars a node stands for once its aliases are expanded (shared nodes counted once per use)."""
    key = id(node)
    if key not in memo:
        if isinstance(node, yaml.ScalarNode):
            memo[key] = 1
        elif isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded(n, memo) for n in node.value)
        else:
            memo[key] = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    return memo[key]


def load_yaml(text: str | bytes, what: str) -> Any:
    """The document in `text`, or a ConfigError naming `what` (e.g. the file) and the problem."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ConfigError(f"{what}: {len(text):,} bytes; a config is at most {MAX_BYTES:,}")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{what}: not UTF-8 text (byte {e.start})") from None
    loader = None
    try:
        loader = _BoundedLoader(text)  # reading starts here: a control character fails at once
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded(node, {})
        if n > MAX_VALUES:
            raise ConfigError(f"{what}: its aliases expand to {n:,} values (at most {MAX_VALUES:,}); write the "
                              "values out instead of nesting aliases")
        return loader.construct_document(node)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: invalid YAML: {str(e).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
