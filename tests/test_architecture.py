"""The shape docs/architecture.md promises, checked on the source: readers ask the Task, Head and
Method protocols instead of comparing their names, no function is 60 lines or longer, and no two
modules import each other (through any chain, module-level or inside a function)."""

import ast
import re
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
# The names of tasks, heads and methods, and the modules that own them (where comparing them is their job).
NAMES = {"single-label", "multi-label", "regression", "classifier", "verbalizer", "generate", "lora", "head", "full",
         "zero-shot"}
HOME = ("tasks", "heads.py", "decoder_heads.py", "config.py")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (f, package)
    return out


def _constants(node: ast.Compare) -> set:
    sides = [node.left, *node.comparators]
    values = [c.value for c in sides if isinstance(c, ast.Constant)]
    values += [e.value for c in sides if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts
               if isinstance(e, ast.Constant)]
    return {v for v in values if isinstance(v, str)}


def test_no_module_outside_the_owners_compares_task_head_or_method_names():
    sites = []
    for f in SRC.rglob("*.py"):
        if any(h in f.parts or f.name == h for h in HOME):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare) and NAMES & _constants(node):
                sites.append(f"{f.relative_to(SRC)}:{node.lineno}")
    pattern = re.compile(r"==\s*['\"](%s)['\"]" % "|".join(map(re.escape, NAMES)))
    sites += [f"{f.relative_to(SRC)}: {m}" for f in SRC.rglob("*.j2") for m in pattern.findall(f.read_text())]
    assert sites == []


def test_no_function_is_60_lines_or_longer():
    long = [f"{f.relative_to(SRC)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for f in SRC.rglob("*.py")
            for n in ast.walk(ast.parse(f.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60]
    assert long == []


def _imports(mods: dict) -> dict[str, set[str]]:
    """Every loraclf module each module imports, anywhere in it (TYPE_CHECKING blocks aside)."""
    graph = {}
    for name, (f, package) in mods.items():
        tree = ast.parse(f.read_text())
        typing_only = {id(c) for n in ast.walk(tree)
                       if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test) for c in ast.walk(n)}
        base = name.split(".") if package else name.split(".")[:-1]
        deps = set()
        for n in ast.walk(tree):
            if id(n) in typing_only or not isinstance(n, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            else:
                parent = base[:len(base) - n.level + 1] if n.level else []
                root = ".".join(parent + ([n.module] if n.module else []))
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in mods else root for a in n.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = _imports(_modules())
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
