"""A Lightning accelerator for Moore Threads GPUs (`musa`), registered when torch_musa imports."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry

from mooer.devices import musa_module


class MUSAAccelerator(Accelerator):
    """Moore Threads GPUs through torch_musa: devices `musa:N`, process group `mccl`."""

    def setup_device(self, device: torch.device) -> None:
        if device.type != "musa":
            raise ValueError(f"device should be musa, got {device}")
        musa_module().set_device(device)

    def get_device_stats(self, device) -> dict[str, Any]:
        musa = musa_module()
        if hasattr(musa, "memory_allocated"):
            return {"memory_allocated": musa.memory_allocated(device)}
        return {}

    def teardown(self) -> None:
        musa = musa_module()
        if musa is not None and hasattr(musa, "empty_cache"):
            musa.empty_cache()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        count = MUSAAccelerator.auto_device_count()
        if devices in ("auto", -1, "-1"):
            return list(range(count))
        requested = (list(range(int(devices))) if isinstance(devices, int | str)
                     else [int(d) for d in devices])
        if any(d >= count for d in requested):
            raise ValueError(f"asked for MUSA devices {requested}, only {count} are visible")
        return requested

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        return [torch.device("musa", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        musa = musa_module()
        return musa.device_count() if musa is not None else 0

    @staticmethod
    def is_available() -> bool:
        musa = musa_module()
        return musa is not None and musa.is_available()

    @staticmethod
    def name() -> str:
        return "musa"

    @classmethod
    def register_accelerators(cls, accelerator_registry) -> None:
        accelerator_registry.register("musa", cls, description=cls.__name__)


def register_musa() -> bool:
    """Register `accelerator="musa"` with Lightning when torch_musa imports; True if it did."""
    if musa_module() is None:
        return False
    if "musa" not in AcceleratorRegistry:
        MUSAAccelerator.register_accelerators(AcceleratorRegistry)
    return True
