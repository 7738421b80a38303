"""Distributed strategies: DeepSpeed ZeRO-2/3 on CUDA, MUSA and (for tests) the CPU, and DDP.

Lightning's DeepSpeedStrategy refuses every accelerator but CUDA; DeepSpeedAnyDeviceStrategy
skips only that check, numbers the devices for DeepSpeed and picks the process-group backend of
the device (nccl, mccl, gloo). Settings mirror MooER's deepspeed_config_zero2/zero3.json.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from mooer.checkpoints import write_failed
from mooer.files import partial_path, swap_in

BACKENDS = {"cuda": "nccl", "musa": "mccl", "cpu": "gloo"}


def set_deepspeed_accelerator(device_type: str) -> None:
    """Tell DeepSpeed which accelerator to use (before it first imports its accelerator).

    Upstream DeepSpeed has no MUSA accelerator; Moore Threads' builds add one.
    """
    if device_type == "cuda":
        return
    os.environ["DS_ACCELERATOR"] = device_type
    if device_type == "musa":
        from deepspeed.accelerator import real_accelerator

        if "musa" not in getattr(real_accelerator, "SUPPORTED_ACCELERATOR_LIST", []):
            raise RuntimeError(
                "this DeepSpeed has no MUSA accelerator (upstream DeepSpeed ships none). Install "
                "Moore Threads' DeepSpeed build for MUSA, or train with strategy=ddp")


def zero_config(stage: int, offload_optimizer: bool = False, offload_parameters: bool = False,
                offload_device: str = "cpu", pin_memory: bool = False,
                **settings: Any) -> dict[str, Any]:
    """The `zero_optimization` section: the stage, MooER's bucket/overlap settings, offload.
    Checked by DeepSpeed's own schema now, so a misspelt setting stops the run at start-up
    (naming it), not after the model is built."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    zero: dict[str, Any] = {"stage": stage, **settings}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": offload_device, "pin_memory": pin_memory}
    if offload_parameters and stage == 3:
        zero["offload_param"] = {"device": offload_device, "pin_memory": pin_memory}
    try:
        DeepSpeedZeroConfig(**zero)
    except ValidationError as err:
        wrong = ", ".join(".".join(map(str, e["loc"])) for e in err.errors())
        raise ValueError(f"strategy: DeepSpeed's zero_optimization does not take {wrong} "
                         f"({err.errors()[0]['msg']})") from None
    return zero


class DeepSpeedAnyDeviceStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO on whatever accelerator the Trainer has (CUDA, MUSA, CPU)."""

    strategy_name = "deepspeed_any_device"

    def __init__(self, stage: int = 2, name: str | None = None, offload_optimizer: bool = False,
                 offload_parameters: bool = False, offload_optimizer_device: str = "cpu",
                 offload_params_device: str = "cpu", pin_memory: bool = False,
                 micro_batch_size: int = 1, **zero_settings: Any) -> None:
        config = {
            "zero_optimization": zero_config(
                stage, offload_optimizer, offload_parameters,
                offload_optimizer_device if offload_optimizer else offload_params_device,
                pin_memory, **zero_settings),
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "train_micro_batch_size_per_gpu": micro_batch_size,
        }
        # only trainable weights are written; frozen ones come from their own files
        super().__init__(config=config, stage=stage, exclude_frozen_parameters=True)

    def setup_environment(self) -> None:
        # DeepSpeed wants one numbered device per local rank (the CPU's come unnumbered)
        self.parallel_devices = [d if d.index is not None else torch.device(d.type, i)
                                 for i, d in enumerate(self.parallel_devices or [])]
        DDPStrategy.setup_environment(self)  # the parent's, without its CUDA-only check

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None) -> None:
        """DeepSpeed writes a directory; write it aside and swap it in once complete."""
        partial = partial_path(filepath)
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except (OSError, RuntimeError) as err:  # a full disk: say so, keep the previous one
            raise write_failed(filepath, checkpoint, err) from err
        self.barrier()
        if self.is_global_zero:
            swap_in(partial, filepath)
        self.barrier()

    def _get_process_group_backend(self) -> str:
        return self._process_group_backend or BACKENDS.get(self.root_device.type, "gloo")
