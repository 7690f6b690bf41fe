"""End to end: the real `dvc repro`, `dvc exp run` and `dvc metrics diff` in a temporary git repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import read_lock, run_cmd, set_params

STAGES = ["prepare", "tokenize", "subset", "train", "evaluate"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def output_hashes(repo: Path) -> dict[str, str]:
    """Every stage output's hash, as dvc.lock records it."""
    lock = read_lock(repo)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


@pytest.mark.slow
def test_repro_skip_partial_rerun_experiments_and_metrics_diff(project: Path) -> None:
    first = run_cmd(["dvc", "repro"], project)
    assert ran_stages(first.stdout) == STAGES

    metrics = json.loads((project / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1", "eval_loss", "n_eval"}
    assert metrics["n_eval"] == 100
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0 and metrics["eval_loss"] > 0

    first_hashes, first_metrics = output_hashes(project), (project / "metrics.json").read_text()

    # Cached outputs are hard links into the DVC cache (cache.type in .dvc/config), not copies: a
    # full-size run does not need its data twice on disk.
    for output in ("data/tokenized/train.parquet", "models/model/model.safetensors"):
        assert (project / output).stat().st_nlink == 2, output

    # Nothing changed: nothing runs.
    again = run_cmd(["dvc", "repro"], project)
    assert ran_stages(again.stdout) == []
    assert "Data and pipelines are up to date" in again.stdout

    # Same params and seeds on this CPU: a forced rerun of every stage gives byte-identical data,
    # the same model and the same metrics (dvc.lock records each output's hash).
    forced = run_cmd(["dvc", "repro", "--force"], project)
    assert ran_stages(forced.stdout) == STAGES
    assert output_hashes(project) == first_hashes
    assert (project / "metrics.json").read_text() == first_metrics

    # The software environment is a metrics file of its own, so `dvc exp show` shows drift.
    environment = json.loads((project / "reports" / "environment.json").read_text())
    assert set(environment) == {
        *("python", "torch", "transformers", "tokenizers", "accelerate", "datasets", "numpy", "dvc"),
        *("cpu", "cpu_instructions", "threads", "gpu", "cuda", "cudnn", "precision", "optimizer"),
    }
    assert environment["torch"].startswith("2.13.0") and environment["precision"] == "fp32"

    # metrics.json is not cached, so git carries it (and `dvc metrics diff` works on any clone).
    assert run_cmd(["git", "check-ignore", "-q", "metrics.json"], project, check=False).returncode == 1
    assert run_cmd(["git", "check-ignore", "-q", "models/model"], project, check=False).returncode == 0
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "baseline"], project)

    # A new subset size reruns subset, train and evaluate, but never re-tokenizes.
    set_params(project, {"subset": {"train_size": 120}})
    partial = run_cmd(["dvc", "repro"], project)
    assert ran_stages(partial.stdout) == ["subset", "train", "evaluate"]
    run_cmd(["git", "commit", "-qam", "smaller train subset"], project)

    # The README's experiment, typed as written: DVC writes `3e-05` (YAML 1.2), which every stage must
    # read as the number it is (a YAML 1.1 reader such as PyYAML reads a string).
    ran = run_cmd(["dvc", "exp", "run", "-S", "train.learning_rate=3e-5"], project)
    assert re.search(r"^ +learning_rate: 3e-05$", (project / "params.yaml").read_text(), re.MULTILINE)
    name = re.search(r"Ran experiment\(s\): (\S+)", ran.stdout).group(1)
    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = [exp for entry in shown for exp in (entry.get("experiments") or [])]
    named = [exp for exp in experiments if exp.get("name") == name]
    assert named, shown
    revision = named[0]["revs"][0]
    assert revision["error"] is None
    learning_rate = revision["data"]["params"]["params.yaml"]["data"]["train"]["learning_rate"]
    assert learning_rate == 3e-5 and isinstance(learning_rate, float)
    exp_metrics = revision["data"]["metrics"]["metrics.json"]["data"]
    assert set(exp_metrics) == {"accuracy", "macro_f1", "eval_loss", "n_eval"}
    trained_with = json.loads((project / "models" / "model" / "training_params.json").read_text())
    assert trained_with["train"]["learning_rate"] == 3e-5

    # The experiment's results are in the workspace: `dvc metrics diff` shows the change against HEAD.
    diff = json.loads(run_cmd(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert diff["metrics.json"]["eval_loss"]["old"] != diff["metrics.json"]["eval_loss"]["new"], diff
    table = run_cmd(["dvc", "metrics", "diff", "--md"], project).stdout
    assert any(re.match(r"\| metrics\.json +\| eval_loss ", line) for line in table.splitlines()), table
