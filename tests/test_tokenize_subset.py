"""Stages `tokenize` and `subset`: compact unpadded ids, seeded subsets, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from stages import subset, tokenize
from stages.common.errors import UserError
from stages.common.hub import ModelNotFoundError
from stages.common.params import Params, ParamsError
from tests.helpers import TINY_MAX_POSITIONS


@pytest.fixture
def tokenized(tiny_data: Path) -> Path:
    return tiny_data / "tokenized"


def test_tokenized_ids_are_narrow_unpadded_and_described(tokenized: Path, tiny_params: Params) -> None:
    table = pq.read_table(tokenized / "train.parquet")
    assert table.column_names == ["input_ids", "label"]
    assert str(table.schema.field("input_ids").type) == "list<element: uint16>"
    lengths = [len(ids) for ids in table.column("input_ids").to_pylist()]
    assert max(lengths) <= tiny_params.tokenize.max_length
    assert min(lengths) < max(lengths)  # not padded to a common length
    first = table.column("input_ids")[0].as_py()
    assert first[0] == 101 and first[-1] == 102  # [CLS] ... [SEP]
    meta = json.loads((tokenized / "meta.json").read_text())
    assert meta["rows"] == {"train": 400, "test": 200}
    assert meta["padding"] == "dynamic" and meta["max_length"] == 64 and meta["pad_token_id"] == 0
    assert meta["tokens"]["train"] == sum(lengths)


def test_tokenize_reruns_are_byte_identical(tokenized: Path, tiny_params: Params, tmp_path: Path) -> None:
    tokenize.run(tiny_params.model, tiny_params.tokenize, tokenized.parent / "prepared", tmp_path / "again")
    for name in ("train.parquet", "test.parquet", "meta.json"):
        assert (tokenized / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_max_length_above_the_model_limit_is_a_params_error(tiny_params: Params, tmp_path: Path) -> None:
    too_long = dataclasses.replace(tiny_params.tokenize, max_length=512)
    with pytest.raises(ParamsError) as raised:
        tokenize.run(tiny_params.model, too_long, tmp_path / "prepared", tmp_path / "tokenized")
    assert str(raised.value) == (
        f"tokenize.max_length = 512 exceeds the limit of model {tiny_params.model.name!r} "
        f"({TINY_MAX_POSITIONS} positions); expected an integer <= {TINY_MAX_POSITIONS}"
    )
    assert not (tmp_path / "tokenized").exists()


def test_model_folder_without_config_is_named(tiny_params: Params, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    model = dataclasses.replace(tiny_params.model, name=str(empty))
    with pytest.raises(ModelNotFoundError) as raised:
        tokenize.run(model, tiny_params.tokenize, tmp_path / "prepared", tmp_path / "tokenized")
    assert str(raised.value) == (
        f"model.name = {str(empty)!r}: {empty} is not a model folder "
        "(expected a Hugging Face model folder with config.json)"
    )


def test_subset_matches_the_tutorials_shuffle_and_select(tokenized: Path, tiny_params: Params, tmp_path: Path) -> None:
    import datasets

    sizes = subset.run(tiny_params.subset, tokenized, tmp_path / "subset")
    assert sizes == {"train": 160, "eval": 100}
    source = datasets.Dataset(datasets.table.InMemoryTable(pq.read_table(tokenized / "train.parquet")))
    tutorial = source.shuffle(seed=tiny_params.subset.seed).select(range(160))
    ours = pq.read_table(tmp_path / "subset" / "train.parquet")
    assert ours.column("input_ids").to_pylist() == tutorial["input_ids"]
    assert ours.column("label").to_pylist() == tutorial["label"]
    eval_rows = pq.read_table(tmp_path / "subset" / "eval.parquet").column("idx").to_pylist()
    assert eval_rows == list(np.random.default_rng(tiny_params.subset.seed).permutation(200)[:100])
    # The tokenized data's description carries over, with the subset's own params recorded beside
    # those of the stages before it (the model card reads them from here).
    subset_meta = json.loads((tmp_path / "subset" / "meta.json").read_text())
    tokenized_meta = json.loads((tokenized / "meta.json").read_text())
    assert subset_meta.pop("params") == {
        **tokenized_meta.pop("params"),
        "subset": dataclasses.asdict(tiny_params.subset),
    }
    assert subset_meta == tokenized_meta
    assert set(json.loads((tokenized / "meta.json").read_text())["params"]) == {"data", "model", "tokenize"}


def test_subset_is_identical_across_runs_and_changes_with_the_seed(
    tokenized: Path, tiny_params: Params, tmp_path: Path
) -> None:
    subset.run(tiny_params.subset, tokenized, tmp_path / "a")
    subset.run(tiny_params.subset, tokenized, tmp_path / "b")
    subset.run(dataclasses.replace(tiny_params.subset, seed=1), tokenized, tmp_path / "c")
    read = lambda folder: (folder / "train.parquet").read_bytes()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a") != read(tmp_path / "c")


def test_subset_larger_than_the_split_is_a_clear_error(tokenized: Path, tiny_params: Params, tmp_path: Path) -> None:
    with pytest.raises(UserError) as raised:
        subset.run(dataclasses.replace(tiny_params.subset, eval_size=5000), tokenized, tmp_path / "subset")
    assert str(raised.value) == (
        f"subset.eval_size = 5000 is larger than the test split (200 rows in {tokenized / 'test.parquet'}); "
        "expected at most 200"
    )


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tokenized: Path, tiny_params: Params, tmp_path: Path) -> None:
    """num_proc 2 (spawned workers, small batches so both work) makes the same files as in-process."""
    workers = dataclasses.replace(tiny_params.tokenize, num_proc=2)
    in_process = dataclasses.replace(tiny_params.tokenize, num_proc=1)
    for name, settings in (("workers", workers), ("one", in_process)):
        tokenize.run(
            tiny_params.model,
            dataclasses.replace(settings, batch_size=37),
            tokenized.parent / "prepared",
            tmp_path / name,
        )
    for name in ("train.parquet", "test.parquet", "meta.json"):
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # The default (num_proc null) tokenizes these small splits in-process, with the same ids.
    default = pq.read_table(tokenized / "train.parquet")
    assert default.column("input_ids").equals(pq.read_table(tmp_path / "workers" / "train.parquet").column("input_ids"))
