"""The layout docs/architecture.md describes, checked on the code itself.

* Layers import one way: errors ← codec, secure ← push, tools ← transport ←
  gateway ← federation ← app.  A module imports another layer only through that layer's
  package (``from ..codec import X``, X in ``codec.__all__``), never one of
  its modules.
* No import cycle between modules, counting imports inside functions too.
* No module uses another module's ``_private`` name.
* The gateway runs without the simulator: every module but ``app.up`` (the
  one command that composes the two) imports with meshsim absent.
* No ``asyncio.wait_for``: on Python 3.11 it returns the result when the
  result and a cancellation arrive in one loop turn, and the cancelled task
  carries on (``asyncio.timeout`` does not).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "coap_gateway"

#: a layer may import the layers of a lower rank only
RANKS = {"errors": 0, "codec": 1, "secure": 1, "push": 2, "tools": 2, "transport": 3, "gateway": 4, "federation": 5,
         "app": 6}
#: where the gateway meets the simulator (``coap-gateway up``)
COMPOSITION = "coap_gateway.app.up"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_module(name: str) -> bool:
    return name in MODULES


class Import:
    def __init__(self, source: str, target: str, names: list[str], line: int, via_package: bool):
        self.source, self.target, self.names, self.line, self.via_package = source, target, names, line, via_package

    def __repr__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target} {self.names}"


def imports_of(name: str) -> list[Import]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from pkg import submodule" depends on the submodule
            plain = [a.name for a in node.names if not is_module(f"{target}.{a.name}")]
            for alias in node.names:
                if is_module(f"{target}.{alias.name}"):
                    found.append(Import(name, f"{target}.{alias.name}", [], node.lineno, False))
            if plain:
                found.append(Import(name, target, plain, node.lineno, True))
        elif isinstance(node, ast.Import):
            found += [Import(name, alias.name, [], node.lineno, False) for alias in node.names]
    return found


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "coap_gateway" else None


def internal_imports() -> list[Import]:
    return [i for m in MODULES for i in imports_of(m) if i.target.split(".")[0] == "coap_gateway"]


def test_layers_import_downwards_only():
    wrong = []
    for imp in internal_imports():
        source, target = layer(imp.source), layer(imp.target)
        if source is None or target is None or source == target or source == "__main__":
            continue
        if RANKS[target] >= RANKS[source]:
            wrong.append(imp)
    assert wrong == []


def test_other_layers_are_reached_through_their_package():
    wrong = []
    for imp in internal_imports():
        source, target = layer(imp.source), layer(imp.target)
        if source in (None, "__main__") or target is None or source == target or target == "errors":
            continue
        package = importlib.import_module(f"coap_gateway.{target}")
        public = set(getattr(package, "__all__", ()))
        if imp.target != f"coap_gateway.{target}":
            # a submodule of another layer: only those its package names
            leaf = imp.target.split(".")[2] if len(imp.target.split(".")) == 3 else None
            if leaf not in public:
                wrong.append(imp)
        elif any(n not in public for n in imp.names):
            wrong.append(imp)
    assert wrong == []


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in internal_imports():
        target = imp.target
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]
        if target in MODULES and target != imp.source:
            graph[imp.source].add(target)
    # a package's __init__ imports its modules; a module importing its own
    # package (for names) would close a loop through it
    cycles = []
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


def test_no_private_names_cross_modules():
    wrong = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        imported_modules = set()
        for node in ast.walk(tree):
            # names imported from our own modules (other libraries' privates are their business)
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("coap_gateway")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        wrong.append(f"{name}: imports {alias.name}")
                    imported_modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                imported_modules.update(a.asname or a.name for a in node.names if a.name.startswith("coap_gateway"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert wrong == []


def test_no_wait_for_it_can_lose_a_cancellation():
    users = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "meshsim").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                    and getattr(node.value, "id", "") == "asyncio"):
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert users == []


def test_only_up_imports_the_simulator():
    users = sorted({i.source for m in MODULES for i in imports_of(m) if i.target.split(".")[0] == "meshsim"})
    assert users == [COMPOSITION]


def test_the_gateway_imports_without_meshsim():
    """Every module but ``app.up`` imports in an interpreter where meshsim
    cannot be found."""
    modules = [m for m in MODULES if m != COMPOSITION and not m.endswith("__main__")]
    script = (
        "import sys, importlib.abc, importlib\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'meshsim' or name.startswith('meshsim.'):\n"
        "            raise ImportError('meshsim is absent')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert not any(n == 'meshsim' or n.startswith('meshsim.') for n in sys.modules)\n"
        "print(len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # and the blocking works: up itself needs meshsim
    blocked = subprocess.run(
        [sys.executable, "-c", script.replace(f"for m in {modules!r}:", f"for m in {[COMPOSITION]!r}:")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert blocked.returncode != 0 and "meshsim is absent" in blocked.stderr


@pytest.mark.parametrize("layer_name", sorted(RANKS))
def test_every_layer_declares_its_public_names(layer_name):
    module = importlib.import_module(f"coap_gateway.{layer_name}")
    public = getattr(module, "__all__", None)
    assert public, f"coap_gateway.{layer_name} has no __all__"
    assert all(hasattr(module, n) for n in public)
    assert module.__doc__ and len(module.__doc__) > 80, "the layer's contract is written in its docstring"
