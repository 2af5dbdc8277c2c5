"""The package is layered: no import cycle between modules, and no module imports from a layer above its own.

Layers, bottom to top (a module may import its own layer and the ones below):
core (the modules directly in src/promptseg: params, paths, settings, images, metrics, cache, tracking,
profiles) < ingest < modeling < train < infer < score < serve. The graph is read statically (ast), every
import, also inside functions; project imports sit at the top of each module (ruff PLC0415).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "promptseg"
LAYERS = ("core", "ingest", "modeling", "train", "infer", "score", "serve")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int:
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else 0


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``infer.recipe``; a package's own name for its __init__)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("promptseg.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "promptseg":
                base = node.module.split(".", 1)[1] if "." in node.module else ""
                for a in node.names:
                    sub = f"{base}.{a.name}".lstrip(".")
                    edges.add(sub if sub in modules else base)
        graph[name] = {e for e in edges if e and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(
        f"{src} ({LAYERS[layer(src)]}) imports {dst} ({LAYERS[layer(dst)]})"
        for src, dsts in import_graph().items()
        for dst in dsts
        if layer(dst) > layer(src)
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_every_module_belongs_to_a_layer():
    """A new folder is a new layer: it must be placed in LAYERS (and so in the architecture) on purpose."""
    folders = {p.parent.name for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert folders <= set(LAYERS), f"sub-packages not placed in LAYERS: {sorted(folders - set(LAYERS))}"


def test_the_checks_catch_a_cycle_and_an_upward_edge():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("serve.cli") > layer("infer.segmenter") > layer("modeling.registry") > layer("metrics")


def test_baselines_need_no_model():
    """The no-learning baselines score masks: nothing of modeling, train or infer is in their closure."""
    graph, seen, todo = import_graph(), set(), ["score.baselines"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    assert not {n for n in seen if n.split(".")[0] in ("modeling", "train", "infer")}, sorted(seen)
