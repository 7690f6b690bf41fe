"""Stage `tokenize`: turn every review into token ids with the model's fast tokenizer, once.

Params: `model.*`, `tokenize.*`. Input: `<prepared>/{train,test}.parquet`. Output: `<out>/{train,test}.parquet`
(`input_ids`, in the narrowest unsigned integer type the vocabulary fits, and `label`) and `<out>/meta.json`
(how the ids were made). Texts are truncated at `tokenize.max_length`, never padded here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedTokenizerBase

from stages.common import hub
from stages.common.atomic import atomic_dir, json_text
from stages.common.errors import UserError, run_main
from stages.common.params import ModelParams, ParamsError, TokenizeParams, load_params
from stages.data.digest import ContentDigest
from stages.data.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
# With num_proc null, a split gets one worker per this many reviews (up to one per core): enough
# reviews to repay a worker's start-up, which imports transformers (BENCHMARKS.md section 2).
ROWS_PER_WORKER = 20_000


def model_max_length(model: ModelParams) -> int:
    """The longest input the model's position embeddings allow."""
    model_dir = hub.model_dir(model)
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=model.trust_remote_code)
    except ValueError as err:
        raise UserError(f"model.name = {model.name!r}: cannot load its config: {err}") from None
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else 10**9


def id_type(vocab_size: int) -> pa.DataType:
    """The narrowest unsigned integer type that holds every token id."""
    return pa.uint16() if vocab_size <= 2**16 else pa.uint32()


def run(model: ModelParams, params: TokenizeParams, prepared_dir: Path, out_dir: Path) -> dict:
    """Tokenize `prepared_dir`'s splits into `out_dir`; return the metadata written beside them."""
    limit = model_max_length(model)
    if params.max_length > limit:
        raise ParamsError(
            f"tokenize.max_length = {params.max_length} exceeds the limit of model {model.name!r} "
            f"({limit} positions); expected an integer <= {limit}"
        )
    tokenizer = load_tokenizer(model)
    ids_type = id_type(len(tokenizer))
    prepared_meta = _prepared_meta(prepared_dir)
    meta: dict = {
        "model": model.name,
        "model_revision": model.revision,
        "max_length": params.max_length,
        "padding": params.padding,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": len(tokenizer),
        "id_type": str(ids_type),
        "rows": {},
        "tokens": {},
        "at_max_length": {},
        # What the reviews were, independent of the tokenizer: the gate uses it to make sure two
        # runs were evaluated on the same examples.
        "content_sha256": {},
        # Each stage's own params, carried forward (see prepare): what the model card prints.
        # num_proc is left out: how many processes did the work does not change the output.
        "params": {
            **prepared_meta.get("params", {}),
            "model": dataclasses.asdict(model),
            "tokenize": {key: value for key, value in dataclasses.asdict(params).items() if key != "num_proc"},
        },
    }
    # The Hub commits that null revisions resolved to, for the model card (Hub sources only).
    if "dataset_commit" in prepared_meta:
        meta["dataset_commit"] = prepared_meta["dataset_commit"]
    model_commit = hub.snapshot_commit(hub.model_dir(model))
    if model_commit:
        meta["model_commit"] = model_commit
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:  # whole splits, before subset: changing subset sizes never re-tokenizes
            counts = _tokenize_split(
                tokenizer, model, params, prepared_dir / f"{split}.parquet", tmp / f"{split}.parquet", ids_type
            )
            for key, value in counts.items():
                meta[key][split] = value
        (tmp / "meta.json").write_text(json_text(meta))
    return meta


def _prepared_meta(prepared_dir: Path) -> dict:
    meta = prepared_dir / "meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _tokenize_split(
    tokenizer: PreTrainedTokenizerBase,
    model: ModelParams,
    params: TokenizeParams,
    source: Path,
    target: Path,
    ids_type: pa.DataType,
) -> dict[str, int | str]:
    """Tokenize one split from `source` into `target`; return its row, token and truncation counts."""
    if not source.is_file():
        raise UserError(f"{source}: not found; run the prepare stage first (dvc repro prepare)")
    reader = pq.ParquetFile(source)
    num_rows = reader.metadata.num_rows
    # Any number of workers writes the same bytes: batches come back in input order.
    workers = params.num_proc if params.num_proc is not None else min(os.cpu_count() or 1, num_rows // ROWS_PER_WORKER)
    schema = pa.schema([("input_ids", pa.list_(ids_type)), ("label", pa.int64())])
    rows = tokens = at_max_length = 0
    content = ContentDigest()
    # Streamed from the input file to the output file, batch by batch: memory stays flat at any data size.
    batches = reader.iter_batches(batch_size=params.batch_size, columns=["text", "label"])
    with (
        pq.ParquetWriter(target, schema) as writer,
        tqdm(total=num_rows, desc=f"tokenize {source.stem}", unit="review") as progress,
    ):
        for batch, ids in _encoded_batches(batches, tokenizer, model, params, ids_type, workers, content):
            writer.write_table(pa.Table.from_arrays([ids, batch.column("label")], schema=schema))
            lengths = pc.list_value_length(ids)
            rows += len(ids)
            tokens += pc.sum(lengths).as_py() or 0
            at_max_length += pc.sum(pc.equal(lengths, params.max_length)).as_py() or 0
            progress.update(len(ids))
    return {"rows": rows, "tokens": tokens, "at_max_length": at_max_length, "content_sha256": content.hexdigest()}


def _encoded_batches(batches, tokenizer, model, params, ids_type, workers, content):
    """(batch, token ids) in input order, encoded here or by `workers` processes.

    Each batch's texts are hashed into `content` as they are read. With workers, at most two batches
    per worker are in flight, so memory stays flat however large the split.
    """
    if workers <= 1:
        for batch in batches:
            texts = batch.column("text").to_pylist()
            content.update(texts, batch.column("label").to_numpy())
            yield batch, _encode(tokenizer, texts, params.max_length, ids_type)
        return
    # Spawned, not forked: a forked copy of a process whose tokenizer thread pool has run is unsafe
    # (the tokenizers library then turns its parallelism off to avoid deadlocks).
    with ProcessPoolExecutor(
        workers, get_context("spawn"), _start_worker, (model, params.max_length, ids_type)
    ) as pool:
        pending: deque[tuple[pa.RecordBatch, Future]] = deque()
        for batch in batches:
            texts = batch.column("text").to_pylist()
            content.update(texts, batch.column("label").to_numpy())
            pending.append((batch, pool.submit(_encode_in_worker, texts)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, ids_type: pa.DataType) -> pa.Array:
    # No padding: it belongs to the batch (stages/data/tokenized.py). Unpadded, the attention mask is all ones and
    # the token type ids all zeros, so storing them would add only constants; the collator rebuilds them.
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
    )["input_ids"]
    return pa.array(encoded, type=pa.list_(ids_type))


_worker: dict = {}  # in a worker process: its tokenizer and settings


def _start_worker(model: ModelParams, max_length: int, ids_type: pa.DataType) -> None:
    # The processes are the parallelism; each tokenizer's own thread pool would only compete.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker.update(tokenizer=load_tokenizer(model), max_length=max_length, ids_type=ids_type)


def _encode_in_worker(texts: list[str]) -> pa.Array:
    return _encode(_worker["tokenizer"], texts, _worker["max_length"], _worker["ids_type"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, required=True, help="input folder (data/prepared)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (data/tokenized)")
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    meta = run(params.model, params.tokenize, args.prepared, args.out)
    log.info(
        "tokenized %s in %.1fs: %s",
        args.out,
        time.perf_counter() - started,
        "; ".join(
            f"{split} {meta['rows'][split]:,} rows, {meta['tokens'][split]:,} tokens, "
            f"{meta['at_max_length'][split]:,} cut at {meta['max_length']}"
            for split in SPLITS
        ),
    )


if __name__ == "__main__":
    run_main(main)
