"""Device settings: what `auto` picks on each kind of machine, and that the CPU-valid ones really run."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from stages import train
from stages.common.params import Params, ParamsError, TrainParams
from stages.training.devices import Device, cpu_has_native_bf16, device_arguments

CPU = Device(cuda=False, bf16=False, tf32=False, name="cpu")
CPU_BF16 = Device(cuda=False, bf16=True, tf32=False, name="cpu with bf16")  # AVX512-BF16 or AMX
MPS = Device(cuda=False, bf16=False, tf32=False, name="mps", mps=True)


@pytest.fixture
def auto(tiny_params: Params) -> TrainParams:
    """The train params with every device setting `auto`, as in params.yaml (the tiny ones pin fp32)."""
    return dataclasses.replace(tiny_params.train, precision="auto")


H100 = Device(cuda=True, bf16=True, tf32=True, name="NVIDIA H100")
T4 = Device(cuda=True, bf16=False, tf32=False, name="Tesla T4")


def test_auto_on_a_cpu_is_fp32_with_fused_adamw(auto: TrainParams) -> None:
    assert device_arguments(auto, CPU) == {
        "bf16": False,
        "fp16": False,
        "tf32": None,
        "optim": "adamw_torch_fused",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "torch_compile": False,
        "use_cpu": True,
    }


def test_auto_picks_bf16_on_a_cpu_that_has_it_and_nothing_new_on_apple_silicon(auto: TrainParams) -> None:
    assert device_arguments(auto, CPU_BF16) == {**device_arguments(auto, CPU), "bf16": True}
    assert device_arguments(auto, MPS) == {**device_arguments(auto, CPU), "optim": "adamw_torch", "use_cpu": False}


def test_the_cpu_bf16_check_matches_torch(auto: TrainParams) -> None:
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() == native
    detected = Device.detect()
    if not detected.cuda:  # on a GPU machine, auto looks at the GPU (the tests above)
        assert detected.bf16 == native
        assert device_arguments(auto, detected)["bf16"] == native


def test_auto_picks_bf16_tf32_and_fused_adamw_on_a_recent_gpu(auto: TrainParams) -> None:
    assert device_arguments(auto, H100) == {
        "bf16": True,
        "fp16": False,
        "tf32": True,
        "optim": "adamw_torch_fused",
        "dataloader_num_workers": 4,
        "dataloader_pin_memory": True,
        "torch_compile": False,
        "use_cpu": False,
    }


def test_auto_falls_back_to_fp16_without_bf16(auto: TrainParams) -> None:
    args = device_arguments(auto, T4)
    assert (args["bf16"], args["fp16"], args["tf32"]) == (False, True, False)


@pytest.mark.parametrize(
    ("setting", "device", "message"),
    [
        ({"precision": "fp16"}, CPU, "train.precision = 'fp16' needs a CUDA GPU, and this machine has none (cpu)"),
        ({"precision": "bf16"}, T4, "train.precision = 'bf16': the GPU Tesla T4 does not support bf16"),
        ({"tf32": "on"}, CPU, "train.tf32 = 'on': cpu has no TF32 matmuls"),
        ({"tf32": "on"}, T4, "train.tf32 = 'on': Tesla T4 has no TF32 matmuls"),
    ],
)
def test_a_setting_the_machine_cannot_honour_is_named(
    tiny_params: Params, setting: dict, device: Device, message: str
) -> None:
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        device_arguments(dataclasses.replace(tiny_params.train, **setting), device)


def test_overrides_win_over_auto(tiny_params: Params) -> None:
    params = dataclasses.replace(
        tiny_params.train, precision="fp32", tf32="off", optimizer="adamw_torch", dataloader_workers=1
    )
    args = device_arguments(params, H100)
    assert (args["bf16"], args["fp16"], args["tf32"], args["optim"], args["dataloader_num_workers"]) == (
        False,
        False,
        False,
        "adamw_torch",
        1,
    )


@pytest.mark.slow
def test_cpu_valid_settings_train_for_real(
    tiny_params: Params, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 autocast, fused AdamW, two loader workers and torch.compile all run on a CPU.

    torch.compile traces the model for real (TorchDynamo), but with the `eager` backend: inductor's
    C++ code generation alone takes a minute on 2 cores, and is torch's to test, not ours.
    """
    real_device_arguments = train.device_arguments
    monkeypatch.setattr(
        train, "device_arguments", lambda *a: {**real_device_arguments(*a), "torch_compile_backend": "eager"}
    )
    params = dataclasses.replace(
        tiny_params.train,
        precision="bf16",
        optimizer="adamw_torch_fused",
        dataloader_workers=2,
        torch_compile=True,
    )
    args = train.training_arguments(params, tmp_path / "out")
    assert (args.bf16, args.optim, args.dataloader_num_workers, args.torch_compile, args.use_cpu) == (
        True,
        "adamw_torch_fused",
        2,
        True,
        True,
    )
    started = time.perf_counter()
    history = train.run(tiny_params.model, 5, params, tiny_data / "subset", tmp_path / "model", tmp_path / "epochs.csv")
    assert list(history["epoch"]) == [1.0]
    assert 0.0 <= history["eval_accuracy"].iloc[0] <= 1.0
    print(f"bf16 + fused AdamW + 2 workers + torch.compile on CPU: {time.perf_counter() - started:.1f}s")
