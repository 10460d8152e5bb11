"""The layering of the `velocity` package.

- `velocity.model` is the ground floor: networks, training loop, MIDI, decoding. It imports neither
  the stages, the user-facing floor, DVC nor Prefect.
- The library modules beside it (`velocity.io`, `velocity.params`, `velocity.datasets`, ...) import
  neither the stages nor the user-facing floor.
- `velocity.stages` holds only DVC stages; `velocity.pipeline` (the command, flows, studio) never
  imports a stage: what both need lives on a floor below.
- Every DVC stage declares each project module it imports, directly or not, and no project module
  it never imports (a folder dep counts when the stage imports a module under it).
"""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "velocity"


def imported_names(path: Path) -> set[str]:
    """Every dotted name `path` imports anywhere (module level, inside functions, TYPE_CHECKING)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from velocity import params`
    return names


def offenders(modules: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in modules:
        bad = sorted(n for n in imported_names(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_model_imports_nothing_above_it():
    modules = sorted((PACKAGE / "model").glob("*.py"))
    assert offenders(modules, ("velocity.stages", "velocity.pipeline", "dvc", "dvclive", "prefect")) == {}


def test_library_modules_import_no_stage_and_no_user_facing_code():
    modules = sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "datasets").glob("*.py"))
    assert offenders(modules, ("velocity.stages", "velocity.pipeline", "prefect")) == {}


def test_the_user_facing_floor_never_imports_a_stage():
    assert offenders(sorted((PACKAGE / "pipeline").glob("*.py")), ("velocity.stages",)) == {}


def test_stages_hold_only_stages():
    """Each module in velocity/stages/ is the `cmd` of a DVC stage."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {stage["cmd"].split()[2] for stage in stages.values()}
    present = {f"velocity.stages.{p.stem}" for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__"}
    assert present - modules == set()


def project_imports(path: Path) -> set[Path]:
    """Project modules `path` imports anywhere."""
    found = set()
    for name in imported_names(path):
        if name.split(".")[0] == "velocity":
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
        module = stage["cmd"].split()[2]  # python -m velocity.stages.<name> ...
        used = imported_closure(ROOT / (module.replace(".", "/") + ".py"))
        deps = [ROOT / dep for dep in stage.get("deps", [])]
        lacking = sorted(str(p.relative_to(ROOT)) for p in used if not any(p == d or d in p.parents for d in deps))
        if lacking:
            missing[name] = lacking
    assert missing == {}


def test_no_stage_declares_a_project_module_it_never_imports():
    """A declared module the stage never imports only reruns it for nothing (and misleads the reader)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    extra = {}
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]
        used = imported_closure(ROOT / (module.replace(".", "/") + ".py"))
        code = [ROOT / dep for dep in stage.get("deps", []) if (ROOT / dep) == PACKAGE or PACKAGE in (ROOT / dep).parents]
        unused = sorted(str(d.relative_to(ROOT)) for d in code if not any(p == d or d in p.parents for p in used))
        if unused:
            extra[name] = unused
    assert extra == {}
