"""The layering: model/ is the ground floor and imports neither stages/, pipeline/, DVC nor Prefect."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("stages", "pipeline", "dvc", "dvclive", "prefect")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_imports_nothing_above_it():
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & set(FORBIDDEN))
        for path in sorted((ROOT / "model").glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


PACKAGES = ("model", "stages", "pipeline")


def project_imports(path: Path) -> set[Path]:
    """Project modules `path` imports anywhere (module level, inside functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]  # `from stages import params`
        for name in names:
            if name.split(".")[0] in PACKAGES:
                candidate = ROOT / (name.replace(".", "/") + ".py")
                if candidate.is_file():
                    found.add(candidate)
    return found


def imported_closure(module: Path) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(project_imports(path) - seen)
    return seen


def test_every_stage_depends_on_every_project_module_it_imports():
    """A change to a shared module must rerun each stage that imports it, directly or not."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]  # python -m stages.<name> ...
        used = imported_closure(ROOT / (module.replace(".", "/") + ".py"))
        deps = {ROOT / dep for dep in stage.get("deps", [])}
        lacking = sorted(str(p.relative_to(ROOT)) for p in used - deps)
        if lacking:
            missing[name] = lacking
    assert missing == {}
