"""Nothing lost: a killed run resumes from its checkpoint, and a failed run's last good state returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import read_lock, run_cmd, set_params, stage_env

# 1,200 examples in batches of 16 for 3 epochs: 225 steps, a checkpoint every 20.
RESUMABLE = {
    "data": {"synthetic_train_size": 1200, "synthetic_test_size": 200},
    "subset": {"train_size": 1200, "eval_size": 200},
    "train": {"epochs": 3, "batch_size": 16, "save_steps": 20},
}


def repro_killed_after_first_checkpoint(repo: Path) -> None:
    """Start `dvc repro` and SIGKILL it (and the stage under it) once a checkpoint is complete."""
    process = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list((repo / "checkpoints" / "train").glob("checkpoint-*/COMPLETE")):
        assert process.poll() is None, "dvc repro ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def model_hash(repo: Path) -> str:
    lock = read_lock(repo)
    return next(out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == "models/model")


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(project: Path) -> None:
    set_params(project, RESUMABLE)
    repro_killed_after_first_checkpoint(project)
    assert not (project / "models" / "model").exists()
    assert not (project / "metrics.json").exists()

    resumed = run_cmd(["dvc", "repro"], project)
    log = resumed.stdout + resumed.stderr
    assert "resuming from checkpoints/train/checkpoint-" in log, log
    step = int(log.split("resuming from checkpoints/train/checkpoint-")[1].split()[0])
    assert f"(step {step} of 225)" in log
    assert 20 <= step < 225
    assert not (project / "checkpoints" / "train").exists()  # dropped once the final model is written
    resumed_metrics, resumed_model = (project / "metrics.json").read_text(), model_hash(project)

    # The same run, uninterrupted: the same model, byte for byte, and the same metrics.
    run_cmd(["dvc", "repro", "--force", "--single-item", "train"], project)
    uninterrupted = run_cmd(["dvc", "repro", "--force", "--single-item", "evaluate"], project)
    assert "resuming" not in uninterrupted.stdout + uninterrupted.stderr
    assert model_hash(project) == resumed_model
    assert (project / "metrics.json").read_text() == resumed_metrics
    assert json.loads(resumed_metrics)["n_eval"] == 200


@pytest.mark.slow
def test_a_stale_checkpoint_is_not_used(project: Path) -> None:
    set_params(project, RESUMABLE)
    repro_killed_after_first_checkpoint(project)
    set_params(project, {"train": {"learning_rate": 2e-3}})
    rerun = run_cmd(["dvc", "repro"], project)
    log = rerun.stdout + rerun.stderr
    assert "not resuming: the checkpoints in checkpoints/train were made with other params; starting fresh" in log, log
    assert "resuming from" not in log
    assert (project / "metrics.json").is_file()


@pytest.mark.slow
def test_the_last_good_state_comes_back_after_a_failed_run(project: Path) -> None:
    run_cmd(["dvc", "repro"], project)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "a good run"], project)
    good_model = (project / "models" / "model" / "model.safetensors").read_bytes()
    good_metrics = (project / "metrics.json").read_text()

    # A bad param fails the train stage, after DVC has removed its outputs.
    set_params(project, {"train": {"learning_rate": -1.0}})
    failed = run_cmd(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    assert "params.yaml: train.learning_rate = -1.0 is out of range; expected a number >= 0" in failed.stderr, (
        failed.stderr
    )
    assert not (project / "models" / "model").exists()
    assert not (project / "reports" / "train_epochs.csv").exists()  # uncached outputs go too
    assert not (project / "dvclive" / "metrics.json").exists()
    assert (project / "metrics.json").read_text() == good_metrics  # evaluate never ran

    # As the README says: put the params back; git restores the uncached outputs, and
    # `dvc checkout` the cached ones.
    run_cmd(["git", "checkout", "params.yaml"], project)
    run_cmd(["git", "checkout", "--", "metrics.json", "reports", "dvclive"], project)
    run_cmd(["dvc", "checkout"], project)
    assert (project / "models" / "model" / "model.safetensors").read_bytes() == good_model
    assert json.loads(run_cmd(["dvc", "status", "--json"], project).stdout) == {}
    assert "Data and pipelines are up to date" in run_cmd(["dvc", "repro"], project).stdout
