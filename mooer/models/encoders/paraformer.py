"""Paraformer's SANM encoder (FunASR's SANMEncoder with a sinusoidal "pe" input layer).

State-dict keys match MooER's released paraformer-encoder.pth: `encoders0.0.*` (the first block,
input_size -> output_size), `encoders.0.*` ... `encoders.{num_blocks-2}.*`, `after_norm.*`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mooer.models.weights import load_state_dict_file, load_strict


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


def sinusoidal_positions(length: int, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """FunASR's SinusoidalPositionEncoder table for positions 1..length: [length, dim]."""
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    increment = math.log(10000.0) / (dim / 2 - 1)
    inv_timescales = torch.exp(torch.arange(dim // 2, device=device, dtype=torch.float32)
                               * -increment)
    scaled = positions[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).to(dtype)


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory (a depthwise conv over the values)."""

    def __init__(self, heads: int, in_dim: int, dim: int, kernel_size: int, sanm_shift: int,
                 dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.linear_q_k_v = nn.Linear(in_dim, dim * 3)
        self.linear_out = nn.Linear(dim, dim)
        self.fsmn_block = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        left = (kernel_size - 1) // 2 + sanm_shift
        self.padding = (left, kernel_size - 1 - left)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, in_dim], mask [B, T] (True on frames) -> [B, T, dim]."""
        batch, time, _ = x.shape
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
        keep = mask[:, :, None].to(v.dtype)
        memory = self.fsmn_block(F.pad((v * keep).transpose(1, 2), self.padding)).transpose(1, 2)
        memory = self.dropout(memory + v * keep) * keep

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, time, self.heads, self.head_dim).transpose(1, 2)

        scores = torch.matmul(heads(q) * self.head_dim**-0.5, heads(k).transpose(-2, -1))
        blocked = ~mask[:, None, None, :]
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        attended = torch.matmul(self.dropout(weights), heads(v))
        return self.linear_out(attended.transpose(1, 2).reshape(batch, time, -1)) + memory


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


class SANMBlock(nn.Module):
    """Pre-norm block; the first block changes width and so has no attention residual."""

    def __init__(self, in_dim: int, dim: int, heads: int, hidden: int, kernel_size: int,
                 sanm_shift: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.self_attn = SANMAttention(heads, in_dim, dim, kernel_size, sanm_shift,
                                       attention_dropout)
        self.feed_forward = FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2 = FP32LayerNorm(in_dim, eps=1e-12), FP32LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.residual = in_dim == dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended = self.dropout(self.self_attn(self.norm1(x), mask))
        x = x + attended if self.residual else attended
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class ParaformerEncoder(nn.Module):
    """Paraformer-large by default: 560 -> 512, 4 heads, 2048 FFN units, 50 blocks, FSMN 11."""

    def __init__(self, input_size: int = 560, output_size: int = 512, attention_heads: int = 4,
                 linear_units: int = 2048, num_blocks: int = 50, kernel_size: int = 11,
                 sanm_shift: int = 0, dropout_rate: float = 0.1,
                 attention_dropout_rate: float = 0.1, gradient_checkpointing: bool = False,
                 checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.output_size = output_size
        self.length_convs: list[list[int]] = []  # LFR is the frontend's: one state per frame
        self.gradient_checkpointing = gradient_checkpointing
        block_args = (attention_heads, linear_units, kernel_size, sanm_shift, dropout_rate,
                      attention_dropout_rate)
        self.encoders0 = nn.ModuleList([SANMBlock(input_size, output_size, *block_args)])
        self.encoders = nn.ModuleList(SANMBlock(output_size, output_size, *block_args)
                                      for _ in range(num_blocks - 1))
        self.after_norm = FP32LayerNorm(output_size, eps=1e-12)
        if checkpoint is not None:
            load_strict(self, load_state_dict_file(checkpoint), str(checkpoint))

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated SANM blocks (what regional compilation compiles)."""
        return [*self.encoders0, *self.encoders]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, input_size], lengths [B] -> states [B, T, output_size], lengths."""
        time = features.shape[1]
        mask = torch.arange(time, device=features.device)[None, :] < lengths[:, None]
        x = features * self.output_size**0.5
        x = x + sinusoidal_positions(time, x.shape[-1], x.dtype, x.device)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return self.after_norm(x), lengths
