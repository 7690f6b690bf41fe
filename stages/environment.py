"""The software environment a model was trained in, recorded beside it so drift shows.

`train` writes this to `reports/environment.json`, a DVC metrics file (strings, `cache: false`,
committed), so `dvc exp show` and `dvc metrics diff` list a run's python, library versions and device
next to its accuracy: two runs that differ there are not expected to match bit for bit.
"""

from __future__ import annotations

import platform

import datasets
import torch
import transformers


def software_environment() -> dict[str, str]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "cuda": torch.version.cuda if cuda and torch.version.cuda else "none",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
    }
