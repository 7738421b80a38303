"""Projectors from encoder states to LLM embeddings, shortening time by `downsample`."""

from __future__ import annotations

import torch
from torch import nn


class _MLPProjector(nn.Module):
    """Linear(in_dim -> hidden) -> ReLU -> Linear(hidden -> llm_dim) over downsampled frames."""

    def __init__(self, in_dim: int, llm_dim: int, downsample: int, hidden_dim: int) -> None:
        super().__init__()
        self.downsample = downsample
        self.linear1 = nn.Linear(in_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden_dim, llm_dim)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.downsample

    def mlp(self, frames: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(frames)))


class LinearProjector(_MLPProjector):
    """MooER's adapter: drop trailing frames not divisible by k, concat k frames,
    Linear(enc_dim * k -> hidden) -> ReLU -> Linear(hidden -> llm_dim)."""

    def __init__(self, encoder_dim: int, llm_dim: int, downsample: int = 2,
                 hidden_dim: int = 2048) -> None:
        super().__init__(encoder_dim * downsample, llm_dim, downsample, hidden_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """[B, T, enc_dim] -> [B, T // k, llm_dim]."""
        batch, time, dim = states.shape
        kept = time - time % self.downsample
        return self.mlp(states[:, :kept].reshape(batch, kept // self.downsample,
                                                 dim * self.downsample))


class ConvProjector(_MLPProjector):
    """A strided Conv1d (kernel = stride = k) then Linear -> ReLU -> Linear; same lengths as
    LinearProjector, but the k frames are weighted by a learned kernel."""

    def __init__(self, encoder_dim: int, llm_dim: int, downsample: int = 2,
                 hidden_dim: int = 2048) -> None:
        super().__init__(encoder_dim, llm_dim, downsample, hidden_dim)
        self.conv = nn.Conv1d(encoder_dim, encoder_dim, downsample, stride=downsample)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[1] < self.downsample:
            return states.new_zeros((states.shape[0], 0, self.linear2.out_features))
        return self.mlp(self.conv(states.transpose(1, 2)).transpose(1, 2))
