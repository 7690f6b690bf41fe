"""Benchmark of issue 7: training, tokenizing, disk and no-op `dvc repro`, side by side on one machine.

    python -m bench.run --part all --scale full          # the issue's figures (about 20 min, 2 CPU cores)
    python -m bench.run --part tokenize --scale small    # a quick smoke run of one part

Parts (each writes `bench/results/<part>.json` and prints a Markdown table with ratios):

- `lengths`: the synthetic generator's review length at several `data.synthetic_length_scale`s (4,000
  reviews each), to check that `YELP_LENGTH_SCALE` gives Yelp's mean of about 730 characters.
- `train`: the project's train stage (params.yaml: dynamic padding) against the tutorial's recipe
  (`tokenize.padding=max_length`, `tokenize.max_length=512`, `Trainer` defaults), same model, same
  synthetic data at Yelp's length, same train examples, steps and eval examples. Training samples/s
  from the `Trainer`'s own log; accuracy from `metrics.json` with a 95% Wilson interval, and an exact
  McNemar test on the paired predictions.
- `tokenize`: `python -m stages.prepare` then `python -m stages.tokenize` on 650,000 + 50,000 reviews
  (full) at Yelp's length; wall time, CPU time and peak RSS (from `os.wait4`) of the tokenize process
  alone, reviews/s, and the size of `data/tokenized`.
- `noop`: in the repository the tokenize part left (built first if absent), `dvc commit` of prepare and
  tokenize, `dvc repro` of the rest with a tiny training run (the model's size does not depend on it),
  the DVC cache's size with the effective `cache.type`, then `dvc repro` with nothing to do, 3 times.

Every run happens in a fresh git + DVC repository under `--workdir` (default: the system temp dir),
holding copies of the project's files (as tests/conftest.py's `project` fixture does) and the
project's params.yaml with each case's overrides applied. Nothing in this checkout is touched but
`bench/results/`.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.params import read_yaml, write_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PROJECT_FILES = [
    "dvc.yaml", "params.yaml", "stages", "profiles", "Makefile", ".dvcignore", "data/raw/.gitkeep", ".gitignore",
]

# `data.synthetic_length_scale` at which the generator's reviews have Yelp's length distribution: a mean
# of about 730 characters (yelp_review_full), a median below it and a long tail. Measured with
# `python -m bench.run --part lengths` (4,000 reviews, seed 42): mean 732, median 622, p90 1,412,
# p99 2,324, max 4,205 characters.
YELP_LENGTH_SCALE = 7.0
YELP_MEAN_CHARS = 730
CALIBRATION_SCALES = (1.0, 3.5, 6.0, 6.5, 7.0, 7.5)
CALIBRATION_ROWS = 4000

# Sizes per scale. `small` is a smoke run (about a minute a part on 2 cores; the tutorial recipe at 512
# tokens trains about 1.3 samples/s there); `full` is the sizes.
SCALES: dict[str, dict[str, int]] = {
    "small": {"tok_train": 20_000, "tok_test": 2_000, "train_examples": 32, "eval_examples": 32},
    "full": {"tok_train": 650_000, "tok_test": 50_000, "train_examples": 400, "eval_examples": 300},
}

# The training cases: overrides of params.yaml (after the shared data overrides).
CASES: dict[str, dict[str, dict[str, Any]]] = {
    # Our train stage as configured in params.yaml (dynamic padding, group_by_length as set there).
    "project": {},
    # params.yaml with group_by_length on, and off: the effect of grouping alone.
    "project-grouped": {"train": {"group_by_length": True}},
    "project-ungrouped": {"train": {"group_by_length": False}},
    # params.yaml with bf16 autocast, which `precision: auto` picks on CPUs with native bf16 only.
    "project-bf16": {"train": {"precision": "bf16"}},
    # params.yaml without dropout on the attention weights (the model's own is 0.1): an opt-in lever.
    "project-no-attention-dropout": {"train": {"attention_dropout": 0.0}},
    # params.yaml in fp32 with the unfused AdamW: the device settings `auto` gave on every CPU before.
    "project-fp32": {"train": {"precision": "fp32", "optimizer": "adamw_torch"}},
    # The tutorial: every review padded to the model's 512 tokens, `Trainer` defaults: fp32, eval
    # batch 8, and fused AdamW (the Trainer's default optimizer from torch 2.8 on).
    "tutorial": {
        "tokenize": {"padding": "max_length", "max_length": 512},
        "train": {"group_by_length": False, "eval_batch_size": 8, "precision": "fp32", "optimizer": "adamw_torch_fused"},
        "evaluate": {"batch_size": 8},
    },
}
DEFAULT_CASES = ("project", "tutorial")
BASELINE_CASE = "tutorial"

# The targets on 2 CPU cores.
TARGETS = {
    "train_speedup": 5.0,            # project samples/s over the tutorial's
    "tokenize_seconds": 180.0,       # full-size tokenize wall time
    "tokenize_peak_rss_bytes": 2 * 1024**3,
    "tokenized_bytes": 600 * 1000**2,  # 600 MB
    "noop_repro_seconds": 3.0,
}
FULL_TOKENIZE_ROWS = SCALES["full"]["tok_train"] + SCALES["full"]["tok_test"]

# The pipeline repository of the tokenize and noop parts trains a token model: its size does not depend
# on how long it trains, and the noop timing does not depend on it either.
TINY_TRAINING = {
    "subset": {"train_size": 8, "eval_size": 8},
    "train": {"epochs": 1, "max_steps": 1, "logging_steps": 1},
}
NOOP_RUNS = 3
DEFAULT_CACHE_TYPE = "project"  # as the repository's .dvc/config sets it


# ---------------------------------------------------------------------------------------------------
# Running things


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
    """The environment `make repro` gives the stages: this venv first on PATH, offline, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "true")  # as the Makefile exports it
    env.update(
        HF_HUB_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
        GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
    )
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
        args=args, returncode=proc.returncode, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024, log=log,  # Linux reports KiB
    )
    if check and result.returncode != 0:
        tail = "\n".join(result.text().splitlines()[-30:])
        raise SystemExit(f"bench: `{shlex.join(args)}` in {cwd} exited {result.returncode}; log {log}:\n{tail}")
    return result


def stage_args(repo: Path, stage: str) -> list[str]:
    """The stage's command exactly as dvc.yaml writes it, with this venv's python."""
    cmd = read_yaml((repo / "dvc.yaml").read_text(), "dvc.yaml")["stages"][stage]["cmd"]
    args = shlex.split(cmd)
    if args[0] == "python":
        args[0] = sys.executable
    return args


def run_stage(repo: Path, stage: str, logs: Path) -> Measured:
    return measure(stage_args(repo, stage), repo, logs / f"{stage}.log")


def dvc(repo: Path, *args: str, logs: Path, name: str, check: bool = True) -> Measured:
    return measure([str(Path(sys.executable).parent / "dvc"), *args], repo, logs / f"{name}.log", check=check)


# ---------------------------------------------------------------------------------------------------
# Temporary repositories


def merged_params(overrides: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    params = read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml")
    for layer in overrides:
        for section, values in layer.items():
            params[section].update(copy.deepcopy(values))
    return params


def make_repo(repo: Path, overrides: list[dict[str, dict[str, Any]]], cache_type: str | None) -> None:
    """A fresh git + DVC repository with the project's pipeline and params.yaml with `overrides`."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        source, target = REPO_ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    write_yaml(repo / "params.yaml", merged_params(overrides))
    logs = repo.parent / f"{repo.name}-logs"
    measure(["git", "init", "-q", "-b", "main"], repo, logs / "git-init.log")
    dvc(repo, "init", "-q", logs=logs, name="dvc-init")
    shutil.copyfile(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's cache.type
    if cache_type:
        dvc(repo, "config", "cache.type", cache_type, logs=logs, name="dvc-config")


def data_overrides(train_rows: int, test_rows: int, length_scale: float) -> dict[str, dict[str, Any]]:
    return {"data": {"dataset": "synthetic", "synthetic_train_size": train_rows,
                     "synthetic_test_size": test_rows, "synthetic_length_scale": length_scale}}


def du_bytes(paths: list[Path], apparent: bool = False) -> int:
    """Disk usage of `paths` together (`du -s`: a hardlinked file counts once)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    flag = ["-b"] if apparent else ["--block-size=1"]
    out = subprocess.run(["du", "-s", "-c", *flag, *existing], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def text_length_stats(parquet: Path) -> dict[str, float]:
    """Characters per review in a prepared split: mean, median, p90, p99, max."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = [pc.utf8_length(batch.column("text")).to_numpy()
             for batch in pq.ParquetFile(parquet).iter_batches(batch_size=50_000, columns=["text"])]
    lengths = np.concatenate(parts)
    return length_summary(lengths)


def length_summary(lengths: Any) -> dict[str, float]:
    import numpy as np

    lengths = np.asarray(lengths)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {"rows": int(len(lengths)), "mean": round(float(lengths.mean()), 1), "median": float(p50),
            "p90": float(p90), "p99": float(p99), "max": int(lengths.max())}


# ---------------------------------------------------------------------------------------------------
# Statistics


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


# ---------------------------------------------------------------------------------------------------
# Part: lengths


def part_lengths(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    from stages.synthetic import generate_reviews

    rows = []
    for scale in CALIBRATION_SCALES:
        texts, _ = generate_reviews(CALIBRATION_ROWS, seed=42, length_scale=scale)
        rows.append({"length_scale": scale, **length_summary([len(t) for t in texts])})
    result = {"part": "lengths", "target_mean_chars": YELP_MEAN_CHARS, "chosen_scale": YELP_LENGTH_SCALE, "scales": rows}
    lines = [
        f"### Synthetic review length (characters, {CALIBRATION_ROWS:,} reviews, seed 42)", "",
        "| length_scale | mean | × Yelp's 730 | median | p90 | p99 | max |", "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mark = " **(used)**" if r["length_scale"] == YELP_LENGTH_SCALE else ""
        lines.append(f"| {r['length_scale']}{mark} | {r['mean']:.0f} | {r['mean'] / YELP_MEAN_CHARS:.2f} | "
                     f"{r['median']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | {r['max']} |")
    result["markdown"] = "\n".join(lines)
    return result


# ---------------------------------------------------------------------------------------------------
# Part: train


def trainer_logs(text: str) -> list[dict[str, Any]]:
    """The dicts the `Trainer` prints (`{'loss': '1.6', ...}`, `{'train_runtime': '12.3', ...}`)."""
    found = []
    for line in re.split(r"[\r\n]+", text):
        start = line.find("{'")
        if start < 0:
            continue
        try:
            value = ast.literal_eval(line[start:].strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            found.append({k: _number(v) for k, v in value.items()})
    return found


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def part_train(args: argparse.Namespace) -> dict[str, Any]:
    sizes = SCALES[args.scale]
    n_train = args.train_examples or sizes["train_examples"]
    n_eval = args.eval_examples or sizes["eval_examples"]
    root = args.workdir / args.scale / "train"
    shared = [
        data_overrides(n_train, n_eval, args.length_scale),
        {"subset": {"train_size": n_train, "eval_size": n_eval},
         "train": {"epochs": args.epochs, "max_steps": None}},
    ]
    cases: dict[str, dict[str, Any]] = {}
    prepared: Path | None = None
    for name in args.cases:
        repo = root / name
        logs = root / f"{name}-logs"
        make_repo(repo, shared + [CASES[name]], cache_type=None)
        print(f"bench: train case {name!r} in {repo}", flush=True)
        timings: dict[str, Measured] = {}
        if prepared is None:  # the same data for every case: prepare once, copy
            timings["prepare"] = run_stage(repo, "prepare", logs)
            prepared = repo / "data" / "prepared"
        else:
            shutil.copytree(prepared, repo / "data" / "prepared")
        for stage in ("tokenize", "subset"):
            timings[stage] = run_stage(repo, stage, logs)
            print(f"bench:   {stage}: {timings[stage].wall_s:.1f} s", flush=True)
        by_seed: dict[int, dict[str, Any]] = {}
        for seed in args.seeds or [None]:
            if seed is not None:  # the same data and subset; only the training seed changes
                params = read_yaml((repo / "params.yaml").read_text(), "params.yaml")
                params["train"]["seed"] = seed
                write_yaml(repo / "params.yaml", params)
            for stage in ("train", "evaluate"):
                log_name = stage if seed is None else f"{stage}-seed{seed}"  # every seed's log is kept
                timings[stage] = measure(stage_args(repo, stage), repo, logs / f"{log_name}.log")
                print(f"bench:   {stage}{'' if seed is None else f' (seed {seed})'}: {timings[stage].wall_s:.1f} s", flush=True)
            result = train_case_result(repo, timings, CASES[name], n_train * args.epochs)
            if seed is not None:
                shutil.copyfile(repo / "reports" / "predictions.csv", logs / f"predictions-seed{seed}.csv")
            by_seed[seed] = result
        cases[name] = {**list(by_seed.values())[-1], "seeds": {  # the last seed: its predictions are on disk
            str(seed): {key: r[key] for key in ("train_samples_per_second", "accuracy", "macro_f1", "eval_loss")}
            for seed, r in by_seed.items() if seed is not None}}
    result = {
        "part": "train", "scale": args.scale, "train_examples": n_train, "eval_examples": n_eval,
        "epochs": args.epochs, "length_scale": args.length_scale, "cases": cases,
        "full_size": args.scale == "full" and not (args.train_examples or args.eval_examples) and args.epochs == 1.0
                     and args.length_scale == YELP_LENGTH_SCALE,
        "train_text_chars": text_length_stats(prepared / "train.parquet") if prepared else None,
    }
    result["comparison"] = train_comparison(root, cases)
    result["seed_comparison"] = seed_comparison(cases) if args.seeds and len(args.seeds) > 1 else {}
    result["markdown"] = train_markdown(result)
    return result


def train_case_result(repo: Path, timings: dict[str, Measured], overrides: dict[str, Any], samples: float) -> dict[str, Any]:
    logs = trainer_logs(timings["train"].text())
    final = next((entry for entry in reversed(logs) if "train_runtime" in entry), None)
    if final is None:
        raise SystemExit(f"bench: no train_runtime in the train stage's output ({timings['train'].log})")
    evals = [entry for entry in logs if "eval_runtime" in entry]
    eval_seconds = sum(entry["eval_runtime"] for entry in evals)
    eval_samples = sum(entry["eval_runtime"] * entry.get("eval_samples_per_second", 0.0) for entry in evals)
    train_seconds = final["train_runtime"] - eval_seconds  # the Trainer's runtime includes per-epoch eval
    metrics = json.loads((repo / "metrics.json").read_text())
    tok_meta = json.loads((repo / "data" / "tokenized" / "meta.json").read_text())
    n_eval = int(metrics["n_eval"])
    correct = round(metrics["accuracy"] * n_eval)
    params = read_yaml((repo / "params.yaml").read_text(), "params.yaml")
    device = re.search(r"training on (.+): precision (\w+), optimizer (\w+)", timings["train"].text())
    return {
        "overrides": overrides,
        "device": device.group(1) if device else None,
        "precision": device.group(2) if device else None,  # as the train stage resolved `auto`
        "optimizer": device.group(3) if device else None,
        "padding": params["tokenize"]["padding"],
        "max_length": params["tokenize"]["max_length"],
        "group_by_length": params["train"]["group_by_length"],
        "train_samples": round(samples),
        "trainer_runtime_s": final["train_runtime"],
        "trainer_samples_per_second": final["train_samples_per_second"],  # includes per-epoch eval
        "eval_in_training_s": round(eval_seconds, 3),
        "train_only_s": round(train_seconds, 3),
        "train_samples_per_second": round(samples / train_seconds, 3) if train_seconds > 0 else None,
        "eval_samples_per_second": round(eval_samples / eval_seconds, 3) if eval_seconds > 0 else None,
        "train_loss": final.get("train_loss"),
        "accuracy": metrics["accuracy"],
        "accuracy_ci95": [round(x, 4) for x in wilson(correct, n_eval)],
        "macro_f1": metrics.get("macro_f1"),
        "eval_loss": metrics.get("eval_loss"),
        "n_eval": n_eval,
        "mean_tokens_per_review": round(sum(tok_meta["tokens"].values()) / sum(tok_meta["rows"].values()), 1),
        "stage_wall_s": {stage: round(m.wall_s, 2) for stage, m in timings.items()},
        "stage_cpu_s": {stage: round(m.cpu_s, 2) for stage, m in timings.items()},
        "stage_peak_rss_mib": {stage: round(m.peak_rss_bytes / 2**20, 1) for stage, m in timings.items()},
    }


def train_comparison(root: Path, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import pandas as pd

    base = cases.get(BASELINE_CASE)
    if base is None:
        return {}
    base_pred = pd.read_csv(root / BASELINE_CASE / "reports" / "predictions.csv").set_index("idx")
    out = {}
    for name, case in cases.items():
        if name == BASELINE_CASE:
            continue
        pred = pd.read_csv(root / name / "reports" / "predictions.csv").set_index("idx")
        joined = pred.join(base_pred, rsuffix="_base", how="inner")
        right, right_base = joined["prediction"] == joined["label"], joined["prediction_base"] == joined["label_base"]
        b, c = int((right & ~right_base).sum()), int((~right & right_base).sum())
        p = mcnemar_exact(b, c)
        speedup = (case["train_samples_per_second"] / base["train_samples_per_second"]
                   if case["train_samples_per_second"] and base["train_samples_per_second"] else None)
        out[name] = {
            "train_speedup": round(speedup, 2) if speedup else None,
            "trainer_speedup_incl_eval": round(case["trainer_samples_per_second"] / base["trainer_samples_per_second"], 2),
            "eval_speedup": (round(case["eval_samples_per_second"] / base["eval_samples_per_second"], 2)
                             if case["eval_samples_per_second"] and base["eval_samples_per_second"] else None),
            "accuracy_difference": round(case["accuracy"] - base["accuracy"], 4),
            "paired_examples": int(len(joined)),
            "same_prediction": int((joined["prediction"] == joined["prediction_base"]).sum()),
            "only_this_right": b, "only_baseline_right": c,
            "mcnemar_p": round(p, 4),
            "accuracy_equal_within_noise": p >= 0.05,
            "meets_speedup_target": bool(speedup and speedup >= TARGETS["train_speedup"]),
        }
    return out


def seed_comparison(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each case against the tutorial over training seeds: mean samples/s ratio, and the mean accuracy
    difference with a Welch t interval, which the seed spread of both sides widens (what one pair of
    trained models cannot show)."""
    from scipy import stats

    base = cases.get(BASELINE_CASE)
    if base is None or not base.get("seeds"):
        return {}
    base_acc = [r["accuracy"] for r in base["seeds"].values()]
    base_speed = statistics.mean(r["train_samples_per_second"] for r in base["seeds"].values())
    out = {}
    for name, case in cases.items():
        if name == BASELINE_CASE or not case.get("seeds"):
            continue
        acc = [r["accuracy"] for r in case["seeds"].values()]
        va, vb = statistics.variance(acc) / len(acc), statistics.variance(base_acc) / len(base_acc)
        diff = statistics.mean(acc) - statistics.mean(base_acc)
        dof = (va + vb) ** 2 / (va**2 / (len(acc) - 1) + vb**2 / (len(base_acc) - 1)) if va + vb > 0 else float("inf")
        half = float(stats.t.ppf(0.975, dof)) * math.sqrt(va + vb)
        speed = statistics.mean(r["train_samples_per_second"] for r in case["seeds"].values())
        out[name] = {
            "seeds": list(case["seeds"]), "accuracy": acc, "baseline_accuracy": base_acc,
            "accuracy_mean": round(statistics.mean(acc), 4), "accuracy_std": round(statistics.stdev(acc), 4),
            "baseline_accuracy_mean": round(statistics.mean(base_acc), 4),
            "baseline_accuracy_std": round(statistics.stdev(base_acc), 4),
            "accuracy_difference": round(diff, 4), "difference_ci95": [round(diff - half, 4), round(diff + half, 4)],
            "accuracy_equal_within_noise": bool(diff - half <= 0 <= diff + half),
            "train_speedup_mean": round(speed / base_speed, 2),
        }
    return out


def _or_dash(value: Any) -> str:
    return "-" if value is None else f"{value}"


def train_markdown(result: dict[str, Any]) -> str:
    cases, comparison = result["cases"], result["comparison"]
    chars = result.get("train_text_chars") or {}
    lines = [
        f"### Training: {result['train_examples']} train examples x {result['epochs']:g} epoch, "
        f"{result['eval_examples']} eval examples, reviews at length scale {result['length_scale']} "
        f"(mean {chars.get('mean', float('nan')):.0f} characters)", "",
        "| case | padding | group_by_length | precision, optimizer | tokens/review | train samples/s | x tutorial | "
        "Trainer samples/s (incl. eval) | eval samples/s | x tutorial | accuracy [95% CI] | train stage wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in cases.items():
        cmp = comparison.get(name, {})
        ratio = "1.00" if name == BASELINE_CASE else _or_dash(cmp.get("train_speedup"))
        eratio = "1.00" if name == BASELINE_CASE else _or_dash(cmp.get("eval_speedup"))
        pad = c["padding"] + (f" ({c['max_length']})" if c["padding"] == "max_length" else "")
        lines.append(
            f"| {name} | {pad} | {c['group_by_length']} | {c.get('precision')}, {c.get('optimizer')} | {c['mean_tokens_per_review']} | "
            f"{c['train_samples_per_second']:.2f} | {ratio} | {c['trainer_samples_per_second']:.2f} | "
            f"{c['eval_samples_per_second'] or float('nan'):.2f} | {eratio} | "
            f"{c['accuracy']:.3f} [{c['accuracy_ci95'][0]:.3f}, {c['accuracy_ci95'][1]:.3f}] | "
            f"{c['stage_wall_s']['train']:.1f} |"
        )
    for name, cmp in comparison.items():
        verdict = "PASS" if cmp["meets_speedup_target"] and cmp["accuracy_equal_within_noise"] else "FAIL"
        if not result["full_size"]:
            verdict += " (but the target is for the full-scale run)"
        lines += [
            "",
            f"{name} vs tutorial: **{cmp['train_speedup']}x** training samples/s (target >= "
            f"{TARGETS['train_speedup']:g}x); accuracy {cmp['accuracy_difference']:+.3f}, same prediction on "
            f"{cmp['same_prediction']}/{cmp['paired_examples']} eval examples, exact McNemar p = {cmp['mcnemar_p']} "
            f"(only {name} right: {cmp['only_this_right']}, only tutorial right: {cmp['only_baseline_right']}) -> "
            f"{verdict}",
        ]
    for name, cmp in result.get("seed_comparison", {}).items():
        lines += [
            "",
            f"{name} vs tutorial over training seeds {', '.join(cmp['seeds'])}: **{cmp['train_speedup_mean']}x** mean "
            f"training samples/s; accuracy {cmp['accuracy_mean']:.3f} ± {cmp['accuracy_std']:.3f} vs "
            f"{cmp['baseline_accuracy_mean']:.3f} ± {cmp['baseline_accuracy_std']:.3f} (per seed "
            f"{', '.join(f'{a:.3f}' for a in cmp['accuracy'])} vs {', '.join(f'{a:.3f}' for a in cmp['baseline_accuracy'])}); "
            f"difference {cmp['accuracy_difference']:+.3f}, 95% Welch interval "
            f"[{cmp['difference_ci95'][0]:+.3f}, {cmp['difference_ci95'][1]:+.3f}] -> "
            + ("equal within the seed noise" if cmp["accuracy_equal_within_noise"] else "different beyond the seed noise"),
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Part: tokenize (and the pipeline repository the noop part reuses)


def pipeline_repo(args: argparse.Namespace) -> Path:
    return args.workdir / args.scale / "pipeline"


def state_file(args: argparse.Namespace) -> Path:
    return args.workdir / args.scale / "pipeline-state.json"


def part_tokenize(args: argparse.Namespace) -> dict[str, Any]:
    sizes = SCALES[args.scale]
    n_train = args.tok_train or sizes["tok_train"]
    n_test = args.tok_test or sizes["tok_test"]
    repo, logs = pipeline_repo(args), args.workdir / args.scale / "pipeline-logs"
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
    result = {
        "part": "tokenize", "scale": args.scale, "rows": rows, "rows_by_split": meta["rows"],
        "length_scale": args.length_scale,
        "text_chars": {split: text_length_stats(repo / "data" / "prepared" / f"{split}.parquet") for split in ("train", "test")},
        "tokens": tokens, "mean_tokens_per_review": round(tokens / rows, 1),
        "at_max_length": sum(meta["at_max_length"].values()), "max_length": meta["max_length"],
        "tokenize_batch_size": meta["params"]["tokenize"]["batch_size"],
        "num_proc_param": "tokenize" in meta["params"] and "num_proc" in meta["params"]["tokenize"],
        "tokenizers_parallelism": bench_env().get("TOKENIZERS_PARALLELISM"),
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
        "prepared_bytes": du_bytes([repo / "data" / "prepared"]),
        "padded_int32_equivalent_bytes": padded_bytes,
    }
    full = args.scale == "full" and not (args.tok_train or args.tok_test) and args.length_scale == YELP_LENGTH_SCALE
    result["targets"] = {
        "tokenize_seconds": {"target": TARGETS["tokenize_seconds"], "value": result["tokenize_wall_s"],
                             "ratio": round(tok.wall_s / TARGETS["tokenize_seconds"], 3),
                             "pass": tok.wall_s <= TARGETS["tokenize_seconds"], "applies": full},
        "tokenize_peak_rss_bytes": {"target": TARGETS["tokenize_peak_rss_bytes"], "value": tok.peak_rss_bytes,
                                    "ratio": round(tok.peak_rss_bytes / TARGETS["tokenize_peak_rss_bytes"], 3),
                                    "pass": tok.peak_rss_bytes < TARGETS["tokenize_peak_rss_bytes"], "applies": full},
        "tokenized_bytes": {"target": TARGETS["tokenized_bytes"], "value": tokenized_bytes,
                            "ratio": round(tokenized_bytes / TARGETS["tokenized_bytes"], 3),
                            "pass": tokenized_bytes < TARGETS["tokenized_bytes"], "applies": full},
    }
    result["markdown"] = tokenize_markdown(result)
    state_file(args).write_text(json.dumps({"tokenized": True, "rows": rows, "cache_type": args.cache_type,
                                            "length_scale": args.length_scale}))
    return result


def _mb(n: float) -> str:
    return f"{n / 1000**2:,.1f} MB"


def _verdict(target: dict[str, Any]) -> str:
    if not target["applies"]:
        return "target is for full scale"
    return "PASS" if target["pass"] else "FAIL"


def tokenize_markdown(r: dict[str, Any]) -> str:
    t = r["targets"]
    chars = r["text_chars"]["train"]
    rate = FULL_TOKENIZE_ROWS / TARGETS["tokenize_seconds"]
    return "\n".join([
        f"### Tokenize: {r['rows_by_split']['train']:,} train + {r['rows_by_split']['test']:,} test reviews "
        f"(train mean {chars['mean']:.0f} characters, median {chars['median']:.0f}, p99 {chars['p99']:.0f}; "
        f"{r['mean_tokens_per_review']} tokens/review, {r['at_max_length']:,} cut at {r['max_length']})", "",
        "| figure | value | target | value / target | verdict |", "| --- | --- | --- | --- | --- |",
        f"| tokenize wall time (process) | {r['tokenize_wall_s']:.1f} s | <= 180 s | {t['tokenize_seconds']['ratio']:.2f} | {_verdict(t['tokenize_seconds'])} |",
        f"| tokenize throughput | {r['reviews_per_second']:,.0f} reviews/s | >= {rate:,.0f} reviews/s (full size in 180 s) | "
        f"{r['reviews_per_second'] / rate:.2f} | |",
        f"| tokenize peak RSS | {r['tokenize_peak_rss_bytes'] / 2**20:,.0f} MiB | < 2,048 MiB | {t['tokenize_peak_rss_bytes']['ratio']:.2f} | {_verdict(t['tokenize_peak_rss_bytes'])} |",
        f"| data/tokenized on disk | {_mb(r['tokenized_bytes'])} | < 600 MB | {t['tokenized_bytes']['ratio']:.2f} | {_verdict(t['tokenized_bytes'])} |",
        "",
        f"Tokenize used {r['tokenize_cpu_s']:.1f} CPU s ({r['tokenize_cores_used']:.2f} cores on average; "
        f"{r['tokenize_in_stage_s']} s inside the stage after start-up). Prepare (not a target) took "
        f"{r['prepare_wall_s']:.1f} s and wrote {_mb(r['prepared_bytes'])}. For scale, the tutorial's padded "
        f"tensors (int32 ids + int8 mask and type ids, {r['max_length']} per review; computed, not measured) "
        f"would be {_mb(r['padded_int32_equivalent_bytes'])}: "
        f"{r['padded_int32_equivalent_bytes'] / max(r['tokenized_bytes'], 1):.1f}x data/tokenized. "
        "Workers: `tokenize.num_proc` as params.yaml sets it (null: one per core for splits of 20,000+ "
        "reviews). Peak RSS is the largest single process of the stage (its own and its workers', as "
        "`os.wait4` reports them), not their sum.",
    ])


# ---------------------------------------------------------------------------------------------------
# Part: noop (and the cache)


def effective_link_type(repo: Path) -> str:
    """How the workspace's cached files are tied to the cache: symlink, hardlink, reflink or copy, with counts."""
    files = [p for name in ("data/prepared", "data/tokenized", "data/subset", "models/model")
             for p in sorted((repo / name).rglob("*")) if p.is_symlink() or p.is_file()]
    if not files:
        return "unknown (no outputs)"
    kinds: dict[str, int] = {}
    for path in files:
        kind = "symlink" if path.is_symlink() else "hardlink" if path.stat().st_nlink > 1 else "copy"
        kinds[kind] = kinds.get(kind, 0) + 1
    if set(kinds) == {"copy"}:
        cache = repo / ".dvc" / "cache"
        cached = next((p for p in cache.rglob("*") if p.is_file()), None)
        if cached is not None:
            probe = repo / ".dvc" / "tmp" / "reflink-probe"
            probe.parent.mkdir(parents=True, exist_ok=True)
            ok = subprocess.run(["cp", "--reflink=always", str(cached), str(probe)], capture_output=True).returncode == 0
            probe.unlink(missing_ok=True)
            if ok:
                return f"copy or reflink ({len(files)} files; the filesystem supports reflinks)"
    if len(kinds) == 1:
        return f"{next(iter(kinds))} (all {len(files)} files)"
    return "mixed: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) + f" of {len(files)} files"


def noop_runs(repo: Path, logs: Path, label: str) -> list[dict[str, float]]:
    """`dvc repro` with nothing to do, NOOP_RUNS times; fails if any stage ran."""
    runs = []
    for i in range(NOOP_RUNS):
        m = dvc(repo, "repro", logs=logs, name=f"dvc-repro-noop-{label}-{i + 1}")
        ran = re.findall(r"Running stage '([^']+)'", m.text())
        if ran:
            raise SystemExit(f"bench: the no-op dvc repro ran {ran}; see {m.log}")
        runs.append({"wall_s": round(m.wall_s, 3), "cpu_s": round(m.cpu_s, 3), "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1)})
        print(f"bench:   no-op dvc repro ({label}) {i + 1}: {m.wall_s:.2f} s", flush=True)
    return runs


def disk_sizes(repo: Path) -> dict[str, Any]:
    cache = repo / ".dvc" / "cache"
    workspace = [repo / "data", repo / "models"]
    return {
        "cache_type_effective": effective_link_type(repo),
        "cache_bytes": du_bytes([cache]),
        "workspace_bytes": du_bytes(workspace),
        "workspace_plus_cache_bytes": du_bytes(workspace + [cache]),  # hardlinked files count once
        "sizes_bytes": {name: du_bytes([repo / name]) for name in
                        ("data/prepared", "data/tokenized", "data/subset", "models/model")},
    }


def part_noop(args: argparse.Namespace) -> dict[str, Any]:
    repo, logs = pipeline_repo(args), args.workdir / args.scale / "pipeline-logs"
    state = json.loads(state_file(args).read_text()) if state_file(args).is_file() else {}
    built_by_tokenize_part = None
    sizes = SCALES[args.scale]
    wanted_rows = (args.tok_train or sizes["tok_train"]) + (args.tok_test or sizes["tok_test"])
    if (not state.get("tokenized") or state.get("cache_type") != args.cache_type
            or state.get("rows") != wanted_rows or state.get("length_scale") != args.length_scale):
        print("bench: no tokenized pipeline repository at this scale; running the tokenize part first", flush=True)
        built_by_tokenize_part = part_tokenize(args)
        save(args, built_by_tokenize_part)
        state = json.loads(state_file(args).read_text())
    if not state.get("committed"):
        commit = dvc(repo, "commit", "--force", "prepare", "tokenize", logs=logs, name="dvc-commit")
        print(f"bench:   dvc commit prepare tokenize: {commit.wall_s:.1f} s", flush=True)
        rest = dvc(repo, "repro", logs=logs, name="dvc-repro-rest")
        ran = re.findall(r"Running stage '([^']+)'", rest.text())
        if "prepare" in ran or "tokenize" in ran:
            raise SystemExit(f"bench: dvc repro reran {ran} after the commit; see {rest.log}")
        print(f"bench:   dvc repro ({', '.join(ran)}): {rest.wall_s:.1f} s", flush=True)
        measure(["git", "add", "-A"], repo, logs / "git-add.log")
        measure(["git", "commit", "-q", "-m", "bench: pipeline run"], repo, logs / "git-commit.log")
        state.update(committed=True, commit_s=round(commit.wall_s, 2), commit_cpu_s=round(commit.cpu_s, 2),
                     repro_rest_s=round(rest.wall_s, 2), repro_rest_stages=ran)
        state_file(args).write_text(json.dumps(state))
    already_relinked = bool(state.get("relinked"))
    runs = noop_runs(repo, logs, "after-repro")
    median = statistics.median(r["wall_s"] for r in runs)
    configured = subprocess.run([str(Path(sys.executable).parent / "dvc"), "config", "cache.type"], cwd=repo,
                                capture_output=True, text=True, env=bench_env()).stdout.strip()
    project_configured = subprocess.run([str(Path(sys.executable).parent / "dvc"), "config", "cache.type"], cwd=REPO_ROOT,
                                        capture_output=True, text=True, env=bench_env()).stdout.strip()
    sizes = disk_sizes(repo)
    # DVC 3 leaves a stage's outputs as copies after `dvc repro`/`dvc commit` unless hardlink is the first
    # cache.type; `dvc checkout --relink` then links them as cache.type allows. Measured both ways.
    relink = dvc(repo, "checkout", "--relink", logs=logs, name="dvc-checkout-relink")
    print(f"bench:   dvc checkout --relink: {relink.wall_s:.1f} s", flush=True)
    relinked_sizes = disk_sizes(repo)
    state["relinked"] = True
    state_file(args).write_text(json.dumps(state))
    relinked_runs = noop_runs(repo, logs, "after-relink")
    result = {
        "part": "noop", "scale": args.scale, "rows": state.get("rows"),
        "noop_runs": runs, "noop_median_s": median,
        "noop_ratio_to_target": round(median / TARGETS["noop_repro_seconds"], 3),
        "noop_pass": median < TARGETS["noop_repro_seconds"],
        "cache_type_configured": configured or "(unset: DVC's default reflink,copy)",
        "project_cache_type_configured": project_configured or "(unset: DVC's default reflink,copy)",
        **sizes,
        "relink_s": round(relink.wall_s, 2),
        "after_relink": {**relinked_sizes, "noop_runs": relinked_runs,
                         "noop_median_s": statistics.median(r["wall_s"] for r in relinked_runs)},
        "dvc_commit_s": state.get("commit_s"), "dvc_commit_cpu_s": state.get("commit_cpu_s"),
        "dvc_repro_rest_s": state.get("repro_rest_s"), "dvc_repro_rest_stages": state.get("repro_rest_stages"),
        "tiny_training": TINY_TRAINING,
        "already_relinked_by_an_earlier_run": already_relinked,
    }
    result["markdown"] = noop_markdown(result, full=args.scale == "full" and not (args.tok_train or args.tok_test) and args.length_scale == YELP_LENGTH_SCALE)
    return result


def noop_markdown(r: dict[str, Any], full: bool) -> str:
    def verdict(seconds: float) -> str:
        return ("PASS" if seconds < TARGETS["noop_repro_seconds"] else "FAIL") if full else "target is for full scale"

    a, b = r, r["after_relink"]
    runs = "; ".join(", ".join(f"{x['wall_s']:.2f} s" for x in side["noop_runs"]) for side in (a, b))
    sizes = ", ".join(f"{name} {_mb(n)}" for name, n in r["sizes_bytes"].items())

    def shared(side: dict[str, Any]) -> str:
        return f"{side['workspace_plus_cache_bytes'] / max(side['workspace_bytes'] + side['cache_bytes'], 1):.2f}"

    return "\n".join([
        f"### No-op `dvc repro` and the DVC cache ({r['rows']:,} reviews; cache.type {r['cache_type_configured']})", "",
        "| figure | after `dvc repro` | after `dvc checkout --relink` | target | value / target |",
        "| --- | --- | --- | --- | --- |",
        f"| effective link, workspace to cache | {a['cache_type_effective']} | {b['cache_type_effective']} | | |",
        f"| no-op dvc repro, median of {len(a['noop_runs'])} | {a['noop_median_s']:.2f} s, {verdict(a['noop_median_s'])} | "
        f"{b['noop_median_s']:.2f} s, {verdict(b['noop_median_s'])} | < 3 s | "
        f"{a['noop_ratio_to_target']:.2f} / {b['noop_median_s'] / TARGETS['noop_repro_seconds']:.2f} |",
        f"| .dvc/cache on disk | {_mb(a['cache_bytes'])} | {_mb(b['cache_bytes'])} | | |",
        f"| workspace (data/, models/) on disk | {_mb(a['workspace_bytes'])} | {_mb(b['workspace_bytes'])} | | |",
        f"| workspace + cache, shared blocks once | {_mb(a['workspace_plus_cache_bytes'])} | "
        f"{_mb(b['workspace_plus_cache_bytes'])} | | {shared(a)} / {shared(b)} of the two counted apart |",
        "",
        f"No-op runs: {runs}. Sizes: {sizes}. `dvc commit` of prepare + tokenize (hashing and caching): "
        f"{r['dvc_commit_s']} s; `dvc checkout --relink`: {r['relink_s']} s. The project's own .dvc/config "
        f"sets cache.type: {r['project_cache_type_configured']}."
        + (" **Note:** an earlier noop run relinked this repository, so the first column is not the state "
           "`dvc repro` leaves: rerun with `--fresh`." if r["already_relinked_by_an_earlier_run"] else ""),
    ])


# ---------------------------------------------------------------------------------------------------


def save(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    result = {
        **result,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join([sys.executable, "-m", "bench.run", *sys.argv[1:]]),
        "workdir": str(args.workdir / args.scale),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{result['part']}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See BENCHMARKS.md for what each figure means.")
    parser.add_argument("--part", choices=("lengths", "train", "tokenize", "noop", "all"), default="all")
    parser.add_argument("--scale", choices=tuple(SCALES), default="small")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"train cases, comma-separated, from {', '.join(CASES)} (default: %(default)s)")
    parser.add_argument("--train-examples", type=int, help="train examples (default: per scale)")
    parser.add_argument("--eval-examples", type=int, help="eval examples (default: per scale)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs, every case (default: 1)")
    parser.add_argument("--seeds", help="train: comma-separated training seeds, each case trained with each "
                                         "(default: params.yaml's train.seed only)")
    parser.add_argument("--tok-train", type=int, help="train reviews of the tokenize part (default: per scale)")
    parser.add_argument("--tok-test", type=int, help="test reviews of the tokenize part (default: per scale)")
    parser.add_argument("--length-scale", type=float, default=YELP_LENGTH_SCALE,
                        help="data.synthetic_length_scale (default: %(default)s, Yelp's length)")
    parser.add_argument("--cache-type", default=DEFAULT_CACHE_TYPE,
                        help="cache.type of the pipeline repository ('project': as this repository's config; "
                             "default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gt-bench",
                        help="where the temporary repositories go (default: %(default)s/<scale>)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="default: %(default)s")
    parser.add_argument("--fresh", action="store_true", help="noop: rebuild the pipeline repository even if one exists")
    args = parser.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else []
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if args.cache_type == "project":
        args.cache_type = None
    args.workdir = args.workdir.resolve()
    if args.fresh:
        state_file(args).unlink(missing_ok=True)

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"bench: warning: load average {load:.2f} at start; other work on this machine skews the timings",
              file=sys.stderr, flush=True)
    parts = {"lengths": [part_lengths], "train": [part_train], "tokenize": [part_tokenize], "noop": [part_noop],
             "all": [part_lengths, part_train, part_tokenize, part_noop]}[args.part]
    tables = []
    for part in parts:
        result = part(args)
        result["loadavg_at_start"] = round(load, 2)
        path = save(args, result)
        print(f"\n{result['markdown']}\n\n(bench: wrote {path})\n", flush=True)
        tables.append(result["markdown"])
    if args.part == "all":
        summary = args.results_dir / "summary.md"
        summary.write_text(f"<!-- {shlex.join([sys.executable, '-m', 'bench.run', *sys.argv[1:]])} -->\n\n"
                           + "\n\n".join(tables) + "\n")
        print(f"bench: wrote {summary}")


if __name__ == "__main__":
    main()
