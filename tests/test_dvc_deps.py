"""dvc.yaml's code deps cannot drift: each stage lists exactly the promptseg modules its script imports.

A stage that imports a module it does not list would not rerun when that module changes (a stale result
that looks fresh); one that lists a module it never imports reruns for nothing. The imports are read
statically (every ``import``, also inside functions, followed through the package), so a new import
fails this test until dvc.yaml names the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "promptseg"


def promptseg_imports(path: Path) -> set[str]:
    """Names of the promptseg modules ``path`` imports directly (``promptseg.x`` -> ``x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("promptseg.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "promptseg":  # from promptseg import x: x is a module, or a name of __init__
                names |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()} | {"__init__"}
            elif node.module.startswith("promptseg."):
                names.add(node.module.split(".")[1])
    return names


def module_closure(script: Path) -> set[str]:
    """Every promptseg module file the script runs, as repository-relative paths."""
    seen: set[str] = set()
    todo = promptseg_imports(script)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= promptseg_imports(PACKAGE / f"{name}.py")
    return {f"src/promptseg/{name}.py" for name in seen}


def stages() -> list[tuple[str, dict]]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, body.get("do", body)) for name, body in raw.items()]


def test_the_package_init_holds_nothing_a_stage_reads():
    """Importing any module runs ``promptseg/__init__.py``; no stage lists it, so it may hold only the
    version (a constant a stage reads belongs in a module the stage lists, e.g. promptseg.params)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    others = [node for node in tree.body if not isinstance(node, (ast.Assign, ast.Expr))]
    assert assigned == ["__version__"] and not others


@pytest.mark.parametrize("stage,body", stages(), ids=[name for name, _ in stages()])
def test_stage_deps_list_exactly_the_modules_its_script_imports(stage, body):
    script = body["cmd"].split()[1]
    assert script.startswith("stages/") and script in body["deps"], f"{stage}: its script {script} is not a dep"
    listed = {d for d in body["deps"] if isinstance(d, str) and d.startswith("src/")}
    imported = module_closure(ROOT / script) - {"src/promptseg/__init__.py"}
    missing, extra = sorted(imported - listed), sorted(listed - imported)
    assert not missing, f"dvc.yaml stage {stage} runs these modules but does not list them as deps: {missing}"
    assert not extra, f"dvc.yaml stage {stage} lists modules its script never imports: {extra}"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The reader sees an import hidden in a function body (stages import lazily to start fast)."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from promptseg.tiling import tile_grid\n    return tile_grid\n")
    assert "src/promptseg/tiling.py" in module_closure(script)
