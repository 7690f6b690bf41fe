"""Stage `prepare`: load the raw reviews, validate them, and write train and test splits.

Params: `data.*`. Input, by `data.dataset`: `synthetic` (`stages/data/synthetic.py`, no network), a CSV,
JSON Lines or Parquet file under `data/raw/` (split by a seeded, stratified `data.test_size`), a folder there
holding `train.<ext>` and `test.<ext>`, or a Hub dataset id pinned by `data.revision`. Output:
`<out>/{train,test}.parquet` (`text` string, `label` int64 in `[0, data.num_labels)`) and `<out>/meta.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from stages.common import hub
from stages.common.atomic import atomic_dir, json_text
from stages.common.errors import UserError, run_main
from stages.common.params import DataParams, load_params
from stages.data.synthetic import generate_reviews

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
# DVC tracks this folder as a dependency of prepare: a dataset elsewhere would change unseen.
RAW_DIR = Path("data/raw")
SPLITS = ("train", "test")


def _read_csv(path: Path) -> pd.DataFrame:
    # Texts as written: pandas would read `NA`, `null` or `nan` as missing and `123` as a number.
    # utf-8-sig drops the byte-order mark that spreadsheet exports put before the first header.
    return pd.read_csv(path, dtype={"text": str}, keep_default_na=False, encoding="utf-8-sig")


def _read_jsonl(path: Path) -> pd.DataFrame:
    # One json.loads per line, not pandas.read_json, which turns string texts such as "123" into numbers.
    rows = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number}: {err.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return pd.DataFrame.from_records(rows)


READERS = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": pd.read_parquet}


class DataError(UserError):
    """Raw data that cannot be used; the message names the file or split, the row and the fix."""


def run(params: DataParams, out_dir: Path, raw_dir: Path = RAW_DIR) -> dict[str, int]:
    """Load and validate the raw data named by `params.dataset`; write `out_dir`. Return row counts."""
    splits = load_splits(params, raw_dir)
    leaked, n_test = leaked_texts(splits), len(splits["test"])
    if leaked:
        log.warning(
            "%d of %d test texts (%.1f%%) also appear verbatim in train: test accuracy overstates accuracy on new "
            "reviews (leakage); remove them from one split",
            leaked,
            n_test,
            100 * leaked / n_test,
        )
    with atomic_dir(out_dir) as tmp:
        for split, frame in splits.items():
            table = pa.table(
                {"text": pa.array(frame["text"], pa.string()), "label": pa.array(frame["label"], pa.int64())}
            )
            pq.write_table(table, tmp / f"{split}.parquet")
        # The params this data came from, carried forward by tokenize and subset so the model card
        # can name the data without evaluate reading any section of params.yaml but its own.
        meta = {"params": {"data": dataclasses.asdict(params)}, "test_texts_in_train": leaked}
        commit = dataset_commit(params, raw_dir)
        if commit:  # the commit a null (or branch) `data.revision` resolved to: what the data really was
            meta["dataset_commit"] = commit
        (tmp / "meta.json").write_text(json_text(meta))
    return {split: len(frame) for split, frame in splits.items()}


def load_splits(params: DataParams, raw_dir: Path = RAW_DIR) -> dict[str, pd.DataFrame]:
    """The validated train and test splits, each a frame with columns `text` and `label`.

    A local `params.dataset` must lie inside `raw_dir`.
    """
    if params.dataset == SYNTHETIC:
        return {
            "train": _synthetic(params.synthetic_train_size, params.seed, params),
            # A different seed stream keeps test reviews independent of the train ones.
            "test": _synthetic(params.synthetic_test_size, params.seed + 1_000_003, params),
        }
    path = _local_path(params.dataset, raw_dir)
    if path is None:
        source, splits = f"dataset {params.dataset!r}", _hub_splits(params)
    elif path.is_dir():
        files = {split: _split_file(path, split) for split in SPLITS}
        source, splits = str(path), {split: _validated(_read(file), str(file), params) for split, file in files.items()}
    else:
        source = str(path)
        splits = _stratified_split(_validated(_read(path), source, params), source, params)
    _check_classes(splits, source)
    return splits


def dataset_commit(params: DataParams, raw_dir: Path = RAW_DIR) -> str | None:
    """The Hub commit `params.dataset` was read from; None for synthetic or local data."""
    if params.dataset == SYNTHETIC or _local_path(params.dataset, raw_dir) is not None:
        return None
    return hub.snapshot_commit(hub.resolve_dataset(params.dataset, params.revision))


def _local_path(dataset: str, raw_dir: Path) -> Path | None:
    """The local file or folder that `data.dataset` names, checked to be in `raw_dir`; None for a Hub id."""
    path = Path(dataset).expanduser()
    parts = Path(dataset).parts
    # A Hub id is `name` or `owner/name`; a path has a file suffix, more parts, or a local first folder.
    looks_local = (
        dataset.startswith((".", "/", "~"))
        or "\\" in dataset
        or path.suffix.lower() in READERS
        or path.exists()
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )
    if not looks_local:
        return None
    if not path.resolve().is_relative_to(raw_dir.resolve()):
        raise DataError(
            f"data.dataset = {dataset!r} is outside {raw_dir}/, which DVC tracks as prepare's input, so an edit "
            f"there would rerun nothing; copy it in (cp -r {dataset} {raw_dir}/) and set "
            f"data.dataset: {raw_dir / path.name}"
        )
    if not path.exists() and path.suffix.lower() not in READERS:
        raise DataError(f"data.dataset = {dataset!r}: no such file or folder")
    return path


def _synthetic(n: int, seed: int, params: DataParams) -> pd.DataFrame:
    texts, labels = generate_reviews(
        n, seed, label_noise=params.synthetic_label_noise, length_scale=params.synthetic_length_scale
    )
    return pd.DataFrame({"text": texts, "label": labels})


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found (data.dataset)")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(READERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; expected rows with columns 'text' and 'label'")
    try:
        return reader(path)
    except (ValueError, pd.errors.ParserError, pa.ArrowException, UnicodeDecodeError) as err:
        kind = path.suffix.lower().lstrip(".").upper()
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot be read as {kind}: {first_line}") from None


def _split_file(folder: Path, split: str) -> Path:
    found = sorted(p for p in folder.glob(f"{split}.*") if p.suffix.lower() in READERS)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataError(
            f"{folder}: {what} '{split}' files; expected exactly one of "
            + ", ".join(f"{split}{ext}" for ext in READERS)
        )
    return found[0]


def _validated(frame: pd.DataFrame, source: str, params: DataParams) -> pd.DataFrame:
    """Check columns, text and labels; return just `text` and `label`, labels as int64."""
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(
            f"{source}: missing column {', '.join(repr(c) for c in missing)} (found: {found}); "
            "expected columns 'text' and 'label'"
        )
    if len(frame) == 0:
        raise DataError(f"{source}: no rows; expected reviews with columns 'text' and 'label'")
    text = frame["text"]
    bad_text = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
    bad_text |= ~text.map(lambda v: isinstance(v, str)).to_numpy()
    if bad_text.any():
        row = int(np.flatnonzero(bad_text)[0])
        raise DataError(
            f"{source} row {row + 1}: text is empty, null or not a string ({_plain(text.iloc[row])!r}); "
            f"every review needs non-empty text ({int(bad_text.sum())} such rows)"
        )
    booleans = frame["label"].map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
    if booleans.any():
        row = int(np.flatnonzero(booleans)[0])
        raise DataError(
            f"{source} row {row + 1}: label {_plain(frame['label'].iloc[row])!r} is a boolean; expected an integer "
            f"in [0, {params.num_labels}) ({int(booleans.sum())} such rows)"
        )
    labels = pd.to_numeric(frame["label"], errors="coerce")
    in_range = labels.notna() & (labels % 1 == 0) & (labels >= 0) & (labels < params.num_labels)
    if not in_range.all():
        row = int(np.flatnonzero(~in_range.to_numpy())[0])
        raise DataError(
            f"{source} row {row + 1}: label {_plain(frame['label'].iloc[row])!r} is not an integer in "
            f"[0, {params.num_labels}) (data.num_labels = {params.num_labels}; "
            f"{int((~in_range).sum())} such rows)"
        )
    return pd.DataFrame({"text": text.astype(str).to_numpy(), "label": labels.astype("int64").to_numpy()})


def _check_classes(splits: dict[str, pd.DataFrame], source: str) -> None:
    """Refuse splits a classifier cannot learn from or be judged on: one class, or test labels train lacks."""
    counts = {split: frame["label"].value_counts().sort_index() for split, frame in splits.items()}
    for split, count in counts.items():
        if len(count) < 2:
            raise DataError(
                f"{source}: the {split} split has a single class (label {count.index[0]}: {count.iloc[0]:,} rows); "
                "a classifier needs examples of at least 2 labels"
            )
    unseen = counts["test"][~counts["test"].index.isin(counts["train"].index)]
    if len(unseen):
        listed = ", ".join(f"{label} ({n:,} rows)" for label, n in unseen.items())
        raise DataError(
            f"{source}: test labels {listed} never occur in train, so the model cannot learn them; "
            "add train examples of them or drop them from test"
        )


def leaked_texts(splits: dict[str, pd.DataFrame]) -> int:
    """How many test texts appear verbatim in train (leakage)."""
    return int(splits["test"]["text"].isin(set(splits["train"]["text"])).sum())


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages read `7`, not `np.int64(7)`."""
    return value.item() if hasattr(value, "item") else value


def _stratified_split(frame: pd.DataFrame, source: str, params: DataParams) -> dict[str, pd.DataFrame]:
    counts = frame["label"].value_counts()
    if (counts < 2).any():
        rare = ", ".join(str(label) for label in counts[counts < 2].index)
        raise DataError(
            f"{source}: label(s) {rare} occur only once; a stratified split (data.test_size) needs "
            "at least 2 rows per label"
        )
    try:
        train_rows, test_rows = train_test_split(
            np.arange(len(frame)), test_size=params.test_size, stratify=frame["label"], random_state=params.seed
        )
    except ValueError as err:
        raise DataError(f"{source}: cannot split with data.test_size = {params.test_size}: {err}") from None
    # Sorted row order keeps the output independent of how the splitter orders its result.
    return {
        "train": frame.iloc[np.sort(train_rows)].reset_index(drop=True),
        "test": frame.iloc[np.sort(test_rows)].reset_index(drop=True),
    }


def _hub_splits(params: DataParams) -> dict[str, pd.DataFrame]:
    import datasets

    snapshot = hub.resolve_dataset(params.dataset, params.revision)
    loaded = datasets.load_dataset(str(snapshot))
    for split in SPLITS:
        if split not in loaded:
            raise DataError(f"dataset {params.dataset!r}: no '{split}' split (found: {', '.join(loaded)})")
    return {
        split: _validated(loaded[split].to_pandas(), f"dataset {params.dataset!r} split '{split}'", params)
        for split in SPLITS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/prepared)")
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    counts = run(params.data, args.out)
    log.info(
        "prepared %s from %r in %.1fs: %s",
        args.out,
        params.data.dataset,
        time.perf_counter() - started,
        ", ".join(f"{split} {n:,} rows" for split, n in counts.items()),
    )


if __name__ == "__main__":
    run_main(main)
