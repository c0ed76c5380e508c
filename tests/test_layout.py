"""The product's modules import each other without cycles, lazy (function-level) imports included: a cycle
hidden inside a function is still a cycle, only one that breaks at run time instead of at import."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("annotation", "training", "compx_site")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
            if "migrations" not in path.parts}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function, as absolute dotted names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the product modules it imports. Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``
    too, so those count as imported as well."""
    modules = product_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target in imported_names(path, name):
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                imported = ".".join(parts[:end])
                if imported in modules and imported != name and not name.startswith(f"{imported}."):
                    graph[name].add(imported)
    return graph


def test_the_graph_sees_the_imports_it_must():
    graph = import_graph()
    assert "annotation.models" in graph["annotation.admin"]
    assert "annotation.profiles.generation" in graph["annotation.tasks"]  # imported inside the task
    assert "annotation.models" in graph["training.models"]


def test_no_module_imports_itself_back():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as error:
        cycle = error.args[1]
        raise AssertionError("import cycle: " + " → ".join(reversed(cycle))) from None


def test_logic_never_imports_the_tasks_that_run_it():
    """The Celery pattern: tasks import the logic; only the start layer (create a row, enqueue) imports tasks."""
    graph = import_graph()
    starters = {"annotation.start", "training.start", "annotation.demo", "annotation.tasks", "training.tasks"}
    importers = {name for name, imported in graph.items() if imported & {"annotation.tasks", "training.tasks"}}
    assert importers - starters == set()


def test_training_uses_annotation_only_through_its_public_names():
    from annotation import PUBLIC

    reached = set()
    for name, path in product_modules().items():
        if not name.startswith("training."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("annotation"):
                allowed = PUBLIC.get(node.module, set())
                reached |= {f"{name}: {node.module}.{alias.name}" for alias in node.names
                            if allowed != "*" and alias.name not in allowed}
            elif isinstance(node, ast.Import):
                reached |= {f"{name}: {alias.name}" for alias in node.names if alias.name.startswith("annotation")}
    assert reached == set(), "training reaches into annotation:\n" + "\n".join(sorted(reached))
