"""The layout the README promises: five stages in front, no stage importing another, dvc.yaml's code deps
covering every module a stage imports, the checkpoint fingerprint hashing that same code, ruff clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.params import read_yaml
from stages.metrics import scoring
from stages.training import checkpoints
from tests.helpers import REPO_ROOT

STAGES = ("prepare", "tokenize", "subset", "train", "evaluate")
STAGES_DIR = REPO_ROOT / "stages"


def dvc_stages() -> dict:
    return read_yaml((REPO_ROOT / "dvc.yaml").read_text(), "dvc.yaml")["stages"]


def module_file(name: str) -> Path | None:
    """The file of module `stages.x.y`, or None when it is not one (an attribute of a package)."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The files of the `stages` modules that `path` imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != "stages":
                continue
            parts = name.split(".")
            for depth in range(2, len(parts) + 1):  # the packages on the way are imported too
                if (file := module_file(".".join(parts[:depth]))) is not None:
                    found.add(file)
    return found


def import_closure(path: Path) -> set[Path]:
    seen, todo = {path}, [path]
    while todo:
        for file in imported_files(todo.pop()) - seen:
            seen.add(file)
            todo.append(file)
    return seen


def declared_code(stage: str) -> list[Path]:
    return [REPO_ROOT / dep for dep in dvc_stages()[stage]["deps"] if dep.startswith("stages/")]


def covered(path: Path, declared: list[Path]) -> bool:
    return any(path == dep or path.is_relative_to(dep) for dep in declared)


def test_stages_folder_opens_with_the_five_stages_and_folders_of_helpers() -> None:
    modules = sorted(p.stem for p in STAGES_DIR.glob("*.py") if p.name != "__init__.py")
    assert modules == sorted(STAGES)
    assert list(dvc_stages()) == list(STAGES)
    folders = sorted(p.name for p in STAGES_DIR.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == ["common", "data", "gate", "metrics", "training"]
    # The package's own __init__ is imported by every stage but declared by none: it must stay a docstring.
    body = ast.parse((STAGES_DIR / "__init__.py").read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_is_run_and_main_and_imports_no_other_stage(stage: str) -> None:
    path = STAGES_DIR / f"{stage}.py"
    functions = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert {"run", "main"} <= functions
    others = {STAGES_DIR / f"{other}.py" for other in STAGES if other != stage}
    assert not import_closure(path) & others, f"{stage} imports another stage"


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_declares_every_module_a_stage_imports(stage: str) -> None:
    declared = declared_code(stage)
    needed = import_closure(STAGES_DIR / f"{stage}.py") - {STAGES_DIR / "__init__.py"}
    missing = sorted(str(p.relative_to(REPO_ROOT)) for p in needed if not covered(p, declared))
    assert not missing, f"dvc.yaml stage {stage!r}: code it imports is not in its deps: {missing}"
    # And nothing it does not use: a dep that no imported file lies in reruns the stage for nothing.
    unused = [str(d.relative_to(REPO_ROOT)) for d in declared if not any(covered(p, [d]) for p in needed)]
    assert not unused, f"dvc.yaml stage {stage!r}: code deps it never imports: {unused}"


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_the_metric_modules_loaded_by_path_are_deps(stage: str) -> None:
    assert covered(scoring.METRIC_MODULES, declared_code(stage))


def test_checkpoint_fingerprint_hashes_exactly_train_s_declared_code() -> None:
    files = checkpoints.stage_code_files("train")
    assert set(files) >= import_closure(STAGES_DIR / "train.py") - {STAGES_DIR / "__init__.py"}
    assert all(covered(f, declared_code("train")) for f in files)
    assert set(files) >= set(scoring.METRIC_MODULES.rglob("*.py"))
    assert not [f for f in files if "__pycache__" in f.parts]


def test_checkpoint_fingerprint_changes_with_a_new_helper_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(STAGES_DIR, project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    before = checkpoints.stage_code_files("train", root=project)
    (project / "stages" / "training" / "new_helper.py").write_text("X = 1\n")
    assert checkpoints.stage_code_files("train", root=project) == sorted(
        [*before, project / "stages" / "training" / "new_helper.py"]
    )


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(args: list[str]) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is not installed in this environment (requirements.txt pins it)"
    result = subprocess.run([ruff, *args, "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_table_names_each_stage_s_helper_folders() -> None:
    rows = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    table = {cells[0]: cells[2] for cells in (row.strip("| ").split(" | ") for row in rows) if cells[0] in STAGES}
    assert list(table) == list(STAGES)
    for stage, helpers in table.items():
        folders = sorted(str(p.relative_to(STAGES_DIR)) for p in declared_code(stage) if p.is_dir())
        assert sorted(name.strip("` ") for name in helpers.split(",")) == folders, stage
