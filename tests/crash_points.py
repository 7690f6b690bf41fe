"""Crash-point testing: kill each stage at every write boundary of its output commit, and check what is left.

    python -m tests.crash_points PROJECT REPORT.json [--stages NAME ...] [--full-disk MOUNTED_TMPFS]

PROJECT is a project folder with tiny params (tests/helpers.py `new_project`). Every stage runs first at params A,
then at params B (another `data.seed`, which changes every stage's outputs); then each stage, its inputs at B and
its outputs at A, is run again once per boundary and SIGKILLed just before it. A boundary is each file opened for
writing, folder made, rename, exchange or removal that the stage performs in its outputs' staging folders or on the
outputs (seen through Python's audit hooks, so the code under test is not changed). After each kill:
- each output holds its A or its B version, whole, never neither;
- after `stages.common.atomic.recover` (what the gate and every write do first) all are A or all are B, with no
  temporary folder left;
- rerun as `dvc repro` would (outputs deleted, then the stage's command), they are B, byte for byte.
Then each write boundary that opens a file or makes a folder fails with ENOSPC instead: the stage exits with one
`error:` line and its outputs stay A. With `--full-disk DIR` (an empty small filesystem, such as a tmpfs), each
stage instead writes its outputs there, the disk filled to leave each of `FREE_FRACTIONS` of what they need, and
must fail in that one line, its A outputs whole. Each process is a fork of this one, so torch is imported once.
Writes the counts and any violation to REPORT.json; exits 1 if there is a violation.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import hashlib
import importlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.atomic import recover
from stages.common.errors import run_main
from stages.common.params import override_params_file, read_yaml

# dvclive/ is the live log of the run in progress, written as training goes, not a committed output.
LIVE_LOG = "dvclive"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_BOUNDARY_EVENTS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "shutil.rmtree",
    "stages.atomic.exchange",
}
_CREATING = {"open", "os.mkdir"}  # the boundaries a full disk fails


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    argv: list[str]
    outputs: list[Path]
    checkpoints: Path | None


@dataclass
class StageReport:
    boundaries: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    points: list[str] = field(default_factory=list)  # each boundary: its event and paths
    killed_old: int = 0  # kills after which the outputs were still A
    killed_new: int = 0  # kills after which they were already B
    reruns: int = 0
    full_disk: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)


def pipeline(project: Path) -> list[Stage]:
    """The stages of `project/dvc.yaml` in order, with their commands and declared outputs (no live log)."""
    stages = []
    for name, spec in read_yaml((project / "dvc.yaml").read_text(), "dvc.yaml")["stages"].items():
        words = shlex.split(spec["cmd"])
        assert words[:2] == ["python", "-m"], spec["cmd"]
        declared = [
            next(iter(out)) if isinstance(out, dict) else out
            for key in ("outs", "metrics", "plots")
            for out in spec.get(key, [])
        ]
        outputs = [Path(path) for path in declared if Path(path).parts[0] != LIVE_LOG]
        checkpoints = Path(words[words.index("--checkpoints") + 1]) if "--checkpoints" in words else None
        stages.append(Stage(name, words[2], words[3:], outputs, checkpoints))
    return stages


def digest(path: Path) -> str | None:
    """The content of a file or a folder tree as one hash; None where nothing is."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return None
    tree = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        if item.is_file():
            tree.update(f"{item.relative_to(path).as_posix()}\0{digest(item)}\0".encode())
    return "tree:" + tree.hexdigest()


def leftovers(project: Path, outside: Path | None = None) -> list[str]:
    """Temporary files or folders of the atomic writes, anywhere in the project (but `outside`)."""
    found = []
    for folder, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if d not in (".git", ".dvc") and Path(folder, d) != outside]
        found += [os.path.join(folder, name) for name in dirs + files if ".tmp-" in name or ".old-" in name]
    return sorted(os.path.relpath(path, project) for path in found)


class Hook:
    """The audit hook of a stage process: counts boundaries, kills or fails at one, checks fsync order."""

    def __init__(
        self,
        project: Path,
        outputs: list[Path],
        crash_at: int | None = None,
        fail_at: int | None = None,
        crash_on: str | None = None,
        kill_record: Path | None = None,
    ) -> None:
        self.project = str(project.resolve())
        self.outputs = {os.path.abspath(path) for path in outputs}
        self.crash_at, self.fail_at, self.crash_on = crash_at, fail_at, crash_on
        self.kill_record = kill_record  # where the boundary killed at is written, for a caller that sees no signal
        self.boundaries: list[str] = []
        self.fsynced: set[str] = set()
        self.unsynced: list[str] = []
        self.installed: list[str] = []  # outputs renamed into place, whose folder is not yet fsynced

    def relevant(self, path: str) -> bool:
        path = os.path.abspath(path)
        if not path.startswith(self.project + os.sep):
            return False
        return path in self.outputs or any(".tmp-" in part for part in Path(path).parts)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "stages.atomic.fsync":
            self.fsynced.add(os.path.abspath(args[0]))
            self.installed = [path for path in self.installed if os.path.dirname(path) != os.path.abspath(args[0])]
            return
        if event == "stages.atomic.commit":
            for folder, _, files in os.walk(args[0]):
                self.unsynced += [f"{folder}/{name}" for name in files if f"{folder}/{name}" not in self.fsynced]
            return
        if event not in _BOUNDARY_EVENTS:
            return
        paths = [os.fsdecode(arg) for arg in args[:2] if isinstance(arg, (str, bytes, os.PathLike))]
        if event == "open":
            mode, flags = args[1], args[2]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if not writes:
                return
            paths = paths[:1]
        if not any(self.relevant(path) for path in paths):
            return
        if event == "os.mkdir" and os.path.isdir(paths[0]):
            return  # `mkdir(exist_ok=True)` of a folder already there writes nothing
        if event == "open":
            self.fsynced.discard(os.path.abspath(paths[0]))
        if event in ("os.rename", "stages.atomic.exchange") and os.path.abspath(paths[1]) in self.outputs:
            self.installed.append(os.path.abspath(paths[1]))
        self.boundaries.append(f"{event} {' -> '.join(os.path.relpath(path, self.project) for path in paths)}")
        if len(self.boundaries) == self.crash_at or (self.crash_on and self.crash_on in self.boundaries[-1]):
            if self.kill_record:
                self.kill_record.write_text(self.boundaries[-1])
            os.kill(os.getpid(), signal.SIGKILL)
        if len(self.boundaries) == self.fail_at:
            assert event in _CREATING, event
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), paths[0])


@dataclass
class Outcome:
    status: int  # the exit status, or minus the signal that ended the process
    log: str
    boundaries: list[str]
    unsynced: list[str]
    unsynced_dirs: list[str]
    modules: list[str]


def run_stage(
    project: Path, stage: Stage, crash_at: int | None = None, fail_at: int | None = None, modules: dict | None = None
) -> Outcome:
    """Run `stage`'s command in a forked process, with the audit hook; wait for it."""
    log_path, events_path = project.parent / "crash-stage.log", project.parent / "crash-events.json"
    events_path.unlink(missing_ok=True)
    gc.freeze()  # this process's objects are never collected in the fork: its gc.collect() stays cheap
    pid = os.fork()
    if pid == 0:  # the stage process
        status = 1
        try:
            descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(descriptor, 1)
            os.dup2(descriptor, 2)
            hook = Hook(project, stage.outputs, crash_at, fail_at)
            sys.addaudithook(hook)
            sys.argv = [stage.module, *stage.argv]
            try:
                run_main(modules[stage.module].main)
                status = 0
            except SystemExit as done:
                status = done.code if isinstance(done.code, int) else 1
            sys.addaudithook(lambda *_: None)  # audit hooks cannot be removed; this one is inert after
            hook.crash_at = hook.fail_at = None
            events = {
                "boundaries": hook.boundaries,
                "unsynced": hook.unsynced,
                "unsynced_dirs": hook.installed,
                "modules": sorted(sys.modules),
            }
            events_path.write_text(json.dumps(events))
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    status = -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)
    events = json.loads(events_path.read_text()) if events_path.is_file() else {}
    return Outcome(
        status,
        log_path.read_text(errors="replace"),
        events.get("boundaries", []),
        events.get("unsynced", []),
        events.get("unsynced_dirs", []),
        events.get("modules", []),
    )


def last_shown_line(log: str) -> str:
    """The last line of `log` as a terminal shows it: a progress bar's carriage returns overwrite."""
    return (log.strip().splitlines() or [""])[-1].rsplit("\r", 1)[-1]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def put(source: Path, path: Path) -> None:
    """Make `path` a copy of `source` (nothing, where there is no `source`)."""
    remove(path)
    if source.is_dir():
        shutil.copytree(source, path)
    elif source.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)


def check_stage(project: Path, work: Path, stage: Stage, modules: dict) -> StageReport:
    """Every crash point and every full-disk point of one stage, its inputs at B and its outputs at A."""
    report, started = StageReport(), time.monotonic()
    old = {path: digest(work / "A" / path) for path in stage.outputs}
    new = {path: digest(work / "B" / path) for path in stage.outputs}

    def reset() -> None:
        for path in stage.outputs:
            put(work / "A" / path, path)
        if stage.checkpoints is not None:
            remove(stage.checkpoints)
        if leftovers(project):
            report.violations.append(f"leftovers before a run: {leftovers(project)}")

    def version(path: Path) -> str:
        found = digest(path)
        if found == old[path] == new[path]:
            return "A=B"  # the same at both params (the environment record): either will do
        return "A" if found == old[path] else "B" if found == new[path] else "neither"

    def versions() -> set[str]:
        return {version(path) for path in stage.outputs} - {"A=B"}

    def fail(message: str, outcome: Outcome | None = None) -> None:
        tail = outcome.log.strip().splitlines()[-3:] if outcome is not None else []
        report.violations.append(f"{stage.name}: {message}" + (f" (log: {' | '.join(tail)})" if tail else ""))

    reset()
    counted = run_stage(project, stage, modules=modules)
    if counted.status != 0 or versions() != {"B"}:
        fail(
            f"an uninterrupted run did not end with the B outputs: { {str(p): version(p) for p in stage.outputs} }",
            counted,
        )
        return report
    # What the stage imported as it ran (transformers imports much lazily): imported here once, not per fork.
    for module in counted.modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    report.boundaries = len(counted.boundaries)
    kinds = [boundary.split()[0] for boundary in counted.boundaries]
    report.kinds = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    report.points = counted.boundaries
    if counted.unsynced:
        fail(f"files renamed into place before they were fsynced: {counted.unsynced}")
    if counted.unsynced_dirs:
        fail(f"outputs renamed into place whose folder was not fsynced after: {counted.unsynced_dirs}")

    rerun_states = set()
    for point in range(1, report.boundaries + 1):
        reset()
        killed = run_stage(project, stage, crash_at=point, modules=modules)
        if killed.status != -signal.SIGKILL:
            fail(f"crash point {point} ({counted.boundaries[point - 1]}) was not reached", killed)
            continue
        where = f"killed at boundary {point} ({counted.boundaries[point - 1]})"
        if "neither" in versions():
            fail(f"{where}: { {str(p): version(p) for p in stage.outputs} }")
        recover(stage.outputs)
        found, left = versions(), leftovers(project, outside=stage.checkpoints and project / stage.checkpoints)
        if found not in ({"A"}, {"B"}) or left:
            fail(f"{where}, then recovered: { {str(p): version(p) for p in stage.outputs} }, leftovers {left}")
        report.killed_old += found == {"A"}
        report.killed_new += found == {"B"}
        state = (tuple(sorted(found)), stage.checkpoints is not None and stage.checkpoints.exists())
        if state in rerun_states:
            continue
        rerun_states.add(state)
        for path in stage.outputs:  # as `dvc repro` does before it runs a stage
            remove(path)
        rerun = run_stage(project, stage, modules=modules)
        report.reruns += 1
        if rerun.status != 0 or versions() != {"B"} or leftovers(project):
            fail(f"the rerun after a kill at boundary {point} did not end as an uninterrupted run", rerun)

    creating = [i + 1 for i, kind in enumerate(kinds) if kind in _CREATING]
    for point in creating:
        reset()
        failed = run_stage(project, stage, fail_at=point, modules=modules)
        report.full_disk += 1
        last_line = last_shown_line(failed.log)
        if failed.status != 1 or not last_line.startswith("error: no space left on the device"):
            fail(f"a full disk at boundary {point} did not end in one error line (status {failed.status})", failed)
        if versions() != {"A"} or leftovers(project):
            fail(f"a full disk at boundary {point} did not leave the previous outputs whole and alone")

    # The next stage reads this one's B outputs.
    reset()
    if run_stage(project, stage, modules=modules).status != 0:
        fail("the final uninterrupted run failed")
    report.seconds = round(time.monotonic() - started, 1)
    return report


# How much of the space the new outputs need is left free on the full disk, in turn.
FREE_FRACTIONS = (0.0, 0.05, 0.3, 0.7, 0.95)


def disk_usage(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else 0


def check_full_disk(project: Path, work: Path, stage: Stage, modules: dict, disk: Path) -> StageReport:
    """Run `stage` with its outputs (and checkpoints and live log) on `disk`, a small filesystem that holds
    their A versions and is filled to leave in turn each of `FREE_FRACTIONS` of what the B versions take."""
    report, started = StageReport(), time.monotonic()
    on_disk = {str(path): disk / path for path in stage.outputs}
    # train's checkpoints (weights and optimizer state) outweigh its outputs: on the full disk, a checkpoint
    # save fails first; off it, the model's commit does.
    placements = [{}] if stage.checkpoints is None else [{str(stage.checkpoints): disk / stage.checkpoints}, {}]
    for placement in placements:
        argv = [placement.get(arg, on_disk.get(arg)) or (disk / arg if arg == LIVE_LOG else arg) for arg in stage.argv]
        moved = Stage(
            stage.name, stage.module, [str(arg) for arg in argv], [disk / path for path in stage.outputs], None
        )
        _fill_and_run(project, work, stage, moved, modules, disk, report)
        if stage.checkpoints is not None:
            remove(stage.checkpoints)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _fill_and_run(
    project: Path, work: Path, stage: Stage, moved: Stage, modules: dict, disk: Path, report: StageReport
) -> None:
    needed = sum(disk_usage(work / "B" / path) for path in stage.outputs)
    filler = disk / "filler"
    for fraction in FREE_FRACTIONS:
        for item in disk.iterdir():
            remove(item)
        for path in stage.outputs:
            put(work / "A" / path, disk / path)
        with filler.open("wb") as stream:  # fill the disk, then give back what this run may use
            with contextlib.suppress(OSError):
                while True:
                    stream.write(b"\0" * 2**16)
        os.truncate(filler, max(0, filler.stat().st_size - int(fraction * needed)))
        failed = run_stage(project, moved, modules=modules)
        report.full_disk += 1
        last_line = last_shown_line(failed.log)
        report.points.append(f"{fraction:.0%} free: {last_line}")
        where = f"a full disk with {fraction:.0%} of the {needed:,} bytes needed free"
        if failed.status != 1 or not last_line.startswith("error: no space left on the device"):
            report.violations.append(f"{stage.name}: {where} ended with status {failed.status}: {last_line[-300:]}")
        intact = all(digest(disk / path) == digest(work / "A" / path) for path in stage.outputs)
        if not intact or leftovers(disk):
            report.violations.append(f"{stage.name}: {where} left outputs not whole or leftovers {leftovers(disk)}")


def set_seed(project: Path, seed: int) -> None:
    override_params_file(project / "params.yaml", {"data": {"seed": seed}})


def install_from_environment() -> None:
    """Kill this process at the first boundary that contains `CRASH_POINTS_KILL`'s text, if it runs the stage
    module that names (`CRASH_POINTS_KILL="stages.train stages.atomic.exchange"`): for a `sitecustomize.py`, so
    a stage that `dvc repro` starts is killed where a test says. The boundary is written first to the file
    `CRASH_POINTS_KILL_RECORD` names, if set: a stage under a shell shows `dvc repro` an exit status, not a signal."""
    module, _, text = os.environ.get("CRASH_POINTS_KILL", "").partition(" ")
    if not module:
        return
    found: list[Hook] = []
    starting = False

    def kill_in_stage(event: str, args: tuple[Any, ...]) -> None:
        nonlocal starting
        if not found:
            main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            if starting or main_spec is None or main_spec.name != module:
                return
            starting = True  # reading dvc.yaml raises audit events of its own
            stage = next(stage for stage in pipeline(Path.cwd()) if stage.module == module)
            record = os.environ.get("CRASH_POINTS_KILL_RECORD")
            found.append(Hook(Path.cwd(), stage.outputs, crash_on=text, kill_record=Path(record) if record else None))
        found[0](event, args)

    sys.addaudithook(kill_in_stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--stages", nargs="+", default=[], help="only these stages (default: all)")
    parser.add_argument("--full-disk", type=Path, help="an empty small filesystem: fill it instead of killing")
    args = parser.parse_args()
    project, report_path, only = args.project.resolve(), args.report.resolve(), set(args.stages)
    os.chdir(project)
    stages = pipeline(project)
    modules = {stage.module: importlib.import_module(stage.module) for stage in stages}
    work = project.parent / "crash-work"
    remove(work)
    seed = read_yaml((project / "params.yaml").read_text(), "params.yaml")["data"]["seed"]
    for version, data_seed in (("A", seed), ("B", seed + 1)):
        set_seed(project, data_seed)
        for stage in stages:
            outcome = run_stage(project, stage, modules=modules)
            if outcome.status != 0:
                sys.exit(f"the reference run {version} failed in {stage.name}:\n{outcome.log}")
            for path in stage.outputs:
                put(path, work / version / path)
    chosen = [stage for stage in stages if not only or stage.name in only]
    if args.full_disk is not None:
        reports = {stage.name: check_full_disk(project, work, stage, modules, args.full_disk) for stage in chosen}
    else:
        reports = {stage.name: check_stage(project, work, stage, modules) for stage in chosen}
    report_path.write_text(json.dumps({name: vars(report) for name, report in reports.items()}, indent=1))
    for name, report in reports.items():
        crashes = f"{report.boundaries} crash points ({report.killed_old} left A, {report.killed_new} left B), "
        print(
            f"{name}: {crashes if report.boundaries else ''}{report.reruns} reruns, {report.full_disk} full-disk "
            f"{'runs' if args.full_disk else 'points'}, {report.seconds}s, {len(report.violations)} violations"
        )
        for violation in report.violations:
            print("  " + violation)
    sys.exit(1 if any(report.violations for report in reports.values()) else 0)


if __name__ == "__main__":
    main()
