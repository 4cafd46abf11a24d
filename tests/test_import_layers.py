"""Import layering of arl2rt (docs/architecture.md §2): arrows between packages run only downward, and no circles.

Layers, lowest first: 0 ``errors``, ``files`` and the package root ``arl2rt/__init__.py`` (it only re-exports the
error type and the version); 1 ``plugins``; 2 ``model``; 3 ``export``; 4 ``runtime``; 5 ``parity``; 6 ``serve``
(Triton serving: built on the runtime, used only by the CLI); 7 ``cli``. A
module may import modules of its own layer or of a lower one. A module under ``arl2rt`` outside these packages has no
layer and is reported, so that a new top-level module is placed on purpose.

What counts as an arrow, anywhere in a file (the checker reads source with ``ast`` and imports nothing):

* ``import a.b`` and ``from a.b import c``, at module level, inside functions (lazy imports) and under
  ``if TYPE_CHECKING:`` (a type-only import is still a design dependency); relative imports are resolved.
  ``from pkg import name`` points at the module ``pkg.name`` if there is one, else at ``pkg``.
* A string literal that is the dotted name of an existing ``arl2rt.*`` module: ``importlib.import_module("...")``,
  ``__import__(...)`` or a table of module names a loader imports later.
* Not arrows: the parent packages that Python runs implicitly for a dotted import (``arl2rt/model/__init__.py`` for
  ``arl2rt.model.dit``). Counting them would make a package's own ``__init__`` that imports its submodules look like a
  circle with each of them.

Circles are strongly connected components of more than one module in the graph of every arrow above, lazy and
type-only ones included: an import inside a function that closes a loop still makes the design circular.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "arl2rt"
SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "errors": 0, "files": 0, "plugins": 1, "model": 2, "export": 3, "runtime": 4, "parity": 5, "serve": 6, "cli": 7,
    "__main__": 7,  # `python -m arl2rt`: the CLI
}  # fmt: skip
LAYER_NAMES = {
    0: "errors/files", 1: "plugins", 2: "model", 3: "export", 4: "runtime", 5: "parity", 6: "serve", 7: "cli",
}  # fmt: skip
_MODULE_NAME = re.compile(rf"{PACKAGE}(\.\w+)+")


@dataclass(frozen=True)
class Arrow:
    """One import of ``target`` by ``source``, written at ``path:line``; ``kind`` says how."""

    source: str
    target: str
    path: str
    line: int
    kind: str  # "module-level", "lazy" (inside a function), "type-only", "string"

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return 0 if len(parts) == 1 else LAYERS.get(parts[1])


def _layer_label(layer: int | None) -> str:
    return "no layer" if layer is None else f"{LAYER_NAMES[layer]}, layer {layer}"


def find_modules(src: Path) -> dict[str, Path]:
    """Module name -> file for every ``.py`` under ``src/arl2rt`` (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every import statement and module-name string of one file, with the context it sits in."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.found: list[tuple[str, int, str]] = []  # (target, line, kind)
        self._functions = 0
        self._type_only = 0

    def _kind(self) -> str:
        return "type-only" if self._type_only else "lazy" if self._functions else "module-level"

    def _existing(self, name: str) -> str | None:
        """``name`` if it is a module of the tree, else its longest prefix that is (None outside the package)."""
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in self.modules:
                return candidate
            parts.pop()
        return None

    def _add(self, name: str | None, line: int, kind: str | None = None) -> None:
        if name is not None and (name == PACKAGE or name.startswith(PACKAGE + ".")):
            target = self._existing(name)
            if target is not None:
                self.found.append((target, line, kind or self._kind()))

    def _visit_function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        if _is_type_checking(node.test):
            self._type_only += 1
            for stmt in node.body:
                self.visit(stmt)
            self._type_only -= 1
        else:
            for stmt in node.body:
                self.visit(stmt)
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            if not self.is_package:
                parts.pop()
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else base, node.lineno)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value) and node.value in self.modules:
            self._add(node.value, node.lineno, "string")


def module_arrows(src: Path) -> tuple[dict[str, Path], list[Arrow]]:
    """Every module of ``src/arl2rt`` and every arrow between two of them (self-imports left out)."""
    modules = find_modules(src)
    arrows = []
    for module, path in modules.items():
        collector = _ImportCollector(module, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        shown = path.relative_to(src.parent).as_posix()
        for target, line, kind in collector.found:
            if target != module:
                arrows.append(Arrow(module, target, shown, line, kind))
    return modules, arrows


def upward_arrows(arrows: list[Arrow]) -> list[Arrow]:
    """Arrows from a lower layer to a higher one (arrows from or to a module with no layer are not judged here)."""
    up = []
    for a in arrows:
        low, high = layer_of(a.source), layer_of(a.target)
        if low is not None and high is not None and high > low:
            up.append(a)
    return up


def circles(modules: dict[str, Path], arrows: list[Arrow]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, in a stable order."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for a in arrows:
        graph[a.source].add(a.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def layer_problems(src: Path) -> list[str]:
    """One line per problem: modules without a layer, upward arrows, circles (with the arrows that close them)."""
    modules, arrows = module_arrows(src)
    problems = [
        f"{path.relative_to(src.parent).as_posix()}: module {m} is in no layer (add its package to LAYERS)"
        for m, path in modules.items()
        if layer_of(m) is None
    ]
    for a in upward_arrows(arrows):
        problems.append(
            f"{a.where()}: upward {a.kind} import: {a.source} ({_layer_label(layer_of(a.source))}) -> "
            f"{a.target} ({_layer_label(layer_of(a.target))})"
        )
    for component in circles(modules, arrows):
        members = set(component)
        inside = sorted(
            (a for a in arrows if a.source in members and a.target in members), key=lambda a: (a.path, a.line)
        )
        edges = "; ".join(f"{a.where()} {a.source} -> {a.target} ({a.kind})" for a in inside)
        problems.append(f"circle among {', '.join(component)}: {edges}")
    return problems


def test_arl2rt_imports_run_only_downward_and_in_no_circle():
    problems = layer_problems(SRC)
    assert not problems, "import layering of arl2rt violated:\n" + "\n".join(problems)


# -- the checker itself, on synthetic trees ----------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, text in files.items():
        path = src / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


CLEAN = {
    "__init__.py": "from arl2rt.errors import Arl2rtError\n",
    "errors.py": "class Arl2rtError(Exception): ...\n",
    "files.py": "from arl2rt.errors import Arl2rtError\n",
    "plugins/__init__.py": "",
    "plugins/kernel.py": "from arl2rt.errors import Arl2rtError\n",
    "model/__init__.py": "",
    "model/layer.py": "from arl2rt.plugins.kernel import *\nfrom . import rope\n",
    "model/rope.py": "import arl2rt\n",
    "runtime/__init__.py": "",
    "runtime/backends.py": 'TABLE = {"torch": "arl2rt.runtime.torch_backend"}\n',
    "runtime/torch_backend.py": "from ..model import layer\n",
    "cli/__init__.py": "",
    "cli/main.py": "def main():\n    from arl2rt.runtime import backends\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    src = _tree(tmp_path, CLEAN)
    modules, arrows = module_arrows(src)
    assert layer_problems(src) == []
    found = {(a.source, a.target, a.kind) for a in arrows}
    # relative imports resolved, `from pkg import module` points at the module, strings and lazy imports seen
    assert ("arl2rt.model.layer", "arl2rt.model.rope", "module-level") in found
    assert ("arl2rt.runtime.torch_backend", "arl2rt.model.layer", "module-level") in found
    assert ("arl2rt.runtime.backends", "arl2rt.runtime.torch_backend", "string") in found
    assert ("arl2rt.cli.main", "arl2rt.runtime.backends", "lazy") in found
    assert ("arl2rt.model.rope", "arl2rt", "module-level") in found


def test_checker_reports_upward_imports_circles_and_unplaced_modules(tmp_path):
    files = {
        **CLEAN,
        # upward, inside a function: plugins -> model
        "plugins/kernel.py": "def f():\n    from arl2rt.model.rope import x\n",
        # upward, by module-name string: runtime -> cli
        "runtime/backends.py": 'import importlib\nimportlib.import_module("arl2rt.cli")\n',
        # a circle closed by a type-only import
        "runtime/streamer.py": "from arl2rt.runtime.rebase import Rebase\n",
        "runtime/rebase.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from arl2rt.runtime.streamer import Position\n"
        ),
        "extra.py": "",
    }
    problems = layer_problems(_tree(tmp_path, files))
    assert problems == [
        "src/arl2rt/extra.py: module arl2rt.extra is in no layer (add its package to LAYERS)",
        "src/arl2rt/plugins/kernel.py:2: upward lazy import: arl2rt.plugins.kernel (plugins, layer 1) -> "
        "arl2rt.model.rope (model, layer 2)",
        "src/arl2rt/runtime/backends.py:2: upward string import: arl2rt.runtime.backends (runtime, layer 4) -> "
        "arl2rt.cli (cli, layer 7)",
        "circle among arl2rt.runtime.rebase, arl2rt.runtime.streamer: "
        "src/arl2rt/runtime/rebase.py:3 arl2rt.runtime.rebase -> arl2rt.runtime.streamer (type-only); "
        "src/arl2rt/runtime/streamer.py:1 arl2rt.runtime.streamer -> arl2rt.runtime.rebase (module-level)",
    ]
