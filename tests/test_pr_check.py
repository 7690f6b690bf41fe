"""The pull-request check end to end: `make pr-check BASE=main`, exactly as the workflow calls it, and with a
DVC remote: main's smoke run pushed with its run cache (`make smoke-cache`), restored by a fresh clone's check."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stages.common.params import read_yaml, with_overrides, write_yaml
from tests.helpers import REPO_ROOT, new_project, run_cmd, set_params, stage_env, tiny_overrides

# Enough for the tiny BERT to learn well above chance in seconds, and to do so steadily over
# training seeds (accuracy 0.59, 0.59, 0.58, 0.58 for seeds 42..45; 1,500 examples for 3 epochs
# gave 0.41, 0.38, 0.39, 0.49, too unsteady to tell learning rate 0 from a bad seed). Batches are
# drawn at random and AdamW is the unfused one, as when these were measured: grouped by length (the
# default since), this tiny profile spreads wider over seeds (0.60, 0.57, 0.60, 0.59 for 42..45, and
# 0.52 for seed 7).
# A profile sets sizes only, so the rest is the fixture's params.yaml (RECIPE).
TEST_PROFILE = {
    "data": {"synthetic_train_size": 3000, "synthetic_test_size": 300},
    "subset": {"train_size": 3000, "eval_size": 300},
    "train": {"epochs": 5},
    "evaluate": {"profile": "smoke"},
}
RECIPE = {"train": {"learning_rate": 0.003, "batch_size": 32, "group_by_length": False, "optimizer": "adamw_torch"}}


def make(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`make <args>` in `repo` with this environment, as CI runs it (`env`: variables to add)."""
    return subprocess.run(
        ["make", "--no-print-directory", *args, "SETUP=", f"PYTHON={sys.executable}"],
        cwd=repo,
        env={**stage_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def pr_check(repo: Path, base: str) -> subprocess.CompletedProcess:
    return make(repo, "pr-check", f"BASE={base}")


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
    set_params(project, RECIPE)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "baseline"], project)

    # A change that really hurts, no learning at all, from a branch that also tries to judge itself:
    # its profile puts the learning rate back, its rules tolerate any drop, its gate and pull-request
    # check pass everything. Any one of these, if it applied, would turn the verdict into a pass.
    hurt, report = check_branch(project, "no-learning-judging-itself", lambda: judge_itself(project))
    assert hurt.returncode != 0, hurt.stdout + hurt.stderr
    assert "## Metric gate: FAIL: regression" in report, report
    assert re.search(r"Judged by `main` \(\w{10}\): its pull-request check, gate code, gate rules", report), report
    assert re.search(r"Gate rules from `main \(\w{10}\):params.yaml`", report), report
    assert "| `gate.metrics.accuracy.tolerance` | 0.01 | 1.0 |" in report
    assert "| `train.learning_rate` | 0.003 | 0.0 |" in report
    assert "**regression**" in report and "McNemar p=" in report
    # The single pair's verdict held over seed pairs: both sides reran with seeds 43, 44, ..., and
    # the sequential test stopped at the first look that could tell (the third pair).
    over_seeds = report.split("### Over training seeds", 1)[1]
    assert "## Metric gate: FAIL: regression" in report.split("### Over training seeds")[0]
    assert re.search(r"\| accuracy \| [\d.]+ \| [\d.]+ \| -[\d.]+ \| .* \| 3 seed pairs, t \|", over_seeds), over_seeds
    assert "| 42 | 42 |" in over_seeds and "| 44 | 44 |" in over_seeds and "| 45 | 45 |" not in over_seeds
    assert "for the extra seed pairs" in report
    assert "Smoke profile (profiles/smoke.yaml at main)" in report

    # A change of the training seed only: noise, not a regression.
    reseeded, report = check_branch(project, "other-seed", lambda: set_params(project, {"train": {"seed": 7}}))
    assert reseeded.returncode == 0, report + reseeded.stderr
    assert "## Metric gate: PASS" in report and "| `train.seed` | 42 | 7 |" in report

    # A change to a comment only: the same numbers on both sides, a pass.
    dvc_yaml = project / "dvc.yaml"
    same, report = check_branch(
        project,
        "comment-only",
        lambda: dvc_yaml.write_text(dvc_yaml.read_text().replace("# The pipeline:", "# The whole pipeline:", 1)),
    )
    assert same.returncode == 0, report + same.stderr
    assert "## Metric gate: PASS" in report
    assert "+0.0000" in report and "Params changed\n\nNone." in report
    # Worktrees are cleaned up.
    assert run_cmd(["git", "worktree", "list"], project).stdout.count("\n") == 1


def judge_itself(repo: Path) -> None:
    """The head's changes: learning rate 0, and every way it could judge itself."""
    set_params(repo, {"train": {"learning_rate": 0.0}})
    params = read_yaml((repo / "params.yaml").read_text(), "params.yaml")
    for rule in params["gate"]["metrics"].values():
        rule["tolerance"] = 1.0
    write_yaml(repo / "params.yaml", params)
    write_yaml(repo / "profiles" / "smoke.yaml", with_overrides(TEST_PROFILE, {"train": {"learning_rate": 0.003}}))
    always_pass = 'return REGRESSION if any(r.verdict == "regression" for r in results) else PASS'
    edit(repo / "stages" / "gate" / "compare.py", always_pass, "return PASS")
    size_keys = '"train": ("epochs", "max_steps"),'
    edit(repo / "stages" / "gate" / "pr_check.py", size_keys, '"train": ("epochs", "max_steps", "learning_rate"),')
    # Its default: trust the single pair, never run the seeds (the report shows the base's seeds ran).
    pr_check_py = repo / "stages" / "gate" / "pr_check.py"
    pr_check_py.write_text(
        re.sub(
            r"^DEFAULT_CONFIRM_SEEDS = .*$",
            "DEFAULT_CONFIRM_SEEDS = 0",
            pr_check_py.read_text(),
            count=1,
            flags=re.MULTILINE,
        )
    )
    assert "DEFAULT_CONFIRM_SEEDS = 0\n" in pr_check_py.read_text()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def committed_project(repo: Path, tiny_model_dir: Path) -> Path:
    new_project(repo, tiny_overrides(tiny_model_dir))
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "baseline"], repo)
    return repo


@pytest.mark.slow
def test_a_base_whose_rules_or_profile_cannot_judge_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    repo = committed_project(tmp_path / "project", tiny_model_dir)
    # A profile that changes the recipe, at the base: refused before any training, whatever the head says.
    write_yaml(repo / "profiles" / "smoke.yaml", with_overrides(TEST_PROFILE, {"train": {"learning_rate": 0.1}}))
    run_cmd(["git", "commit", "-qam", "profile sets a learning rate"], repo)
    run_cmd(["git", "checkout", "-q", "-b", "head"], repo)
    write_yaml(repo / "profiles" / "smoke.yaml", TEST_PROFILE)
    run_cmd(["git", "commit", "-qam", "a good profile"], repo)
    result = pr_check(repo, "main")
    report = (repo / "pr-check-report.md").read_text()
    assert result.returncode != 0 and "## Metric gate: FAIL: cannot compare" in report, report
    assert "profiles/smoke.yaml: 'train.learning_rate' is not a size; a smoke profile may set only " in report
    assert "the check judges by the base's rules and profile only, never the head's" in report

    # Rules the base cannot read (here: a confidence above 1): refused, never the head's instead.
    run_cmd(["git", "checkout", "-q", "main"], repo)
    write_yaml(repo / "profiles" / "smoke.yaml", TEST_PROFILE)
    set_params(repo, {"gate": {"confidence": 2.0}})
    run_cmd(["git", "commit", "-qam", "rules out of range"], repo)
    run_cmd(["git", "checkout", "-q", "head"], repo)
    result = pr_check(repo, "main")
    report = (repo / "pr-check-report.md").read_text()
    assert result.returncode != 0 and "## Metric gate: FAIL: cannot compare" in report, report
    assert "main:params.yaml: gate.confidence = 2.0 is out of range; expected a number > 0.5 and < 1" in report
    assert run_cmd(["git", "worktree", "list"], repo).stdout.count("\n") == 1


def test_the_profile_sets_sizes_only() -> None:
    from stages.gate.pr_check import SIZE_KEYS, read_profile

    profile = read_profile(REPO_ROOT / "profiles" / "smoke.yaml")
    assert all(key in SIZE_KEYS[section] for section, values in profile.items() for key in values)


def test_workflows_match_the_github_schema() -> None:
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert [w.name for w in workflows] == ["full-profile.yml", "grid.yml", "pr-check.yml", "smoke-cache.yml"]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, workflows),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout
    assert 'make pr-check BASE="origin/$BASE_REF"' in (REPO_ROOT / ".github/workflows/pr-check.yml").read_text()
    # main's smoke run lands in the run cache after each merge, from main only.
    smoke_cache = read_yaml((REPO_ROOT / ".github/workflows/smoke-cache.yml").read_text(), "smoke-cache.yml")
    assert smoke_cache["on"] == {"push": {"branches": ["main"]}}
    assert [step.get("run") for step in smoke_cache["jobs"]["push"]["steps"] if "run" in step] == ["make smoke-cache"]
    # The results land in both remotes, under the names test_grid pulls them by.
    full_profile = (REPO_ROOT / ".github/workflows/full-profile.yml").read_text()
    assert 'name="full-${GITHUB_RUN_ID}-${GITHUB_RUN_ATTEMPT}"' in full_profile
    assert '"${in_image[@]}" dvc exp push --run-cache origin "$name"' in full_profile
    assert '"${in_image[@]}" dvc push --run-cache' in full_profile
    grid = read_yaml((REPO_ROOT / ".github/workflows/grid.yml").read_text(), "grid.yml")
    job = grid["jobs"]["experiment"]
    assert job["strategy"] == {"fail-fast": False, "matrix": {"flags": "${{ fromJSON(inputs.grid) }}"}}
    assert job["env"]["JOB_INDEX"] == "${{ strategy.job-index }}"
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'name="grid-${GITHUB_RUN_ID}-${GITHUB_RUN_ATTEMPT}-${JOB_INDEX}"' in scripts
    for command in [
        '"$IMAGE" dvc pull',
        'dvc exp run --name "$name" "${flags[@]}"',
        'dvc exp push --run-cache origin "$name"',
    ]:
        assert command in scripts, command


def test_workflows_follow_the_github_security_guides() -> None:
    # The events that run a pull request's code, or run in the base's context on its behalf.
    pull_request_events = {"pull_request", "pull_request_target"}
    triggers, writers = {}, {}
    for path in sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml")):
        text = path.read_text()
        workflow = read_yaml(text, path)
        triggers[path.name] = set(workflow["on"])
        from_pull_requests = bool(triggers[path.name] & pull_request_events)
        assert "permissions" in workflow, path
        for name, job in workflow["jobs"].items():
            assert "permissions" in job or workflow["permissions"] in ({}, {"contents": "read"}), (path, name)
            permissions = job.get("permissions", workflow["permissions"])
            assert isinstance(permissions, dict), (path, name)  # scopes named, never read-all / write-all
            writes = {scope: access for scope, access in permissions.items() if access == "write"}
            if writes:
                writers[path.name, name] = writes
            for step in job["steps"]:
                if "uses" in step:  # pinned to a full commit, the tag in a comment on the same line
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (path, step["uses"])
                    assert re.search(re.escape(step["uses"]) + r" +# v\d+\.\d+\.\d+$", text, re.MULTILINE), step["uses"]
                if step.get("uses", "").startswith("actions/checkout@"):
                    persisted = step["with"]["persist-credentials"]  # never left to checkout's default, true
                    # The token stays in .git/config only for a job that pushes to this repository, in a
                    # workflow no pull request triggers: never within reach of a pull request's code.
                    assert persisted is False or (
                        persisted is True and permissions.get("contents") == "write" and not from_pull_requests
                    ), (path, name)
                # No expression is expanded inside a script: inputs and secrets come in through `env:`.
                assert "${{" not in step.get("run", ""), (path, step.get("name"))
                # Credentials reach a container by name (`-e NAME`), never as a value on a command line.
                assert not re.search(r"-e +\w*(KEY|TOKEN|SECRET|PASSWORD)\w*=", step.get("run", "")), (path, step)
            if writes and from_pull_requests:  # a job that may write runs no code from the pull request
                assert all("run" not in step for step in job["steps"]), (path, name)
                assert not any(step.get("uses", "").startswith("actions/checkout@") for step in job["steps"]), name
        assert not re.search(r"^\s+run:.*secrets\.", text, re.MULTILINE)
    # Which events start each workflow, and which jobs may write: a change to either is a change here.
    assert triggers == {
        "full-profile.yml": {"workflow_dispatch", "schedule"},
        "grid.yml": {"workflow_dispatch"},
        "pr-check.yml": {"pull_request"},
        "smoke-cache.yml": {"push"},
    }
    assert writers == {
        ("full-profile.yml", "full"): {"contents": "write"},
        ("grid.yml", "experiment"): {"contents": "write"},
        ("pr-check.yml", "comment"): {"pull-requests": "write"},
    }
    pr_check_yml = read_yaml((REPO_ROOT / ".github/workflows/pr-check.yml").read_text(), "pr-check.yml")
    assert pr_check_yml["jobs"]["gate"]["permissions"] == {"contents": "read"}  # it runs the pull request's code
    assert pr_check_yml["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    assert all("run" not in step for step in pr_check_yml["jobs"]["comment"]["steps"])


def test_a_base_smoke_run_at_chance_is_refused(tmp_path: Path) -> None:
    from stages.gate.pr_check import base_at_chance

    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.178, "n_eval": 500}')
    assert base_at_chance(tmp_path) == (
        "the base's smoke run is at chance (accuracy 0.178 with 5 labels), so no regression could show; "
        "raise the sizes in the smoke profile"
    )
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.52, "n_eval": 500}')
    assert base_at_chance(tmp_path) is None


# The least that learns well above chance in seconds (the base must not be at chance), for the run-cache test.
SMALL_PROFILE = {
    "data": {"synthetic_train_size": 1000, "synthetic_test_size": 300},
    "subset": {"train_size": 1000, "eval_size": 300},
    "train": {"epochs": 3},
    "evaluate": {"profile": "smoke"},
}


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
    pulled = "pulled the run cache of remote `storage`; restored"
    assert f"- base: {pulled} {stages} instead of running them\n" in report, report
    assert f"- head: {pulled} `prepare`, `tokenize`, `subset` instead of running them\n" in report

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
        f"- base: {pulled} {stages} instead of running them, but its training came from another environment "
        "(threads differ), so it trained again here\n"
    ) in report, report

    # A runner that cannot read the remote (a fork's pull request gets no secrets) still checks: here from
    # this clone's own run cache, where the last check left both sides as trained here.
    run_cmd(["dvc", "remote", "modify", "--local", "storage", "url", "s3://no-credentials-here/store"], clone)
    no_credentials = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    check = make(clone, "pr-check", "BASE=origin/main", env={**no_credentials, "AWS_EC2_METADATA_DISABLED": "true"})
    report = (clone / "pr-check-report.md").read_text()
    assert check.returncode == 0, report + check.stderr
    for side in ("base", "head"):
        assert (
            f"- {side}: could not pull the run cache of remote `storage` (Unable to locate credentials); "
            f"restored {stages} instead of running them\n"
        ) in report, report
