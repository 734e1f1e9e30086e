"""The package's layers: each imports only the layers below it, with no cycles and no reaching
into another module's private names. Read from the source (every import, lazy ones included),
so a violation fails here before anyone has to find it by reading."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charlm"
BASE = {"errors", "atomic", "process", "version"}  # every layer may import these

# layer -> the layers it may import (besides itself and the base)
MAY_IMPORT = {
    "base": set(),
    "model": set(),
    "data": set(),
    "generation": {"model", "data"},
    "training": {"model", "data", "generation"},
    "lab": {"model", "data", "generation", "training"},
    "serve": {"model", "data", "generation"},
    "cli": {"model", "data", "generation", "training", "lab", "serve", "api"},
    "api": {"model", "data", "generation"},  # charlm/__init__.py: the public API
}
# third-party packages a layer must not need (the model knows no Lightning, the library no click)
MUST_NOT_USE = {
    "base": {"lightning", "click", "datasets"},
    "model": {"lightning", "click", "datasets"},
    "data": {"lightning", "click"},
    "generation": {"lightning", "click"},
    "training": {"click"},
    "lab": {"click"},
    "serve": {"lightning", "click"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "charlm":
        return "api"
    if parts[1] in BASE:
        return "base"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every charlm import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: a relative import; charlm imports by "
                                 f"full name, so the layer is visible")
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "charlm":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "charlm"]
    return found


def third_party(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            tops.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
    return tops


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(module: str, names: list[str]) -> list[str]:
    """The charlm modules an import loads: ``from charlm.lab import compare`` is
    charlm.lab.compare."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def graph() -> dict[str, set[str]]:
    return {m: {t for mod, names, _ in imports(p) for t in resolve(mod, names) if t != m}
            for m, p in MODULES.items()}


def test_the_layers_are_the_ones_the_design_names():
    assert {layer(m) for m in MODULES} == set(MAY_IMPORT)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward_only(module):
    mine = layer(module)
    allowed = MAY_IMPORT[mine] | {mine, "base"}
    wrong = [f"line {line}: {target} ({layer(target)})"
             for mod, names, line in imports(MODULES[module])
             for target in resolve(mod, names) if layer(target) not in allowed]
    assert not wrong, f"{module} ({mine}) imports from a layer above or beside it: {wrong}"


def private_uses(path: Path) -> list[str]:
    """``from charlm.x import _name``, and ``mod._name`` where ``mod`` is an imported charlm
    module."""
    tree, found, modules = ast.parse(path.read_text()), [], set()
    for mod, names, line in imports(path):
        found += [f"line {line}: {mod}.{n}" for n in names if n.startswith("_")
                  and not n.startswith("__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "charlm":
            modules |= {a.asname or a.name for a in node.names
                        if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.asname and a.name in MODULES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in modules and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_takes_another_modules_private_names(module):
    private = private_uses(MODULES[module])
    assert not private, f"{module} reaches into private names: {private}; add a public seam"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lower_layers_need_no_framework_above_them(module):
    banned = MUST_NOT_USE.get(layer(module), set()) & third_party(MODULES[module])
    assert not banned, f"{module} ({layer(module)}) imports {', '.join(sorted(banned))}"


def test_no_import_cycles():
    edges, state, path = graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for t in sorted(edges.get(m, ())):
            if t not in MODULES:
                continue
            if state.get(t) == "open":
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_checker_sees_what_it_must(tmp_path):
    """The rules above would catch a violation: an upward import, a private name, a cycle."""
    assert layer("charlm.model.cells") == "model" and layer("charlm.atomic") == "base"
    assert resolve("charlm.lab", ["compare"]) == ["charlm.lab.compare"]
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from charlm.training.fit import _fit\n")
    assert imports(bad) == [("charlm.training.fit", ["_fit"], 2)]
    bad.write_text("from charlm.generation import sampling\nsampling._table\n")
    assert private_uses(bad) == ["line 2: sampling._table"]
    bad.write_text("from .x import y\n")
    with pytest.raises(AssertionError, match="relative import"):
        imports(bad)


FLAG = re.compile(r"(?<![\w-])--[a-z]")


def strings_outside_docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) not in ("cli", "serve")))
def test_the_library_names_no_cli_flags(module):
    """Settings are named `field` in messages (charlm.errors); the CLI turns them into flags.
    (The server's own limits are named by its flags in its HTTP errors, on purpose.)"""
    flags = [f"line {line}: {text!r}" for line, text in strings_outside_docstrings(MODULES[module])
             if FLAG.search(text)]
    assert not flags, f"{module} names CLI flags: {flags}"
