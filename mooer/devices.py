"""Which device: CUDA, Moore Threads' MUSA (through torch_musa) or the CPU. No Lightning here:
decoding needs only torch."""

from __future__ import annotations

import torch


def musa_module():
    """`torch.musa`, which `import torch_musa` installs; None when torch_musa is absent."""
    try:
        import torch_musa  # noqa: F401
    except ImportError:
        return None
    return getattr(torch, "musa", None)


def resolve_device(name: str = "auto") -> torch.device:
    """The device a name stands for, in training (`trainer.accelerator`) and decoding
    (`device=`) alike: `auto` takes CUDA, then MUSA, then the CPU; `gpu` is CUDA."""
    if name == "gpu":
        return torch.device("cuda")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    musa = musa_module()
    if musa is not None and musa.is_available():
        return torch.device("musa")
    return torch.device("cpu")
