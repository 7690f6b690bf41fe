"""Every bad input in the README's table, run as a user runs it: the stage's command line.

Each case must end within seconds with exit status 1 and one line, `error: <what and where>`, that
names the key or file and what was expected, and must leave the stage's last good output as it was.
The README's table quotes these lines; `test_the_readme_table_quotes_every_error` keeps it honest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, default_params_dict, merged, stage_env, tiny_overrides
from stages import prepare, subset, tokenize
from stages.params import load_params

STAGE_COMMANDS = {
    "prepare": ["--out", "data/prepared"],
    "tokenize": ["--prepared", "data/prepared", "--out", "data/tokenized"],
    "train": ["--subset", "data/subset", "--model-out", "models/model", "--history-out", "reports/train_epochs.csv"],
}
STAGE_OUTPUT = {"prepare": "data/prepared", "tokenize": "data/tokenized", "train": "models/model"}


@dataclass(frozen=True)
class BadInput:
    what: str  # the README's wording of the case
    stage: str
    params: dict[str, dict[str, object]]
    error: str  # the line the user sees, after "error: "
    files: dict[str, str] = field(default_factory=dict)  # files to write first, relative to the project
    subset: str = "data/subset"  # train's input: tokenized for the case's model, as `dvc repro` would


CASES = [
    BadInput("misspelled params key", "prepare", {"train": {"learning_rat": 3e-5}},
             "params.yaml: unknown key 'train.learning_rat' (did you mean 'train.learning_rate'?); train takes: "),
    BadInput("wrong type", "prepare", {"train": {"batch_size": "eight"}},
             "params.yaml: train.batch_size = 'eight' has the wrong type; expected an integer >= 1"),
    BadInput("negative size", "prepare", {"subset": {"train_size": -1}},
             "params.yaml: subset.train_size = -1 is out of range; expected an integer >= 1"),
    BadInput("negative learning rate", "prepare", {"train": {"learning_rate": -0.001}},
             "params.yaml: train.learning_rate = -0.001 is out of range; expected a number >= 0"),
    BadInput("`max_length` above the model's limit", "tokenize", {"tokenize": {"max_length": 4096}},
             "tokenize.max_length = 4096 exceeds the limit of model 'models/tiny' (128 positions); "
             "expected an integer <= 128"),
    BadInput("unknown dataset id, Hub unreachable", "prepare", {"data": {"dataset": "nobody/no-such-reviews"}},
             "dataset 'nobody/no-such-reviews' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
             "forbids a download: connect to the network, pre-download it into the Hugging Face cache "
             "(HF_HOME), or use a local folder or the packaged default"),
    BadInput("data file missing", "prepare", {"data": {"dataset": "data/raw/reviews.csv"}},
             "data/raw/reviews.csv: file not found (data.dataset)"),
    BadInput("data file empty", "prepare", {"data": {"dataset": "data/raw/reviews.csv"}},
             "data/raw/reviews.csv: file is empty; expected rows with columns 'text' and 'label'",
             files={"data/raw/reviews.csv": ""}),
    BadInput("data file malformed", "prepare", {"data": {"dataset": "data/raw/reviews.jsonl"}},
             "data/raw/reviews.jsonl: cannot be read as JSONL: ",
             files={"data/raw/reviews.jsonl": '{"text": "good", "label": 1}\n{"text": "bad", \n'}),
    BadInput("wrong columns", "prepare", {"data": {"dataset": "data/raw/reviews.csv"}},
             "data/raw/reviews.csv: missing column 'text' (found: review, label); expected columns 'text' and 'label'",
             files={"data/raw/reviews.csv": "review,label\ngood,1\n"}),
    BadInput("label out of range", "prepare", {"data": {"dataset": "data/raw/reviews.csv"}},
             "data/raw/reviews.csv row 2: label 7 is not an integer in [0, 5) (data.num_labels = 5; 1 such rows)",
             files={"data/raw/reviews.csv": "text,label\ngood,1\nbad,7\nok,2\n"}),
    BadInput("model folder missing", "tokenize", {"model": {"name": "models/nowhere"}},
             "model.name = 'models/nowhere': folder models/nowhere does not exist "
             "(expected a Hugging Face model folder with config.json)"),
    BadInput("model folder with no weights", "train", {"model": {"name": "models/no-weights"}},
             "model.name = 'models/no-weights': cannot load safetensors weights from models/no-weights: ",
             subset="data/subset-no-weights"),
    BadInput("weights only as a pickle (`pytorch_model.bin`)", "train", {"model": {"name": "models/pickle-weights"}},
             "model.name = 'models/pickle-weights': cannot load safetensors weights from models/pickle-weights: ",
             subset="data/subset-pickle-weights"),
    BadInput("model that needs `trust_remote_code`", "tokenize", {"model": {"name": "models/custom-code"}},
             "model.name = 'models/custom-code': needs its own code (config.json's auto_map) to load; "
             "read that code, then set model.trust_remote_code: true to run it"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A project folder with good outputs of prepare, tokenize and subset, and the models the cases use."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    no_weights = shutil.copytree(tiny_model_dir, root / "models" / "no-weights")
    (no_weights / "model.safetensors").unlink()
    pickled = shutil.copytree(no_weights, root / "models" / "pickle-weights")
    (pickled / "pytorch_model.bin").write_bytes(b"not a pickle anyone should load")
    custom = shutil.copytree(tiny_model_dir, root / "models" / "custom-code")
    config = json.loads((custom / "config.json").read_text())
    config["model_type"] = "custom-bert"  # unknown to transformers: only the model's own code loads it
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")

    good = tiny_params_dict("models/tiny")
    (root / "params.yaml").write_text(yaml.safe_dump(good, sort_keys=False))
    with contextlib.chdir(root):  # model.name is a relative path, as a user writes it
        params = load_params(Path("params.yaml"))
        prepare.run(params.data, Path("data/prepared"))
        tokenize.run(params.model, params.tokenize, Path("data/prepared"), Path("data/tokenized"))
        subset.run(params.subset, Path("data/tokenized"), Path("data/subset"))
        for name in ("no-weights", "pickle-weights"):  # tokenizer and config load; the weights do not
            model = dataclasses.replace(params.model, name=f"models/{name}")
            tokenize.run(model, params.tokenize, Path("data/prepared"), Path(f"data/tokenized-{name}"))
            subset.run(params.subset, Path(f"data/tokenized-{name}"), Path(f"data/subset-{name}"))
    (root / "models" / "model").mkdir()
    (root / "models" / "model" / "last-good.txt").write_text("the last good model\n")
    return root


def tiny_params_dict(model_name: str) -> dict:
    overrides = tiny_overrides(Path(model_name))
    overrides["model"]["name"] = model_name
    return merged(default_params_dict(), overrides)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_bad_input_fails_fast_with_one_clear_line(workspace: Path, case: BadInput) -> None:
    params = tiny_params_dict("models/tiny")
    for section, values in case.params.items():
        params[section].update(values)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, text in case.files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    output = workspace / STAGE_OUTPUT[case.stage]
    before = snapshot(output)
    try:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{case.stage}",
             *[case.subset if arg == "data/subset" else arg for arg in STAGE_COMMANDS[case.stage]]],
            cwd=workspace, env=stage_env(), capture_output=True, text=True, timeout=120,
        )
        elapsed = time.perf_counter() - started
    finally:
        for name in case.files:
            (workspace / name).unlink()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {case.error}"), result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s"
    assert snapshot(output) == before  # the last good output is untouched
    assert "remote code ran" not in result.stderr + result.stdout


def test_the_readme_table_quotes_every_error() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for case in CASES:
        assert f"| {case.what} | `{case.stage}` | `error: {case.error}" in readme, case.what
