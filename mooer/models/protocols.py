"""The contracts of the model's parts: what the SpeechLLM, its builder, the data pipeline's slot
arithmetic and regional compilation rely on of an encoder and a projector. Any nn.Module that
keeps one can be configured (`encoder.model._target_`, `projector._target_`); the builder checks
it, naming what is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SpeechEncoder(Protocol):
    """Features [B, T, dim] and their lengths [B] -> states [B, T', output_size] and lengths."""

    output_size: int
    # how it shortens its frontend's frames, as 1-D convs [kernel, stride, padding]: the data
    # pipeline counts each utterance's audio slots with them, on the host
    length_convs: list[list[int]]

    @property
    def blocks(self) -> list[nn.Module]:
        """Its repeated layers (each compiled alone under `module.compile`)."""
        ...

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class Projector(Protocol):
    """Encoder states [B, T, encoder_dim] -> LLM embeddings [B, T // downsample, llm_dim]."""

    downsample: int

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames of inputs of `lengths` frames."""
        ...

    def __call__(self, states: torch.Tensor) -> torch.Tensor: ...


def check_contract(part: str, module: object, contract: type) -> None:
    """A configured part that does not keep its contract is an error naming what it lacks."""
    if not isinstance(module, contract):
        members = {*getattr(contract, "__annotations__", {}),
                   *(n for n in vars(contract) if not n.startswith("_"))}
        names = [n for n in members if not hasattr(module, n)]
        raise TypeError(f"{part} {type(module).__name__} does not keep the {contract.__name__} "
                        f"contract (mooer.models.protocols): it lacks {', '.join(sorted(names))}")


if TYPE_CHECKING:  # for the type checker: modules that keep a contract
    class EncoderModule(nn.Module, SpeechEncoder):
        ...

    class ProjectorModule(nn.Module, Projector):
        ...
