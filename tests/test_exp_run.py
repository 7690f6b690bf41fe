"""`dvc exp run -S KEY=VALUE` as users type it: each value runs as meant, or stops with one line.

DVC parses each value with Hydra's override grammar and writes params.yaml as YAML 1.2; the stages
read it back with `stages.common.params.read_yaml`. These tests go through all three, in the workspace and
through `dvc exp run --queue` + `dvc queue start`, and read the result back from `dvc exp show`.
The README's own `dvc exp run -S train.learning_rate=3e-5` is in `test_pipeline`, after `dvc repro`.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from tests.helpers import new_project, run_cmd, shown_experiments, tiny_overrides

SEED_RANGE = "an integer >= 0 and <= 4294967295"

# Values of every shape, in one queued experiment that runs: the `-S` arguments, then the params that
# `dvc exp show` must show (value and type).
QUEUED_RUN = (
    [
        "train.learning_rate=1e-3",
        "train.weight_decay=5E-5",
        "train.warmup_ratio=.5",
        "train.logging_steps=1_000",
        "train.max_steps=null",
        "train.tf32=off",
        "train.group_by_length=true",
        "train.epochs=1.0",
    ],
    {
        "learning_rate": 1e-3,
        "weight_decay": 5e-5,
        "warmup_ratio": 0.5,
        "logging_steps": 1000,
        "max_steps": None,
        "tf32": "off",
        "group_by_length": True,
        "epochs": 1.0,
    },
)

# Values that stop, and the start of the line the user sees. The project has no outputs yet, so
# `prepare` runs first and reads the whole file; after `dvc repro` the first stage to run says the same.
FAILS = [
    ('train.seed="42"', f"params.yaml: train.seed = '42' has the wrong type; expected {SEED_RANGE}"),
    ("train.learning_rate=-1e-5", "params.yaml: train.learning_rate = -1e-05 is out of range; expected a number >= 0"),
    (
        "train.learning_rate=inf",
        "params.yaml: train.learning_rate = inf is not a finite number; expected a number >= 0",
    ),
    (
        "data.synthetic_length_scale=nan",
        "params.yaml: data.synthetic_length_scale = nan is not a finite number; expected a number > 0",
    ),
    ("subset.seed=null", f"params.yaml: subset.seed is null; expected {SEED_RANGE}"),
    ("train.seed=4294967296", f"params.yaml: train.seed = 4294967296 is out of range; expected {SEED_RANGE}"),
    (
        "train.group_by_length=off",
        "params.yaml: train.group_by_length = 'off' has the wrong type; expected true or false",
    ),
    ("train.batch_size=[8,16]", "params.yaml: train.batch_size = [8, 16] has the wrong type; expected an integer >= 1"),
    (
        "train.batch_size={per_device:8}",
        "params.yaml: train.batch_size = {'per_device': 8} has the wrong type; expected an integer >= 1",
    ),
]
# Through the queue: `on` arrives as the string it is (YAML 1.1 would make it true), and the train
# stage refuses it on a CPU, by name.
QUEUED_FAIL = ("train.tf32=on", "train.tf32 = 'on': cpu")


@pytest.fixture
def committed(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A tiny project, committed (`dvc exp run` needs a commit), with no outputs yet."""
    repo = new_project(tmp_path / "project", tiny_overrides(tiny_model_dir))
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "baseline"], repo)
    return repo


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_bad_values_stop_with_one_line_naming_the_key(committed: Path) -> None:
    for override, error in FAILS:
        started = time.perf_counter()
        result = run_cmd(["dvc", "exp", "run", "-S", override], committed, check=False)
        elapsed = time.perf_counter() - started
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        lines = error_lines(output)
        assert len(lines) == 1 and lines[0].startswith(f"error: {error}"), (override, output)
        assert "Traceback" not in output, override
        assert elapsed < 30, f"{override}: took {elapsed:.1f}s"
        # A failed `dvc exp run` leaves its value in params.yaml; start the next one from the commit.
        run_cmd(["git", "checkout", "--", "params.yaml"], committed)


@pytest.mark.slow
def test_queued_values_run_as_meant_and_a_bad_one_fails_in_the_queue(committed: Path) -> None:
    overrides, expected = QUEUED_RUN
    run_cmd(["dvc", "exp", "run", "--queue", "--name", "shapes", *[a for o in overrides for a in ("-S", o)]], committed)
    bad_override, bad_error = QUEUED_FAIL
    run_cmd(["dvc", "exp", "run", "--queue", "--name", "tf32-on", "-S", bad_override], committed)
    run_cmd(["dvc", "queue", "start", "--jobs", "1"], committed)
    deadline = time.monotonic() + 300
    while True:
        status = run_cmd(["dvc", "queue", "status"], committed).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert re.search(r"^\w+ +shapes .* Success$", status, re.MULTILINE), status
    assert re.search(r"^\w+ +tf32-on .* Failed$", status, re.MULTILINE), status

    shown = shown_experiments(committed)
    assert shown["shapes"]["error"] is None
    got = shown["shapes"]["data"]["params"]["params.yaml"]["data"]["train"]
    for key, value in expected.items():
        assert got[key] == value and type(got[key]) is type(value), (key, got[key])
    assert math.isfinite(shown["shapes"]["data"]["metrics"]["metrics.json"]["data"]["accuracy"])

    logs = run_cmd(["dvc", "queue", "logs", "tf32-on"], committed).stdout
    lines = error_lines(logs)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad_error}"), logs
    assert "Traceback" not in logs
