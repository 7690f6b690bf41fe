"""What a model was trained on and with: the record that says when two runs can match bit for bit.

`environment_record(device_args)` returns it as strings; `train` writes it to `reports/environment.json`
(a DVC metrics file, so `dvc exp show` lists it beside accuracy) and into the model card.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

# The libraries whose versions change an output: the arithmetic, the tokens, the data, the pipeline.
LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "datasets", "numpy", "dvc")


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_instructions() -> str:
    """The instruction sets that change CPU arithmetic: torch's kernel level, and bf16 dot products or tiles."""
    found = [torch.backends.cpu.get_cpu_capability()]
    # torch's checks are private, so a torch without them reports neither.
    for name, check in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported")):
        if getattr(torch.cpu, check, lambda: False)():
            found.append(name)
    return " ".join(found)


def precision_name(device_args: dict) -> str:
    """The precision `device_args` (from `device_arguments`) trains in: bf16, fp16 or fp32."""
    return "bf16" if device_args["bf16"] else "fp16" if device_args["fp16"] else "fp32"


def environment_record(device_args: dict) -> dict[str, str]:
    """Hardware, the device settings `auto` resolved to (`device_args`: from `device_arguments`), versions."""
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda else None
    return {
        "python": platform.python_version(),
        **{library: importlib.metadata.version(library) for library in LIBRARIES},
        "cpu": cpu_model(),
        "cpu_instructions": cpu_instructions(),
        "threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
        "cuda": torch.version.cuda if cuda and torch.version.cuda else "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "precision": precision_name(device_args),
        "optimizer": str(device_args["optim"]),
    }
