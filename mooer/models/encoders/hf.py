"""Whisper, w2v-BERT 2.0 and HuBERT encoders through transformers.

Each loads from a local model directory (`path`) or, with `config` (a dict of the model's config
fields) and no path, builds at random init. Nothing is downloaded. Like every encoder, each
declares `output_size` and `length_convs` (how it shortens its frontend's frames, as
[kernel, stride, padding] 1-D convs), read by the projector and the data pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mooer.data.collate import conv_output_frames


def _check_source(path: str | Path | None, config: dict | None, what: str) -> None:
    if path is None and config is None:
        raise ValueError(f"{what}: give `path` (a local model directory) or `config` (random init)")
    if path is not None and not Path(path).is_dir():
        raise FileNotFoundError(f"{what} directory {path} not found: download the model once and "
                                "point encoder.model.path at it (nothing is fetched at run time)")


def _load_or_build(model_cls, config_cls, path, config, what: str):
    """`model_cls` from a local dir, or built from a config dict at random init.

    LayerDrop is switched off (the released HuBERT and w2v-BERT 2.0 configs set 0.1): a layer
    skipped at random leaves its parameters without gradients on that step, which DDP and
    DeepSpeed take for an error or a hang, and makes a step's loss depend on a coin toss.
    """
    _check_source(path, config, what)
    if path is not None:
        return model_cls.from_pretrained(str(path), local_files_only=True, layerdrop=0.0)
    return model_cls(config_cls(**{**config, "layerdrop": 0.0}))


def _lengths_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    return (torch.arange(time, device=lengths.device)[None, :] < lengths[:, None]).long()


class WhisperEncoder(nn.Module):
    """Whisper's encoder on log-mel features of any length: the positional table is sliced to
    the input instead of padding every utterance to 30 s."""

    def __init__(self, path: str | Path | None = None, config: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

        _check_source(path, config, "Whisper")
        if path is not None:
            self.model = WhisperModel.from_pretrained(str(path), local_files_only=True).get_encoder()
        else:
            self.model = HFWhisperEncoder(WhisperConfig(**(config or {})))
        self.output_size = self.model.config.d_model
        self.length_convs = [[3, 1, 1], [3, 2, 1]]  # conv1, conv2 (stride 2)

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated layers (what regional compilation compiles)."""
        return list(self.model.layers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, n_mels] -> [B, ceil(T / 2), d_model]."""
        m = self.model
        x = F.gelu(m.conv1(features.transpose(1, 2).to(m.conv1.weight.dtype)))
        x = F.gelu(m.conv2(x)).transpose(1, 2)
        if x.shape[1] > m.embed_positions.num_embeddings:
            raise ValueError(f"audio of {features.shape[1]} frames is longer than Whisper's "
                             f"{2 * m.embed_positions.num_embeddings} (30 s)")
        x = x + m.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=m.dropout, training=self.training)
        for layer in m.layers:
            x = layer(x, None)
        return m.layer_norm(x), conv_output_frames(lengths, self.length_convs)


class HubertEncoder(nn.Module):
    """HuBERT (or any wav2vec2-style model) on raw 16 kHz samples [B, T, 1]."""

    def __init__(self, path: str | Path | None = None, config: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        from transformers import HubertConfig, HubertModel

        self.model = _load_or_build(HubertModel, HubertConfig, path, config, "HuBERT")
        self.output_size = self.model.config.hidden_size
        # the feature extractor's convs over raw samples (20 ms frames for wav2vec2's seven)
        self.length_convs = [[kernel, stride, 0] for kernel, stride in
                             zip(self.model.config.conv_kernel, self.model.config.conv_stride,
                                 strict=True)]

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated layers (what regional compilation compiles)."""
        return list(self.model.encoder.layers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        values = features[..., 0]
        # group-norm feature extractors (hubert-base) must not get a mask, only zero padding
        mask = (_lengths_mask(lengths, values.shape[1])
                if self.model.config.feat_extract_norm == "layer" else None)
        states = self.model(values, attention_mask=mask).last_hidden_state
        return states, self.model._get_feat_extract_output_lengths(lengths)


class W2vBert2Encoder(nn.Module):
    """w2v-BERT 2.0 (Wav2Vec2BertModel) on its feature extractor's stacked fbank [B, T, 160]."""

    def __init__(self, path: str | Path | None = None, config: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

        self.model = _load_or_build(Wav2Vec2BertModel, Wav2Vec2BertConfig, path, config,
                                    "w2v-BERT 2.0")
        self.output_size = self.model.config.hidden_size
        # its feature extractor already stacks frames; an adapter shortens them further
        c = self.model.config
        self.length_convs = ([[c.adapter_kernel_size, c.adapter_stride,
                               c.adapter_kernel_size // 2]] * c.num_adapter_layers
                             if c.add_adapter else [])

    @property
    def blocks(self) -> list[nn.Module]:
        """The repeated layers (what regional compilation compiles)."""
        return list(self.model.encoder.layers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _lengths_mask(lengths, features.shape[1])
        states = self.model(features, attention_mask=mask).last_hidden_state
        if states.shape[1] != features.shape[1]:  # an adapter shortened time
            lengths = self.model._get_feat_extract_output_lengths(lengths, add_adapter=True)
        return states, lengths
