"""The pull-request check, exactly as CI runs it: `make pr-check BASE=<rev>`.

A CI runner has no GPU, so it cannot rerun the full profile, and comparing a small CI run against
the committed full-profile metrics would be meaningless. Instead both sides run the same CPU smoke
profile (`profiles/smoke.yaml`: sizes only) on the same eval examples:

1. a git worktree of BASE, and one of HEAD with the working tree's uncommitted changes laid on top;
2. in each, the smoke sizes override that side's own `params.yaml` (every other param is the side's
   own, so a change to the recipe shows), then `dvc repro`;
3. `stages.gate` compares head against base (`--base-run`), with paired tests;
4. the committed full-profile metrics (`dvc metrics diff BASE HEAD`) are shown beside it, not gated.

The Markdown report goes to stdout and `--report`; the exit status is the gate's (0 pass,
1 regression, 2 could not compare, including a side whose pipeline failed).
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

import yaml

from stages import gate
from stages.params import ParamsError, load_params

DEFAULT_PROFILE = Path("profiles/smoke.yaml")


class SideFailed(Exception):
    """One side's smoke run did not finish; the message holds the end of its log."""


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SideFailed(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def apply_profile(params_file: Path, profile: dict[str, dict[str, Any]]) -> None:
    """Override `params_file`'s values with the profile's (sizes only), keeping everything else."""
    params = yaml.safe_load(params_file.read_text()) or {}
    for section, values in profile.items():
        params.setdefault(section, {}).update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


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


def smoke_run(side: Path, profile: dict[str, dict[str, Any]], log_file: Path) -> float:
    """Run the pipeline at the smoke sizes in `side`; return its wall time in seconds."""
    apply_profile(side / "params.yaml", profile)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    started = time.perf_counter()
    with log_file.open("w") as log:
        result = subprocess.run(["dvc", "repro"], cwd=side, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text().strip().splitlines()[-15:])
        raise SideFailed(f"`dvc repro` failed in {side.name} (exit {result.returncode}); end of its log:\n```\n{tail}\n```")
    return time.perf_counter() - started


def base_at_chance(base_dir: Path) -> str | None:
    """Why the base's smoke run cannot reveal a regression (it learned nothing), or None."""
    metrics = json.loads((base_dir / "metrics.json").read_text())
    num_labels = yaml.safe_load((base_dir / "params.yaml").read_text())["data"]["num_labels"]
    chance, n = 1 / num_labels, metrics["n_eval"]
    # Three standard errors above chance: a model that learned anything clears it easily.
    if metrics["accuracy"] < chance + 3 * (chance * (1 - chance) / n) ** 0.5:
        return (
            f"the base's smoke run is at chance (accuracy {metrics['accuracy']:.3f} with {num_labels} labels), "
            "so no regression could show; raise the sizes in the smoke profile"
        )
    return None


def committed_metrics_diff(repo: Path, base: str) -> str:
    """`dvc metrics diff BASE HEAD --md`: the full-profile metrics the branch commits, for reference."""
    result = subprocess.run(["dvc", "metrics", "diff", base, "HEAD", "--md"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        return f"`dvc metrics diff` failed: {result.stderr.strip()}"
    return result.stdout.strip() or "No change in the committed metrics."


def run(repo: Path, base: str, profile_file: Path, work: Path) -> tuple[int, str]:
    """Run both smoke runs and the gate in `work`; return the exit status and the report."""
    repo = repo.resolve()
    profile = yaml.safe_load((repo / profile_file).read_text())
    try:
        gate_params = load_params(repo / "params.yaml").gate
    except ParamsError as err:
        return gate.CANNOT_COMPARE, f"## Metric gate: FAIL: cannot compare\n\n**Could not compare:** {err}\n"
    sides = {"base": work / "base", "head": work / "head"}
    timings = {}
    try:
        git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", cwd=repo)
        git("worktree", "add", "--detach", "--quiet", str(sides["base"]), base, cwd=repo)
        head_worktree(repo, sides["head"])
        # The base's gate rules judge the change, so a pull request cannot loosen its own gate.
        try:
            gate_params = load_params(sides["base"] / "params.yaml").gate
        except ParamsError:
            pass  # a base from before the gate existed: the head's rules apply
        for name, side in sides.items():
            timings[name] = smoke_run(side, profile, work / f"{name}.log")
        status, report = gate.run(
            gate_params, None, sides["base"], sides["head"], names=(f"{base} (smoke run)", "HEAD (smoke run)")
        )
        at_chance = base_at_chance(sides["base"])
        if at_chance and status == gate.PASS:
            status = gate.CANNOT_COMPARE
            report = report.replace("## Metric gate: PASS", "## Metric gate: FAIL: cannot compare", 1)
            report += f"\n**Could not compare:** {at_chance}\n"
    except SideFailed as err:
        status, report = gate.CANNOT_COMPARE, f"## Metric gate: FAIL: cannot compare\n\n**Could not compare:** {err}\n"
    finally:
        for side in sides.values():
            if side.exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(side)], cwd=repo, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
    sizes = ", ".join(f"`{s}.{k}={v}`" for s, values in profile.items() for k, v in values.items())
    report += (
        f"\nSmoke profile ({profile_file}): {sizes}. "
        + (f"Runs took {timings['base']:.0f}s (base) and {timings['head']:.0f}s (head).\n" if len(timings) == 2 else "\n")
        + "\n### Committed full-profile metrics (shown, not gated)\n\n"
        + committed_metrics_diff(repo, base)
        + "\n"
    )
    return status, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. origin/main)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="size overrides (YAML)")
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pr-check-") as work:
        status, report = run(Path("."), args.base, args.profile, Path(work))
    print(report)
    if args.report:
        args.report.write_text(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
