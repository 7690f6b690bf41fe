"""Tokenizing at size: `python -m stages.prepare`, then `python -m stages.tokenize`, timed.

    python -m bench.tokenize_speed --scale full    # or: python -m bench.run --part tokenize --scale full
    python -m bench.tokenize_speed --tok-train 5000 --tok-test 500

Synthetic reviews at Yelp's length (650,000 + 50,000 at full scale) in a fresh repository with a tiny
training run configured; wall time, CPU time and peak RSS (from `os.wait4`) of the tokenize process
alone, reviews/s, and the size of `data/tokenized`. Writes `bench/results/tokenize.json`, and leaves
the repository for `bench.noop` to reuse.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import YELP_LENGTH_SCALE, data_overrides, du_bytes, make_repo, mb, run_stage, text_length_stats

# Train and test reviews per scale (`--scale`).
SIZES = {"small": {"train": 20_000, "test": 2_000}, "full": {"train": 650_000, "test": 50_000}}
# The targets on 2 CPU cores, for the full size.
TARGETS = {
    "tokenize_seconds": 180.0,  # tokenize wall time
    "tokenize_peak_rss_bytes": 2 * 1024**3,
    "tokenized_bytes": 600 * 1000**2,  # 600 MB
}
FULL_ROWS = SIZES["full"]["train"] + SIZES["full"]["test"]
# The pipeline repository trains a token model: its size does not depend on how long it trains, and
# `bench.noop`'s timing does not depend on it either.
TINY_TRAINING = {
    "subset": {"train_size": 8, "eval_size": 8},
    "train": {"epochs": 1, "max_steps": 1, "logging_steps": 1},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tok-train", type=int, help="train reviews of the tokenize part (default: per scale)")
    parser.add_argument("--tok-test", type=int, help="test reviews of the tokenize part (default: per scale)")
    harness.add_length_scale(parser)
    parser.add_argument(
        "--cache-type",
        type=lambda value: None if value == "project" else value,
        default="project",
        help="cache.type of the pipeline repository ('project': as this repository's config; default: %(default)s)",
    )


def rows_wanted(args: argparse.Namespace) -> tuple[int, int]:
    return args.tok_train or SIZES[args.scale]["train"], args.tok_test or SIZES[args.scale]["test"]


def full_size(args: argparse.Namespace) -> bool:
    """Whether this run is the issue's: full scale, no size overrides; only then do the targets apply."""
    return args.scale == "full" and not (args.tok_train or args.tok_test) and args.length_scale == YELP_LENGTH_SCALE


def pipeline_repo(args: argparse.Namespace) -> Path:
    return args.workdir / args.scale / "pipeline"


def pipeline_logs(args: argparse.Namespace) -> Path:
    return args.workdir / args.scale / "pipeline-logs"


def state_file(args: argparse.Namespace) -> Path:
    """What has been done in the pipeline repository, for `bench.noop` to resume from."""
    return args.workdir / args.scale / "pipeline-state.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_train, n_test = rows_wanted(args)
    repo, logs = pipeline_repo(args), pipeline_logs(args)
    state_file(args).unlink(missing_ok=True)
    make_repo(repo, [data_overrides(n_train, n_test, args.length_scale), TINY_TRAINING], cache_type=args.cache_type)
    print(f"bench: tokenize part in {repo} ({n_train:,} + {n_test:,} reviews)", flush=True)
    prepare = run_stage(repo, "prepare", logs)
    print(f"bench:   prepare: {prepare.wall_s:.1f} s", flush=True)
    tok = run_stage(repo, "tokenize", logs)
    print(f"bench:   tokenize: {tok.wall_s:.1f} s, peak RSS {tok.peak_rss_bytes / 2**20:.0f} MiB", flush=True)
    meta = json.loads((repo / "data" / "tokenized" / "meta.json").read_text())
    rows = sum(meta["rows"].values())
    tokens = sum(meta["tokens"].values())
    in_stage = re.search(r"tokenized \S+ in ([0-9.]+)s", tok.text())
    tokenized = repo / "data" / "tokenized"
    tokenized_bytes = du_bytes([tokenized])
    # What the tutorial's `dataset.map(..., padding="max_length")` stores per review, for scale: input_ids
    # as int32 plus int8 token_type_ids and attention_mask, 512 each. Computed, not measured.
    padded_bytes = rows * meta["max_length"] * (4 + 1 + 1)
    prepared = repo / "data" / "prepared"
    result = {
        "part": "tokenize",
        "scale": args.scale,
        "rows": rows,
        "rows_by_split": meta["rows"],
        "length_scale": args.length_scale,
        "text_chars": {split: text_length_stats(prepared / f"{split}.parquet") for split in ("train", "test")},
        "tokens": tokens,
        "mean_tokens_per_review": round(tokens / rows, 1),
        "at_max_length": sum(meta["at_max_length"].values()),
        "max_length": meta["max_length"],
        "tokenize_batch_size": meta["params"]["tokenize"]["batch_size"],
        "num_proc_param": "tokenize" in meta["params"] and "num_proc" in meta["params"]["tokenize"],
        "tokenizers_parallelism": harness.bench_env().get("TOKENIZERS_PARALLELISM"),
        "prepare_wall_s": round(prepare.wall_s, 2),
        "tokenize_wall_s": round(tok.wall_s, 2),
        "tokenize_in_stage_s": float(in_stage.group(1)) if in_stage else None,
        "tokenize_cpu_s": round(tok.cpu_s, 2),
        "tokenize_cores_used": round(tok.cpu_s / tok.wall_s, 2),
        "reviews_per_second": round(rows / tok.wall_s, 1),
        "tokenize_peak_rss_bytes": tok.peak_rss_bytes,
        "prepare_peak_rss_bytes": prepare.peak_rss_bytes,
        "tokenized_bytes": tokenized_bytes,
        "tokenized_apparent_bytes": du_bytes([tokenized], apparent=True),
        "prepared_bytes": du_bytes([prepared]),
        "padded_int32_equivalent_bytes": padded_bytes,
    }
    full = full_size(args)
    result["targets"] = {
        "tokenize_seconds": _target("tokenize_seconds", tok.wall_s, full, at_most=True),
        "tokenize_peak_rss_bytes": _target("tokenize_peak_rss_bytes", tok.peak_rss_bytes, full),
        "tokenized_bytes": _target("tokenized_bytes", tokenized_bytes, full),
    }
    result["targets"]["tokenize_seconds"]["value"] = result["tokenize_wall_s"]
    result["markdown"] = markdown(result)
    state = {"tokenized": True, "rows": rows, "cache_type": args.cache_type, "length_scale": args.length_scale}
    state_file(args).write_text(json.dumps(state))
    return result


def _target(name: str, value: float, applies: bool, at_most: bool = False) -> dict[str, Any]:
    """`value` against `TARGETS[name]`: below it (or at most it) passes."""
    target = TARGETS[name]
    passed = value <= target if at_most else value < target
    return {"target": target, "value": value, "ratio": round(value / target, 3), "pass": passed, "applies": applies}


def _verdict(target: dict[str, Any]) -> str:
    if not target["applies"]:
        return "target is for full scale"
    return "PASS" if target["pass"] else "FAIL"


def markdown(r: dict[str, Any]) -> str:
    t = r["targets"]
    chars = r["text_chars"]["train"]
    seconds = TARGETS["tokenize_seconds"]
    rate = FULL_ROWS / seconds
    rss_mib = TARGETS["tokenize_peak_rss_bytes"] / 2**20
    return "\n".join(
        [
            f"### Tokenize: {r['rows_by_split']['train']:,} train + {r['rows_by_split']['test']:,} test reviews "
            f"(train mean {chars['mean']:.0f} characters, median {chars['median']:.0f}, p99 {chars['p99']:.0f}; "
            f"{r['mean_tokens_per_review']} tokens/review, {r['at_max_length']:,} cut at {r['max_length']})",
            "",
            "| figure | value | target | value / target | verdict |",
            "| --- | --- | --- | --- | --- |",
            f"| tokenize wall time (process) | {r['tokenize_wall_s']:.1f} s | <= {seconds:.0f} s | "
            f"{t['tokenize_seconds']['ratio']:.2f} | {_verdict(t['tokenize_seconds'])} |",
            f"| tokenize throughput | {r['reviews_per_second']:,.0f} reviews/s | >= {rate:,.0f} reviews/s "
            f"(full size in {seconds:.0f} s) | {r['reviews_per_second'] / rate:.2f} | |",
            f"| tokenize peak RSS | {r['tokenize_peak_rss_bytes'] / 2**20:,.0f} MiB | < {rss_mib:,.0f} MiB | "
            f"{t['tokenize_peak_rss_bytes']['ratio']:.2f} | {_verdict(t['tokenize_peak_rss_bytes'])} |",
            f"| data/tokenized on disk | {mb(r['tokenized_bytes'])} | < {TARGETS['tokenized_bytes'] / 1000**2:,.0f} MB | "
            f"{t['tokenized_bytes']['ratio']:.2f} | {_verdict(t['tokenized_bytes'])} |",
            "",
            f"Tokenize used {r['tokenize_cpu_s']:.1f} CPU s ({r['tokenize_cores_used']:.2f} cores on average; "
            f"{r['tokenize_in_stage_s']} s inside the stage after start-up). Prepare (not a target) took "
            f"{r['prepare_wall_s']:.1f} s and wrote {mb(r['prepared_bytes'])}. For scale, the tutorial's padded "
            f"tensors (int32 ids + int8 mask and type ids, {r['max_length']} per review; computed, not measured) "
            f"would be {mb(r['padded_int32_equivalent_bytes'])}: "
            f"{r['padded_int32_equivalent_bytes'] / max(r['tokenized_bytes'], 1):.1f}x data/tokenized. "
            "Workers: `tokenize.num_proc` as params.yaml sets it (null: one per core for splits of 20,000+ "
            "reviews). Peak RSS is the largest single process of the stage (its own and its workers', as "
            "`os.wait4` reports them), not their sum.",
        ]
    )


if __name__ == "__main__":
    harness.main(sys.modules[__name__])
