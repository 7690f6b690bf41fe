"""Summarise a multi-seed baseline: mean and spread of each metric over training seeds.

    python -m stages.gate.seeds --out reports/seed_noise.json   # once the queued `-S train.seed=N` runs are done

It takes HEAD's run and every experiment whose params differ from HEAD's only in `train.seed`;
`python -m stages.gate --seed-noise reports/seed_noise.json` then uses the spread as each metric's noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.atomic import write_json
from stages.common.params import flatten

SEED_KEY = "train.seed"


def _run_data(rev: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    data = rev.get("data") or {}
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    metrics = (data.get("metrics") or {}).get("metrics.json", {}).get("data")
    return (flatten(params), metrics) if params and metrics else None


def summarize(exp_show: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and count of each metric over HEAD's seed variants."""
    head = next((entry for entry in exp_show if entry.get("rev") != "workspace"), None)
    baseline = _run_data(head) if head else None
    if baseline is None:
        raise ValueError("`dvc exp show --json` has no committed run with params and metrics")
    recipe = {k: v for k, v in baseline[0].items() if k != SEED_KEY}
    runs = [baseline]
    for experiment in head.get("experiments") or []:
        for rev in experiment.get("revs") or []:
            run = _run_data(rev)
            if run and {k: v for k, v in run[0].items() if k != SEED_KEY} == recipe:
                runs.append(run)
    by_seed = {run[0][SEED_KEY]: run[1] for run in runs}  # one run per seed
    if len(by_seed) < 2:
        raise ValueError(
            f"found {len(by_seed)} run(s) of this recipe; queue more seeds (dvc exp run --queue -S {SEED_KEY}=N)"
        )
    return spread(by_seed)


def spread(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation and count of each numeric metric over runs keyed by seed."""
    names = sorted(
        {name for metrics in by_seed.values() for name, value in metrics.items() if isinstance(value, (int, float))}
    )
    summary = {}
    for name in names:
        values = np.array([metrics[name] for metrics in by_seed.values() if name in metrics], dtype=float)
        summary[name] = {
            "mean": round(float(values.mean()), 6),
            "std": round(float(values.std(ddof=1)), 6),
            "n": int(len(values)),
            "values": [round(float(v), 6) for v in values],
        }
    return {"seeds": sorted(by_seed), "metrics": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/seed_noise.json"))
    args = parser.parse_args()
    shown = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if shown.returncode != 0:
        print(f"error: dvc exp show failed: {shown.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        summary = summarize(json.loads(shown.stdout))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_json(args.out, summary)
    for name, stats in summary["metrics"].items():
        print(f"{name}: {stats['mean']:.4f} +- {stats['std']:.4f} over {stats['n']} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
