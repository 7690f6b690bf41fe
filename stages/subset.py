"""Stage `subset`: seeded shuffle-and-select of the train and eval examples, as the tutorial does.

Params: `subset.*`. Input: `<tokenized>/{train,test}.parquet` and `meta.json`. Output: `<out>/train.parquet`
(`subset.train_size` rows of train) and `<out>/eval.parquet` (`subset.eval_size` rows of test), each with an
`idx` column (the row's position in its split), and `<out>/meta.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.atomic import atomic_dir, json_text
from stages.common.errors import UserError, run_main
from stages.common.params import SubsetParams, load_params

log = logging.getLogger(__name__)

# subset output name -> (tokenized split it is drawn from, params field giving its size)
SUBSETS = {"train": ("train", "train_size"), "eval": ("test", "eval_size")}


def seeded_selection(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Row positions of a seeded shuffle of `n_rows` rows, cut to `size`."""
    # What `datasets.Dataset.shuffle(seed=seed).select(range(size))` picks: on the same data, the tutorial's examples.
    return np.random.default_rng(seed).permutation(n_rows)[:size]


def run(params: SubsetParams, tokenized_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the seeded train and eval subsets of `tokenized_dir` to `out_dir`; return their sizes."""
    sizes = {}
    with atomic_dir(out_dir) as tmp:
        for name, (split, size_key) in SUBSETS.items():
            source = tokenized_dir / f"{split}.parquet"
            if not source.is_file():
                raise UserError(f"{source}: not found; run the tokenize stage first (dvc repro tokenize)")
            table = pq.read_table(source, memory_map=True)
            size = getattr(params, size_key)
            if size > table.num_rows:
                raise UserError(
                    f"subset.{size_key} = {size} is larger than the {split} split "
                    f"({table.num_rows:,} rows in {source}); expected at most {table.num_rows}"
                )
            rows = seeded_selection(table.num_rows, size, params.seed)
            subset = table.take(pa.array(rows)).append_column("idx", pa.array(rows, pa.int64()))
            pq.write_table(subset, tmp / f"{name}.parquet")
            sizes[name] = size
        meta = json.loads((tokenized_dir / "meta.json").read_text())
        meta.setdefault("params", {})["subset"] = dataclasses.asdict(params)
        (tmp / "meta.json").write_text(json_text(meta))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tokenized", type=Path, required=True, help="input folder (data/tokenized)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/subset)")
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    sizes = run(params.subset, args.tokenized, args.out)
    log.info(
        "subset %s in %.1fs: train %s rows, eval %s rows (seed %d)",
        args.out,
        time.perf_counter() - started,
        f"{sizes['train']:,}",
        f"{sizes['eval']:,}",
        params.subset.seed,
    )


if __name__ == "__main__":
    run_main(main)
