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


def _module_file(name: str) -> Path | None:
    """``infer.recipe`` -> src/promptseg/infer/recipe.py; a package -> its __init__.py; None if neither."""
    base = PACKAGE.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def promptseg_imports(path: Path) -> set[str]:
    """Dotted names of the promptseg modules ``path`` imports directly (``promptseg.infer.recipe`` ->
    ``infer.recipe``; ``from promptseg.infer import recipe`` too, a sub-module being imported by name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("promptseg.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "promptseg":
            package = node.module.split(".", 1)[1] if "." in node.module else ""
            subs = {f"{package}.{a.name}".lstrip(".") for a in node.names}
            found = {s for s in subs if _module_file(s) is not None and not s.endswith("__init__")}
            names |= found | ({package} if package and len(found) < len(subs) else set())
    return names


def module_closure(script: Path) -> set[str]:
    """Every promptseg module file the script runs, as repository-relative paths (package __init__ files,
    which hold only a docstring, test_every_package_init_holds_nothing_a_stage_reads, left out)."""
    seen: set[str] = set()
    todo = promptseg_imports(script)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= promptseg_imports(_module_file(name))
    files = {_module_file(name) for name in seen}
    return {str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py"}


def listed_modules(deps: list) -> set[str]:
    """The module files a stage's deps name: a ``src/`` file, or a ``src/`` folder (every module in it)."""
    listed: set[str] = set()
    for dep in deps:
        if isinstance(dep, str) and dep.startswith("src/"):
            if (ROOT / dep).is_dir():
                listed |= {str(f.relative_to(ROOT)) for f in (ROOT / dep).rglob("*.py") if f.name != "__init__.py"}
            else:
                listed.add(dep)
    return listed


def stages() -> list[tuple[str, dict]]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, body.get("do", body)) for name, body in raw.items()]


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_package_init_holds_nothing_a_stage_reads(init):
    """Importing any module runs its packages' ``__init__.py``; no stage lists them, so the top one may hold
    only the version and a sub-package's only its docstring (a constant a stage reads belongs in a module the
    stage lists, e.g. promptseg.params)."""
    tree = ast.parse(init.read_text())
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    others = [node for node in tree.body if not isinstance(node, (ast.Assign, ast.Expr))]
    assert assigned == (["__version__"] if init.parent == PACKAGE else []) and not others


@pytest.mark.parametrize("stage,body", stages(), ids=[name for name, _ in stages()])
def test_stage_deps_list_exactly_the_modules_its_script_imports(stage, body):
    script = body["cmd"].split()[1]
    assert script.startswith("stages/") and script in body["deps"], f"{stage}: its script {script} is not a dep"
    listed = listed_modules(body["deps"])
    imported = module_closure(ROOT / script) - {"src/promptseg/__init__.py"}
    missing, extra = sorted(imported - listed), sorted(listed - imported)
    assert not missing, f"dvc.yaml stage {stage} runs these modules but does not list them as deps: {missing}"
    assert not extra, f"dvc.yaml stage {stage} lists modules its script never imports: {extra}"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The reader sees an import hidden in a function body (stages import lazily to start fast)."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from promptseg.infer.tiling import tile_origins\n    return tile_origins\n")
    assert "src/promptseg/infer/tiling.py" in module_closure(script)
