"""The layering: model/ is the ground floor and imports neither stages/, pipeline/, DVC nor Prefect."""

import ast
from pathlib import Path

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
