"""The synthetic generator's review length at several `data.synthetic_length_scale`s, seed 42.

    python -m bench.lengths                          # or: python -m bench.run --part lengths
    python -m bench.lengths --calibration-rows 200   # a quick check of the code path

Checks that `bench.harness.YELP_LENGTH_SCALE`, the scale every other benchmark generates its reviews
at, gives Yelp's mean length. Writes `bench/results/lengths.json`; the figures are deterministic.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import harness
from bench.harness import YELP_LENGTH_SCALE, length_summary

YELP_MEAN_CHARS = 730  # yelp_review_full's mean review length in characters
CALIBRATION_SCALES = (1.0, 3.5, 6.0, 6.5, 7.0, 7.5)
CALIBRATION_ROWS = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    rows = "lengths: reviews generated per scale (default: %(default)s)"
    parser.add_argument("--calibration-rows", type=int, default=CALIBRATION_ROWS, help=rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from stages.data.synthetic import generate_reviews

    n = args.calibration_rows
    rows = []
    for scale in CALIBRATION_SCALES:
        texts, _ = generate_reviews(n, seed=42, length_scale=scale)
        rows.append({"length_scale": scale, **length_summary([len(t) for t in texts])})
    result = {
        "part": "lengths",
        "target_mean_chars": YELP_MEAN_CHARS,
        "chosen_scale": YELP_LENGTH_SCALE,
        "scales": rows,
    }
    result["markdown"] = markdown(rows, n)
    return result


def markdown(rows: list[dict[str, Any]], n: int) -> str:
    lines = [
        f"### Synthetic review length (characters, {n:,} reviews, seed 42)",
        "",
        f"| length_scale | mean | × Yelp's {YELP_MEAN_CHARS} | median | p90 | p99 | max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mark = " **(used)**" if r["length_scale"] == YELP_LENGTH_SCALE else ""
        lines.append(
            f"| {r['length_scale']}{mark} | {r['mean']:.0f} | {r['mean'] / YELP_MEAN_CHARS:.2f} | "
            f"{r['median']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | {r['max']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    harness.main(sys.modules[__name__])
