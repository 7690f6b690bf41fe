"""Multi-process training: `train.nproc_per_node` processes on each of `train.nnodes` machines.

The train stage calls `launch(params.train, "stages.train", sys.argv[1:])` when `world_size(params.train) > 1`
and not `launched()`; each process then trains on its shard of each batch, and only `is_main_process()` writes.
Across machines: `dvc repro` on the first (`NODE_RANK` unset or 0), `NODE_RANK=<k> python -m stages.train
<dvc.yaml's arguments>` on machine k.
"""

from __future__ import annotations

import os
import subprocess
import sys

from stages.common.params import ParamsError, TrainParams

# torchrun sets these in every process it starts.
_LAUNCHED = "LOCAL_RANK"


def world_size(params: TrainParams) -> int:
    return params.nproc_per_node * params.nnodes


def launched() -> bool:
    """True in a process that torchrun started."""
    return _LAUNCHED in os.environ


def is_main_process() -> bool:
    """Rank 0, the one process that writes outputs (also true without torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def per_process_batch_size(params: TrainParams) -> int:
    """Each process's share of `train.batch_size`."""
    # `train.batch_size` stays one optimizer step's batch at any world size: the same params, the same recipe.
    world = world_size(params)
    if params.batch_size % world:
        raise ParamsError(
            f"train.batch_size = {params.batch_size} cannot be split evenly over {world} processes "
            f"(train.nproc_per_node {params.nproc_per_node} x train.nnodes {params.nnodes}); "
            f"expected a multiple of {world}"
        )
    return params.batch_size // world


def node_rank() -> int:
    value = os.environ.get("NODE_RANK", "0")
    if not value.isdigit():
        raise ParamsError(f"NODE_RANK = {value!r}: expected this machine's index, an integer >= 0")
    return int(value)


def torchrun_command(params: TrainParams, module: str, arguments: list[str]) -> list[str]:
    """The torchrun command line that starts `python -m module arguments` in every process."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={params.nproc_per_node}"]
    if params.nnodes == 1:
        command.append("--standalone")  # torchrun picks a free port itself
    else:  # static rendezvous at train.master_addr:train.master_port, reachable from every machine
        rank = node_rank()
        if rank >= params.nnodes:
            raise ParamsError(
                f"NODE_RANK = {rank} but train.nnodes = {params.nnodes}; expected 0 to {params.nnodes - 1}"
            )
        command += [
            f"--nnodes={params.nnodes}",
            f"--node-rank={rank}",
            f"--master-addr={params.master_addr}",
            f"--master-port={params.master_port}",
        ]
    return command + ["-m", module, *arguments]


def launch(params: TrainParams, module: str, arguments: list[str]) -> int:
    """Run `module` under torchrun; return its exit status (non-zero if any process failed)."""
    # The cores shared out between the processes: torch would otherwise give each process every
    # core, and threads fighting over cores slow down many times over.
    threads = max(1, (os.cpu_count() or 1) // params.nproc_per_node)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    return subprocess.run(torchrun_command(params, module, arguments), env=env).returncode
