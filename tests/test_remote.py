"""A real remote: `dvc push` the pipeline's data and model, then a fresh clone `dvc pull`s them back.

Two remotes: a local directory, and S3 served by moto on loopback (conftest's `s3_endpoint`, dummy
credentials, `dvc-s3` as the client). The pipeline runs once per module and both remotes share it.
After a pull the clone must be exactly the original: `dvc status` clean, `dvc repro` runs nothing and
rewrites nothing, every output byte-identical.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    AWS_ENV,
    BUCKET,
    PREFIX,
    file_hashes,
    new_project,
    read_lock,
    run_aws,
    run_cmd,
    s3_keys,
    tiny_overrides,
)

NO_CREDENTIALS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]

# The DVC-cached outputs (pushed and pulled), and the files git carries (metrics and reports).
CACHED_OUTPUTS = ["data/prepared", "data/tokenized", "data/subset", "models/model"]
GIT_OUTPUTS = ["metrics.json", "reports/train_epochs.csv", "reports/predictions.csv", "reports/eval_info.json"]


def mtimes(root: Path, names: list[str]) -> dict[str, int]:
    return {rel: (root / rel).stat().st_mtime_ns for rel in file_hashes(root, names)}


def object_keys(root: Path) -> set[str]:
    """The content-addressed objects under a DVC cache or local remote: `files/md5/ab/cdef...`."""
    return {p.relative_to(root).as_posix() for p in (root / "files" / "md5").rglob("*") if p.is_file()}


def lock_objects(repo: Path) -> set[str]:
    """The objects `dvc push` must send: each cached output's `.dir` manifest and the files it lists.

    Not the whole cache: `dvc repro` also stores the train stage's uncached plot there, for the run
    cache (`dvc push --run-cache`), and a plain push leaves it out.
    """
    lock = read_lock(repo)
    keys = set()
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] not in CACHED_OUTPUTS:
                continue
            digest = out["md5"]
            assert digest.endswith(".dir"), out
            keys.add(f"files/md5/{digest[:2]}/{digest[2:]}")
            manifest = json.loads((repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).read_text())
            keys.update(f"files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}" for entry in manifest)
    return keys


@dataclass
class Pushed:
    repo: Path  # the original repository: pipeline run, committed, pushed to both remotes
    local_remote: Path  # the local directory remote ('storage', the default)
    endpoint: str  # the moto S3 endpoint the 's3' remote points at
    hashes: dict[str, str]  # sha256 of every output in the original
    lock: bytes  # the original dvc.lock
    workdir: Path  # where the tests clone into


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, s3_endpoint: str) -> Pushed:
    """The project with tiny params, run once, committed with both remotes configured, pushed to both."""
    workdir = tmp_path_factory.mktemp("remote")
    repo = new_project(workdir / "origin", tiny_overrides(tiny_model_dir))

    local_remote = workdir / "dvc-storage"
    # Exactly the README's commands. The remotes live in .dvc/config, which git carries to every clone;
    # credentials do not (they come from the environment, or `dvc remote modify --local`).
    run_cmd(["dvc", "remote", "add", "-d", "storage", str(local_remote)], repo)
    run_cmd(["dvc", "remote", "add", "s3", f"s3://{BUCKET}/{PREFIX}"], repo)
    run_cmd(["dvc", "remote", "modify", "s3", "region", "us-east-1"], repo)
    run_cmd(["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint], repo)
    config = (repo / ".dvc" / "config").read_text()
    assert "testing" not in config, config

    run_cmd(["dvc", "repro"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "pipeline run with remotes"], repo)
    assert run_cmd(["git", "status", "--porcelain"], repo).stdout == ""

    run_aws(["dvc", "push"], repo)
    run_aws(["dvc", "push", "-r", "s3"], repo, env=AWS_ENV)

    return Pushed(
        repo=repo,
        local_remote=local_remote,
        endpoint=s3_endpoint,
        hashes=file_hashes(repo, CACHED_OUTPUTS + GIT_OUTPUTS),
        lock=(repo / "dvc.lock").read_bytes(),
        workdir=workdir,
    )


def fresh_clone(pushed: Pushed, name: str) -> Path:
    clone = pushed.workdir / name
    run_cmd(["git", "clone", "-q", str(pushed.repo), str(clone)], pushed.workdir)
    # Nothing DVC caches came through git: the outputs and the cache are absent until the pull.
    for output in CACHED_OUTPUTS:
        assert not (clone / output).exists(), output
    assert not (clone / ".dvc" / "cache").exists()
    return clone


def assert_same_as_original(clone: Path, pushed: Pushed, env: dict[str, str] | None = None) -> None:
    """Pulled outputs are byte-identical, `dvc status` is clean and `dvc repro` runs and rewrites nothing."""
    assert file_hashes(clone, CACHED_OUTPUTS + GIT_OUTPUTS) == pushed.hashes

    status = run_aws(["dvc", "status", "--json"], clone, env=env)
    assert json.loads(status.stdout) == {}, status.stdout

    before = mtimes(clone, CACHED_OUTPUTS + GIT_OUTPUTS)
    repro = run_aws(["dvc", "repro"], clone, env=env)
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == [], repro.stdout
    assert "Data and pipelines are up to date" in repro.stdout, repro.stdout
    assert (clone / "dvc.lock").read_bytes() == pushed.lock
    assert mtimes(clone, CACHED_OUTPUTS + GIT_OUTPUTS) == before
    assert file_hashes(clone, CACHED_OUTPUTS + GIT_OUTPUTS) == pushed.hashes
    assert run_cmd(["git", "status", "--porcelain"], clone).stdout == ""


@pytest.mark.slow
def test_push_to_a_local_remote_and_pull_into_a_fresh_clone(pushed: Pushed) -> None:
    # The remote holds every cached output, content-addressed, folders' manifests included.
    expected = lock_objects(pushed.repo)
    assert object_keys(pushed.local_remote) == expected
    assert sum(key.endswith(".dir") for key in expected) == len(CACHED_OUTPUTS)
    # Only the final model is stored: the trainer's checkpoints never reach the output.
    model_files = {Path(rel).name for rel in pushed.hashes if rel.startswith("models/model/")}
    assert "model.safetensors" in model_files
    assert not any(name.startswith("checkpoint") for name in model_files), model_files

    clone = fresh_clone(pushed, "clone-local")
    pull = run_aws(["dvc", "pull"], clone)  # the default remote, 'storage'
    # Every cached output added, every object fetched ("15 files fetched and 12 files added").
    assert sorted(re.findall(r"^A\s+(\S+)/$", pull.stdout, re.MULTILINE)) == sorted(CACHED_OUTPUTS), pull.stdout
    n_files = sum(not rel.startswith(tuple(GIT_OUTPUTS)) for rel in pushed.hashes)
    assert f"{len(expected)} files fetched and {n_files} files added" in pull.stdout, pull.stdout
    assert_same_as_original(clone, pushed)


@pytest.mark.slow
def test_push_to_s3_and_pull_into_a_fresh_clone(pushed: Pushed) -> None:
    # The bucket holds every cached output, under the remote's prefix.
    expected = lock_objects(pushed.repo)
    keys = s3_keys(pushed.endpoint)
    assert keys == expected, sorted(keys ^ expected)
    assert all(key.startswith("files/md5/") for key in keys)
    # The original is in sync with the bucket.
    cloud = run_aws(["dvc", "status", "--cloud", "-r", "s3", "--json"], pushed.repo, env=AWS_ENV)
    assert json.loads(cloud.stdout) == {}, cloud.stdout

    clone = fresh_clone(pushed, "clone-s3")
    run_aws(["dvc", "pull", "-r", "s3"], clone, env=AWS_ENV)
    assert object_keys(clone / ".dvc" / "cache") == expected
    assert_same_as_original(clone, pushed, env=AWS_ENV)


@pytest.mark.slow
def test_pull_without_credentials_or_from_a_missing_bucket_fails_clearly(pushed: Pushed) -> None:
    clone = fresh_clone(pushed, "clone-failing")

    # No credentials anywhere (env, ~/.aws, instance metadata): botocore's message, through dvc.
    no_creds = run_aws(["dvc", "pull", "-r", "s3"], clone, unset=NO_CREDENTIALS, check=False)
    assert no_creds.returncode != 0
    assert "failed to connect to s3" in no_creds.stderr and "Unable to locate credentials" in no_creds.stderr, (
        no_creds.stderr
    )

    # A remote pointing at a bucket that is not there (set in .dvc/config.local, which git ignores).
    run_cmd(["dvc", "remote", "modify", "--local", "s3", "url", "s3://no-such-bucket/store"], clone)
    missing = run_aws(["dvc", "pull", "-r", "s3"], clone, env=AWS_ENV, check=False)
    assert missing.returncode != 0
    assert "The specified bucket does not exist" in missing.stderr, missing.stderr
    assert run_cmd(["git", "status", "--porcelain"], clone).stdout == ""

    # A remote name that is not configured.
    unknown = run_aws(["dvc", "pull", "-r", "nowhere"], clone, check=False)
    assert unknown.returncode != 0
    assert "remote 'nowhere' doesn't exist" in unknown.stderr, unknown.stderr

    # Nothing was half-pulled into the workspace.
    for output in CACHED_OUTPUTS:
        assert not (clone / output).exists(), output


def test_the_model_registry_gets_a_tagged_version_from_the_remote(pushed: Pushed) -> None:
    """dvc.yaml's `artifacts:` entry: a version tag, then `dvc artifacts get` into an empty folder."""
    run_cmd(["git", "tag", "-a", "model@v1.0.0", "-m", "model v1.0.0"], pushed.repo)
    try:
        out = pushed.workdir / "registry-get"
        run_aws(["dvc", "artifacts", "get", str(pushed.repo), "model", "-o", str(out)], pushed.workdir)
        model = pushed.repo / "models" / "model"
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in model.iterdir())
        for path in model.iterdir():
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    finally:
        run_cmd(["git", "tag", "-d", "model@v1.0.0"], pushed.repo)
