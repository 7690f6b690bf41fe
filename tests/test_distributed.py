"""Multi-process training: the train stage launches itself with torchrun, and the processes train
as one data-parallel run (gloo on CPUs), with one set of outputs, on one node or two."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stages.common.params import Params, ParamsError
from stages.training import distributed
from tests.helpers import run_cmd, set_params, stage_args, stage_env


def test_batch_size_is_split_over_the_processes(tiny_params: Params) -> None:
    two = dataclasses.replace(tiny_params.train, batch_size=16, nproc_per_node=2)
    assert distributed.world_size(two) == 2 and distributed.per_process_batch_size(two) == 8
    uneven = dataclasses.replace(two, batch_size=15)
    with pytest.raises(
        ParamsError, match=r"train.batch_size = 15 cannot be split evenly over 2 processes .*expected a multiple of 2"
    ):
        distributed.per_process_batch_size(uneven)


def test_torchrun_command_on_one_machine_and_on_several(tiny_params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    one = dataclasses.replace(tiny_params.train, nproc_per_node=4)
    assert distributed.torchrun_command(one, "stages.train", ["--subset", "s"]) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=4",
        "--standalone",
        "-m",
        "stages.train",
        "--subset",
        "s",
    ]
    several = dataclasses.replace(one, nnodes=2, master_addr="10.0.0.1", master_port=29400)
    monkeypatch.setenv("NODE_RANK", "1")
    assert distributed.torchrun_command(several, "stages.train", [])[3:8] == [
        "--nproc-per-node=4",
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29400",
    ]
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(ParamsError, match="NODE_RANK = 2 but train.nnodes = 2"):
        distributed.torchrun_command(several, "stages.train", [])


@pytest.mark.slow
def test_two_cpu_processes_train_as_one_run_and_write_one_set_of_outputs(project: Path) -> None:
    set_params(project, {"train": {"nproc_per_node": 2}})

    result = run_cmd(["dvc", "repro"], project)
    assert "launching 2 training processes with torchrun" in result.stderr + result.stdout

    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["n_eval"] == 100 and 0 <= metrics["accuracy"] <= 1
    # The processes shared each batch of 16: 160 examples are 10 steps. Had each process trained
    # alone on everything (no process group), its batch of 8 would have made 20.
    epochs = pd.read_csv(project / "reports" / "train_epochs.csv")
    assert list(epochs["step"]) == [10]
    live = json.loads((project / "dvclive" / "metrics.json").read_text())
    assert live["step"] == 10 and live["train"]["loss"] > 0
    # One model, written once, with its card; no leftovers of a second writer.
    assert sorted(path.name for path in (project / "models").iterdir() if not path.name.startswith(".")) == ["model"]
    assert len(list((project / "models" / "model").glob("*.safetensors"))) == 1
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in (project / "models" / "model" / "README.md").read_text()
    assert not (project / "checkpoints" / "train").exists()  # deleted once the model is written

    # Two nodes x 1 process, on loopback: the same run as 1 node x 2 processes, so the same metrics.
    node1 = project.parent / "node1"  # a second machine's checkout: its own copy, with the same data
    shutil.copytree(project, node1, ignore=shutil.ignore_patterns("models", "reports", "dvclive", "metrics.json"))
    two_nodes = {"train": {"nproc_per_node": 1, "nnodes": 2, "master_addr": "127.0.0.1", "master_port": free_port()}}
    for checkout in (project, node1):
        set_params(checkout, two_nodes)
    one_node_metrics = (project / "metrics.json").read_text()
    env = {**stage_env(), "OMP_NUM_THREADS": "1"}  # each process one of the two cores, as torchrun gives 1 x 2
    nodes = [
        subprocess.Popen(
            stage_args(checkout, "train"),
            cwd=checkout,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, checkout in enumerate((project, node1))
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)
    assert all("launching 2 training processes with torchrun" in log for log in logs), logs
    run_cmd(stage_args(project, "evaluate"), project)
    assert (project / "metrics.json").read_text() == one_node_metrics
    assert list(pd.read_csv(project / "reports" / "train_epochs.csv")["step"]) == [10]
    assert not (node1 / "models").exists()  # only the main process, on node 0, writes outputs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
