"""The package's shape, checked: no import cycles, layers that run one way, one argparse user,
no private attribute of another library in the sweeps, and docs/settings.md current.

Layers, bottom to top: errors; data and models; regularization; config (the settings schema,
which validates models and rules); training; sweeps and reports; cli. A module may import its
own layer or lower ones, never a higher one, and the graph of modules has no cycle (imports
inside functions count too)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reglab"
LAYERS = {"errors": 0, "data": 1, "models": 1, "regularization": 2, "config": 3,
          "training": 4, "sweeps": 5, "reports": 5, "cli": 6, "__main__": 7}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """reglab modules imported anywhere in ``path`` (resolved to modules, not names)."""
    found = set()
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n.startswith("reglab")}
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None  # None: the package root (the API)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if n == "reglab":  # the root only re-exports, lazily (PEP 562)
                continue
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_layers_run_one_way():
    bad = []
    for m, deps in graph().items():
        for d in deps:
            lm, ld = layer(m), layer(d)
            if d == "reglab" and m != "reglab":
                bad.append(f"{m} imports the package root")
            elif lm is not None and ld is not None and ld > lm:
                bad.append(f"{m} (layer {lm}) imports {d} (layer {ld})")
    assert not bad, "\n".join(sorted(bad))


def test_only_cli_uses_argparse():
    users = [module_name(p) for p in SRC.rglob("*.py")
             if re.search(r"^\s*(import argparse|from argparse)", p.read_text(), re.M)]
    assert users == ["reglab.cli"], users


def test_sweeps_use_no_private_attribute():
    hits = []
    for p in (SRC / "sweeps").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\._[a-z]", code) and not re.search(r"\bself\._", code):
                hits.append(f"{p.name}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_settings_doc_is_generated_from_the_schema():
    doc = SRC.parents[1] / "docs" / "settings.md"
    out = subprocess.run([sys.executable, "-m", "reglab.config"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert doc.read_text() == out, "docs/settings.md is stale: python -m reglab.config > it"


def test_every_setting_is_declared_once_with_help_and_kind():
    from reglab.config import SETTINGS, TrainConfig

    assert list(SETTINGS) == list(TrainConfig.__dataclass_fields__)
    for s in SETTINGS.values():
        assert s.help and s.kind in ("experiment", "system") and s.group, s.name
        assert s.default == getattr(TrainConfig(), s.name)
