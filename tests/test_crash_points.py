"""Nothing lost if a stage dies at any instant: every crash point and full-disk point of every stage's outputs,
a kill under `dvc repro` that the next `dvc repro` recovers from, a committed checkpoint that a clone refuses, and
a checkpoint whose files changed since its save that is not resumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.params import with_overrides
from stages.training import checkpoints
from tests.crash_points import pipeline
from tests.helpers import REPO_ROOT, new_project, read_lock, run_cmd, set_params, stage_env, tiny_overrides

# Smaller than the tiny params: the harness runs each stage about fifty times.
CRASH_SIZES = {
    "data": {"synthetic_train_size": 64, "synthetic_test_size": 32},
    "subset": {"train_size": 32, "eval_size": 16},
    "train": {"logging_steps": 1},
}


@pytest.mark.slow
def test_every_crash_point_of_every_stage_leaves_the_old_outputs_or_the_new(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    project = new_project(tmp_path / "project", with_overrides(tiny_overrides(tiny_model_dir), CRASH_SIZES))
    report_file = tmp_path / "crash-points.json"
    env = stage_env() | {"PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.crash_points", str(project), str(report_file)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)  # the crash points tried per stage, shown with `pytest -s` or on failure
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert list(report) == [stage.name for stage in pipeline(project)]
    for name, stage in report.items():
        assert stage["violations"] == [], name
        # Both sides of each commit point were tried: some kills left the old outputs, some the new.
        assert stage["killed_old"] > 0 and stage["killed_new"] > 0, (name, stage)
        assert stage["killed_old"] + stage["killed_new"] == stage["boundaries"], (name, stage)
        assert stage["full_disk"] == stage["kinds"].get("open", 0) + stage["kinds"].get("os.mkdir", 0), (name, stage)
    # Every output's commit ends in a rename: a folder's by an atomic exchange, a file's by os.rename.
    assert report["prepare"]["kinds"]["stages.atomic.exchange"] == 1
    assert report["train"]["kinds"]["stages.atomic.exchange"] == 1  # the model folder
    assert sum(point.startswith("os.rename") and "-> reports/" in point for point in report["evaluate"]["points"]) == 4


@pytest.mark.slow
def test_a_real_full_disk_fails_each_stage_in_one_line_and_keeps_its_outputs(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A 64 MiB tmpfs in a private mount namespace: no root needed where user namespaces are allowed.
    namespace = ["unshare", "--map-root-user", "--mount"]
    probe = subprocess.run([*namespace, "true"], capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(
            f"no private mount namespace here ({probe.stderr.strip() if probe else 'no unshare'}); the injected ENOSPC "
            "of test_every_crash_point still runs"
        )
    project = new_project(tmp_path / "project", with_overrides(tiny_overrides(tiny_model_dir), CRASH_SIZES))
    disk, report_file = tmp_path / "disk", tmp_path / "full-disk.json"
    disk.mkdir()
    mount_then_run = 'mount -t tmpfs -o size=64m tmpfs "$0" && exec "$@"'
    result = subprocess.run(
        [
            *namespace,
            "sh",
            "-c",
            mount_then_run,
            str(disk),
            sys.executable,
            "-m",
            "tests.crash_points",
            str(project),
            str(report_file),
            "--full-disk",
            str(disk),
        ],
        cwd=project,
        env=stage_env() | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert {name: stage["full_disk"] for name, stage in report.items()} == {
        "prepare": 5,
        "tokenize": 5,
        "subset": 5,
        "train": 10,
        "evaluate": 5,
    }
    assert all(stage["violations"] == [] for stage in report.values())
    # pyarrow, safetensors and torch each report a full disk their own way; all end in the same line.
    train_lines = "\n".join(report["train"]["points"])
    assert (
        "error: no space left on the device (" in train_lines and "checkpoints/train" in train_lines
    )  # a checkpoint save
    assert f"while writing {disk}/models/model, " in train_lines  # the model's commit
    assert "the previous outputs are untouched" in report["prepare"]["points"][0]


def repro_killed_at(project: Path, stage_module: str, boundary: str, *args: str) -> None:
    """`dvc repro *args`, its stage `stage_module` killed (SIGKILL) at the first boundary whose text has `boundary`."""
    hooks = project.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(
        "from tests.crash_points import install_from_environment\n\ninstall_from_environment()\n"
    )
    env = stage_env() | {
        "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO_ROOT)]),
        "CRASH_POINTS_KILL": f"{stage_module} {boundary}",
        "CRASH_POINTS_KILL_RECORD": str(hooks / "killed_at"),
    }
    (hooks / "killed_at").unlink(missing_ok=True)
    killed = subprocess.run(["dvc", "repro", *args], cwd=project, env=env, capture_output=True, text=True)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    # DVC reports `-9` where the stage's shell execs it and `137` where the shell forks it (SHELL unset: sh).
    assert boundary in (hooks / "killed_at").read_text(), killed.stderr


@pytest.mark.slow
def test_dvc_repro_after_a_kill_mid_commit_ends_as_a_run_never_killed(project: Path) -> None:
    run_cmd(["dvc", "repro"], project)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "a good run"], project)
    committed = read_lock(project)
    # Killed between renaming the new model in and renaming its history in: the journal of the commit stays.
    mid_commit = "-> reports/train_epochs.csv"

    # Rerun with the committed params, `dvc repro` checks the locked outputs out of its cache; the journal,
    # which no longer describes them, is dropped by the next write instead of being redone over them.
    repro_killed_at(project, "stages.train", mid_commit, "--force", "--single-item", "train")
    assert (project / "models" / "model" / "config.json").is_file() and any(project.glob(".*.tmp-*/COMMIT"))
    run_cmd(["dvc", "repro"], project)
    assert read_lock(project) == committed
    assert run_cmd(["git", "status", "--porcelain"], project).stdout == ""  # metrics and reports byte-identical

    # New params: train runs again after the kill, resumes from its last checkpoint, and ends as a run never killed.
    set_params(project, {"train": {"learning_rate": 2e-3}})
    repro_killed_at(project, "stages.train", mid_commit)
    resumed = run_cmd(["dvc", "repro"], project)
    assert "resuming from checkpoints/train/checkpoint-" in resumed.stderr, resumed.stderr
    assert not list(project.glob(".*.tmp-*")) and not (project / "checkpoints" / "train").exists()
    after_kill, metrics = read_lock(project), (project / "metrics.json").read_text()
    run_cmd(["dvc", "repro", "--force", "--single-item", "train"], project)
    run_cmd(["dvc", "repro", "--force", "--single-item", "evaluate"], project)
    assert read_lock(project) == after_kill != committed
    assert (project / "metrics.json").read_text() == metrics


@pytest.mark.slow
def test_a_checkpoint_committed_to_git_is_refused_by_a_fresh_clone(project: Path, tmp_path: Path) -> None:
    run_cmd(["dvc", "repro", "subset"], project)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "the data stages"], project)
    # A run killed once training is done, and its checkpoints force-added to git.
    repro_killed_at(project, "stages.train", "-> models/model")
    assert list((project / "checkpoints" / "train").glob("checkpoint-*/COMPLETE"))
    run_cmd(["git", "add", "--force", "checkpoints/train"], project)
    run_cmd(["git", "commit", "-qm", "checkpoints committed by mistake"], project)
    clone = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(project), str(clone)], tmp_path)

    refused = run_cmd(["dvc", "repro"], clone, check=False)
    assert refused.returncode != 0
    tracked = len(run_cmd(["git", "ls-files", "checkpoints/train"], clone).stdout.split())
    assert (
        f"error: checkpoints/train: git tracks {tracked} files in it (checkpoint-" in refused.stderr
        and "checkpoints are resumed only where they were written, never from a commit; untrack them with "
        "`git rm -r --cached checkpoints/train`"
        in refused.stderr
    ), refused.stderr
    assert "resuming from" not in refused.stderr
    assert not (clone / "models" / "model").exists()
    assert run_cmd(["git", "status", "--porcelain", "checkpoints"], clone).stdout == ""  # nothing of it deleted


def test_a_checkpoint_whose_files_changed_since_its_save_is_not_resumed(tmp_path: Path) -> None:
    folder, expected = tmp_path / "checkpoints", {"params": "p", "data": "d", "code": "c"}
    checkpoints.prepare(folder, expected)
    for step in (5, 10):
        saved = folder / f"checkpoint-{step}"
        saved.mkdir()
        (saved / "model.safetensors").write_bytes(b"weights at %d" % step)
        mark = {"step": step, "sha256": checkpoints.file_hashes(saved)}
        (saved / checkpoints.COMPLETE_MARK).write_text(json.dumps(mark))
    assert checkpoints.resume_point(folder, expected) == folder / "checkpoint-10"
    # Copied over from another run, or torn by a power loss: the newest intact one is resumed instead.
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"other weights")
    assert checkpoints.resume_point(folder, expected) == folder / "checkpoint-5"
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"a file the save did not write")
    assert checkpoints.prepare(folder, expected) is None  # none intact: a fresh start
    assert sorted(p.name for p in folder.iterdir()) == ["fingerprint.json"]
