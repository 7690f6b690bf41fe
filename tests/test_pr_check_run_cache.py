"""The pull-request check with a DVC remote: main's smoke run pushed with its run cache (`make smoke-cache`),
then a fresh clone's `make pr-check` restores that base instead of training it, unless it was trained in
another environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.params import write_yaml
from tests.helpers import new_project, run_cmd, set_params, stage_env, tiny_overrides

# The least that learns well above chance in seconds (the base must not be at chance), for the run-cache test.
SMALL_PROFILE = {
    "data": {"synthetic_train_size": 1000, "synthetic_test_size": 300},
    "subset": {"train_size": 1000, "eval_size": 300},
    "train": {"epochs": 3},
    "evaluate": {"profile": "smoke"},
}
RECIPE = {"train": {"learning_rate": 0.003, "batch_size": 32, "group_by_length": False, "optimizer": "adamw_torch"}}


def make(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args, "SETUP=", f"PYTHON={sys.executable}"],
        cwd=repo,
        env={**stage_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_pr_check_restores_a_base_from_the_run_cache_and_retrains_a_foreign_one(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    origin = new_project(tmp_path / "origin", tiny_overrides(tiny_model_dir))
    write_yaml(origin / "profiles" / "smoke.yaml", SMALL_PROFILE)
    set_params(origin, RECIPE)
    run_cmd(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-storage")], origin)
    run_cmd(["git", "add", "-A"], origin)
    run_cmd(["git", "commit", "-qm", "baseline"], origin)

    # main's own job after a merge: its smoke run, pushed with the run cache.
    pushed = make(origin, "smoke-cache")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "pushed the smoke run of HEAD" in pushed.stdout and "to remote `storage`" in pushed.stdout
    assert list((tmp_path / "dvc-storage" / "runs").iterdir())

    # A pull request that changes the training code (a comment): a fresh clone, as CI checks it out.
    clone = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run_cmd(["git", "checkout", "-q", "-b", "comment-in-train"], clone)
    train_py = clone / "stages" / "train.py"
    train_py.write_text(train_py.read_text() + "\n# a comment\n")
    run_cmd(["git", "commit", "-qam", "a comment in train"], clone)
    check = make(clone, "pr-check", "BASE=origin/main")
    report = (clone / "pr-check-report.md").read_text()
    assert check.returncode == 0, report + check.stderr
    assert "## Metric gate: PASS" in report and "+0.0000" in report
    # evaluate is never restored: its reports are uncached outputs, which the run cache skips (README).
    stages = "`prepare`, `tokenize`, `subset`, `train`"
    assert f"- base: restored {stages} from the run cache of remote `storage`\n" in report, report
    assert "- head: restored `prepare`, `tokenize`, `subset` from the run cache of remote `storage`\n" in report

    # The next merge's smoke run came from another environment (one thread): the base is trained here again.
    set_params(origin, {"train": {"weight_decay": 0.02}})
    run_cmd(["git", "commit", "-qam", "weight decay"], origin)
    pushed = make(origin, "smoke-cache", env={"OMP_NUM_THREADS": "1"})
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    run_cmd(["git", "fetch", "-q", "origin"], clone)
    run_cmd(["git", "rebase", "-q", "origin/main"], clone)
    check = make(clone, "pr-check", "BASE=origin/main")
    report = (clone / "pr-check-report.md").read_text()
    assert check.returncode == 0, report + check.stderr
    assert "## Metric gate: PASS" in report and "+0.0000" in report
    assert (
        f"- base: restored {stages} from the run cache of remote `storage`; its training came from another "
        "environment (threads differ), so it trained again here\n"
    ) in report, report
