"""The package structure stays as issue 24 left it: no import cycles, and the layering rules.

Read from the source (the AST of every module under ``pipeline/`` and ``consumers/``),
nothing is imported.  An import ``from a.b import c`` names the module ``a.b.c`` if that
is a module of ours, else ``a.b``; relative imports are resolved against the module's
package.  A submodule's import does not count as an import of its parent packages
(Python runs their ``__init__`` first, but that is the package pattern, not a cycle).

- **Cycles** count the imports that run when a module is imported -- at module level,
  including inside top-level ``if``/``try``/``with`` blocks and class bodies -- and those
  under ``if TYPE_CHECKING:`` (a cycle for the type checker is still a cycle in the
  design).  Imports inside functions (lazy imports, e.g. a CLI loading its
  subcommands' modules when it runs) are excluded: they do not run at import time and
  are how an entry point is allowed to name what it starts.
- **Layering rules** count every import, function-level ones too: ``consumers/`` never
  imports ``pipeline.assembler`` (consumers read the document contract,
  ``pipeline.documents``), ``pipeline.codec`` never imports ``pipeline.reader`` (the
  values both use live in ``pipeline.values``), and ``pipeline.documents`` (the
  contract shared by the assembler and the consumers) imports neither of its sides nor
  the reader.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "consumers")


@dataclass(frozen=True)
class Import:
    target: str
    """The imported module (ours: a module of the tree; else the dotted name as written)."""
    line: int
    lazy: bool
    """Inside a function (does not run when the importing module is imported)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], lazy: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement of ``body``, nested blocks included; ``lazy``: inside a function."""
    for node in body:
        yield node, lazy
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _statements(node.body, True)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, ()):
                if isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _statements(child.body, lazy)
                elif isinstance(child, ast.stmt):
                    yield from _statements([child], lazy)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _ours(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the tree, if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in SOURCES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> list[Import]:
    path = SOURCES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[Import] = []
    for node, lazy in _statements(tree.body, False):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            found.append(Import(_ours(name) or name, node.lineno, lazy))
    return found


IMPORTS = {module: imports_of(module) for module in SOURCES}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports when imported (or type-checked)."""
    return {
        module: {i.target for i in found if not i.lazy and i.target in SOURCES} - {module}
        for module, found in IMPORTS.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _a_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, for the failure message."""
    start = component[0]
    members = set(component)
    trail = [start]
    seen = {start}
    while True:
        succ = sorted(graph[trail[-1]] & members)
        if start in succ and len(trail) > 1:
            return [*trail, start]
        step = next((s for s in succ if s not in seen), None)
        if step is None:
            return [*trail, start]
        trail.append(step)
        seen.add(step)


def _violations(where: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            f"{module}:{i.line} imports {i.target}"
            for module, found in sorted(IMPORTS.items())
            if module == where or module.startswith(where + ".")
            for i in found
            if any(i.target == f or i.target.startswith(f + ".") for f in forbidden)
        }
    )


def test_the_walk_sees_the_tree() -> None:
    """A guard for the checks below: they look at real modules and real imports."""
    assert "pipeline.reader.service" in SOURCES and "consumers.registry" in SOURCES
    graph = import_graph()
    assert "pipeline.reader.stream" in graph["pipeline.reader.service"]
    assert "pipeline.codec.fingerprint" in graph["pipeline.codec.schema_store"]
    # TYPE_CHECKING imports count; function-level imports do not.
    assert "pipeline.codec.schema_store" in graph["pipeline.codec.single_object"]
    assert "pipeline.reader.cli" not in graph["pipeline.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (module-level and TYPE_CHECKING imports):\n" + "\n".join(
        f"  {' -> '.join(_a_path(graph, c))}   (modules: {', '.join(c)})" for c in found
    )


def test_consumers_do_not_import_the_assembler() -> None:
    bad = _violations("consumers", ("pipeline.assembler",))
    assert not bad, "\n".join(bad)


def test_the_codec_does_not_import_the_reader() -> None:
    bad = _violations("pipeline.codec", ("pipeline.reader",))
    assert not bad, "\n".join(bad)


def test_the_document_contract_imports_neither_side() -> None:
    bad = _violations("pipeline.documents", ("pipeline.assembler", "pipeline.reader", "consumers"))
    assert not bad, "\n".join(bad)


MAX_LINES = 600
"""A module longer than this holds several jobs: split it along its seams, or say why
not in its docstring ("Longer than 600 lines because ...").  The assembler is exempt
until the mapping issue rewrites it."""


def test_no_module_over_600_lines_without_a_reason() -> None:
    too_long = []
    for module, path in SOURCES.items():
        if module.startswith("pipeline.assembler"):
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if "Longer than 600 lines because" not in " ".join(doc.split()):
            too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not too_long, f"split these, or give the reason in the docstring: {too_long}"


def test_pipeline_does_not_build_topic_names_itself() -> None:
    """Every topic name comes from pipeline/topics.py (the reader's schema is the
    user's: no ``.public.`` spelled out, no ``f"{prefix}.doc..."``)."""
    pattern = re.compile(r"\{[a-z_.]*prefix[a-z_]*\}\.(doc|dlq|public|_)|\.public\.")
    found = []
    for module, path in SOURCES.items():
        if module == "pipeline.topics":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and id(node) not in docstrings:
                text = ast.unparse(node)
                if pattern.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    assert not found, found
