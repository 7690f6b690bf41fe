"""Resumable training: checkpoints that are used again only by the run that made them.

`prepare(folder, fingerprint(params, data_files, code_files, versions))` returns the newest complete checkpoint
made with the same params, data and code (`fingerprint.json`), or None and starts fresh; the `MarkComplete`
callback marks each saved checkpoint complete, recording the sha256 of each of its files once they are on disk;
`finish(folder)` removes the folder once the model is written. A folder that git tracks is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from stages.common.atomic import atomic_file, fsync_tree, write_json
from stages.common.errors import UserError
from stages.common.params import read_yaml

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
COMPLETE_MARK = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def stage_code_files(stage: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """The code `stage` depends on, as `root/dvc.yaml` declares it: its deps under `stages/`, folders
    expanded to their files (without `__pycache__`, which .dvcignore leaves out too)."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():  # run outside the project: every code file, so no change goes unnoticed
        declared = ["stages"]
    else:
        deps = read_yaml(dvc_yaml.read_text(), dvc_yaml)["stages"][stage]["deps"]
        declared = [dep for dep in deps if dep == "stages" or dep.startswith("stages/")]
    files = []
    for dep in declared:
        path = root / dep
        found = [path] if path.is_file() else path.rglob("*")
        files += [f for f in found if f.is_file() and "__pycache__" not in f.relative_to(root).parts]
    return sorted(files)


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.hexdigest()


def fingerprint(
    params: dict[str, Any], data_files: list[Path], code_files: list[Path], versions: dict[str, str]
) -> dict[str, str]:
    """What a checkpoint was made with: params, data and code (with library versions), each hashed."""
    return {
        "params": _sha256(json.dumps(params, sort_keys=True, default=str).encode()),
        "data": _sha256(*(path.read_bytes() for path in sorted(data_files))),
        "code": _sha256(
            *(path.read_bytes() for path in sorted(code_files)), json.dumps(versions, sort_keys=True).encode()
        ),
    }


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders marked complete whose files are still the ones recorded at save, oldest first."""
    found = [
        (int(match.group(1)), path)
        for path in folder.glob("checkpoint-*")
        if (match := _CHECKPOINT.match(path.name)) and (path / COMPLETE_MARK).is_file()
    ]
    return [path for _, path in sorted(found) if _intact(path)]


def file_hashes(checkpoint: Path) -> dict[str, str]:
    """The sha256 of each file in `checkpoint` but its completion mark, by path inside it."""
    hashes = {}
    for path in sorted(checkpoint.rglob("*")):
        inside = path.relative_to(checkpoint).parts
        # Not the mark, nor what a writer killed while writing it left (`.COMPLETE.tmp-<pid>-*`).
        if path.is_file() and inside != (COMPLETE_MARK,) and not inside[0].startswith(f".{COMPLETE_MARK}.tmp-"):
            digest = hashlib.sha256()
            with path.open("rb") as stream:
                for block in iter(lambda: stream.read(2**20), b""):
                    digest.update(block)
            hashes[path.relative_to(checkpoint).as_posix()] = digest.hexdigest()
    return hashes


def _intact(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds exactly the files its completion mark recorded (a checkpoint copied over,
    edited or torn by a power loss does not)."""
    try:
        recorded = json.loads((checkpoint / COMPLETE_MARK).read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        recorded = None
    if recorded != file_hashes(checkpoint):
        log.info("not resuming from %s: its files are not the ones recorded when it was saved", checkpoint)
        return False
    return True


def resume_point(folder: Path, expected: dict[str, str]) -> Path | None:
    """The newest complete checkpoint in `folder` if it was made with `expected`, else None; changes
    nothing (the processes of a multi-process run read it after the launcher ran `prepare`)."""
    recorded_file = folder / FINGERPRINT_FILE
    if not recorded_file.is_file() or json.loads(recorded_file.read_text()) != expected:
        return None
    complete = complete_checkpoints(folder)
    return complete[-1] if complete else None


def git_tracked(folder: Path) -> list[str]:
    """The files in `folder` that git tracks (none outside a git work tree, or without git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=folder, capture_output=True, text=True)
    except OSError:
        return []
    return [name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else []


def prepare(folder: Path, expected: dict[str, str]) -> Path | None:
    """Make `folder` ready for this run; return the checkpoint to resume from, or None to start fresh.

    Stale checkpoints (another fingerprint, or none recorded) are removed, and the log says why. A folder that
    git tracks is a `UserError`: a checkpoint committed elsewhere would be resumed and shipped as this run's model.
    """
    resume_from = None
    if folder.exists():
        tracked = git_tracked(folder)
        if tracked:
            raise UserError(
                f"{folder}: git tracks {len(tracked)} files in it ({tracked[0]}, ...); checkpoints are resumed only "
                f"where they were written, never from a commit; untrack them with `git rm -r --cached {folder}`"
            )
        recorded_file = folder / FINGERPRINT_FILE
        recorded = json.loads(recorded_file.read_text()) if recorded_file.is_file() else None
        changed = [key for key in expected if recorded is None or recorded.get(key) != expected[key]]
        complete = complete_checkpoints(folder) if not changed else []
        if changed:
            if any(folder.glob("checkpoint-*")):
                log.info(
                    "not resuming: the checkpoints in %s were made with other %s; starting fresh",
                    folder,
                    " and ".join(changed),
                )
        elif complete:
            resume_from = complete[-1]
        else:
            log.info("no complete checkpoint in %s; starting fresh", folder)
        if resume_from is None:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / FINGERPRINT_FILE, expected)
    return resume_from


def step_of(checkpoint: Path) -> tuple[int, int]:
    """(step reached, total steps) recorded in a checkpoint's trainer state."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state["global_step"]), int(state["max_steps"])


def finish(folder: Path) -> None:
    """Drop the checkpoints once the final model is written: they hold optimizer state, and are large."""
    shutil.rmtree(folder, ignore_errors=True)


class MarkComplete(TrainerCallback):
    """Marks a checkpoint folder complete once the `Trainer` has written all of it."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # Runs once the whole folder is written: a kill mid-save leaves a checkpoint unmarked, never resumed from.
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                fsync_tree(checkpoint)  # on disk before the mark says so, or a power loss could tear it
                mark = {"step": state.global_step, "sha256": file_hashes(checkpoint)}
                with atomic_file(checkpoint / COMPLETE_MARK) as tmp:
                    tmp.write_text(json.dumps(mark, indent=1, sort_keys=True) + "\n")
