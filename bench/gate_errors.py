"""Error rates of the pull-request check: how often it fails changes of known effect, and its cost.

    python -m bench.gate_errors --seeds 20                  # train the runs, then simulate the check
    python -m bench.gate_errors --simulate-only             # the decision again on the stored runs
    python -m bench.gate_errors --simulate-only --rules bench/rules/accuracy-only.yaml
    python -m bench.gate_errors --profile bench/profiles/smoke-2-epochs.yaml --seeds 6 --variants base,flip-20

Collect (real runs, stored in `bench/results/gate-runs.json` as each finishes, so an interrupted
collection resumes): one repository at the smoke profile (`profiles/smoke.yaml` over `params.yaml`,
as `make pr-check` applies it); prepare, tokenize and subset once; then for each variant and each
training seed, the train and evaluate stages' own commands. Variants (`VARIANTS`):
- `base`: params.yaml as it is;
- `eval-batch-16`: `evaluate.batch_size` 16, a refactor that only reorders float sums;
- `flip-N`: N% of the train subset's labels moved to another label (seeded), a data bug;
- `lr-div-N`: `train.learning_rate` divided by N.

Simulate, for each variant and seed s, the check's decision as `stages.gate.pr_check` makes it, with its
own functions (`compare.judge` on the single pair, `pr_check.needs_seeds`, `pr_check.over_seeds`): the
single pair base(s) / variant(s); where it needs the seeds, further pairs base(o) / variant(o) of
other stored seeds o, in random order (`--draws` orders per trial, the rate averaged), for each cap
on the extra pairs in `MAX_EXTRA`. The null change "another seed" is base(s) against base(s'), its
pairs other base runs. Beside it, the check as it was before the pairs (the base's spread over s and
three other seeds). Each variant's true drop is its mean accuracy over seeds minus the base's.

`--profile` runs another candidate smoke profile (sizes only) into its own runs file and reports what
catching each change costs there: profiles compare by power per CPU minute (`minutes_to_catch`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from bench.harness import REPO_ROOT, RESULTS_DIR, command_line, make_repo, run_stage
from stages.common.atomic import write_json
from stages.common.params import GateParams, load_gate_rules, override_params_file, read_yaml, write_yaml
from stages.gate import compare, pr_check, seeds

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "eval-batch-16": {"params": {"evaluate": {"batch_size": 16}}},
    "flip-10": {"flip": 0.10},
    "flip-20": {"flip": 0.20},
    "flip-30": {"flip": 0.30},
    "lr-div-1.25": {"lr_divisor": 1.25},
    "lr-div-2": {"lr_divisor": 2},
    "lr-div-5": {"lr_divisor": 5},
}
MAX_EXTRA = (4, 6, 8)  # caps on the check's extra seed pairs (`--confirm-seeds`) measured side by side
NULL_CHANGES = ("another seed", "eval-batch-16")  # changes that cost nothing: any failure is a false alarm
RUNS_FILE = RESULTS_DIR / "gate-runs.json"
SPREAD_SEEDS = 3  # the check before the seed pairs judged by the base over its seed and 3 more


def flip_labels(parquet: Path, share: float, num_labels: int, seed: int = 0) -> None:
    """Move `share` of the rows' labels to another label, chosen at random (seeded)."""
    table = pq.read_table(parquet)
    labels = np.array(table.column("label").to_pylist())
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    labels[rows] = (labels[rows] + rng.integers(1, num_labels, size=len(rows))) % num_labels
    index = table.schema.get_field_index("label")
    pq.write_table(table.set_column(index, "label", pa.array(labels, table.schema.field("label").type)), parquet)


def smoke_repo(workdir: Path, profile_file: Path) -> tuple[Path, dict[str, Any], dict[str, float]]:
    """A repository at the profile with its data stages run: (repo, its params, stage walls)."""
    repo = workdir / "repo"
    make_repo(repo, [])
    override_params_file(repo / "params.yaml", pr_check.read_profile(profile_file))
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
    walls = {stage: run_stage(repo, stage, logs, f"{name}-{seed}-{stage}").wall_s for stage in ("train", "evaluate")}
    predictions = pd.read_csv(repo / compare.PREDICTIONS_FILE).sort_values("idx")
    return {
        "metrics": json.loads((repo / compare.METRICS_FILE).read_text()),
        "prediction": predictions["prediction"].tolist(),
        "loss": [round(float(x), 6) for x in predictions["loss"]],
        "wall_s": walls,
        "eval": {
            "idx": predictions["idx"].tolist(),
            "label": predictions["label"].tolist(),
            "info": json.loads((repo / compare.INFO_FILE).read_text()),
        },
    }


def collect(
    variants: list[str],
    seed_list: list[int],
    workdir: Path,
    stored: dict[str, Any],
    profile_file: Path,
    runs_file: Path,
) -> dict[str, Any]:
    """Train every (variant, seed) not yet in `stored`, seed by seed; store each in `runs_file` as it finishes."""
    todo = [(seed, name) for seed in seed_list for name in variants if str(seed) not in stored["runs"].get(name, {})]
    if not todo:
        return stored
    repo, base_params, walls = smoke_repo(workdir, profile_file)
    stored.setdefault("profile", pr_check.read_profile(profile_file))
    stored.setdefault("data_stages_s", walls)
    stored.setdefault("params", base_params)
    # Seed-major order: every variant gets its first seeds before any gets its last, so a collection
    # cut short still covers every variant.
    for seed, name in todo:
        run = train_variant(repo, workdir, base_params, name, seed)
        stored.setdefault("eval", run.pop("eval"))
        run.pop("eval", None)
        stored["runs"].setdefault(name, {})[str(seed)] = run
        write_json(runs_file, stored)
        print(
            f"bench: {name} seed {seed}: accuracy {run['metrics']['accuracy']:.3f} "
            f"({sum(run['wall_s'].values()):.0f} s)",
            flush=True,
        )
    return stored


def write_run(stored: dict[str, Any], run: dict[str, Any], folder: Path) -> Path:
    """A run folder as the gate reads it, from one stored run."""
    (folder / "reports").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "idx": stored["eval"]["idx"],
            "label": stored["eval"]["label"],
            "prediction": run["prediction"],
            "confidence": 0.0,
            "loss": run["loss"],
        }
    ).to_csv(folder / compare.PREDICTIONS_FILE, index=False)
    (folder / compare.METRICS_FILE).write_text(json.dumps(run["metrics"]))
    (folder / compare.INFO_FILE).write_text(json.dumps(stored["eval"]["info"]))
    write_yaml(folder / compare.PARAMS_FILE, stored["params"])
    return folder


def spread_check_fails(
    rules, single: int, base: Path, head: Path, spread_runs: list[dict[str, Any]], work: Path
) -> bool:
    """The check before the paired seeds, for comparison: on a single pair's regression (`single`),
    the gate again against the spread of the base over `spread_runs` (its own seed and three more)."""
    status, at_chance = single, pr_check.base_at_chance(base)
    if status == compare.REGRESSION and not at_chance:
        noise_file = work / "noise.json"
        write_json(noise_file, seeds.spread(dict(enumerate(run["metrics"] for run in spread_runs))))
        status, _, _ = compare.judge(rules, None, base, head, seed_noise_file=noise_file)
    return status != compare.PASS or bool(at_chance)


def check(
    rules, single: tuple[int, list], at_chance: str | None, pairs: list[tuple[dict, dict]], max_extra: int
) -> tuple[bool, int]:
    """The pull-request check's decision, as `stages.gate.pr_check.run` makes it: (fails, runs it trained).

    `single`: the gate's (status, results) on the single pair, `pairs[0]`'s runs; where it needs the
    seeds, `pairs[1:]` stand in for the runs the check would make, in order.
    """
    status, results = single
    if not (pr_check.needs_seeds(results) and max_extra > 0 and not at_chance):
        return status != compare.PASS or bool(at_chance), 2
    status, _, ran = pr_check.over_seeds(rules, pairs[0], lambda offset: pairs[offset], max_extra)
    return status != compare.PASS, 2 * len(ran)


def simulate(
    stored: dict[str, Any], draws: int, rng: np.random.Generator, rules: GateParams, caps: tuple[int, ...] = MAX_EXTRA
) -> list[dict[str, Any]]:
    """Per change, how often the check judging by `rules` fails it, and at what cost, with at most
    each of `caps` extra seed pairs (see the module's doc)."""
    base_runs = stored["runs"]["base"]
    base_seeds = sorted(base_runs, key=int)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-errors-") as tmp:
        work = Path(tmp)
        folders = {s: write_run(stored, base_runs[s], work / f"base-{s}") for s in base_seeds}
        changes = {"another seed": None, **{name: stored["runs"][name] for name in stored["runs"] if name != "base"}}
        for name, runs in changes.items():
            before, trials = [], 0
            now = {k: [] for k in caps}  # per cap on the extra pairs: (fails, runs) of each trial
            for s in base_seeds:
                others = [o for o in base_seeds if o != s]
                if runs is None:
                    heads = [(folders[o], o) for o in others]  # base(s) against base(s'), every s'
                elif s in runs:
                    heads = [(write_run(stored, runs[s], work / f"{name}-{s}"), None)]
                else:
                    continue
                for head, head_seed in heads:
                    trials += 1
                    pool = [o for o in others if o != head_seed]
                    status, results, _ = compare.judge(rules, None, folders[s], head)
                    at_chance = pr_check.base_at_chance(folders[s])
                    first = (base_runs[s]["metrics"], (base_runs[head_seed] if runs is None else runs[s])["metrics"])
                    spread = [list(rng.choice(pool, size=SPREAD_SEEDS, replace=False)) for _ in range(draws)]
                    before.append(
                        np.mean(
                            [
                                spread_check_fails(
                                    rules, status, folders[s], head, [base_runs[o] for o in [s, *x]], work
                                )
                                for x in spread
                            ]
                        )
                    )
                    for k in caps:
                        outcomes = []
                        for _ in range(draws):
                            if runs is None:  # another seed: the head's extra seeds are other base runs
                                if len(pool) < 2 * k:
                                    break
                                picked = list(rng.choice(pool, size=2 * k, replace=False))
                                extra = [
                                    (base_runs[a]["metrics"], base_runs[b]["metrics"])
                                    for a, b in zip(picked[:k], picked[k:], strict=True)
                                ]
                            else:
                                both = [o for o in pool if o in runs]
                                if len(both) < k:
                                    break
                                extra = [
                                    (base_runs[o]["metrics"], runs[o]["metrics"])
                                    for o in rng.choice(both, size=k, replace=False)
                                ]
                            outcomes.append(check(rules, (status, results), at_chance, [first, *extra], k))
                        if outcomes:
                            now[k].append((np.mean([f for f, _ in outcomes]), np.mean([r for _, r in outcomes])))
            # The true drop over the seeds both have: same seed, same data order, only the change differs.
            common = [seed for seed in base_seeds if runs is None or seed in runs]
            drops = [
                base_runs[seed]["metrics"]["accuracy"] - runs[seed]["metrics"]["accuracy"]
                for seed in common
                if runs is not None
            ]
            loss_rises = [
                runs[seed]["metrics"]["eval_loss"] - base_runs[seed]["metrics"]["eval_loss"]
                for seed in common
                if runs is not None
            ]
            rows.append(
                {
                    "change": name,
                    "true_loss_rise": round(float(np.mean(loss_rises)), 4) if loss_rises else 0.0,
                    "seeds": len(common),
                    "true_drop": round(float(np.mean(drops)), 4) if drops else 0.0,
                    "true_drop_sd": round(float(np.std(drops, ddof=1)), 4) if len(drops) > 1 else None,
                    "spread_check_fail_rate": round(float(np.mean(before)), 3) if before else None,
                    **{
                        f"paired_seeds_{k}_fail_rate": round(float(np.mean([f for f, _ in v])), 3) if v else None
                        for k, v in now.items()
                    },
                    **{
                        f"paired_seeds_{k}_runs": round(float(np.mean([r for _, r in v])), 2) if v else None
                        for k, v in now.items()
                    },
                    "trials": trials,
                }
            )
    return rows


def minutes_to_catch(stored: dict[str, Any], metrics: dict[str, Any], looks: int) -> list[dict[str, Any]]:
    """Per change, what catching it 80% of the time over seed pairs costs at this profile (normal
    approximation): the pairs needed for the best metric's mean same-seed difference, beyond its
    tolerance, to clear a one-sided test at the check's share of the error rate, times the CPU
    minutes of a pair. This is how profiles compare: power per CPU minute, measured on real runs."""
    base = stored["runs"]["base"]
    minutes_per_run = float(np.mean([sum(r["wall_s"].values()) for r in base.values()])) / 60
    z = stats.norm.ppf(1 - 0.05 / (looks * len(metrics))) + stats.norm.ppf(compare.POWER)
    rows = []
    for name, runs in stored["runs"].items():
        common = [seed for seed in runs if seed in base]
        if name == "base" or len(common) < 3:
            continue
        best = None
        for metric, rule in metrics.items():
            d = np.array([runs[s]["metrics"][metric] - base[s]["metrics"][metric] for s in common])
            worse = -d if rule.direction == "higher" else d
            margin = float(worse.mean()) - rule.tolerance
            pairs = (z * float(worse.std(ddof=1)) / margin) ** 2 if margin > 0 else float("inf")
            if best is None or pairs < best["pairs"]:
                best = {
                    "change": name,
                    "metric": metric,
                    "mean_worse": float(worse.mean()),
                    "sd": float(worse.std(ddof=1)),
                    "pairs": pairs,
                }
        rows.append(
            {
                **best,
                "seeds": len(common),
                "minutes": 2 * max(best["pairs"], compare.FIRST_LOOK) * minutes_per_run,
                "minutes_per_run": minutes_per_run,
            }
        )
    return rows


def _rate(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "n/a"


def markdown(stored: dict[str, Any], rows: list[dict[str, Any]], gated: str) -> str:
    walls = [sum(r["wall_s"].values()) for runs in stored["runs"].values() for r in runs.values()]
    data_s = sum(stored.get("data_stages_s", {}).values())
    train_eval = float(np.mean(walls)) if walls else float("nan")

    def minutes(runs: float | None) -> str:  # both sides' data stages once, then train + evaluate per run
        return f"{(2 * data_s + runs * train_eval) / 60:.1f}" if runs is not None else "n/a"

    lines = [
        f"### Pull-request check: error rates (smoke profile, {stored['eval']['info'].get('n_eval')} eval examples; "
        f"gated: {gated})",
        "",
        "| change | true accuracy drop (mean ± sd over seeds) | true eval-loss rise | seeds | trials | "
        "before: 3 base seeds' spread | "
        + " | ".join(f"paired seeds, up to {k} more: fails (CPU min)" for k in MAX_EXTRA)
        + " | that is |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(MAX_EXTRA) + "--- |",
    ]
    for row in rows:
        kind = "false-alarm rate" if row["change"] in NULL_CHANGES else "detection rate"
        sd = f" ± {row['true_drop_sd']:.3f}" if row.get("true_drop_sd") is not None else ""
        now = " | ".join(
            f"{_rate(row.get(f'paired_seeds_{k}_fail_rate'))} ({minutes(row.get(f'paired_seeds_{k}_runs'))})"
            for k in MAX_EXTRA
        )
        lines.append(
            f"| {row['change']} | {row['true_drop']:+.3f}{sd} | {row['true_loss_rise']:+.3f} | {row['seeds']} | "
            f"{row['trials']} | {_rate(row['spread_check_fail_rate'])} | {now} | {kind} |"
        )
    lines += [
        "",
        f"One smoke run's train + evaluate took {train_eval:.0f} s on average, the data stages {data_s:.0f} s "
        "(the stages' own commands on 2 cores, without DVC's overhead). CPU minutes per check: both "
        "sides' data stages, then train + evaluate for every run the check made (the mean over trials; "
        f"at most {minutes(2 + 2 * max(MAX_EXTRA))} with {max(MAX_EXTRA)} more pairs).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="training seeds per variant (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--draws", type=int, default=5, help="orders of the extra seeds tried per trial")
    parser.add_argument("--simulate-only", action="store_true", help="no training: simulate the stored runs")
    parser.add_argument(
        "--profile",
        type=Path,
        default=REPO_ROOT / pr_check.DEFAULT_PROFILE,
        help="the smoke profile to run at (default: the check's); another one stores its runs beside, "
        "and only its cost to catch each change is reported",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=REPO_ROOT / "params.yaml",
        help="params file whose gate: section the simulated check judges by (default: the project's)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gt-bench-gate")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "base" not in variants:
        parser.error(f"variants must include base and come from {', '.join(VARIANTS)} (unknown: {unknown})")
    checks_profile = args.profile.resolve() == (REPO_ROOT / pr_check.DEFAULT_PROFILE).resolve()
    runs_file = RUNS_FILE if checks_profile else RESULTS_DIR / f"gate-runs-{args.profile.stem}.json"
    stored = json.loads(runs_file.read_text()) if runs_file.is_file() else {"runs": {}}
    started = time.perf_counter()
    if not args.simulate_only:
        seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
        stored = collect(variants, seed_list, args.workdir.resolve(), stored, args.profile, runs_file)
    if "base" not in stored["runs"]:
        parser.error(f"{runs_file}: no base runs stored; run without --simulate-only first")
    rules = load_gate_rules(args.rules.read_text(), str(args.rules))
    costs = minutes_to_catch(stored, rules.metrics, compare.sequential_looks(pr_check.DEFAULT_CONFIRM_SEEDS + 1))
    print(f"\n{costs_markdown(args.profile, costs)}\n")
    if not checks_profile:
        return
    rows = simulate(stored, args.draws, np.random.default_rng(0), rules)
    table = markdown(stored, rows, f"{', '.join(rules.metrics)} as `{args.rules.name}` rules them")
    result = {
        "rows": rows,
        "costs": costs,
        "markdown": table,
        "command": command_line(),
        "elapsed_s": round(time.perf_counter() - started),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    default_rules = args.rules.resolve() == (REPO_ROOT / "params.yaml").resolve()
    write_json(RESULTS_DIR / ("gate-errors.json" if default_rules else f"gate-errors-{args.rules.stem}.json"), result)
    print(f"\n{table}\n")


def costs_markdown(profile_file: Path, costs: list[dict[str, Any]]) -> str:
    lines = [
        f"Profile {profile_file.name}: CPU minutes of seed pairs to catch each change 80% of the time",
        "",
        "| change | seeds | best metric | mean worse | sd of same-seed differences | pairs | CPU minutes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['change']} | {c['seeds']} | {c['metric']} | {c['mean_worse']:+.4f} | {c['sd']:.4f} | "
        f"{c['pairs']:.1f} | {c['minutes']:.1f} |"
        for c in costs
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
