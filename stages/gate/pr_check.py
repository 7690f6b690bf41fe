"""The pull-request check, exactly as CI runs it: `make pr-check BASE=<rev>`.

    python -m stages.gate.pr_check --base origin/main --report pr-check.md

The base judges: its own check, gate rules and smoke profile (`profiles/smoke.yaml`, sizes only) run both sides
at smoke sizes and compare them; a drop beyond a tolerance is judged again over up to `--confirm-seeds` more
training seeds. The exit status is the gate's: 0 pass, 1 regression, 2 could not compare. With a default
DVC remote, both sides first pull the run cache (`dvc repro --pull`), so a base that main pushed after its merge
(`--push-run-cache`, `make smoke-cache`) is restored, not trained, unless it ran in another environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.common.params import GateParams, ParamsError, load_gate_rules, load_params, override_params_file, read_yaml
from stages.gate import compare

# Both sides run this CPU smoke profile: CI has no GPU for the full one, and a small run says nothing of full metrics.
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
# Where a base keeps its pull-request check: this layout, then the one before stages/ had subpackages.
BASE_ENTRY_POINTS = (("stages.gate.pr_check", "stages/gate/pr_check.py"), ("stages.pr_check", "stages/pr_check.py"))
ENVIRONMENT_FILE = "reports/environment.json"  # train's record of where it ran (dvc.yaml)
DEFAULT_CONFIRM_SEEDS = 4  # the fewest extra seed pairs that caught as much as 8 (BENCHMARKS.md section 5)


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
                raise ParamsError(f"{path}: '{section}.{key}' is not a size; a smoke profile may set only {allowed}")
    return profile


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SideFailed(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def remove_worktrees(repo: Path, *worktrees: Path) -> None:
    """Remove `repo`'s temporary worktrees (those that were made) and prune git's records of them."""
    for worktree in worktrees:
        if worktree.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=repo, capture_output=True)
    subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


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
    """Give `side` the repository's DVC cache and local config (remotes set with `--local`), so its run
    cache serves repeated smoke runs: a second check against the same base, or a head whose data
    stages did not change, reruns only what changed."""
    local_config = repo / ".dvc" / "config.local"
    if local_config.is_file():
        shutil.copy2(local_config, side / ".dvc" / "config.local")
    cache = subprocess.run(["dvc", "cache", "dir"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    if cache.returncode == 0 and cache.stdout.strip():
        subprocess.run(
            ["dvc", "cache", "dir", "--local", cache.stdout.strip()], cwd=side, env=dvc_env(), capture_output=True
        )


def default_remote(side: Path) -> str | None:
    """The DVC remote that `dvc repro --pull` in `side` pulls the run cache from, or None."""
    result = subprocess.run(["dvc", "remote", "default"], cwd=side, env=dvc_env(), capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def pull_run_cache(side: Path) -> str | None:
    """Pull the run cache's entries from `side`'s default remote; why that failed, or None.

    A remote the runner cannot read (a fork's pull request gets no secrets) must not fail the check:
    `dvc repro --pull` would stop before any stage, so the side then runs every stage instead.
    """
    from dvc.repo import Repo

    try:
        with contextlib.chdir(side), Repo(str(side)) as repo:
            repo.stage_cache.pull(None)
    except Exception as err:  # any remote failure (credentials, network, bucket) means: train here
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def smoke_run(side: Path, profile: dict[str, dict[str, Any]], log_file: Path, pull: bool = False) -> float:
    """Run the pipeline at the smoke sizes in `side`; return its wall time in seconds.

    `pull`: first pull the run cache from the default remote, so stages run there before are restored.
    """
    # Sizes only: every other param stays the side's own, so a change to the recipe shows.
    override_params_file(side / "params.yaml", profile)
    started = time.perf_counter()
    command = ["dvc", "repro", "--pull"] if pull else ["dvc", "repro"]
    with log_file.open("w") as log:
        result = subprocess.run(command, cwd=side, env=dvc_env(), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SideFailed(f"`dvc repro` failed in {side.name} (exit {result.returncode}); {log_tail(log_file)}")
    return time.perf_counter() - started


def log_tail(log_file: Path, lines: int = 15) -> str:
    """The end of a log, quoted for the report: the log itself is in a folder the check removes."""
    tail = "\n".join(log_file.read_text().strip().splitlines()[-lines:])
    return f"end of its log:\n```\n{tail}\n```"


def restored_stages(log_file: Path) -> list[str]:
    """The stages a `dvc repro` log says the run cache restored instead of running."""
    return re.findall(r"Stage '(\w+)' is cached - skipping run", log_file.read_text())


def environment_of(side: Path) -> dict[str, str]:
    path = side / ENVIRONMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def retrain_foreign(sides: dict[str, Path], restored: dict[str, list[str]], work: Path) -> dict[str, str]:
    """Train again here each side whose training the run cache restored from another environment than
    the other side's (outputs are byte-identical only within one environment record, so a base trained on
    another kind of CPU would count machine drift as the change). Returns {side: the fields that differed}."""
    records = {name: environment_of(side) for name, side in sides.items()}
    trained_here = [records[name] for name in sides if "train" not in restored[name]]
    if trained_here:
        foreign = [name for name in sides if "train" in restored[name] and records[name] != trained_here[0]]
        reference = trained_here[0]
    else:  # both restored: one environment for both is fine, two are not
        foreign = list(sides) if records["base"] != records["head"] else []
        reference = records["head"] if foreign else {}
    differed = {}
    for name in foreign:
        fields = sorted(
            key for key in records[name].keys() | reference.keys() if records[name].get(key) != reference.get(key)
        )
        differed[name] = ", ".join(fields) or "no environment record"
        log_file = work / f"{name}-retrain.log"
        for command in (["dvc", "repro", "--force", "--single-item", "train"], ["dvc", "repro"]):
            with log_file.open("a") as log:
                result = subprocess.run(command, cwd=sides[name], env=dvc_env(), stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                raise SideFailed(
                    f"`{' '.join(command)}` failed in {name} (exit {result.returncode}); {log_tail(log_file)}"
                )
    return differed


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


def run_seed(side: Path, seed: int, work: Path) -> dict[str, float]:
    """Rerun `side`'s smoke run at training seed `seed` (only train and evaluate rerun: DVC skips the
    unchanged data stages); its metrics."""
    smoke_run(side, {"train": {"seed": seed}}, work / f"{side.name}-seed-{seed}.log")
    return json.loads((side / compare.METRICS_FILE).read_text())


def confirm_with_seeds(
    gate_params: GateParams, sides: dict[str, Path], extra_seeds: int, work: Path, paired_report: str
) -> tuple[int, str]:
    """Judge a suspected regression again over training seeds, paired: both sides rerun with the same
    extra seeds (each side's own seed + 1, + 2, ...), and a sequential t-test of the mean same-seed
    difference decides after each pair, stopping as soon as the answer is clear."""
    first_seed = {name: load_params(side / "params.yaml").train.seed for name, side in sides.items()}
    first = tuple(json.loads((sides[name] / compare.METRICS_FILE).read_text()) for name in ("base", "head"))

    def run_pair(offset: int) -> tuple[dict[str, float], dict[str, float]]:
        return tuple(run_seed(sides[name], first_seed[name] + offset, work) for name in ("base", "head"))

    status, results, runs = over_seeds(gate_params, first, run_pair, extra_seeds)
    seeds_run = [(first_seed["base"] + offset, first_seed["head"] + offset) for offset in range(len(runs))]
    # The single pair's report: its header (sides, rules, params changed), then its metrics.
    header, _, single = paired_report.partition("### Metrics")
    header = header.split("\n", 1)[1]  # without its title: the verdict is the seeds' now
    looks = compare.sequential_looks(extra_seeds + 1)
    confidence = compare.seed_pairs_confidence(gate_params, looks)
    table = compare.render_report(None, None, results, status, confidence=confidence)
    title, _, metrics = table.partition("\n")
    pairs_rows = "\n".join(
        f"| {b} | {h} | " + " | ".join(f"{pair[0][m]:.4f} → {pair[1][m]:.4f}" for m in gate_params.metrics) + " |"
        for (b, h), pair in zip(seeds_run, runs, strict=True)
    )
    return status, (
        f"{title}\n{header}"
        "### Over training seeds\n\n"
        "The single pair of runs found a drop beyond the tolerance (its report is at the end), but two "
        "trained models differ by their training seeds as well as by the change. So both sides reran "
        "with the same further training seeds, and the change is judged by the mean same-seed "
        f"difference over {len(runs)} pairs (Student's t). It looks from pair {min(compare.FIRST_LOOK, extra_seeds + 1)} "
        f"on, {looks} looks at most, and stops once the answer is clear; each look and metric gets its "
        f"Bonferroni share of the error rate, hence {100 * confidence:.4g}% intervals.\n\n"
        f"{metrics.replace('### Metrics', '', 1).lstrip()}\n"
        "### Seed pairs (base → head)\n\n"
        f"| base seed | head seed | {' | '.join(gate_params.metrics)} |\n| ---: | ---: |"
        + " --- |"
        * len(gate_params.metrics)
        + f"\n{pairs_rows}\n\n"
        "<details><summary>The single pair's report</summary>\n\n### Metrics" + single + "\n</details>\n"
    )


def over_seeds(
    gate_params: GateParams,
    first: tuple[dict[str, float], dict[str, float]],
    run_pair: Callable[[int], tuple[dict[str, float], dict[str, float]]],
    extra_seeds: int,
) -> tuple[int, list[compare.MetricResult], list[tuple[dict[str, float], dict[str, float]]]]:
    """The sequential test over seed pairs: `first` is the single pair's (base, head) metrics, and
    `run_pair(k)` gives pair k's, run at each side's seed + k, for k = 1 .. `extra_seeds` until the
    test decides. Returns (status, the last look's results, every pair run)."""
    pairs = [first]
    for offset in range(1, extra_seeds + 1):
        pairs.append(run_pair(offset))
        status, results = compare.sequential_status(gate_params, pairs, max_pairs=extra_seeds + 1)
        if status is not None:
            return status, results, pairs
    raise ValueError("over_seeds needs at least one extra seed")


def needs_seeds(results: list[compare.MetricResult]) -> bool:
    """Whether the single pair's verdict needs the seeds: any metric worse beyond its tolerance,
    significant or not (a regression among them), since its noise leaves out the training seed's."""
    return any(r.verdict != "pass" for r in results)


def committed_metrics_diff(repo: Path, base: str) -> str:
    """`dvc metrics diff BASE HEAD --md`: the full-profile metrics the branch commits, for reference."""
    result = subprocess.run(["dvc", "metrics", "diff", base, "HEAD", "--md"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        return f"`dvc metrics diff` failed: {result.stderr.strip()}"
    table = result.stdout.strip()
    # A table with no rows (header and rule only) means nothing changed.
    return table if len(table.splitlines()) > 2 else "No change in the committed metrics."


def cannot_compare(reason: str) -> tuple[int, str]:
    return compare.CANNOT_COMPARE, compare.render_report(None, None, [], compare.CANNOT_COMPARE, reason)


def run(
    repo: Path, base: str, profile_file: Path, work: Path, confirm_seeds: int = DEFAULT_CONFIRM_SEEDS
) -> tuple[int, str]:
    """Judge `repo`'s HEAD and uncommitted changes against `base`; return the exit status and the report.

    Run from a checkout of `base`; `confirm_seeds`: at most how many more training seeds both sides run (0: none).
    """
    # This is the judge: its own rules (`params.yaml`'s `gate:`), profile (relative to it) and gate code decide.
    repo, judge = repo.resolve(), Path.cwd().resolve()
    if not Path(compare.__file__).resolve().is_relative_to(judge):
        return cannot_compare(f"the judge's code is {compare.__file__}, not the base's checkout {judge}")
    try:
        commit = compare.resolve_commit(base, repo)
        profile = read_profile(judge / profile_file)
        gate_params = load_gate_rules((judge / "params.yaml").read_text(), f"{base}:params.yaml")
    except (compare.CannotCompare, ParamsError, OSError) as err:
        return cannot_compare(f"{err}; the check judges by the base's rules and profile only, never the head's")
    judged_by = (
        f"Judged by `{base}` ({commit[:10]}): its pull-request check, gate code, gate rules and smoke profile; "
        "the head's own are not used."
    )
    sides = {"base": work / "base", "head": work / "head"}
    timings, remotes, pull_failed, restored, retrained = {}, {}, {}, {}, {}
    try:
        git("worktree", "add", "--detach", "--quiet", str(sides["base"]), commit, cwd=repo)
        head_worktree(repo, sides["head"])
        for name, side in sides.items():
            share_cache(repo, side)
            remotes[name] = default_remote(side)
            if remotes[name] is not None:
                pull_failed[name] = pull_run_cache(side)
            pull = remotes[name] is not None and pull_failed[name] is None
            timings[name] = smoke_run(side, profile, work / f"{name}.log", pull=pull)
            restored[name] = restored_stages(work / f"{name}.log")
        retrained = retrain_foreign(sides, restored, work)
        names = (f"{base} (smoke run)", "HEAD (smoke run)")
        rules_from = f"{base} ({commit[:10]}):params.yaml"
        status, results, report = compare.judge(
            gate_params, None, sides["base"], sides["head"], names=names, rules_from=rules_from
        )
        at_chance = base_at_chance(sides["base"])
        # One pair of trained models cannot tell the change from the training seed: judge again over seeds.
        if needs_seeds(results) and confirm_seeds > 0 and not at_chance:
            started = time.perf_counter()
            status, report = confirm_with_seeds(gate_params, sides, confirm_seeds, work, paired_report=report)
            timings["seeds"] = time.perf_counter() - started
        if at_chance and status == compare.PASS:
            status = compare.CANNOT_COMPARE
            report = report.replace("## Metric gate: PASS", "## Metric gate: FAIL: cannot compare", 1)
            report += f"\n**Could not compare:** {at_chance}\n"
    except SideFailed as err:
        status, report = cannot_compare(str(err))
    finally:
        remove_worktrees(repo, *sides.values())
    sizes = ", ".join(f"`{s}.{k}={v}`" for s, values in profile.items() for k, v in values.items())
    report += (
        f"\n{judged_by}\n\nSmoke profile ({profile_file} at {base}): {sizes}. "
        + (f"Runs took {timings['base']:.0f}s (base) and {timings['head']:.0f}s (head)" if "head" in timings else "")
        + (f", and {timings['seeds']:.0f}s for the extra seed pairs" if "seeds" in timings else "")
        + ("." if "head" in timings else "")
        + "\n"
        + run_cache_note(remotes, pull_failed, restored, retrained)
        + "\n### Committed full-profile metrics (shown, not gated)\n\n"
        + committed_metrics_diff(repo, base)
        + "\n"
    )
    return status, report


def run_cache_note(
    remotes: dict[str, str | None],
    pull_failed: dict[str, str | None],
    restored: dict[str, list[str]],
    retrained: dict[str, str],
) -> str:
    """What the run cache saved each side, for the report."""
    lines = []
    for name, stages in restored.items():
        remote, failed = remotes.get(name), pull_failed.get(name)
        if not remote:
            line = "no default DVC remote to pull the run cache from; "
        elif failed:
            line = f"could not pull the run cache of remote `{remote}` ({failed}); "
        else:
            line = f"pulled the run cache of remote `{remote}`; "
        listed = ", ".join(f"`{stage}`" for stage in stages)
        line += f"restored {listed} instead of running them" if stages else "ran every stage here"
        if name in retrained:
            line += (
                f", but its training came from another environment ({retrained[name]} differ), so it trained again here"
            )
        lines.append(f"- {name}: {line}")
    return '\nRun cache (README, "Pull requests"):\n\n' + "\n".join(lines) + "\n"


def push_smoke_run(repo: Path, profile_file: Path, work: Path) -> int:
    """Run HEAD's committed pipeline at its smoke sizes and push it with its run cache to the default
    remote, so the pull-request checks of branches off HEAD restore their base instead of training it."""
    side = work / "smoke"
    try:
        profile = read_profile(repo / profile_file)
        git("worktree", "add", "--detach", "--quiet", str(side), "HEAD", cwd=repo)
        share_cache(repo, side)
        if default_remote(side) is None:
            raise SideFailed("no default DVC remote to push to: `dvc remote add -d <name> <url>` first")
        seconds = smoke_run(side, profile, work / "smoke.log")
        with (work / "smoke.log").open("a") as log:
            pushed = subprocess.run(
                ["dvc", "push", "--run-cache"], cwd=side, env=dvc_env(), stdout=log, stderr=subprocess.STDOUT
            )
        if pushed.returncode != 0:
            raise SideFailed(
                f"`dvc push --run-cache` failed (exit {pushed.returncode}):\n{(work / 'smoke.log').read_text()[-2000:]}"
            )
        push_run_cache_outputs(side)
    except (SideFailed, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        remove_worktrees(repo, side)
    print(
        f"pushed the smoke run of HEAD ({seconds:.0f}s) and its run cache to remote `{default_remote(repo) or 'default'}`"
    )
    return 0


def push_run_cache_outputs(side: Path) -> None:
    """Push what `dvc push --run-cache` leaves out: the uncached outputs (metrics, reports) that its entries
    restore, without which `dvc repro --pull` runs the stage again (treeverse/dvc#5749)."""
    from dvc.repo import Repo

    # DVC resolves the entries' paths against the working directory.
    with contextlib.chdir(side), Repo(str(side)) as repo:
        entries = [(value.parent.name, value.name) for value in Path(repo.stage_cache.cache_dir).glob("*/*/*")]
        objects = set().union(*repo.stage_cache.get_used_objs(entries).values())
        failed = repo.cloud.push(objects).failed
    if failed:
        raise SideFailed(f"{len(failed)} outputs of the run cache could not be pushed")


def hand_over(base: str, judge_args: list[str], work: Path) -> int:
    """Check out `base` and run its own `stages.gate.pr_check` on this checkout: the base judges.

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
        entry = next((module for module, file in BASE_ENTRY_POINTS if (judge / file).is_file()), None)
        if entry is None:
            return report_cannot_compare(f"{base} has no {BASE_ENTRY_POINTS[0][1]} to judge with", judge_args)
        # `python -m` in the base's checkout imports the base's `stages` first (`run` checks that it did).
        command = [sys.executable, "-m", entry, "--head-repo", str(repo), "--work", str(work), *judge_args]
        return subprocess.run(command, cwd=judge, env=dvc_env()).returncode
    finally:
        remove_worktrees(repo, judge)


def report_cannot_compare(reason: str, judge_args: list[str]) -> int:
    status, report = cannot_compare(reason)
    print(report)
    if "--report" in judge_args:
        Path(judge_args[judge_args.index("--report") + 1]).write_text(report)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--base", help="git revision to compare against (e.g. origin/main)")
    what.add_argument(
        "--push-run-cache",
        action="store_true",
        help="instead: run HEAD at its smoke sizes and push it with the run cache to the default DVC remote, "
        "so checks against HEAD restore it",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help=f"size overrides (YAML), a path in the base's checkout (default: the base's {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="N",
        help="when the single pair of runs finds a drop beyond a tolerance, rerun both sides with up to N more "
        f"training seeds, paired (default: the base's, here {DEFAULT_CONFIRM_SEEDS}; 0: trust the single pair)",
    )
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    parser.add_argument("--head-repo", type=Path, help=argparse.SUPPRESS)  # set by hand_over: this is the judge
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.push_run_cache:
        with tempfile.TemporaryDirectory(prefix="smoke-cache-") as work:
            return push_smoke_run(Path(".").resolve(), args.profile or DEFAULT_PROFILE, Path(work))
    # Not the judge yet: hand over to the base's own check, so nothing the pull request changes judges it.
    if args.head_repo is None:
        with tempfile.TemporaryDirectory(prefix="pr-check-") as work:
            return hand_over(args.base, judge_args(args), Path(work))
    profile = args.profile or DEFAULT_PROFILE
    confirm_seeds = DEFAULT_CONFIRM_SEEDS if args.confirm_seeds is None else args.confirm_seeds
    with tempfile.TemporaryDirectory(prefix="pr-check-") as scratch:
        status, report = run(args.head_repo, args.base, profile, args.work or Path(scratch), confirm_seeds)
    print(report)
    if args.report:
        args.report.write_text(report)
    return status


def judge_args(args: argparse.Namespace) -> list[str]:
    """The options the judge gets: only those given on the command line, so that every default
    (profile, seeds) is the base's, not this checkout's."""
    forwarded = ["--base", args.base]
    if args.profile is not None:
        forwarded += ["--profile", str(args.profile)]
    if args.confirm_seeds is not None:
        forwarded += ["--confirm-seeds", str(args.confirm_seeds)]
    if args.report:
        forwarded += ["--report", str(args.report.resolve())]
    return forwarded


if __name__ == "__main__":
    sys.exit(main())
