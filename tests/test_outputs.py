"""Atomic outputs: a stage that fails mid-write leaves its last good output whole, and no litter."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stages import prepare, tokenize
from stages.common.atomic import OutOfSpace, atomic_dir, atomic_file, recover
from stages.common.params import Params


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tokenize_failing_mid_write_keeps_the_last_good_output(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare.run(tiny_params.data, tmp_path / "prepared")
    params = dataclasses.replace(tiny_params.tokenize, batch_size=50)  # several batches per split
    tokenize.run(tiny_params.model, params, tmp_path / "prepared", tmp_path / "tokenized")
    good = snapshot(tmp_path / "tokenized")

    # The disk fills up after two batches have been written.
    real_write, calls = pq.ParquetWriter.write_table, []

    def write_until_full(self: pq.ParquetWriter, table, *args, **kwargs) -> None:
        calls.append(len(table))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_until_full)
    with pytest.raises(OutOfSpace, match=r"no space left on the device while writing .*tokenized \(\[Errno 28\]"):
        tokenize.run(tiny_params.model, params, tmp_path / "prepared", tmp_path / "tokenized")
    assert len(calls) == 3
    assert snapshot(tmp_path / "tokenized") == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared", "tokenized"]


def test_atomic_file_keeps_the_old_content_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text('{"accuracy": 0.59}\n')
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text('{"accur')
        raise RuntimeError("crashed mid-write")
    assert target.read_text() == '{"accuracy": 0.59}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_leftovers_of_a_killed_writer_are_swept_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "tokenized"
    # A writer killed with SIGKILL mid-write: its temporary folder stays behind.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; from pathlib import Path; from stages.common.atomic import atomic_dir\n"
            f"with atomic_dir(Path({str(target)!r})) as tmp:\n"
            "    (tmp / 'train.parquet').write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)",
        ],
        capture_output=True,
    )
    assert killed.returncode == -9
    [leftover] = tmp_path.iterdir()
    assert leftover.name.startswith(".tokenized.tmp-") and not target.exists()

    with atomic_dir(target) as tmp:
        (tmp / "train.parquet").write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenized"]
    assert (target / "train.parquet").read_bytes() == b"whole"
    # A live writer's temporary folder is left alone.
    with atomic_dir(target) as tmp, atomic_dir(target) as other:
        assert tmp.exists() and other.exists() and str(os.getpid()) in tmp.parent.name


def test_without_an_atomic_exchange_a_kill_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "tokenized"
    target.mkdir()
    (target / "train.parquet").write_bytes(b"old")
    # A writer on a system without renameat2, killed between moving the old folder aside and the new one in.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from stages.common import atomic; from tests.crash_points import Hook\n"
            "atomic._renameat2 = None\n"
            f"target = Path({str(target)!r})\n"
            "sys.addaudithook(Hook(target.parent, [target], crash_on=f'-> {target.name}'))\n"
            "with atomic.atomic_dir(target) as tmp:\n"
            "    (tmp / 'train.parquet').write_bytes(b'new')",
        ],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    assert not target.exists()  # the window the module docstring names
    recover([target])
    assert (target / "train.parquet").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenized"]
