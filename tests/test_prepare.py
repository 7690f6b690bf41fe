"""Stage `prepare`: every source gives validated `text`/`label` splits; bad data gets an exact error."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages import prepare
from stages.common.hub import HubUnreachableError
from stages.common.params import DataParams, Params
from stages.prepare import DataError


def data_params(tiny_params: Params, **changes: object) -> DataParams:
    return dataclasses.replace(tiny_params.data, **changes)


def reviews_frame(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i} was fine" for i in range(n)], "label": [i % 5 for i in range(n)]})


def test_synthetic_writes_both_splits_with_the_schema(tiny_params: Params, tmp_path: Path) -> None:
    counts = prepare.run(tiny_params.data, tmp_path / "prepared")
    assert counts == {"train": 400, "test": 200}
    for split, n in counts.items():
        table = pq.read_table(tmp_path / "prepared" / f"{split}.parquet")
        assert table.num_rows == n
        assert str(table.schema.field("text").type) == "string"
        assert str(table.schema.field("label").type) == "int64"
        assert set(table.column("label").to_pylist()) == {0, 1, 2, 3, 4}


def test_reruns_are_byte_identical(tiny_params: Params, tmp_path: Path) -> None:
    prepare.run(tiny_params.data, tmp_path / "a")
    prepare.run(tiny_params.data, tmp_path / "b")
    for split in ("train", "test"):
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_single_file_is_split_stratified_and_seeded(tiny_params: Params, tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"reviews{suffix}"
    frame = reviews_frame(100)
    {
        ".csv": lambda: frame.to_csv(source, index=False),
        ".jsonl": lambda: frame.to_json(source, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(source),
    }[suffix]()
    params = data_params(tiny_params, dataset=str(source), test_size=0.2)
    splits = prepare.load_splits(params, tmp_path)
    assert len(splits["train"]) == 80 and len(splits["test"]) == 20
    assert splits["test"]["label"].value_counts().to_dict() == {0: 4, 1: 4, 2: 4, 3: 4, 4: 4}
    assert set(splits["train"]["text"]) | set(splits["test"]["text"]) == set(frame["text"])
    assert prepare.load_splits(params, tmp_path)["test"].equals(splits["test"])


def test_folder_with_train_and_test_files(tiny_params: Params, tmp_path: Path) -> None:
    reviews_frame(30).to_csv(tmp_path / "train.csv", index=False)
    reviews_frame(10).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    splits = prepare.load_splits(data_params(tiny_params, dataset=str(tmp_path)), tmp_path)
    assert (len(splits["train"]), len(splits["test"])) == (30, 10)


def test_extra_columns_are_dropped(tiny_params: Params, tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    reviews_frame(50).assign(user="someone").to_csv(source, index=False)
    splits = prepare.load_splits(data_params(tiny_params, dataset=str(source)), tmp_path)
    assert list(splits["train"].columns) == ["text", "label"]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "review,label\ngood,1\n",
            "{path}: missing column 'text' (found: review, label); expected columns 'text' and 'label'",
        ),
        (
            "text,label\ngood,1\nbad,7\nok,2\n",
            "{path} row 2: label 7 is not an integer in [0, 5) (data.num_labels = 5; 1 such rows)",
        ),
        (
            "text,label\ngood,1\nbad,two\n",
            "{path} row 2: label 'two' is not an integer in [0, 5) (data.num_labels = 5; 1 such rows)",
        ),
        (
            'text,label\ngood,1\n"",2\n   ,3\n',
            "{path} row 2: text is empty, null or not a string (''); every review needs non-empty text (2 such rows)",
        ),
        ("text,label\n", "{path}: no rows; expected reviews with columns 'text' and 'label'"),
        ("", "{path}: file is empty; expected rows with columns 'text' and 'label'"),
    ],
)
def test_bad_data_names_the_file_row_and_expectation(
    tiny_params: Params, tmp_path: Path, content: str, message: str
) -> None:
    path = write_csv(tmp_path / "reviews.csv", content)
    with pytest.raises(DataError) as raised:
        prepare.load_splits(data_params(tiny_params, dataset=str(path)), tmp_path)
    assert str(raised.value) == message.format(path=path)


def test_malformed_jsonl_and_missing_file(tiny_params: Params, tmp_path: Path) -> None:
    broken = write_csv(tmp_path / "reviews.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", \n')
    with pytest.raises(DataError, match=f"^{broken}: cannot be read as JSONL: "):
        prepare.load_splits(data_params(tiny_params, dataset=str(broken)), tmp_path)
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError) as raised:
        prepare.load_splits(data_params(tiny_params, dataset=str(missing)), tmp_path)
    assert str(raised.value) == f"{missing}: file not found (data.dataset)"


def test_folder_without_test_file(tiny_params: Params, tmp_path: Path) -> None:
    reviews_frame(10).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError) as raised:
        prepare.load_splits(data_params(tiny_params, dataset=str(tmp_path)), tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: no 'test' files; expected exactly one of test.csv, test.jsonl, test.json, test.parquet"
    )


def test_hub_dataset_offline_fails_at_once_with_advice(tiny_params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(HubUnreachableError) as raised:
        prepare.load_splits(data_params(tiny_params, dataset="yelp_review_full"))
    assert time.perf_counter() - started < 10
    assert str(raised.value) == (
        "dataset 'yelp_review_full' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a "
        "download: connect to the network, pre-download it into the Hugging Face cache (HF_HOME), or use a "
        "local folder or the packaged default"
    )


def test_failed_run_keeps_the_previous_output(tiny_params: Params, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare.run(tiny_params.data, out)
    before = (out / "train.parquet").read_bytes()
    with pytest.raises(DataError):
        prepare.run(data_params(tiny_params, dataset=str(tmp_path / "missing.csv")), out, raw_dir=tmp_path)
    assert (out / "train.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared"]
