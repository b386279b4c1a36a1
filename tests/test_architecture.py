"""The architecture of docs/architecture.md, checked on the source: imports flow down the pipeline, never up, and no
two modules import each other (directly or through others). Lazy imports inside functions count too: they are
arrows all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sameid"

#: The stages in pipeline order (docs/architecture.md, "The flow"). A module may import its own stage, the ground
#: floor, and earlier stages; never a later one.
STAGES = ("sources", "dataset", "pairs", "models", "pipelines", "train", "generate", "synth", "recognition",
          "evaluate", "personalize", "demo", "cli", "testing")  # testing: tiny models for tests and benchmarks, above everything; src/ never imports it
#: The ground floor every stage may use; it imports nothing above itself.
GROUND = ("__init__", "errors", "records", "images", "atomic", "references", "settings", "verbosity", "backends",
          "embedding_cache", "data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the sameid modules it imports (a ``from pkg import name`` of a submodule counts as that module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def stage_of(module: str) -> int:
    """-1 for the ground floor, else the index in :data:`STAGES`."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    top = parts[1]
    if top in GROUND:
        return -1
    if top not in STAGES:
        raise AssertionError(f"module {module} belongs to no stage: add its package to STAGES or GROUND "
                             "(and to docs/architecture.md)")
    return STAGES.index(top)


def test_every_module_has_a_place():
    for module in _modules():
        stage_of(module)


def test_imports_flow_down_the_pipeline():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if target == "sameid":
                continue
            if stage_of(target) > stage_of(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a later stage into an earlier one:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    # A package's __init__ re-exporting its own submodules is the package's face, not a cycle of logic.
    graph = {m: {t for t in targets if not (m.startswith(t + ".") and t != "sameid")}
             for m, targets in import_graph().items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder(graph, expected):
    assert _cycles(graph) == expected


def test_stage_order_is_checked():
    assert stage_of("sameid.generate.run") > stage_of("sameid.train.loop") > stage_of("sameid.pairs.dataset")
    assert stage_of("sameid.atomic") == -1
    with pytest.raises(AssertionError, match="belongs to no stage"):
        stage_of("sameid.somewhere_new.module")
