"""Multi-process training: `train.nproc_per_node` processes on each of `train.nnodes` machines.

The train stage launches itself with `torchrun` when the world is bigger than one process, so
`dvc repro` is the same command at any scale. Every process trains on its shard of each batch
(DistributedDataParallel); only the first (rank 0) writes outputs.

- `train.batch_size` stays the batch of one optimizer step, whatever the number of processes: each
  process takes `batch_size / world size` examples of it, so the same params give the same recipe
  on one process or eight.
- On CPUs the processes talk over gloo; the Trainer needs `use_cpu=True` for that (set by
  `stages/devices.py`), or each process would silently train alone on all the data.
- The logged training loss is the mean over all processes' tokens (`average_tokens_across_devices`),
  comparable with a one-process run's.
- Across machines: run `dvc repro` on the first machine (`NODE_RANK` unset or 0) and
  `NODE_RANK=<k> python -m stages.train <the same arguments as in dvc.yaml>` on machine k, with
  `train.master_addr` and `train.master_port` reachable from all of them (torchrun's static
  rendezvous). On one machine torchrun's `--standalone` picks a free port itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

from stages.params import ParamsError, TrainParams

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
        command.append("--standalone")
    else:
        rank = node_rank()
        if rank >= params.nnodes:
            raise ParamsError(f"NODE_RANK = {rank} but train.nnodes = {params.nnodes}; expected 0 to {params.nnodes - 1}")
        command += [
            f"--nnodes={params.nnodes}", f"--node-rank={rank}",
            f"--master-addr={params.master_addr}", f"--master-port={params.master_port}",
        ]
    return command + ["-m", module, *arguments]


def launch(params: TrainParams, module: str, arguments: list[str]) -> int:
    """Run `module` under torchrun; return its exit status (non-zero if any process failed)."""
    # The cores shared out between the processes: torch would otherwise give each process every
    # core, and threads fighting over cores slow down many times over.
    threads = max(1, (os.cpu_count() or 1) // params.nproc_per_node)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    return subprocess.run(torchrun_command(params, module, arguments), env=env).returncode
