"""The software environment a model was trained in, recorded beside it so drift shows.

`software_environment()` returns python, library versions and device; `train` writes it to `reports/environment.json`.
"""

from __future__ import annotations

import platform

import datasets
import torch
import transformers


def software_environment() -> dict[str, str]:
    # A DVC metrics file, so `dvc exp show` lists it next to accuracy: runs differing here need not match bit for bit.
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "cuda": torch.version.cuda if cuda and torch.version.cuda else "none",
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
    }
