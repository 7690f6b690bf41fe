"""Tokenized examples as the train and evaluate stages read them, and how they become batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from stages.common.errors import UserError


class TokenizedExamples(torch.utils.data.Dataset):
    """Rows of a subset parquet file as `{"input_ids": [...], "labels": int}` dicts."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"{path}: not found; run the subset stage first (dvc repro subset)")
        table = pq.read_table(path, columns=["input_ids", "label", "idx"])
        self.input_ids: list[list[int]] = table.column("input_ids").to_pylist()
        self.labels: list[int] = table.column("label").to_pylist()
        self.idx: list[int] = table.column("idx").to_pylist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}

    def length_order(self) -> np.ndarray:
        """Row indices from the shortest example to the longest (stable: ties keep their order).

        Batches of neighbours in this order need almost no padding, so predicting in it is fast.
        """
        return np.argsort([len(ids) for ids in self.input_ids], kind="stable")


def read_meta(subset_dir: Path) -> dict[str, Any]:
    """How the subset's token ids were made (written by the tokenize stage)."""
    path = subset_dir / "meta.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run the subset stage first (dvc repro subset)")
    return json.loads(path.read_text())


def make_collator(
    tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any], pad_to_multiple_of: int | None = None
) -> DataCollatorWithPadding:
    """Pad each batch to its longest example (`dynamic`) or to `max_length` (the tutorial's way).

    `pad_to_multiple_of` rounds dynamic lengths up; it never changes the predictions, only the padding.
    """
    # The attention mask is rebuilt here from the padding, so the tokenized data need not store it.
    if meta["padding"] == "max_length":
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=meta["max_length"])
    return DataCollatorWithPadding(tokenizer, padding="longest", pad_to_multiple_of=pad_to_multiple_of)
