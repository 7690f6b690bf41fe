"""Resumable training: checkpoints that are used again only by the run that made them.

`train` saves a `Trainer` checkpoint every `train.save_steps` steps (or each epoch) into its
checkpoint folder, beside `fingerprint.json`: hashes of the params, the training data and the code
(with the library versions) that the checkpoints were made with. A rerun resumes from the newest
complete checkpoint when all three match, and otherwise starts fresh and says which one changed.

A `Trainer` checkpoint is a folder written file by file, so a kill can leave one half-written. The
`on_save` callback runs only after the whole folder is written: it marks the folder complete, and
only marked folders are resumed from. Two checkpoints are kept, so one complete one always survives
a kill during the next save. The folder is removed once the final model is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from stages.outputs import atomic_file, write_json

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
COMPLETE_MARK = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.hexdigest()


def fingerprint(params: dict[str, Any], data_files: list[Path], code_files: list[Path], versions: dict[str, str]) -> dict[str, str]:
    """What a checkpoint was made with: params, data and code (with library versions), each hashed."""
    return {
        "params": _sha256(json.dumps(params, sort_keys=True, default=str).encode()),
        "data": _sha256(*(path.read_bytes() for path in sorted(data_files))),
        "code": _sha256(*(path.read_bytes() for path in sorted(code_files)), json.dumps(versions, sort_keys=True).encode()),
    }


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders marked complete, oldest step first."""
    found = [
        (int(match.group(1)), path)
        for path in folder.glob("checkpoint-*")
        if (match := _CHECKPOINT.match(path.name)) and (path / COMPLETE_MARK).is_file()
    ]
    return [path for _, path in sorted(found)]


def resume_point(folder: Path, expected: dict[str, str]) -> Path | None:
    """The newest complete checkpoint in `folder` if it was made with `expected`, else None; changes
    nothing (the processes of a multi-process run read it after the launcher ran `prepare`)."""
    recorded_file = folder / FINGERPRINT_FILE
    if not recorded_file.is_file() or json.loads(recorded_file.read_text()) != expected:
        return None
    complete = complete_checkpoints(folder)
    return complete[-1] if complete else None


def prepare(folder: Path, expected: dict[str, str]) -> Path | None:
    """Make `folder` ready for this run; return the checkpoint to resume from, or None to start fresh.

    Stale checkpoints (another fingerprint, or none recorded) are removed, and the log says why.
    """
    resume_from = None
    if folder.exists():
        recorded_file = folder / FINGERPRINT_FILE
        recorded = json.loads(recorded_file.read_text()) if recorded_file.is_file() else None
        changed = [key for key in expected if recorded is None or recorded.get(key) != expected[key]]
        complete = complete_checkpoints(folder)
        if changed:
            if complete:
                log.info(
                    "not resuming: the checkpoints in %s were made with other %s; starting fresh",
                    folder, " and ".join(changed),
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
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                with atomic_file(checkpoint / COMPLETE_MARK) as tmp:
                    tmp.write_text(f"step {state.global_step}\n")
