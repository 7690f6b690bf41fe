"""What the benchmarks share: timed commands, fresh project repositories, disk usage, results files.

    from bench.harness import make_repo, run_stage, save

A benchmark module has `add_arguments(parser)`, adding the options it needs to the shared ones
(`new_parser`), and `run(args)`, returning its result dict with the Markdown table under "markdown".
`main(module)` runs one module from its own command line; `bench.run` runs several.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from stages.common.params import with_overrides
from tests.helpers import REPO_ROOT, new_project, stage_args, stage_env

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DVC = str(Path(sys.executable).parent / "dvc")
SCALES = ("small", "full")  # small: a smoke run; full: the sizes, the only one judged on the targets
# `data.synthetic_length_scale` at which the generator's reviews have Yelp's length distribution
# (`python -m bench.lengths`; measured in BENCHMARKS.md, "The data: reviews at Yelp's length").
YELP_LENGTH_SCALE = 7.0

Overrides = dict[str, dict[str, Any]]


# -- running things ----------------------------------------------------------------------------


@dataclass
class Measured:
    """One finished command: wall time, CPU time and peak RSS of the process (and its waited children)."""

    args: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def bench_env() -> dict[str, str]:
    """The environment `make repro` gives the stages: the tests' (this venv first on PATH, offline, no
    analytics, a git identity) with the Makefile's TOKENIZERS_PARALLELISM."""
    env = stage_env()
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


def measure(args: list[str], cwd: Path, log: Path, check: bool = True) -> Measured:
    """Run `args`, output to `log`; wall time, and CPU and peak RSS from the kernel (`wait4`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=bench_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = Measured(
        args=args,
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
        log=log,
    )
    if check and result.returncode != 0:
        tail = "\n".join(result.text().splitlines()[-30:])
        raise SystemExit(f"bench: `{shlex.join(args)}` in {cwd} exited {result.returncode}; log {log}:\n{tail}")
    return result


def run_stage(repo: Path, stage: str, logs: Path, log_name: str | None = None) -> Measured:
    """Run one stage's command in `repo`, its output to `logs/<log_name or stage>.log`."""
    return measure(stage_args(repo, stage), repo, logs / f"{log_name or stage}.log")


def dvc(repo: Path, *args: str, logs: Path, name: str, check: bool = True) -> Measured:
    return measure([DVC, *args], repo, logs / f"{name}.log", check=check)


# -- repositories and data ----------------------------------------------------------------------


def make_repo(repo: Path, overrides: list[Overrides], cache_type: str | None = None) -> Path:
    """A fresh git + DVC repository at `repo` (replacing one there) as `tests.helpers.new_project` builds
    it, with params.yaml's `overrides` applied layer after layer and `cache.type` set if given."""
    if repo.exists():
        shutil.rmtree(repo)
    merged: Overrides = {}
    for layer in overrides:
        merged = with_overrides(merged, layer)
    new_project(repo, merged)
    if cache_type:
        dvc(repo, "config", "cache.type", cache_type, logs=repo.parent / f"{repo.name}-logs", name="dvc-config")
    return repo


def data_overrides(train_rows: int, test_rows: int, length_scale: float) -> Overrides:
    """Synthetic reviews, `train_rows` + `test_rows` of them, at `length_scale`."""
    return {
        "data": {
            "dataset": "synthetic",
            "synthetic_train_size": train_rows,
            "synthetic_test_size": test_rows,
            "synthetic_length_scale": length_scale,
        }
    }


def du_bytes(paths: list[Path], apparent: bool = False) -> int:
    """Disk usage of `paths` together (`du -s`: a hardlinked file counts once)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    flag = ["-b"] if apparent else ["--block-size=1"]
    out = subprocess.run(["du", "-s", "-c", *flag, *existing], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def mb(n: float) -> str:
    return f"{n / 1000**2:,.1f} MB"


def length_summary(lengths: Any) -> dict[str, float]:
    """Rows, mean, median, p90, p99 and max of `lengths`."""
    import numpy as np

    lengths = np.asarray(lengths)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "rows": int(len(lengths)),
        "mean": round(float(lengths.mean()), 1),
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": int(lengths.max()),
    }


def text_length_stats(parquet: Path) -> dict[str, float]:
    """Characters per review in a prepared split: `length_summary` of its texts."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    batches = pq.ParquetFile(parquet).iter_batches(batch_size=50_000, columns=["text"])
    return length_summary(np.concatenate([pc.utf8_length(batch.column("text")).to_numpy() for batch in batches]))


# -- command line and results -------------------------------------------------------------------


def command_line() -> str:
    """How this process was started, as `python -m <module> <args>` where it was started so."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    start = ["-m", spec.name] if spec else [sys.argv[0]]
    return shlex.join([sys.executable, *start, *sys.argv[1:]])


def new_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes. Modules add theirs; an option two modules
    add (e.g. `bench.noop` adds `bench.tokenize_speed`'s) is added once."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See BENCHMARKS.md for what each figure means.",
        conflict_handler="resolve",
    )
    parser.add_argument("--scale", choices=SCALES, default="small")
    parser.add_argument(
        "--workdir",
        type=lambda value: Path(value).resolve(),
        default=str(Path(tempfile.gettempdir()) / "gt-bench"),
        help="where the temporary repositories go (default: %(default)s/<scale>)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="default: %(default)s")
    return parser


def add_length_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--length-scale",
        type=float,
        default=YELP_LENGTH_SCALE,
        help="data.synthetic_length_scale (default: %(default)s, Yelp's length)",
    )


def save(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """Write `result`, with the machine and the command line, to `<results dir>/<part>.json`."""
    from stages.training.environment import cpu_instructions, cpu_model  # imports torch: not for --help

    result = {
        **result,
        "machine": {
            "cpu": cpu_model(),
            "cpu_instructions": cpu_instructions(),  # which kind of machine: a figure holds for its kind only
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "command": command_line(),
        "workdir": str(args.workdir / args.scale),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{result['part']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")  # in the order written, unlike stages' sorted JSON
    return path


def run_parts(args: argparse.Namespace, parts: list[ModuleType]) -> list[dict[str, Any]]:
    """Run each benchmark module in turn, saving and printing each result as it finishes."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"bench: warning: load average {load:.2f} at start; other work on this machine skews the timings",
            file=sys.stderr,
            flush=True,
        )
    results = []
    for part in parts:
        result = part.run(args)
        result["loadavg_at_start"] = round(load, 2)
        path = save(args, result)
        print(f"\n{result['markdown']}\n\n(bench: wrote {path})\n", flush=True)
        results.append(result)
    return results


def main(module: ModuleType, argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m bench.<module>`: its options, then its run."""
    parser = new_parser(module.__doc__ or module.__name__)
    module.add_arguments(parser)
    return run_parts(parser.parse_args(argv), [module])
