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

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForSequenceClassification

from stages import prepare, subset, tokenize
from stages.common.params import load_params, with_overrides, write_yaml
from tests.helpers import REPO_ROOT, default_params_dict, stage_env, tiny_overrides

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
    params_text: str | None = None  # params.yaml verbatim, instead of the tiny params with `params` applied


def _duplicated_key(text: str) -> str:
    return text.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 3\n", 1)


SEED_RANGE = "an integer >= 0 and <= 4294967295"
DATA_ADVICE = "expected columns 'text' and 'label'"


CASES = [
    BadInput(
        "misspelled params key",
        "prepare",
        {"train": {"learning_rat": 3e-5}},
        "params.yaml: unknown key 'train.learning_rat' (did you mean 'train.learning_rate'?); train takes: ",
    ),
    BadInput(
        "wrong type",
        "prepare",
        {"train": {"batch_size": "eight"}},
        "params.yaml: train.batch_size = 'eight' has the wrong type; expected an integer >= 1",
    ),
    BadInput(
        "negative size",
        "prepare",
        {"subset": {"train_size": -1}},
        "params.yaml: subset.train_size = -1 is out of range; expected an integer >= 1",
    ),
    BadInput(
        "negative learning rate",
        "prepare",
        {"train": {"learning_rate": -0.001}},
        "params.yaml: train.learning_rate = -0.001 is out of range; expected a number >= 0",
    ),
    BadInput(
        "`max_length` above the model's limit",
        "tokenize",
        {"tokenize": {"max_length": 4096}},
        "tokenize.max_length = 4096 exceeds the limit of model 'models/tiny' (128 positions); "
        "expected an integer <= 128",
    ),
    BadInput(
        "unknown dataset id, Hub unreachable",
        "prepare",
        {"data": {"dataset": "nobody/no-such-reviews"}},
        "dataset 'nobody/no-such-reviews' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
        "forbids a download: connect to the network, pre-download it into the Hugging Face cache "
        "(HF_HOME), or use a local folder or the packaged default",
    ),
    BadInput(
        "data file missing",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv: file not found (data.dataset)",
    ),
    BadInput(
        "data file empty",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv: file is empty; expected rows with columns 'text' and 'label'",
        files={"data/raw/reviews.csv": ""},
    ),
    BadInput(
        "data file malformed",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.jsonl"}},
        "data/raw/reviews.jsonl: cannot be read as JSONL: ",
        files={"data/raw/reviews.jsonl": '{"text": "good", "label": 1}\n{"text": "bad", \n'},
    ),
    BadInput(
        "wrong columns",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv: missing column 'text' (found: review, label); expected columns 'text' and 'label'",
        files={"data/raw/reviews.csv": "review,label\ngood,1\n"},
    ),
    BadInput(
        "label out of range",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv row 2: label 7 is not an integer in [0, 5) (data.num_labels = 5; 1 such rows)",
        files={"data/raw/reviews.csv": "text,label\ngood,1\nbad,7\nok,2\n"},
    ),
    BadInput(
        "model folder missing",
        "tokenize",
        {"model": {"name": "models/nowhere"}},
        "model.name = 'models/nowhere': folder models/nowhere does not exist "
        "(expected a Hugging Face model folder with config.json)",
    ),
    BadInput(
        "model folder with no weights",
        "train",
        {"model": {"name": "models/no-weights"}},
        "model.name = 'models/no-weights': cannot load safetensors weights from models/no-weights: ",
        subset="data/subset-no-weights",
    ),
    BadInput(
        "weights only as a pickle (`pytorch_model.bin`)",
        "train",
        {"model": {"name": "models/pickle-weights"}},
        "model.name = 'models/pickle-weights': cannot load safetensors weights from models/pickle-weights: ",
        subset="data/subset-pickle-weights",
    ),
    BadInput(
        "model that needs `trust_remote_code`",
        "tokenize",
        {"model": {"name": "models/custom-code"}},
        "model.name = 'models/custom-code': needs its own code (config.json's auto_map) to load; "
        "read that code, then set model.trust_remote_code: true to run it",
    ),
    BadInput(
        "tokenizer that needs `trust_remote_code`",
        "tokenize",
        {"model": {"name": "models/custom-tokenizer"}},
        "model.name = 'models/custom-tokenizer': its tokenizer needs its own code (tokenizer_config.json's "
        "auto_map) to load; read that code, then set model.trust_remote_code: true to run it",
    ),
    BadInput(
        "non-finite number (`.inf`)",
        "prepare",
        {"data": {"synthetic_length_scale": float("inf")}},
        "params.yaml: data.synthetic_length_scale = inf is not a finite number; expected a number > 0",
    ),
    BadInput(
        "learning rate `.nan`",
        "prepare",
        {"train": {"learning_rate": float("nan")}},
        "params.yaml: train.learning_rate = nan is not a finite number; expected a number >= 0",
    ),
    BadInput(
        "gate tolerance `.inf`",
        "prepare",
        {"gate": {"metrics": {"accuracy": {"direction": "higher", "tolerance": float("inf")}}}},
        "params.yaml: gate.metrics.accuracy.tolerance = inf is not a finite number; expected a number >= 0",
    ),
    BadInput(
        "seed beyond what `set_seed` takes",
        "prepare",
        {"train": {"seed": 2**32}},
        f"params.yaml: train.seed = 4294967296 is out of range; expected {SEED_RANGE}",
    ),
    BadInput(
        "empty `params.yaml`",
        "prepare",
        {},
        "params.yaml: is empty; expected the sections data, model, tokenize, subset, train, evaluate, gate",
        params_text="",
    ),
    BadInput(
        "a list instead of a mapping",
        "prepare",
        {},
        "params.yaml: top level must be a mapping of keys to values, got ['data', 'model']",
        params_text="- data\n- model\n",
    ),
    BadInput(
        "YAML syntax error",
        "prepare",
        {},
        "params.yaml line 2, column 1: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)",
        params_text="train: [unclosed\n",
    ),
    BadInput(
        "duplicated key",
        "prepare",
        {},
        "params.yaml: key 'epochs' appears twice in one mapping (again at line ",
        params_text="duplicated",
    ),
    BadInput(
        "local folder that does not exist",
        "prepare",
        {"data": {"dataset": "data/raw/my-data"}},
        "data.dataset = 'data/raw/my-data': no such file or folder",
    ),
    BadInput(
        "dataset outside `data/raw/`",
        "prepare",
        {"data": {"dataset": "elsewhere/reviews.csv"}},
        "data.dataset = 'elsewhere/reviews.csv' is outside data/raw/, which DVC tracks as prepare's input, so "
        "an edit there would rerun nothing; copy it in (cp -r elsewhere/reviews.csv data/raw/) and set "
        "data.dataset: data/raw/reviews.csv",
        files={"elsewhere/reviews.csv": "text,label\ngood,4\nbad,0\n"},
    ),
    BadInput(
        "boolean labels",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv row 1: label True is a boolean; expected an integer in [0, 5) (4 such rows)",
        files={"data/raw/reviews.csv": "text,label\ngood,True\nbad,False\nfine,True\nawful,False\n"},
    ),
    BadInput(
        "a split with a single class",
        "prepare",
        {"data": {"dataset": "data/raw/reviews.csv"}},
        "data/raw/reviews.csv: the train split has a single class (label 4: 8 rows); a classifier needs "
        "examples of at least 2 labels",
        files={"data/raw/reviews.csv": "text,label\n" + "".join(f"great {i},4\n" for i in range(10))},
    ),
    BadInput(
        "test labels missing from train",
        "prepare",
        {"data": {"dataset": "data/raw/split"}},
        "data/raw/split: test labels 2 (1 rows) never occur in train, so the model cannot learn them; "
        "add train examples of them or drop them from test",
        files={
            "data/raw/split/train.csv": "text,label\nbad,0\nfine,1\n",
            "data/raw/split/test.csv": "text,label\nawful,0\nok,1\nmeh,2\n",
        },
    ),
    BadInput(
        "`data.num_labels` that does not fit the model's head",
        "train",
        {"model": {"name": "models/head-3"}},
        "model.name = 'models/head-3' already has a classification head that does not fit data.num_labels = 5 "
        "(classifier.bias: [3] in the checkpoint); train fine-tunes a pretrained encoder with a fresh head: "
        "point model.name at the base model",
        subset="data/subset-head-3",
    ),
    BadInput(
        "a model that already has a head of the right size",
        "train",
        {"model": {"name": "models/head-5"}},
        "model.name = 'models/head-5' already has a 5-label classification head, which training would reuse; "
        "train fine-tunes a pretrained encoder with a fresh head: point model.name at the base model",
        subset="data/subset-head-5",
    ),
]


@dataclass(frozen=True)
class AcceptedInput:
    """Input that once failed or was misread, and now runs: `prepare` keeps the texts as written."""

    what: str  # the README's wording of the case
    shown: str  # what the README says the user sees
    files: dict[str, str]
    texts: list[str]  # every text of the prepared splits, sorted
    warning: str | None = None  # the start of the one warning line the stage logs


# Texts that pandas would read as missing values, numbers or booleans.
LOOKALIKES = [
    "NA",
    "N/A",
    "n/a",
    "null",
    "NULL",
    "None",
    "none",
    "nan",
    "NaN",
    "123",
    "007",
    "-1",
    "3.5",
    "1e5",
    "true",
    "False",
]

ACCEPTED = [
    AcceptedInput(
        "texts such as `NA`, `null`, `None`, `nan`, `123` or `true` (JSONL)",
        "read as the reviews they are",
        {
            "data/raw/reviews.jsonl": "".join(
                f'{{"text": "{text}", "label": {i % 2}}}\n' for i, text in enumerate(LOOKALIKES)
            )
        },
        sorted(LOOKALIKES),
    ),
    AcceptedInput(
        "texts such as `NA`, `null`, `None`, `nan`, `123` or `true` (CSV)",
        "read as the reviews they are",
        {"data/raw/reviews.csv": "text,label\n" + "".join(f"{text},{i % 2}\n" for i, text in enumerate(LOOKALIKES))},
        sorted(LOOKALIKES),
    ),
    AcceptedInput(
        "UTF-8 byte-order mark in CSV or JSONL",
        "ignored, as the encoding mark it is",
        {
            "data/raw/bom/train.csv": "\ufefftext,label\ngood,1\nbad,0\n",
            "data/raw/bom/test.jsonl": '\ufeff{"text": "fine", "label": 1}\n{"text": "awful", "label": 0}\n',
        },
        ["awful", "bad", "fine", "good"],
    ),
    AcceptedInput(
        "the same text in train and test (leakage)",
        "`WARNING stages.prepare: 1 of 2 test texts (50.0%) "
        "also appear verbatim in train: …`; the count is in `data/prepared/meta.json`",
        {
            "data/raw/leak/train.csv": "text,label\ngood,1\nbad,0\n",
            "data/raw/leak/test.csv": "text,label\ngood,1\nawful,0\n",
        },
        ["awful", "bad", "good", "good"],
        warning="WARNING stages.prepare: 1 of 2 test texts (50.0%) also appear verbatim in train: ",
    ),
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
    custom_tokenizer = shutil.copytree(tiny_model_dir, root / "models" / "custom-tokenizer")
    tokenizer_config = json.loads((custom_tokenizer / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "CustomTokenizer"  # unknown to transformers
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    (custom_tokenizer / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (custom_tokenizer / "tokenization_custom.py").write_text("raise SystemExit('remote code ran')\n")
    for labels in (3, 5):  # fine-tuned classifiers, as a previous run's models/model is
        headed = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=labels)
        headed.save_pretrained(root / "models" / f"head-{labels}")
        shutil.copy(tiny_model_dir / "tokenizer.json", root / "models" / f"head-{labels}")
        shutil.copy(tiny_model_dir / "tokenizer_config.json", root / "models" / f"head-{labels}")

    good = tiny_params_dict("models/tiny")
    write_yaml(root / "params.yaml", good)
    with contextlib.chdir(root):  # model.name is a relative path, as a user writes it
        params = load_params(Path("params.yaml"))
        prepare.run(params.data, Path("data/prepared"))
        tokenize.run(params.model, params.tokenize, Path("data/prepared"), Path("data/tokenized"))
        subset.run(params.subset, Path("data/tokenized"), Path("data/subset"))
        for name in ("no-weights", "pickle-weights", "head-3", "head-5"):  # tokenizer and config load
            model = dataclasses.replace(params.model, name=f"models/{name}")
            tokenize.run(model, params.tokenize, Path("data/prepared"), Path(f"data/tokenized-{name}"))
            subset.run(params.subset, Path(f"data/tokenized-{name}"), Path(f"data/subset-{name}"))
    (root / "models" / "model").mkdir()
    (root / "models" / "model" / "last-good.txt").write_text("the last good model\n")
    return root


def tiny_params_dict(model_name: str) -> dict:
    overrides = tiny_overrides(Path(model_name))
    overrides["model"]["name"] = model_name
    return with_overrides(default_params_dict(), overrides)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_bad_input_fails_fast_with_one_clear_line(workspace: Path, case: BadInput) -> None:
    params = tiny_params_dict("models/tiny")
    for section, values in case.params.items():
        params[section].update(values)
    write_yaml(workspace / "params.yaml", params)
    if case.params_text == "duplicated":
        (workspace / "params.yaml").write_text(_duplicated_key((workspace / "params.yaml").read_text()))
    elif case.params_text is not None:
        (workspace / "params.yaml").write_text(case.params_text)
    for name, text in case.files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    output = workspace / STAGE_OUTPUT[case.stage]
    before = snapshot(output)
    try:
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                f"stages.{case.stage}",
                *[case.subset if arg == "data/subset" else arg for arg in STAGE_COMMANDS[case.stage]],
            ],
            cwd=workspace,
            env=stage_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.perf_counter() - started
    finally:
        remove_files(workspace, case.files)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {case.error}"), result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s"
    assert snapshot(output) == before  # the last good output is untouched
    assert "remote code ran" not in result.stderr + result.stdout


def remove_files(workspace: Path, files: dict[str, str]) -> None:
    """Remove the case's files, and the folders they made, so no case sees another's data."""
    for name in files:
        (workspace / name).unlink()
    for folder in sorted({(workspace / name).parent for name in files}, reverse=True):
        if folder != workspace / "data" / "raw" and not any(folder.iterdir()):
            folder.rmdir()


@pytest.mark.slow
@pytest.mark.parametrize("case", ACCEPTED, ids=[case.what for case in ACCEPTED])
def test_data_that_once_failed_now_runs_as_written(workspace: Path, case: AcceptedInput) -> None:
    for name, text in case.files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    params = tiny_params_dict("models/tiny")
    source = next(iter(case.files))
    params["data"]["dataset"] = source if source.count("/") == 2 else str(Path(source).parent)
    write_yaml(workspace / "params.yaml", params)
    out = workspace / "data" / "prepared-accepted"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stages.prepare", "--out", str(out.relative_to(workspace))],
            cwd=workspace,
            env=stage_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        remove_files(workspace, case.files)
    assert result.returncode == 0, result.stderr
    texts = [
        text for split in ("train", "test") for text in pq.read_table(out / f"{split}.parquet")["text"].to_pylist()
    ]
    assert sorted(texts) == case.texts
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    if case.warning:
        assert len(warnings) == 1 and warnings[0].startswith(case.warning), result.stderr
        assert json.loads((out / "meta.json").read_text())["test_texts_in_train"] == 1
    else:
        assert warnings == [], result.stderr


def test_the_readme_table_quotes_every_error() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for case in CASES:
        assert f"| {case.what} | `{case.stage}` | `error: {case.error}" in readme, case.what
    for case in ACCEPTED:
        assert f"| {case.what} | `prepare` (runs) | {case.shown}" in readme, case.what
