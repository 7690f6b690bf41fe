"""A grid over many runners as .github/workflows/grid.yml runs it, without GitHub.

The project is run, committed with a default DVC remote and pushed; its bare clone is the git remote
`origin`. Each runner is a clone of `origin` doing what one grid job does: `dvc pull`,
`dvc exp run --name grid-<i> -S train.learning_rate=<lr>`, `dvc exp push --run-cache origin grid-<i>`.
A fresh clone then compares the experiments with the commands grid.yml's header shows and gets one
experiment's model, byte for byte. Once with a local-folder DVC remote, once with S3 (moto's server on
loopback, conftest's `s3_endpoint`, credentials in the environment only).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    AWS_ENV,
    BUCKET,
    file_hashes,
    new_project,
    read_lock,
    run_aws,
    run_cmd,
    s3_keys,
    shown_experiments,
    tiny_overrides,
)

# One per runner, as typed after -S; each trains another model than the tiny params' 1e-3 does. Two
# runners: a third added 25 s to the two parametrizations' 85 s, and tests nothing more.
LEARNING_RATES = ["2e-3", "5e-3"]
GRID_PREFIX = "yelp/grid"  # in the bucket, apart from test_remote's objects


@dataclass
class DvcRemote:
    env: dict[str, str]  # what its commands need in the environment: the S3 credentials, or nothing
    keys: Callable[[], set[str]]  # every object it holds, relative to its root: files/md5/..., runs/...


@dataclass
class GridJob:
    name: str
    learning_rate: float  # as `dvc exp show` reads it back from params.yaml
    metrics: dict  # the runner's metrics.json
    model: dict[str, str]  # sha256 of every file of the runner's models/model
    model_md5: str  # models/model's hash in the runner's dvc.lock, the name of its .dir object
    run_cache: set[str]  # the runner's run-cache entries, runs/<stage key>/<run>


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The project with tiny params after `dvc repro`, uncommitted and without a remote: both remotes
    start from a copy of it, so the pipeline runs once."""
    repo = new_project(tmp_path_factory.mktemp("grid") / "project", tiny_overrides(tiny_model_dir))
    run_cmd(["dvc", "repro"], repo)
    return repo


def add_default_remote(repo: Path, kind: str, storage: Path, request: pytest.FixtureRequest) -> DvcRemote:
    """Configure `repo`'s default DVC remote 'storage' in .dvc/config, as the README does: the folder
    `storage`, or an S3 prefix on moto's server; credentials stay in the environment."""
    if kind == "local":
        run_cmd(["dvc", "remote", "add", "-d", "storage", str(storage)], repo)
        return DvcRemote(
            env={}, keys=lambda: {p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()}
        )
    endpoint = request.getfixturevalue("s3_endpoint")
    run_cmd(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/{GRID_PREFIX}"], repo)
    run_cmd(["dvc", "remote", "modify", "storage", "region", "us-east-1"], repo)
    run_cmd(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], repo)
    return DvcRemote(env=AWS_ENV, keys=lambda: s3_keys(endpoint, GRID_PREFIX))


def grid_job(origin: Path, runner: Path, name: str, learning_rate: str, remote: DvcRemote) -> GridJob:
    """One job of grid.yml on its own runner: a clone of `origin` at `runner`, then the job's three dvc
    commands, each with the environment the workflow gives it (the remote's credentials for pull and push)."""
    run_cmd(["git", "clone", "-q", str(origin), str(runner)], runner.parent)
    run_aws(["dvc", "pull"], runner, env=remote.env)
    ran = run_cmd(["dvc", "exp", "run", "--name", name, "-S", f"train.learning_rate={learning_rate}"], runner)
    # The pulled data is up to date: only the stages the flag changes run.
    assert re.findall(r"Running stage '(\w+)'", ran.stdout) == ["train", "evaluate"], ran.stdout
    pushed = run_aws(["dvc", "exp", "push", "--run-cache", "origin", name], runner, env=remote.env)
    assert f"Pushed experiment {name} to Git remote 'origin'" in pushed.stdout, pushed.stdout
    cache = runner / ".dvc" / "cache"
    (model_out,) = [out for out in read_lock(runner)["stages"]["train"]["outs"] if out["path"] == "models/model"]
    return GridJob(
        name=name,
        learning_rate=float(learning_rate),
        metrics=json.loads((runner / "metrics.json").read_text()),
        model=file_hashes(runner, ["models/model"]),
        model_md5=model_out["md5"],
        run_cache={p.relative_to(cache).as_posix() for p in (cache / "runs").rglob("*") if p.is_file()},
    )


def cached_dir(repo: Path, md5: str) -> bool:
    """Whether `repo`'s DVC cache holds the folder manifest `md5` (`<hash>.dir`)."""
    return (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_grid_lands_in_both_remotes_and_a_fresh_clone_compares_it_and_gets_one_model(
    kind: str, pipeline_run: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = tmp_path / "project"
    # Not .dvc/tmp: DVC's locks and experiment state belong to the original.
    shutil.copytree(
        pipeline_run,
        project,
        symlinks=True,
        ignore=lambda folder, _: ["tmp"] if Path(folder) == pipeline_run / ".dvc" else [],
    )
    remote = add_default_remote(project, kind, tmp_path / "dvc-storage", request)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "pipeline run with a DVC remote"], project)
    run_aws(["dvc", "push"], project, env=remote.env)
    origin = tmp_path / "origin.git"
    run_cmd(["git", "clone", "-q", "--bare", str(project), str(origin)], tmp_path)

    jobs = [grid_job(origin, tmp_path / f"runner-{i}", f"grid-{i}", lr, remote) for i, lr in enumerate(LEARNING_RATES)]
    assert len({job.model["models/model/model.safetensors"] for job in jobs}) == len(jobs)  # different models
    # `--run-cache` sent each runner's run cache along: one entry each, its training run (evaluate's
    # outputs are all uncached, and DVC keeps no run-cache entry for such a stage).
    assert [len(job.run_cache) for job in jobs] == [1] * len(jobs)
    assert {key for key in remote.keys() if key.startswith("runs/")} == set().union(*(job.run_cache for job in jobs))
    # Every experiment's ref reached the git remote, under its baseline, the commit the runners cloned.
    head = run_cmd(["git", "rev-parse", "HEAD"], project).stdout.strip()
    refs = run_cmd(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], origin).stdout.split()
    assert refs == [f"refs/exps/{head[:2]}/{head[2:]}/{job.name}" for job in jobs]

    # A fresh clone: git refs only (params and metrics are in git), then the table.
    fresh = tmp_path / "fresh"
    run_cmd(["git", "clone", "-q", str(origin), str(fresh)], tmp_path)
    run_aws(["dvc", "exp", "pull", "--no-cache", "origin"], fresh, env=remote.env)
    shown = shown_experiments(fresh)
    assert sorted(shown) == [job.name for job in jobs]
    for job in jobs:
        assert shown[job.name]["error"] is None
        data = shown[job.name]["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == job.learning_rate, job.name
        assert data["metrics"]["metrics.json"]["data"] == job.metrics, job.name
    table = run_cmd(
        ["dvc", "exp", "show", "--only-changed", "--sort-by", "metrics.json:accuracy", "--sort-order", "desc"], fresh
    ).stdout
    assert all(f"[{job.name}]" in table for job in jobs), table
    assert not (fresh / "models" / "model").exists()
    assert not any(cached_dir(fresh, job.model_md5) for job in jobs)

    # One experiment's outputs from the DVC remote (its ref is here already: DVC says "No experiments to
    # pull." and fetches them all the same), then into the workspace.
    chosen = jobs[-1]
    pulled = run_aws(["dvc", "exp", "pull", "origin", chosen.name], fresh, env=remote.env)
    assert pulled.stdout.strip() == "No experiments to pull.", pulled.stdout
    assert [cached_dir(fresh, job.model_md5) for job in jobs] == [job is chosen for job in jobs]
    run_cmd(["dvc", "exp", "apply", chosen.name], fresh)
    assert file_hashes(fresh, ["models/model"]) == chosen.model
    assert json.loads((fresh / "metrics.json").read_text()) == chosen.metrics
    assert json.loads(run_cmd(["dvc", "status", "--json"], fresh).stdout) == {}
