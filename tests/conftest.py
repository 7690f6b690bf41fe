"""Fixtures: the tiny BERT and the tiny data (each built once per session), tiny params, a fresh project,
and an S3 server on loopback for the remote tests (started once per session, when first asked for).

The helpers they use live in tests/helpers.py, which tests import directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages import prepare, subset, tokenize
from stages.common.params import Params, load_params
from tests.helpers import BUCKET, build_tiny_model, new_project, s3_client, tiny_overrides, write_params

# The whole suite is offline, as CI is: a Hub miss must fail at once, never retry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 BERT with random weights and the packaged MiniLM tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """prepare, tokenize and subset at the tiny params, once per session: `prepared/`, `tokenized/` and
    `subset/` under the folder returned. Tests read them and write elsewhere."""
    root = tmp_path_factory.mktemp("tiny-data")
    params = load_params(write_params(root / "params.yaml", tiny_overrides(tiny_model_dir)))
    prepare.run(params.data, root / "prepared")
    tokenize.run(params.model, params.tokenize, root / "prepared", root / "tokenized")
    subset.run(params.subset, root / "tokenized", root / "subset")
    return root


@pytest.fixture
def tiny_params(tmp_path: Path, tiny_model_dir: Path) -> Params:
    """Validated tiny params, loaded through the real loader."""
    return load_params(write_params(tmp_path / "params.yaml", tiny_overrides(tiny_model_dir)))


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A fresh git + DVC repository holding this project's pipeline, with tiny params."""
    return new_project(tmp_path / "project", tiny_overrides(tiny_model_dir))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 server on 127.0.0.1 (a free port), holding one empty bucket, `BUCKET`; stopped after the session.

    One per session: moto keeps its buckets in this process, whatever the server. Each test module writes
    under its own prefix."""
    from moto.server import ThreadedMotoServer  # only the remote tests pay for importing moto

    # werkzeug logs every request to stderr unless its logger already has a level.
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        werkzeug_log.setLevel(werkzeug_level)
