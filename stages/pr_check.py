"""The pull-request check, exactly as CI runs it: `make pr-check BASE=<rev>`.

A CI runner has no GPU, so it cannot rerun the full profile, and comparing a small CI run against
the committed full-profile metrics would be meaningless. Instead both sides run the same CPU smoke
profile (`profiles/smoke.yaml`: sizes only) on the same eval examples.

The base judges: `python -m stages.pr_check --base REV` only checks out REV and hands over to REV's
own `stages.pr_check` (`--head-repo`), whose gate code, gate rules and smoke profile then judge this
checkout. Nothing the pull request changes in them applies to its own check. The judge then runs:

1. a git worktree of BASE, and one of HEAD with the working tree's uncommitted changes laid on top;
2. in each, the smoke sizes override that side's own `params.yaml` (every other param is the side's
   own, so a change to the recipe shows), then `dvc repro`, sharing the repository's DVC cache (and
   run cache), so stages that already ran with the same inputs are restored, not rerun;
3. `stages.gate` compares head against base (`--base-run`), with paired tests;
4. if the paired test finds a regression, the base reruns with a few more training seeds and the
   gate judges the change against the spread of those runs instead: the paired test holds both models
   fixed, so on its own it would fail a change that only moves the training seed;
5. the committed full-profile metrics (`dvc metrics diff BASE HEAD`) are shown beside it, not gated.

The Markdown report goes to stdout and `--report`; the exit status is the gate's (0 pass,
1 regression, 2 could not compare, including a side whose pipeline failed, a base whose rules or
profile cannot be read, and a profile that sets more than sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stages import gate, seeds
from stages.outputs import write_json
from stages.params import GateParams, ParamsError, load_gate_rules, load_params, read_yaml, write_yaml

DEFAULT_PROFILE = Path("profiles/smoke.yaml")
# What a smoke profile may set: sizes, and the profile's name. Anything else would change the recipe
# that both sides are judged on.
SIZE_KEYS = {
    "data": ("synthetic_train_size", "synthetic_test_size"),
    "tokenize": ("max_length",),
    "subset": ("train_size", "eval_size"),
    "train": ("epochs", "max_steps"),
    "evaluate": ("profile",),
}
DEFAULT_CONFIRM_SEEDS = 3
RUN_FILES = (gate.METRICS_FILE, gate.PREDICTIONS_FILE, gate.INFO_FILE, gate.PARAMS_FILE)


class SideFailed(Exception):
    """One side's smoke run did not finish; the message holds the end of its log."""


def read_profile(path: Path) -> dict[str, dict[str, Any]]:
    """The smoke profile at `path`; `ParamsError` unless it sets only the keys in `SIZE_KEYS`."""
    if not path.is_file():
        raise ParamsError(f"{path}: smoke profile not found")
    profile = read_yaml(path.read_text(), path)
    if not isinstance(profile, dict) or not all(isinstance(values, dict) for values in profile.values()):
        raise ParamsError(f"{path}: expected sections of size keys, e.g. 'subset: {{train_size: 1000}}'")
    allowed = ", ".join(f"{section}.{key}" for section, keys in SIZE_KEYS.items() for key in keys)
    for section, values in profile.items():
        for key in values:
            if key not in SIZE_KEYS.get(section, ()):
                raise ParamsError(
                    f"{path}: '{section}.{key}' is not a size; a smoke profile may set only {allowed}"
                )
    return profile


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SideFailed(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def apply_profile(params_file: Path, profile: dict[str, dict[str, Any]]) -> None:
    """Override `params_file`'s values with the profile's (sizes only), keeping everything else."""
    params = read_yaml(params_file.read_text(), params_file) or {}
    for section, values in profile.items():
        params.setdefault(section, {}).update(values)
    write_yaml(params_file, params)


def head_worktree(repo: Path, target: Path) -> None:
    """A worktree of HEAD with the working tree's uncommitted changes (tracked and new) copied in."""
    git("worktree", "add", "--detach", "--quiet", str(target), "HEAD", cwd=repo)
    changed = git("ls-files", "--modified", "--others", "--exclude-standard", "-z", cwd=repo).split("\0")
    for name in filter(None, changed):
        source, dest = repo / name, target / name
        if source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        elif dest.exists():
            dest.unlink()  # deleted in the working tree


def dvc_env() -> dict[str, str]:
    """This python's `dvc` (and stages) first on PATH, as `make` sets it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def share_cache(repo: Path, side: Path) -> None:
    """Point `side`'s DVC cache at the repository's, so its run cache serves repeated smoke runs:
    a second check against the same base, or a head whose data stages did not change, reruns only
    what changed."""
    cache = subprocess.run(["dvc", "cache", "dir"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    if cache.returncode == 0 and cache.stdout.strip():
        subprocess.run(["dvc", "cache", "dir", "--local", cache.stdout.strip()], cwd=side, env=dvc_env(), capture_output=True)


def smoke_run(side: Path, profile: dict[str, dict[str, Any]], log_file: Path) -> float:
    """Run the pipeline at the smoke sizes in `side`; return its wall time in seconds."""
    apply_profile(side / "params.yaml", profile)
    started = time.perf_counter()
    with log_file.open("w") as log:
        result = subprocess.run(["dvc", "repro"], cwd=side, env=dvc_env(), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text().strip().splitlines()[-15:])
        raise SideFailed(f"`dvc repro` failed in {side.name} (exit {result.returncode}); end of its log:\n```\n{tail}\n```")
    return time.perf_counter() - started


def base_at_chance(base_dir: Path) -> str | None:
    """Why the base's smoke run cannot reveal a regression (it learned nothing), or None."""
    metrics = json.loads((base_dir / "metrics.json").read_text())
    num_labels = load_params(base_dir / "params.yaml").data.num_labels
    chance, n = 1 / num_labels, metrics["n_eval"]
    # Three standard errors above chance: a model that learned anything clears it easily.
    if metrics["accuracy"] < chance + 3 * (chance * (1 - chance) / n) ** 0.5:
        return (
            f"the base's smoke run is at chance (accuracy {metrics['accuracy']:.3f} with {num_labels} labels), "
            "so no regression could show; raise the sizes in the smoke profile"
        )
    return None


def snapshot(side: Path, dest: Path) -> Path:
    """Copy the files the gate reads from a run, so that later runs in the same folder leave them be."""
    for name in RUN_FILES:
        if (side / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(side / name, dest / name)
    return dest


def base_seed_spread(base_dir: Path, extra_seeds: int, work: Path) -> dict[str, Any]:
    """Rerun the base's smoke run with `extra_seeds` more training seeds; the spread of its metrics.

    Only train and evaluate rerun: the data stages are unchanged and DVC skips them.
    """
    first_seed = load_params(base_dir / "params.yaml").train.seed
    by_seed = {first_seed: json.loads((base_dir / gate.METRICS_FILE).read_text())}
    for seed in range(first_seed + 1, first_seed + 1 + extra_seeds):
        smoke_run(base_dir, {"train": {"seed": seed}}, work / f"base-seed-{seed}.log")
        by_seed[seed] = json.loads((base_dir / gate.METRICS_FILE).read_text())
    return seeds.spread(by_seed)


def confirm_with_seeds(
    gate_params: GateParams, base_dir: Path, head_dir: Path, extra_seeds: int, work: Path, names: tuple[str, str], paired_report: str
) -> tuple[int, str]:
    """Judge a regression that the paired test found against the base recipe's training-seed spread."""
    first_run = snapshot(base_dir, work / "base-first-seed")
    noise = base_seed_spread(base_dir, extra_seeds, work)
    noise_file = work / "seed_noise.json"
    write_json(noise_file, noise)
    status, report = gate.run(gate_params, None, first_run, head_dir, seed_noise_file=noise_file, names=names)
    accuracy = noise["metrics"].get("accuracy", {})
    values = ", ".join(f"{v:.4f}" for v in accuracy.get("values", []))
    report += (
        "\n### Training-seed noise\n\n"
        "The paired test on the same eval examples found a regression, but it holds both trained models "
        "fixed, and a different training seed alone moves a model. So the base's smoke run was repeated "
        f"with training seeds {', '.join(map(str, noise['seeds']))} (accuracy {values}; "
        f"std {accuracy.get('std', float('nan')):.4f}), and the table above judges the change against "
        "that spread (Student's t).\n\n"
        "<details><summary>The paired test's report</summary>\n\n" + paired_report + "\n</details>\n"
    )
    return status, report


def committed_metrics_diff(repo: Path, base: str) -> str:
    """`dvc metrics diff BASE HEAD --md`: the full-profile metrics the branch commits, for reference."""
    result = subprocess.run(["dvc", "metrics", "diff", base, "HEAD", "--md"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        return f"`dvc metrics diff` failed: {result.stderr.strip()}"
    table = result.stdout.strip()
    # A table with no rows (header and rule only) means nothing changed.
    return table if len(table.splitlines()) > 2 else "No change in the committed metrics."


def cannot_compare(reason: str) -> tuple[int, str]:
    return gate.CANNOT_COMPARE, gate.render_report(None, None, [], gate.CANNOT_COMPARE, reason)


def run(
    repo: Path, base: str, profile_file: Path, work: Path, confirm_seeds: int = DEFAULT_CONFIRM_SEEDS
) -> tuple[int, str]:
    """Judge `repo`'s HEAD and uncommitted changes against `base`; return the exit status and the report.

    This is the judge: it runs from a checkout of `base`, and its own rules (`params.yaml`'s `gate:`),
    profile (`profile_file`, relative to it) and gate code decide. `confirm_seeds`: how many more
    training seeds of the base to run when the paired test finds a regression (0: trust it alone).
    """
    repo, judge = repo.resolve(), Path.cwd().resolve()
    if not Path(gate.__file__).resolve().is_relative_to(judge):
        return cannot_compare(f"the judge's code is {gate.__file__}, not the base's checkout {judge}")
    try:
        commit = gate.resolve_commit(base, repo)
        profile = read_profile(judge / profile_file)
        gate_params = load_gate_rules((judge / "params.yaml").read_text(), f"{base}:params.yaml")
    except (gate.CannotCompare, ParamsError, OSError) as err:
        return cannot_compare(f"{err}; the check judges by the base's rules and profile only, never the head's")
    judged_by = (
        f"Judged by `{base}` ({commit[:10]}): its pull-request check, gate code, gate rules and smoke profile; "
        "the head's own are not used."
    )
    sides = {"base": work / "base", "head": work / "head"}
    timings = {}
    try:
        git("worktree", "add", "--detach", "--quiet", str(sides["base"]), commit, cwd=repo)
        head_worktree(repo, sides["head"])
        for name, side in sides.items():
            share_cache(repo, side)
            timings[name] = smoke_run(side, profile, work / f"{name}.log")
        names = (f"{base} (smoke run)", "HEAD (smoke run)")
        rules_from = f"{base} ({commit[:10]}):params.yaml"
        status, report = gate.run(gate_params, None, sides["base"], sides["head"], names=names, rules_from=rules_from)
        at_chance = base_at_chance(sides["base"])
        if status == gate.REGRESSION and confirm_seeds > 0 and not at_chance:
            started = time.perf_counter()
            status, report = confirm_with_seeds(
                gate_params, sides["base"], sides["head"], confirm_seeds, work, names, paired_report=report
            )
            timings["seeds"] = time.perf_counter() - started
        if at_chance and status == gate.PASS:
            status = gate.CANNOT_COMPARE
            report = report.replace("## Metric gate: PASS", "## Metric gate: FAIL: cannot compare", 1)
            report += f"\n**Could not compare:** {at_chance}\n"
    except SideFailed as err:
        status, report = cannot_compare(str(err))
    finally:
        for side in sides.values():
            if side.exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(side)], cwd=repo, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
    sizes = ", ".join(f"`{s}.{k}={v}`" for s, values in profile.items() for k, v in values.items())
    report += (
        f"\n{judged_by}\n\nSmoke profile ({profile_file} at {base}): {sizes}. "
        + (f"Runs took {timings['base']:.0f}s (base) and {timings['head']:.0f}s (head)" if "head" in timings else "")
        + (f", and {timings['seeds']:.0f}s for the base's extra seeds" if "seeds" in timings else "")
        + ("." if "head" in timings else "")
        + "\n"
        + "\n### Committed full-profile metrics (shown, not gated)\n\n"
        + committed_metrics_diff(repo, base)
        + "\n"
    )
    return status, report


def hand_over(base: str, judge_args: list[str], work: Path) -> int:
    """Check out `base` and run its own `stages.pr_check` on this checkout: the base judges.

    The one step of the check that runs this checkout's code: it only makes the base's worktree and
    calls into it. Returns the judge's exit status.
    """
    repo = Path(".").resolve()
    judge = work / "judge"
    try:
        git("worktree", "add", "--detach", "--quiet", str(judge), f"{base}^{{commit}}", cwd=repo)
    except SideFailed as err:
        return report_cannot_compare(f"base revision {base!r} cannot be checked out ({err})", judge_args)
    try:
        if not (judge / "stages" / "pr_check.py").is_file():
            return report_cannot_compare(f"{base} has no stages/pr_check.py to judge with", judge_args)
        # `python -m` in the base's checkout imports the base's `stages` first (`run` checks that it did).
        command = [sys.executable, "-m", "stages.pr_check", "--head-repo", str(repo), "--work", str(work), *judge_args]
        return subprocess.run(command, cwd=judge, env=dvc_env()).returncode
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(judge)], cwd=repo, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


def report_cannot_compare(reason: str, judge_args: list[str]) -> int:
    status, report = cannot_compare(reason)
    print(report)
    if "--report" in judge_args:
        Path(judge_args[judge_args.index("--report") + 1]).write_text(report)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. origin/main)")
    parser.add_argument(
        "--profile", type=Path, default=DEFAULT_PROFILE, help="size overrides (YAML), a path in the base's checkout"
    )
    parser.add_argument(
        "--confirm-seeds", type=int, default=DEFAULT_CONFIRM_SEEDS, metavar="N",
        help=f"on a paired-test regression, rerun the base with N more training seeds (default {DEFAULT_CONFIRM_SEEDS}; 0: off)",
    )
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    parser.add_argument("--head-repo", type=Path, help=argparse.SUPPRESS)  # set by hand_over: this is the judge
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.head_repo is None:
        judge_args = ["--base", args.base, "--profile", str(args.profile), "--confirm-seeds", str(args.confirm_seeds)]
        if args.report:
            judge_args += ["--report", str(args.report.resolve())]
        with tempfile.TemporaryDirectory(prefix="pr-check-") as work:
            return hand_over(args.base, judge_args, Path(work))
    with tempfile.TemporaryDirectory(prefix="pr-check-") as scratch:
        status, report = run(args.head_repo, args.base, args.profile, args.work or Path(scratch), args.confirm_seeds)
    print(report)
    if args.report:
        args.report.write_text(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
