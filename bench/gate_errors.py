"""Error rates of the pull-request check: how often it fails changes of known effect.

    python -m bench.gate_errors --seeds 20                  # train the runs, then simulate the check
    python -m bench.gate_errors --simulate-only             # the decision again on the stored runs

Collect (real runs, stored in `bench/results/gate-runs.json` as each finishes, so an interrupted
collection resumes): one repository at the smoke profile (`profiles/smoke.yaml` over `params.yaml`,
as `make pr-check` applies it); prepare, tokenize and subset once; then for each variant and each
training seed, the train and evaluate stages' own commands. Variants (`VARIANTS`):
- `base`: params.yaml as it is;
- `eval-batch-16`: `evaluate.batch_size` 16, a refactor that only reorders float sums;
- `flip-N`: N% of the train subset's labels moved to another label (seeded), a data bug;
- `lr-div-N`: `train.learning_rate` divided by N.

Simulate: for each variant and seed s, the check's decision as `stages.pr_check` makes it, with the
project's own gate (`stages.gate`) and seed spread (`stages.seeds`): the paired gate between base(s)
and variant(s); on a regression, the gate again against the spread of base(s) and three other base
seeds (every run stands in for the check's seeds s+1..s+3; `--draws` random choices per seed, the
rate averaged). The null change "another seed" is base(s) against base(s'), s' != s. Each variant's
true drop is its mean accuracy over seeds minus the base's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from bench.run import REPO_ROOT, RESULTS_DIR, make_repo, measure, run_stage, stage_args
from stages import gate, pr_check, seeds
from stages.outputs import write_json
from stages.params import load_params, read_yaml, write_yaml

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "eval-batch-16": {"params": {"evaluate": {"batch_size": 16}}},
    "flip-10": {"flip": 0.10},
    "flip-30": {"flip": 0.30},
    "lr-div-5": {"lr_divisor": 5},
}
PAIRED_EXTRA = (1, 2, 3)  # extra seeds per side tried for the candidate confirmation
NULL_CHANGES = ("another seed", "eval-batch-16")  # changes that cost nothing: any failure is a false alarm
RUNS_FILE = RESULTS_DIR / "gate-runs.json"
EXTRA_SEEDS = pr_check.DEFAULT_CONFIRM_SEEDS


def flip_labels(parquet: Path, share: float, num_labels: int, seed: int = 0) -> None:
    """Move `share` of the rows' labels to another label, chosen at random (seeded)."""
    table = pq.read_table(parquet)
    labels = np.array(table.column("label").to_pylist())
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    labels[rows] = (labels[rows] + rng.integers(1, num_labels, size=len(rows))) % num_labels
    index = table.schema.get_field_index("label")
    pq.write_table(table.set_column(index, "label", pa.array(labels, table.schema.field("label").type)), parquet)


def smoke_repo(workdir: Path) -> tuple[Path, dict[str, Any], dict[str, float]]:
    """A repository at the smoke profile with its data stages run: (repo, its params, stage walls)."""
    repo = workdir / "repo"
    make_repo(repo, [], cache_type=None)
    pr_check.apply_profile(repo / "params.yaml", pr_check.read_profile(REPO_ROOT / pr_check.DEFAULT_PROFILE))
    walls = {stage: run_stage(repo, stage, workdir / "logs").wall_s for stage in ("prepare", "tokenize", "subset")}
    shutil.copytree(repo / "data" / "subset", workdir / "subset-clean", dirs_exist_ok=True)
    return repo, read_yaml((repo / "params.yaml").read_text(), "params.yaml"), walls


def train_variant(repo: Path, workdir: Path, base_params: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    """Train and evaluate one variant at one seed, as the stages' commands do; the stored run."""
    variant = VARIANTS[name]
    shutil.rmtree(repo / "data" / "subset")
    shutil.copytree(workdir / "subset-clean", repo / "data" / "subset")
    if "flip" in variant:
        flip_labels(repo / "data" / "subset" / "train.parquet", variant["flip"], base_params["data"]["num_labels"])
    params = json.loads(json.dumps(base_params))
    for section, values in variant.get("params", {}).items():
        params[section].update(values)
    if "lr_divisor" in variant:
        params["train"]["learning_rate"] = base_params["train"]["learning_rate"] / variant["lr_divisor"]
    params["train"]["seed"] = seed
    write_yaml(repo / "params.yaml", params)
    shutil.rmtree(repo / "checkpoints", ignore_errors=True)  # every run trains from scratch
    logs = workdir / "logs"
    walls = {stage: measure(stage_args(repo, stage), repo, logs / f"{name}-{seed}-{stage}.log").wall_s
             for stage in ("train", "evaluate")}
    predictions = pd.read_csv(repo / gate.PREDICTIONS_FILE).sort_values("idx")
    return {
        "metrics": json.loads((repo / gate.METRICS_FILE).read_text()),
        "prediction": predictions["prediction"].tolist(),
        "loss": [round(float(x), 6) for x in predictions["loss"]],
        "wall_s": walls,
        "eval": {"idx": predictions["idx"].tolist(), "label": predictions["label"].tolist(),
                 "info": json.loads((repo / gate.INFO_FILE).read_text())},
    }


def collect(variants: list[str], seed_list: list[int], workdir: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """Train every (variant, seed) not yet in `stored`, seed by seed; store each as it finishes."""
    todo = [(seed, name) for seed in seed_list for name in variants if str(seed) not in stored["runs"].get(name, {})]
    if not todo:
        return stored
    repo, base_params, walls = smoke_repo(workdir)
    stored.setdefault("data_stages_s", walls)
    stored.setdefault("params", base_params)
    # Seed-major order: every variant gets its first seeds before any gets its last, so a collection
    # cut short still covers every variant.
    for seed, name in todo:
        run = train_variant(repo, workdir, base_params, name, seed)
        stored.setdefault("eval", run.pop("eval"))
        run.pop("eval", None)
        stored["runs"].setdefault(name, {})[str(seed)] = run
        write_json(RUNS_FILE, stored)
        print(f"bench: {name} seed {seed}: accuracy {run['metrics']['accuracy']:.3f} "
              f"({sum(run['wall_s'].values()):.0f} s)", flush=True)
    return stored


def write_run(stored: dict[str, Any], run: dict[str, Any], folder: Path) -> Path:
    """A run folder as the gate reads it, from one stored run."""
    (folder / "reports").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"idx": stored["eval"]["idx"], "label": stored["eval"]["label"], "prediction": run["prediction"],
                  "confidence": 0.0, "loss": run["loss"]}).to_csv(folder / gate.PREDICTIONS_FILE, index=False)
    (folder / gate.METRICS_FILE).write_text(json.dumps(run["metrics"]))
    (folder / gate.INFO_FILE).write_text(json.dumps(stored["eval"]["info"]))
    write_yaml(folder / gate.PARAMS_FILE, stored["params"])
    return folder


def check_fails(rules, base: Path, head: Path, paired: int, spread_runs: list[dict[str, Any]], work: Path) -> bool:
    """The pull-request check's decision (`stages.pr_check.run`) after the paired gate gave `paired`."""
    status, at_chance = paired, pr_check.base_at_chance(base)
    if status == gate.REGRESSION and not at_chance:
        noise_file = work / "noise.json"
        write_json(noise_file, seeds.spread(dict(enumerate(run["metrics"] for run in spread_runs))))
        status, _ = gate.run(rules, None, base, head, seed_noise_file=noise_file)
    if at_chance and status == gate.PASS:
        status = gate.CANNOT_COMPARE
    return status != gate.PASS


def paired_seeds_fails(rules, base: list[dict[str, Any]], head: list[dict[str, Any]]) -> bool:
    """The candidate confirmation step: the same extra seeds on both sides, a sequential test of the
    mean paired (same-seed) difference of each metric, after each added pair.

    `base[i]` and `head[i]` are the metrics of pair i (pair 0: the check's own runs). Each look uses
    Bonferroni's share of the error rate, so that looking after every pair keeps the false alarms.
    """
    looks = len(base) - 1
    confidence = 1 - (1 - rules.confidence) / looks
    for n in range(2, len(base) + 1):
        for name, rule in rules.metrics.items():
            d = np.array([h[name] - b[name] for b, h in zip(base[:n], head[:n], strict=True)])
            worse = -d.mean() if rule.direction == "higher" else d.mean()
            half = stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
            if worse > rule.tolerance and worse - half > 0:
                return True  # stop early: a regression beyond the tolerance and the noise
    return False


def simulate(stored: dict[str, Any], draws: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    rules = load_params(REPO_ROOT / "params.yaml").gate  # the gate rules the check judges by
    base_runs = stored["runs"]["base"]
    base_seeds = sorted(base_runs, key=int)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-errors-") as tmp:
        work = Path(tmp)
        folders = {s: write_run(stored, base_runs[s], work / f"base-{s}") for s in base_seeds}
        changes = {"another seed": None, **{name: stored["runs"][name] for name in stored["runs"] if name != "base"}}
        for name, runs in changes.items():
            fails, paired_fails, trials = [], [], 0
            by_pairs = {k: [] for k in PAIRED_EXTRA}  # the candidate confirmation, k more seeds each side
            for s in base_seeds:
                others = [o for o in base_seeds if o != s]
                if runs is None:
                    heads = [(folders[o], o) for o in others]  # base(s) against base(s'), every s'
                elif s in runs:
                    heads = [(write_run(stored, runs[s], work / f"{name}-{s}"), None)]
                else:
                    continue
                for head, head_seed in heads:
                    pool = [o for o in others if o != head_seed]
                    paired, _ = gate.run(rules, None, folders[s], head)
                    paired_fails.append(paired != gate.PASS)
                    outcomes = []  # one per choice of the extra base seeds; only a regression needs them
                    for _ in range(draws if paired == gate.REGRESSION else 1):
                        extra = list(rng.choice(pool, size=EXTRA_SEEDS, replace=False))
                        spread_runs = [base_runs[o] for o in [s, *extra]]
                        outcomes.append(check_fails(rules, folders[s], head, paired, spread_runs, work))
                    fails.append(float(np.mean(outcomes)))
                    trials += 1
                    # The candidate: on a paired regression, k more seeds on both sides, paired by seed.
                    head_pool = pool if runs is None else [o for o in pool if o in runs]
                    for k in PAIRED_EXTRA:
                        if paired != gate.REGRESSION:
                            by_pairs[k].append(float(paired != gate.PASS))
                            continue
                        if len(head_pool) < k or (runs is None and len(head_pool) < 2 * k):
                            continue
                        outcomes = []
                        for _ in range(draws):
                            if runs is None:  # another seed: the head's extra seeds are other base runs
                                picked = list(rng.choice(head_pool, size=2 * k, replace=False))
                                base_extra, head_extra = picked[:k], [base_runs[o] for o in picked[k:]]
                                head_first = base_runs[head_seed]
                            else:
                                base_extra = list(rng.choice(head_pool, size=k, replace=False))
                                head_extra, head_first = [runs[o] for o in base_extra], runs[s]
                            base_metrics = [base_runs[o]["metrics"] for o in [s, *base_extra]]
                            head_metrics = [run["metrics"] for run in [head_first, *head_extra]]
                            outcomes.append(paired_seeds_fails(rules, base_metrics, head_metrics))
                        by_pairs[k].append(float(np.mean(outcomes)))
            # The true drop over the seeds both have: same seed, same data order, only the change differs.
            common = [seed for seed in base_seeds if runs is None or seed in runs]
            drops = [base_runs[seed]["metrics"]["accuracy"] - runs[seed]["metrics"]["accuracy"] for seed in common
                     if runs is not None]
            loss_rises = [runs[seed]["metrics"]["eval_loss"] - base_runs[seed]["metrics"]["eval_loss"]
                          for seed in common if runs is not None]
            rows.append({
                "change": name,
                "true_loss_rise": round(float(np.mean(loss_rises)), 4) if loss_rises else 0.0,
                "seeds": len(common),
                "true_drop": round(float(np.mean(drops)), 4) if drops else 0.0,
                "true_drop_sd": round(float(np.std(drops, ddof=1)), 4) if len(drops) > 1 else None,
                "fail_rate": round(float(np.mean(fails)), 3) if fails else None,
                "paired_fail_rate": round(float(np.mean(paired_fails)), 3) if paired_fails else None,
                **{f"paired_seeds_{k}_fail_rate": round(float(np.mean(v)), 3) if v else None
                   for k, v in by_pairs.items()},
                "trials": trials,
            })
    return rows


def _rate(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "n/a"


def markdown(stored: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    walls = [sum(r["wall_s"].values()) for runs in stored["runs"].values() for r in runs.values()]
    data_s = sum(stored.get("data_stages_s", {}).values())
    train_eval = float(np.mean(walls)) if walls else float("nan")
    lines = [
        f"### Pull-request check: error rates (smoke profile, {stored['eval']['info'].get('n_eval')} eval examples)",
        "",
        "| change | true accuracy drop (mean ± sd over seeds) | true eval-loss rise | seeds | trials | "
        "paired test alone fails | check fails (today) | "
        + " | ".join(f"paired seeds, {k} more each side" for k in PAIRED_EXTRA) + " | that is |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(PAIRED_EXTRA) + "--- |",
    ]
    for row in rows:
        kind = "false-alarm rate" if row["change"] in NULL_CHANGES else "detection rate"
        sd = f" ± {row['true_drop_sd']:.3f}" if row.get("true_drop_sd") is not None else ""
        candidates = " | ".join(_rate(row.get(f"paired_seeds_{k}_fail_rate")) for k in PAIRED_EXTRA)
        lines.append(
            f"| {row['change']} | {row['true_drop']:+.3f}{sd} | {row['true_loss_rise']:+.3f} | {row['seeds']} | "
            f"{row['trials']} | {_rate(row['paired_fail_rate'])} | {_rate(row['fail_rate'])} | {candidates} | {kind} |"
        )
    lines += [
        "",
        f"One smoke run's train + evaluate took {train_eval:.0f} s on average, the data stages {data_s:.0f} s "
        "(the stages' own commands on 2 cores, without DVC's overhead). A check is two such runs, plus "
        f"{EXTRA_SEEDS} base runs after a suspected regression: about {(2 * (data_s + train_eval)) / 60:.1f} "
        f"minutes, or {(2 * (data_s + train_eval) + EXTRA_SEEDS * train_eval) / 60:.1f} with the extra seeds.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="training seeds per variant (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--draws", type=int, default=5, help="choices of the extra base seeds per trial")
    parser.add_argument("--simulate-only", action="store_true", help="no training: simulate the stored runs")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gt-bench-gate")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "base" not in variants:
        parser.error(f"variants must include base and come from {', '.join(VARIANTS)} (unknown: {unknown})")
    stored = json.loads(RUNS_FILE.read_text()) if RUNS_FILE.is_file() else {"runs": {}}
    started = time.perf_counter()
    if not args.simulate_only:
        seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
        stored = collect(variants, seed_list, args.workdir.resolve(), stored)
    rows = simulate(stored, args.draws, np.random.default_rng(0))
    table = markdown(stored, rows)
    result = {"rows": rows, "markdown": table, "command": shlex.join([sys.executable, "-m", "bench.gate_errors",
                                                                      *sys.argv[1:]]),
              "elapsed_s": round(time.perf_counter() - started), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(RESULTS_DIR / "gate-errors.json", result)
    print(f"\n{table}\n")


if __name__ == "__main__":
    main()
