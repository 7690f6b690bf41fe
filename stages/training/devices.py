"""Training settings that depend on the device: precision, TF32, optimizer, data-loading workers.

`device_arguments(params.train, Device.detect())` returns them as `TrainingArguments` keyword arguments. Each
`train:` param's default, `auto`, picks what suits the machine; an explicit value that the machine cannot honour
(fp16 or TF32 without a CUDA GPU, bf16 on a GPU without it) is a `ParamsError` before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stages.common.params import ParamsError, TrainParams


@dataclass(frozen=True)
class Device:
    """What the machine offers; `Device.detect()` reads it, tests build one by hand."""

    cuda: bool
    bf16: bool
    tf32: bool
    name: str
    mps: bool = False  # Apple silicon: the Trainer uses it by itself

    @classmethod
    def detect(cls) -> Device:
        if not torch.cuda.is_available():
            if torch.backends.mps.is_available():
                return cls(cuda=False, bf16=False, tf32=False, name="mps", mps=True)
            bf16 = cpu_has_native_bf16()
            return cls(cuda=False, bf16=bf16, tf32=False, name="cpu with bf16" if bf16 else "cpu")
        major, _ = torch.cuda.get_device_capability(0)
        # Native bf16 only: older GPUs emulate it, far slower than fp16.
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        # TF32 matmuls from Ampere (compute capability 8) on.
        return cls(cuda=True, bf16=bf16, tf32=major >= 8, name=torch.cuda.get_device_name(0))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 dot products or AMX tiles).

    torch's checks are private (`torch.cpu._is_*`), so a torch without them counts as no bf16.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def device_arguments(params: TrainParams, device: Device) -> dict[str, Any]:
    """`TrainingArguments` keyword arguments for `params` on `device`."""
    precision = params.precision
    # bf16 is autocast: weights, optimizer and loss stay fp32. Emulated on a CPU without it, slower than fp32.
    if precision == "auto":
        precision = "bf16" if device.bf16 else "fp16" if device.cuda else "fp32"
    if precision == "fp16" and not device.cuda:
        raise ParamsError(
            f"train.precision = 'fp16' needs a CUDA GPU, and this machine has none ({device.name}); expected 'auto', 'fp32' or 'bf16'"
        )
    if precision == "bf16" and device.cuda and not device.bf16:
        raise ParamsError(
            f"train.precision = 'bf16': the GPU {device.name} does not support bf16; expected 'auto', 'fp16' or 'fp32'"
        )

    tf32 = device.tf32 if params.tf32 == "auto" else params.tf32 == "on"
    if tf32 and not device.tf32:
        raise ParamsError(
            f"train.tf32 = 'on': {device.name} has no TF32 matmuls (a CUDA GPU of the Ampere generation or newer does); expected 'auto' or 'off'"
        )

    optimizer = params.optimizer
    # Fused AdamW: the same algorithm, one kernel instead of a loop of per-tensor operations (BENCHMARKS.md).
    if optimizer == "auto":
        optimizer = "adamw_torch" if device.mps else "adamw_torch_fused"

    workers = params.dataloader_workers
    if workers is None:
        # On a GPU, workers have batches ready when it is; on a CPU they would take cores from the math.
        workers = 4 if device.cuda else 0

    return {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "tf32": tf32 if device.cuda else None,  # None: leave the CPU's (absent) setting alone
        "optim": optimizer,
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": device.cuda,
        "torch_compile": params.torch_compile,
        # Said outright on a CPU: bf16 autocast and multi-process (gloo) training need it there (without
        # it each process of a multi-process run would silently train alone on all the data).
        "use_cpu": not (device.cuda or device.mps),
    }
