"""The pull-request check end to end: `make pr-check BASE=main`, exactly as the workflow calls it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_cmd, set_params, stage_env
from stages.params import write_yaml

# Enough for the tiny BERT to learn well above chance in seconds, and to do so steadily over
# training seeds (accuracy 0.59, 0.59, 0.58, 0.58 for seeds 42..45; 1,500 examples for 3 epochs
# gave 0.41, 0.38, 0.39, 0.49, too unsteady to tell learning rate 0 from a bad seed). Batches are
# drawn at random and AdamW is the unfused one, as when these were measured: grouped by length (the
# default since), this tiny profile spreads wider over seeds (0.60, 0.57, 0.60, 0.59 for 42..45, and
# 0.52 for seed 7).
TEST_PROFILE = {
    "data": {"synthetic_train_size": 3000, "synthetic_test_size": 300},
    "subset": {"train_size": 3000, "eval_size": 300},
    "train": {"epochs": 5, "batch_size": 32, "group_by_length": False, "optimizer": "adamw_torch"},
    "evaluate": {"profile": "smoke"},
}


def pr_check(repo: Path, base: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "pr-check", f"BASE={base}", "SETUP=", f"PYTHON={sys.executable}"],
        cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=600,
    )


def check_branch(repo: Path, branch: str, change: Callable[[], object]) -> tuple[subprocess.CompletedProcess, str]:
    """A branch off main with `change` committed, checked as CI checks a pull request: (result, report)."""
    run_cmd(["git", "checkout", "-q", "main"], repo)
    run_cmd(["git", "checkout", "-q", "-b", branch], repo)
    change()
    run_cmd(["git", "commit", "-qam", branch], repo)
    return pr_check(repo, "main"), (repo / "pr-check-report.md").read_text()


@pytest.mark.slow
def test_pr_check_fails_a_real_regression_and_passes_a_comment_change(project: Path) -> None:
    write_yaml(project / "profiles" / "smoke.yaml", TEST_PROFILE)
    set_params(project, {"train": {"learning_rate": 0.003}})
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "baseline"], project)

    # A change that really hurts: no learning at all.
    hurt, report = check_branch(project, "no-learning", lambda: set_params(project, {"train": {"learning_rate": 0.0}}))
    assert hurt.returncode != 0, hurt.stdout + hurt.stderr
    assert "## Metric gate: FAIL: regression" in report, report
    assert "| `train.learning_rate` | 0.003 | 0.0 |" in report
    assert "**regression**" in report and "McNemar p=" in report
    # The paired test's verdict held against the spread of the base over training seeds 42..45.
    assert "seed spread (n=4)" in report and "training seeds 42, 43, 44, 45" in report
    assert "for the base's extra seeds" in report
    assert "Smoke profile (profiles/smoke.yaml)" in report

    # A change of the training seed only: noise, not a regression.
    reseeded, report = check_branch(project, "other-seed", lambda: set_params(project, {"train": {"seed": 7}}))
    assert reseeded.returncode == 0, report + reseeded.stderr
    assert "## Metric gate: PASS" in report and "| `train.seed` | 42 | 7 |" in report

    # A change to a comment only: the same numbers on both sides, a pass.
    dvc_yaml = project / "dvc.yaml"
    same, report = check_branch(
        project, "comment-only",
        lambda: dvc_yaml.write_text(dvc_yaml.read_text().replace("# The pipeline:", "# The whole pipeline:", 1)),
    )
    assert same.returncode == 0, report + same.stderr
    assert "## Metric gate: PASS" in report
    assert "+0.0000" in report and "Params changed\n\nNone." in report
    # Worktrees are cleaned up.
    assert run_cmd(["git", "worktree", "list"], project).stdout.count("\n") == 1


def test_workflows_match_the_github_schema() -> None:
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert [w.name for w in workflows] == ["full-profile.yml", "pr-check.yml"]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         *map(str, workflows)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout
    assert "make pr-check BASE=origin/${{ github.base_ref }}" in (REPO_ROOT / ".github/workflows/pr-check.yml").read_text()


def test_a_base_smoke_run_at_chance_is_refused(tmp_path: Path) -> None:
    from stages.pr_check import base_at_chance

    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.178, "n_eval": 500}')
    assert base_at_chance(tmp_path) == (
        "the base's smoke run is at chance (accuracy 0.178 with 5 labels), so no regression could show; "
        "raise the sizes in the smoke profile"
    )
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.52, "n_eval": 500}')
    assert base_at_chance(tmp_path) is None
