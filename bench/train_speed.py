"""Training speed and accuracy: the project's train stage against the tutorial's recipe.

    python -m bench.train_speed --scale full       # or: python -m bench.run --part train --scale full
    python -m bench.train_speed --cases project-fp32,project,tutorial --seeds 42,43,44

Each case (`CASES`) trains in its own repository on the same synthetic reviews at Yelp's length.
Samples/s from the `Trainer`'s log, real tokens/s and the model FLOPs utilisation (`bench/flops.py`: the
training's useful FLOPs per second over the matmul peak this run measures in the case's precision);
accuracy with a 95% Wilson interval, and an exact McNemar test against the tutorial on the same eval
examples. Writes `bench/results/train.json`.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import harness
from bench.flops import matmul_peak, training_flops
from bench.harness import YELP_LENGTH_SCALE, Measured, data_overrides, make_repo, run_stage, text_length_stats
from stages.common.params import override_params_file, read_yaml
from stages.gate.compare import mcnemar_p

# Train and eval examples per scale (`--scale`).
SIZES = {"small": {"train_examples": 32, "eval_examples": 32}, "full": {"train_examples": 400, "eval_examples": 300}}

# The training cases: overrides of params.yaml (after the shared data overrides).
CASES: dict[str, harness.Overrides] = {
    # Our train stage as configured in params.yaml (dynamic padding, group_by_length as set there).
    "project": {},
    # params.yaml with group_by_length on, and off: the effect of grouping alone.
    "project-grouped": {"train": {"group_by_length": True}},
    "project-ungrouped": {"train": {"group_by_length": False}},
    # params.yaml with bf16 autocast, which `precision: auto` picks on CPUs with native bf16 only.
    "project-bf16": {"train": {"precision": "bf16"}},
    # params.yaml with torch.compile (inductor): a speed lever to measure on CPUs, its compile time included.
    "project-compile": {"train": {"torch_compile": True}},
    # params.yaml without dropout on the attention weights (the model's own is 0.1): an opt-in lever.
    "project-no-attention-dropout": {"train": {"attention_dropout": 0.0}},
    # params.yaml in fp32 with the unfused AdamW: the device settings `auto` gave on every CPU before.
    "project-fp32": {"train": {"precision": "fp32", "optimizer": "adamw_torch"}},
    # The tutorial: every review padded to the model's 512 tokens, `Trainer` defaults: fp32, eval
    # batch 8, and fused AdamW (the Trainer's default optimizer from torch 2.8 on).
    "tutorial": {
        "tokenize": {"padding": "max_length", "max_length": 512},
        "train": {
            "group_by_length": False,
            "eval_batch_size": 8,
            "precision": "fp32",
            "optimizer": "adamw_torch_fused",
        },
        "evaluate": {"batch_size": 8},
    },
}
DEFAULT_CASES = ("project", "tutorial")
BASELINE_CASE = "tutorial"
TARGET_SPEEDUP = 5.0  # the issue's: project samples/s over the tutorial's, on 2 CPU cores


def case_list(value: str) -> list[str]:
    cases = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    return cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cases",
        type=case_list,
        default=",".join(DEFAULT_CASES),
        help=f"train cases, comma-separated, from {', '.join(CASES)} (default: %(default)s)",
    )
    parser.add_argument("--train-examples", type=int, help="train examples (default: per scale)")
    parser.add_argument("--eval-examples", type=int, help="eval examples (default: per scale)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs, every case (default: 1)")
    parser.add_argument(
        "--seeds",
        type=lambda value: [int(seed) for seed in value.split(",")],
        default=[],
        help="train: comma-separated training seeds, each case trained with each "
        "(default: params.yaml's train.seed only)",
    )
    harness.add_length_scale(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_train = args.train_examples or SIZES[args.scale]["train_examples"]
    n_eval = args.eval_examples or SIZES[args.scale]["eval_examples"]
    root = args.workdir / args.scale / "train"
    shared = [
        data_overrides(n_train, n_eval, args.length_scale),
        {"subset": {"train_size": n_train, "eval_size": n_eval}, "train": {"epochs": args.epochs, "max_steps": None}},
    ]
    cases: dict[str, dict[str, Any]] = {}
    prepared: Path | None = None
    # The peaks the cases' MFU is measured against: this machine, these threads, now.
    peaks = {precision: matmul_peak(precision) for precision in ("fp32", "bf16")}
    print(", ".join(f"bench: matmul peak {p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()), flush=True)
    for name in args.cases:
        repo = make_repo(root / name, shared + [CASES[name]])
        logs = root / f"{name}-logs"
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
        by_seed: dict[int | None, dict[str, Any]] = {}
        for seed in args.seeds or [None]:
            if seed is not None:  # the same data and subset; only the training seed changes
                override_params_file(repo / "params.yaml", {"train": {"seed": seed}})
            for stage in ("train", "evaluate"):
                timings[stage] = run_stage(repo, stage, logs, stage if seed is None else f"{stage}-seed{seed}")
                of_seed = "" if seed is None else f" (seed {seed})"
                print(f"bench:   {stage}{of_seed}: {timings[stage].wall_s:.1f} s", flush=True)
            by_seed[seed] = case_result(repo, timings, CASES[name], n_train * args.epochs, args.epochs, peaks)
            if seed is not None:
                shutil.copyfile(repo / "reports" / "predictions.csv", logs / f"predictions-seed{seed}.csv")
        per_seed = ("train_samples_per_second", "accuracy", "macro_f1", "eval_loss")
        cases[name] = {  # the last seed's: its predictions are on disk
            **list(by_seed.values())[-1],
            "seeds": {str(s): {k: r[k] for k in per_seed} for s, r in by_seed.items() if s is not None},
        }
    result = {
        "part": "train",
        "scale": args.scale,
        "train_examples": n_train,
        "eval_examples": n_eval,
        "epochs": args.epochs,
        "length_scale": args.length_scale,
        "matmul_peak_gflops": {precision: round(peak / 1e9, 1) for precision, peak in peaks.items()},
        "cases": cases,
        "full_size": args.scale == "full"
        and not (args.train_examples or args.eval_examples)
        and args.epochs == 1.0
        and args.length_scale == YELP_LENGTH_SCALE,
        "train_text_chars": text_length_stats(prepared / "train.parquet") if prepared else None,
    }
    result["comparison"] = comparison(root, cases)
    result["seed_comparison"] = seed_comparison(cases) if len(args.seeds) > 1 else {}
    result["markdown"] = markdown(result)
    return result


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


def useful_training_flops(repo: Path, epochs: float) -> tuple[float, int]:
    """The training's useful FLOPs (real tokens, `bench/flops.py`) and real tokens, over `epochs` epochs of
    the training subset, for the model the case trained."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(repo / "models" / "model")
    lengths = pc.list_value_length(pq.read_table(repo / "data" / "subset" / "train.parquet")["input_ids"]).to_pylist()
    return epochs * training_flops(config, lengths), round(epochs * sum(lengths))


def case_result(
    repo: Path,
    timings: dict[str, Measured],
    overrides: harness.Overrides,
    samples: float,
    epochs: float,
    peaks: dict[str, float],
) -> dict[str, Any]:
    """One trained case: speed from the train stage's log, MFU against `peaks` (FLOP/s per precision),
    scores from `metrics.json`."""
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
    params = read_yaml((repo / "params.yaml").read_text(), "params.yaml")
    device = re.search(r"training on (.+): precision (\w+), optimizer (\w+)", timings["train"].text())
    flops, real_tokens = useful_training_flops(repo, epochs)
    precision = device.group(2) if device else None
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
        "useful_tflop": round(flops / 1e12, 3),
        "real_tokens_per_second": round(real_tokens / train_seconds, 1) if train_seconds > 0 else None,
        # Against the peak of the precision the matmuls ran in (bf16 autocast: bf16).
        "mfu": round(flops / train_seconds / peaks[precision], 4) if train_seconds > 0 and precision in peaks else None,
        "train_loss": final.get("train_loss"),
        "accuracy": metrics["accuracy"],
        "accuracy_ci95": accuracy_ci95(metrics["accuracy"], n_eval),
        "macro_f1": metrics.get("macro_f1"),
        "eval_loss": metrics.get("eval_loss"),
        "n_eval": n_eval,
        "mean_tokens_per_review": round(sum(tok_meta["tokens"].values()) / sum(tok_meta["rows"].values()), 1),
        "stage_wall_s": {stage: round(m.wall_s, 2) for stage, m in timings.items()},
        "stage_cpu_s": {stage: round(m.cpu_s, 2) for stage, m in timings.items()},
        "stage_peak_rss_mib": {stage: round(m.peak_rss_bytes / 2**20, 1) for stage, m in timings.items()},
    }


def accuracy_ci95(accuracy: float, n_eval: int) -> list[float]:
    """The 95% Wilson interval of `accuracy` on `n_eval` examples (the project's `wilson_interval`)."""
    from stages.metrics.scoring import wilson_interval  # imports `evaluate`, and with it torch: not for --help

    return [round(x, 4) for x in wilson_interval(round(accuracy * n_eval), n_eval, confidence=0.95)]


def _ratio(case: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    return case[key] / base[key] if case[key] and base[key] else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def comparison(root: Path, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each case against the tutorial on the same eval examples: speed-ups, and the gate's McNemar test."""
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
        p = mcnemar_p(base_pred.loc[joined.index], pred.loc[joined.index])
        speedup = _ratio(case, base, "train_samples_per_second")
        out[name] = {
            "train_speedup": _round(speedup),
            "trainer_speedup_incl_eval": _round(_ratio(case, base, "trainer_samples_per_second")),
            "eval_speedup": _round(_ratio(case, base, "eval_samples_per_second")),
            "accuracy_difference": round(case["accuracy"] - base["accuracy"], 4),
            "paired_examples": int(len(joined)),
            "same_prediction": int((joined["prediction"] == joined["prediction_base"]).sum()),
            "only_this_right": int((right & ~right_base).sum()),
            "only_baseline_right": int((~right & right_base).sum()),
            "mcnemar_p": round(p, 4),
            "accuracy_equal_within_noise": p >= 0.05,
            "meets_speedup_target": bool(speedup and speedup >= TARGET_SPEEDUP),
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
            "seeds": list(case["seeds"]),
            "accuracy": acc,
            "baseline_accuracy": base_acc,
            "accuracy_mean": round(statistics.mean(acc), 4),
            "accuracy_std": round(statistics.stdev(acc), 4),
            "baseline_accuracy_mean": round(statistics.mean(base_acc), 4),
            "baseline_accuracy_std": round(statistics.stdev(base_acc), 4),
            "accuracy_difference": round(diff, 4),
            "difference_ci95": [round(diff - half, 4), round(diff + half, 4)],
            "accuracy_equal_within_noise": bool(diff - half <= 0 <= diff + half),
            "train_speedup_mean": round(speed / base_speed, 2),
        }
    return out


def _or_dash(value: Any) -> str:
    return "-" if value is None else f"{value}"


def markdown(result: dict[str, Any]) -> str:
    cases, compared = result["cases"], result["comparison"]
    chars = result.get("train_text_chars") or {}
    lines = [
        f"### Training: {result['train_examples']} train examples x {result['epochs']:g} epoch, "
        f"{result['eval_examples']} eval examples, reviews at length scale {result['length_scale']} "
        f"(mean {chars.get('mean', float('nan')):.0f} characters)",
        "",
        f"Matmul peak measured in this run: {', '.join(f'{p} {v:g} GFLOP/s' for p, v in result['matmul_peak_gflops'].items())}.",
        "",
        "| case | padding | group_by_length | precision, optimizer | tokens/review | train samples/s | x tutorial | "
        "real tokens/s | MFU | Trainer samples/s (incl. eval) | eval samples/s | x tutorial | accuracy [95% CI] | "
        "train stage wall s | x tutorial |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in cases.items():
        cmp = compared.get(name, {})
        ratio = "1.00" if name == BASELINE_CASE else _or_dash(cmp.get("train_speedup"))
        eratio = "1.00" if name == BASELINE_CASE else _or_dash(cmp.get("eval_speedup"))
        pad = c["padding"] + (f" ({c['max_length']})" if c["padding"] == "max_length" else "")
        base_wall = cases[BASELINE_CASE]["stage_wall_s"]["train"] if BASELINE_CASE in cases else None
        wall_ratio = f"{base_wall / c['stage_wall_s']['train']:.2f}" if base_wall else "-"
        mfu = f"{100 * c['mfu']:.1f}% of {c['precision']}" if c.get("mfu") is not None else "-"
        lines.append(
            f"| {name} | {pad} | {c['group_by_length']} | {c.get('precision')}, {c.get('optimizer')} | "
            f"{c['mean_tokens_per_review']} | {c['train_samples_per_second']:.2f} | {ratio} | "
            f"{_or_dash(c.get('real_tokens_per_second'))} | {mfu} | "
            f"{c['trainer_samples_per_second']:.2f} | {c['eval_samples_per_second'] or float('nan'):.2f} | {eratio} | "
            f"{c['accuracy']:.3f} [{c['accuracy_ci95'][0]:.3f}, {c['accuracy_ci95'][1]:.3f}] | "
            f"{c['stage_wall_s']['train']:.1f} | {wall_ratio} |"
        )
    for name, cmp in compared.items():
        verdict = "PASS" if cmp["meets_speedup_target"] and cmp["accuracy_equal_within_noise"] else "FAIL"
        if not result["full_size"]:
            verdict += " (but the target is for the full-scale run)"
        lines += [
            "",
            f"{name} vs tutorial: **{cmp['train_speedup']}x** training samples/s (target >= "
            f"{TARGET_SPEEDUP:g}x); accuracy {cmp['accuracy_difference']:+.3f}, same prediction on "
            f"{cmp['same_prediction']}/{cmp['paired_examples']} eval examples, exact McNemar p = {cmp['mcnemar_p']} "
            f"(only {name} right: {cmp['only_this_right']}, only tutorial right: {cmp['only_baseline_right']}) -> "
            f"{verdict}",
        ]
    for name, cmp in result.get("seed_comparison", {}).items():
        per_seed = ", ".join(f"{a:.3f}" for a in cmp["accuracy"])
        per_seed_base = ", ".join(f"{a:.3f}" for a in cmp["baseline_accuracy"])
        noise = "equal within" if cmp["accuracy_equal_within_noise"] else "different beyond"
        lines += [
            "",
            f"{name} vs tutorial over training seeds {', '.join(cmp['seeds'])}: **{cmp['train_speedup_mean']}x** mean "
            f"training samples/s; accuracy {cmp['accuracy_mean']:.3f} ± {cmp['accuracy_std']:.3f} vs "
            f"{cmp['baseline_accuracy_mean']:.3f} ± {cmp['baseline_accuracy_std']:.3f} (per seed "
            f"{per_seed} vs {per_seed_base}); difference {cmp['accuracy_difference']:+.3f}, 95% Welch interval "
            f"[{cmp['difference_ci95'][0]:+.3f}, {cmp['difference_ci95'][1]:+.3f}] -> {noise} the seed noise",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    harness.main(sys.modules[__name__])
