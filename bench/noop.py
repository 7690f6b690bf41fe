"""`dvc repro` with nothing to do, and the DVC cache's size, in a pipeline repository at size.

    python -m bench.noop --scale full          # or: python -m bench.run --part noop --scale full
    python -m bench.noop --scale small --fresh

In the repository `bench.tokenize_speed` left (built first if absent, or with `--fresh`): `dvc commit`
of prepare and tokenize, `dvc repro` of the rest with a tiny training run (the model's size does not
depend on it), the cache's size with the effective `cache.type`, then `dvc repro` with nothing to do,
`NOOP_RUNS` times; the same again after `dvc checkout --relink`. Writes `bench/results/noop.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import harness, tokenize_speed
from bench.harness import DVC, REPO_ROOT, du_bytes, dvc, mb, measure

NOOP_RUNS = 3
TARGET_SECONDS = 3.0  # the issue's, for a no-op `dvc repro` at full size on 2 CPU cores
OUTPUTS = ("data/prepared", "data/tokenized", "data/subset", "models/model")
UNSET = "(unset: DVC's default reflink,copy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tokenize_speed.add_arguments(parser)
    parser.add_argument("--fresh", action="store_true", help="noop: rebuild the pipeline repository even if one exists")


def effective_link_type(repo: Path) -> str:
    """How the workspace's cached files are tied to the cache: symlink, hardlink, reflink or copy, with counts."""
    files = [p for name in OUTPUTS for p in sorted((repo / name).rglob("*")) if p.is_symlink() or p.is_file()]
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
            ok = (
                subprocess.run(["cp", "--reflink=always", str(cached), str(probe)], capture_output=True).returncode == 0
            )
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
        runs.append(
            {
                "wall_s": round(m.wall_s, 3),
                "cpu_s": round(m.cpu_s, 3),
                "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1),
            }
        )
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
        "sizes_bytes": {name: du_bytes([repo / name]) for name in OUTPUTS},
    }


def configured_cache_type(repo: Path) -> str:
    out = subprocess.run(
        [DVC, "config", "cache.type"], cwd=repo, capture_output=True, text=True, env=harness.bench_env()
    )
    return out.stdout.strip() or UNSET


def commit_and_repro(repo: Path, logs: Path) -> dict[str, Any]:
    """`dvc commit` of prepare and tokenize, then `dvc repro` of the rest, then a git commit."""
    commit = dvc(repo, "commit", "--force", "prepare", "tokenize", logs=logs, name="dvc-commit")
    print(f"bench:   dvc commit prepare tokenize: {commit.wall_s:.1f} s", flush=True)
    rest = dvc(repo, "repro", logs=logs, name="dvc-repro-rest")
    ran = re.findall(r"Running stage '([^']+)'", rest.text())
    if "prepare" in ran or "tokenize" in ran:
        raise SystemExit(f"bench: dvc repro reran {ran} after the commit; see {rest.log}")
    print(f"bench:   dvc repro ({', '.join(ran)}): {rest.wall_s:.1f} s", flush=True)
    measure(["git", "add", "-A"], repo, logs / "git-add.log")
    measure(["git", "commit", "-q", "-m", "bench: pipeline run"], repo, logs / "git-commit.log")
    return {
        "committed": True,
        "commit_s": round(commit.wall_s, 2),
        "commit_cpu_s": round(commit.cpu_s, 2),
        "repro_rest_s": round(rest.wall_s, 2),
        "repro_rest_stages": ran,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    state_path = tokenize_speed.state_file(args)
    if args.fresh:
        state_path.unlink(missing_ok=True)
    repo, logs = tokenize_speed.pipeline_repo(args), tokenize_speed.pipeline_logs(args)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if (
        not state.get("tokenized")
        or state.get("cache_type") != args.cache_type
        or state.get("rows") != sum(tokenize_speed.rows_wanted(args))
        or state.get("length_scale") != args.length_scale
    ):
        print("bench: no tokenized pipeline repository at this scale; running the tokenize part first", flush=True)
        harness.save(args, tokenize_speed.run(args))
        state = json.loads(state_path.read_text())
    if not state.get("committed"):
        state.update(commit_and_repro(repo, logs))
        state_path.write_text(json.dumps(state))
    already_relinked = bool(state.get("relinked"))
    runs = noop_runs(repo, logs, "after-repro")
    median = statistics.median(r["wall_s"] for r in runs)
    sizes = disk_sizes(repo)
    # DVC 3 leaves a stage's outputs as copies after `dvc repro`/`dvc commit` unless hardlink is the first
    # cache.type; `dvc checkout --relink` then links them as cache.type allows. Measured both ways.
    relink = dvc(repo, "checkout", "--relink", logs=logs, name="dvc-checkout-relink")
    print(f"bench:   dvc checkout --relink: {relink.wall_s:.1f} s", flush=True)
    relinked_sizes = disk_sizes(repo)
    state["relinked"] = True
    state_path.write_text(json.dumps(state))
    relinked_runs = noop_runs(repo, logs, "after-relink")
    result = {
        "part": "noop",
        "scale": args.scale,
        "rows": state.get("rows"),
        "noop_runs": runs,
        "noop_median_s": median,
        "noop_ratio_to_target": round(median / TARGET_SECONDS, 3),
        "noop_pass": median < TARGET_SECONDS,
        "cache_type_configured": configured_cache_type(repo),
        "project_cache_type_configured": configured_cache_type(REPO_ROOT),
        **sizes,
        "relink_s": round(relink.wall_s, 2),
        "after_relink": {
            **relinked_sizes,
            "noop_runs": relinked_runs,
            "noop_median_s": statistics.median(r["wall_s"] for r in relinked_runs),
        },
        "dvc_commit_s": state.get("commit_s"),
        "dvc_commit_cpu_s": state.get("commit_cpu_s"),
        "dvc_repro_rest_s": state.get("repro_rest_s"),
        "dvc_repro_rest_stages": state.get("repro_rest_stages"),
        "tiny_training": tokenize_speed.TINY_TRAINING,
        "already_relinked_by_an_earlier_run": already_relinked,
    }
    result["markdown"] = markdown(result, full=tokenize_speed.full_size(args))
    return result


def markdown(r: dict[str, Any], full: bool) -> str:
    def verdict(seconds: float) -> str:
        return ("PASS" if seconds < TARGET_SECONDS else "FAIL") if full else "target is for full scale"

    def shared(side: dict[str, Any]) -> str:
        return f"{side['workspace_plus_cache_bytes'] / max(side['workspace_bytes'] + side['cache_bytes'], 1):.2f}"

    a, b = r, r["after_relink"]
    runs = "; ".join(", ".join(f"{x['wall_s']:.2f} s" for x in side["noop_runs"]) for side in (a, b))
    sizes = ", ".join(f"{name} {mb(n)}" for name, n in r["sizes_bytes"].items())
    note = (
        " **Note:** an earlier noop run relinked this repository, so the first column is not the state "
        "`dvc repro` leaves: rerun with `--fresh`."
    )
    return "\n".join(
        [
            f"### No-op `dvc repro` and the DVC cache ({r['rows']:,} reviews; cache.type {r['cache_type_configured']})",
            "",
            "| figure | after `dvc repro` | after `dvc checkout --relink` | target | value / target |",
            "| --- | --- | --- | --- | --- |",
            f"| effective link, workspace to cache | {a['cache_type_effective']} | {b['cache_type_effective']} | | |",
            f"| no-op dvc repro, median of {len(a['noop_runs'])} | {a['noop_median_s']:.2f} s, "
            f"{verdict(a['noop_median_s'])} | {b['noop_median_s']:.2f} s, {verdict(b['noop_median_s'])} | "
            f"< {TARGET_SECONDS:g} s | {a['noop_ratio_to_target']:.2f} / {b['noop_median_s'] / TARGET_SECONDS:.2f} |",
            f"| .dvc/cache on disk | {mb(a['cache_bytes'])} | {mb(b['cache_bytes'])} | | |",
            f"| workspace (data/, models/) on disk | {mb(a['workspace_bytes'])} | {mb(b['workspace_bytes'])} | | |",
            f"| workspace + cache, shared blocks once | {mb(a['workspace_plus_cache_bytes'])} | "
            f"{mb(b['workspace_plus_cache_bytes'])} | | {shared(a)} / {shared(b)} of the two counted apart |",
            "",
            f"No-op runs: {runs}. Sizes: {sizes}. `dvc commit` of prepare + tokenize (hashing and caching): "
            f"{r['dvc_commit_s']} s; `dvc checkout --relink`: {r['relink_s']} s. The project's own .dvc/config "
            f"sets cache.type: {r['project_cache_type_configured']}."
            + (note if r["already_relinked_by_an_earlier_run"] else ""),
        ]
    )


if __name__ == "__main__":
    harness.main(sys.modules[__name__])
