"""meshsim's layout (docs/meshsim.md, "Code layout"), checked on the code itself.

* Subpackages import one way: model ← net ← run ← web ← cli.  A module
  reaches another subpackage only through its package's public names
  (``from ..model import X``, X in ``meshsim.model.__all__``), never one of
  its modules.
* No import cycle between meshsim's modules, and no import of meshsim's own
  inside a function (a "late" import is how a cycle hides).
* meshsim uses coap_gateway only through its subpackages' public names
  (``from coap_gateway.transport import X``), never one of their modules.
* Every subpackage declares ``__all__`` and writes its layer contract in its
  docstring; ``meshsim`` itself exports exactly what other packages use, and
  they import it only as ``from meshsim import X``.
* No test module imports another test module (shared helpers are in
  conftest.py and support.py).
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "meshsim"

#: a layer may import the layers of a lower rank only ("" is meshsim/__init__.py)
RANKS = {"model": 0, "net": 1, "run": 2, "web": 3, "cli": 4, "": 5}
SUBPACKAGES = ("model", "net", "run", "web")
#: what the gateway's tests, the benchmark and ``coap-gateway up`` use
PUBLIC = ["LinkProfile", "PcapWriter", "Relay", "emulated_link_pair"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str
    #: the module imported from (a package means its __init__)
    target: str
    names: tuple[str, ...]
    line: int
    in_function: bool

    def __repr__(self) -> str:
        where = " (in a function)" if self.in_function else ""
        return f"{self.source}:{self.line} -> {self.target} {list(self.names)}{where}"


def imports_in(name: str, path: Path) -> list[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn) if node is not fn}
    found = []
    for node in ast.walk(tree):
        inside = id(node) in in_function
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            plain = tuple(a.name for a in node.names if f"{target}.{a.name}" not in MODULES)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:  # "from pkg import module"
                    found.append(Import(name, f"{target}.{alias.name}", (), node.lineno, inside))
            if plain:
                found.append(Import(name, target, plain, node.lineno, inside))
        elif isinstance(node, ast.Import):
            found += [Import(name, alias.name, (), node.lineno, inside) for alias in node.names]
    return found


IMPORTS = [i for m, p in MODULES.items() for i in imports_in(m, p)]
OWN = [i for i in IMPORTS if i.target.split(".")[0] == "meshsim"]


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_subpackages_are_the_ones_documented() -> None:
    assert {layer(m) for m in MODULES} == set(RANKS)


def test_layers_import_downwards_only() -> None:
    wrong = [i for i in OWN if layer(i.source) != layer(i.target) and RANKS[layer(i.target)] >= RANKS[layer(i.source)]]
    assert wrong == []


def test_other_layers_are_reached_through_their_package() -> None:
    wrong = []
    for imp in OWN:
        source, target = layer(imp.source), layer(imp.target)
        if source == target:
            continue
        package = importlib.import_module(f"meshsim.{target}" if target else "meshsim")
        if imp.target != package.__name__ or any(n not in package.__all__ for n in imp.names):
            wrong.append(imp)
    assert wrong == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in OWN:
        target = imp.target
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]
        if target != imp.source:
            graph[imp.source].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_late_imports_of_meshsim() -> None:
    assert [i for i in OWN if i.in_function] == []


def test_coap_gateway_is_used_through_its_subpackages_public_names() -> None:
    wrong = []
    for imp in IMPORTS:
        parts = imp.target.split(".")
        if parts[0] != "coap_gateway":
            continue
        if len(parts) != 2 or not imp.names:
            wrong.append(imp)  # a module of a subpackage, or the top package
            continue
        public = set(importlib.import_module(imp.target).__all__)
        if any(n not in public for n in imp.names):
            wrong.append(imp)
    assert wrong == []


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_declares_its_public_names_and_contract(name: str) -> None:
    package = importlib.import_module(f"meshsim.{name}")
    public = getattr(package, "__all__", None)
    assert public, f"meshsim.{name} has no __all__"
    assert all(hasattr(package, n) for n in public)
    assert package.__doc__ and "Layer contract" in package.__doc__


def test_meshsim_exports_what_other_packages_use() -> None:
    import meshsim

    assert sorted(meshsim.__all__) == PUBLIC
    assert all(hasattr(meshsim, n) for n in PUBLIC)


def outside_python_files() -> list[Path]:
    tests = ROOT / "tests"
    files = [*(ROOT / "coap_gateway").rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *tests.rglob("*.py")]
    # node_modules: npm packages (Node itself ships a Python file), not the project's
    return [f for f in files if (tests / "meshsim") not in f.parents and "node_modules" not in f.parts]


def test_other_packages_import_meshsim_as_a_whole() -> None:
    wrong = []
    for path in outside_python_files():
        for imp in imports_in(module_name(path), path):
            if imp.target.split(".")[0] != "meshsim":
                continue
            if imp.target != "meshsim" or any(n not in PUBLIC for n in imp.names):
                wrong.append(f"{path.relative_to(ROOT)}:{imp.line} {imp.target} {list(imp.names)}")
    assert wrong == []


def test_no_test_module_imports_another() -> None:
    tests = ROOT / "tests" / "meshsim"
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for imp in imports_in(module_name(path), path):
            if imp.target.startswith("tests.") and any(
                    part.startswith("test_") for part in (imp.target.rpartition(".")[2], *imp.names)):
                wrong.append(imp)
    assert wrong == []
