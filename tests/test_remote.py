"""A real remote: `dvc push` the pipeline's data and model, then a fresh clone `dvc pull`s them back.

Two remotes: a local directory, and S3 served by moto on loopback (`ThreadedMotoServer`, dummy
credentials, `dvc-s3` as the client). The pipeline runs once per module and both remotes share it.
After a pull the clone must be exactly the original: `dvc status` clean, `dvc repro` runs nothing and
rewrites nothing, every output byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import new_project, read_lock, run_cmd, stage_env, tiny_overrides

BUCKET = "dvc-remote-test"
PREFIX = "yelp/store"
# Dummy credentials: moto accepts anything. The config and credentials files point nowhere, so a
# developer's own ~/.aws can never leak into the test, nor the test into a real account.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# No ~/.aws files and no instance metadata lookup (a missing credential must fail at once).
AWS_ISOLATION = {
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
NO_CREDENTIALS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]

# The DVC-cached outputs (pushed and pulled), and the files git carries (metrics and reports).
CACHED_OUTPUTS = ["data/prepared", "data/tokenized", "data/subset", "models/model"]
GIT_OUTPUTS = ["metrics.json", "reports/train_epochs.csv", "reports/predictions.csv", "reports/eval_info.json"]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, unset: list[str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`run_cmd` with extra environment variables (the S3 credentials) and some removed."""
    full = stage_env()
    full.update(AWS_ISOLATION)
    full.update(env or {})
    for name in unset or []:
        full.pop(name, None)
    result = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def file_hashes(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of every file under `names` (files or folders), keyed by its path relative to `root`."""
    hashes = {}
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        assert files, f"{path} is missing or empty"
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


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
def s3_endpoint() -> Iterator[str]:
    """An S3 server on 127.0.0.1 (a free port), holding one empty bucket; stopped after the module."""
    # werkzeug logs every request to stderr unless its logger already has a level.
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        werkzeug_log.setLevel(werkzeug_level)


def s3_keys(endpoint: str, prefix: str = PREFIX) -> set[str]:
    """Every key in the bucket under `prefix`, relative to it."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        keys.update(obj["Key"][len(prefix) + 1 :] for obj in page.get("Contents", []))
    return keys


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

    run(["dvc", "push"], repo)
    run(["dvc", "push", "-r", "s3"], repo, env=AWS_ENV)

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

    status = run(["dvc", "status", "--json"], clone, env=env)
    assert json.loads(status.stdout) == {}, status.stdout

    before = mtimes(clone, CACHED_OUTPUTS + GIT_OUTPUTS)
    repro = run(["dvc", "repro"], clone, env=env)
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
    pull = run(["dvc", "pull"], clone)  # the default remote, 'storage'
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
    cloud = run(["dvc", "status", "--cloud", "-r", "s3", "--json"], pushed.repo, env=AWS_ENV)
    assert json.loads(cloud.stdout) == {}, cloud.stdout

    clone = fresh_clone(pushed, "clone-s3")
    run(["dvc", "pull", "-r", "s3"], clone, env=AWS_ENV)
    assert object_keys(clone / ".dvc" / "cache") == expected
    assert_same_as_original(clone, pushed, env=AWS_ENV)


@pytest.mark.slow
def test_pull_without_credentials_or_from_a_missing_bucket_fails_clearly(pushed: Pushed) -> None:
    clone = fresh_clone(pushed, "clone-failing")

    # No credentials anywhere (env, ~/.aws, instance metadata): botocore's message, through dvc.
    no_creds = run(["dvc", "pull", "-r", "s3"], clone, unset=NO_CREDENTIALS, check=False)
    assert no_creds.returncode != 0
    assert "failed to connect to s3" in no_creds.stderr and "Unable to locate credentials" in no_creds.stderr, (
        no_creds.stderr
    )

    # A remote pointing at a bucket that is not there (set in .dvc/config.local, which git ignores).
    run_cmd(["dvc", "remote", "modify", "--local", "s3", "url", "s3://no-such-bucket/store"], clone)
    missing = run(["dvc", "pull", "-r", "s3"], clone, env=AWS_ENV, check=False)
    assert missing.returncode != 0
    assert "The specified bucket does not exist" in missing.stderr, missing.stderr
    assert run_cmd(["git", "status", "--porcelain"], clone).stdout == ""

    # A remote name that is not configured.
    unknown = run(["dvc", "pull", "-r", "nowhere"], clone, check=False)
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
        run(["dvc", "artifacts", "get", str(pushed.repo), "model", "-o", str(out)], pushed.workdir)
        model = pushed.repo / "models" / "model"
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in model.iterdir())
        for path in model.iterdir():
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    finally:
        run_cmd(["git", "tag", "-d", "model@v1.0.0"], pushed.repo)
