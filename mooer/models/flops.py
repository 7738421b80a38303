"""Model FLOPs of a SpeechLLM training step, counted from the lengths that run.

A matmul of an n x k input by a k x m weight is 2 n k m FLOPs; its backward is 2 n k m for the
input's gradient (wherever a gradient has to flow back) and 2 n k m for the weight's (where the
weight trains). With W the weights (matmul parameters: linear and convolution weights, not
biases, norms or embeddings) of each part, T the LLM tokens, A the scored (answer) positions, F
the encoder frames, k the projector's frame stacking, L layers of attention width d:

    LLM, frozen base, gradients flow back to the audio:   4 W_frozen T
    LoRA adapters (trained):                              6 W_lora T
    output head, frozen, only at the scored positions:    4 W_head A
    attention scores and values (fwd 4 T^2 d, bwd twice): 12 L d T^2   (T^2 per utterance)
    encoder, frozen, forward only:                        2 W_enc F + 4 L_enc d_enc F^2
      (trained: three times both)
    projector, trained, on F / k stacked frames:          4 W_first F/k + 6 W_rest F/k
      (its first layer's input gradient is not needed when the encoder is frozen)
    CTC head (when configured), trained:                  4 W_ctc F  (6 with a trained encoder)

At MooER's shapes (10 s, 28 prompt + 30 answer tokens, Qwen2-7B with LoRA r=64 on all seven
projections, Paraformer-large) this is about 3.97 TFLOP a sample: 3.68 frozen layers, 0.14 LoRA,
0.065 output head, 0.024 attention, 0.056 encoder, 0.005 projector. The embedding lookup is
not a matmul and counts nothing.

`real` counts each utterance's own lengths (T^2 per utterance: what MFU is taken from);
`executed` counts the padded shapes the kernels run (padding included, a dense attention mask's
whole rows), which is what `torch.utils.flop_counter.FlopCounterMode` sees (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the CPU's fused attention kernel (which it leaves
    out: it knows the CUDA kernels' formulas only)."""
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward})


def matmul_weights(module: nn.Module, trainable: bool | None = None,
                   lora: bool | None = None) -> int:
    """Elements of the linear and convolution weights under `module`, optionally only the
    trainable (or frozen) ones, only LoRA's (or none of LoRA's)."""
    total = 0
    for name, child in module.named_modules():
        if not isinstance(child, nn.Linear | nn.Conv1d | nn.Conv2d):
            continue
        if lora is not None and ("lora_" in name) != lora:
            continue
        if trainable is not None and child.weight.requires_grad != trainable:
            continue
        total += child.weight.numel()
    return total


@dataclass(frozen=True)
class StepFlops:
    """The sizes the FLOP count needs, read from a built SpeechLLM (see the module docstring)."""

    frozen: int
    lora: int
    trained_base: int     # LLM base weights that train (full fine-tuning), LoRA apart
    head: int
    layers: int
    attention_width: int
    encoder: int
    encoder_layers: int
    encoder_width: int
    encoder_trained: bool
    projector_first: int
    projector_rest: int
    downsample: int
    ctc: int

    @classmethod
    def of(cls, model: Any) -> StepFlops:
        decoder, head = model.llm.get_decoder(), model.llm.get_output_embeddings()
        config = model.llm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        linears = [m for m in model.projector.modules() if isinstance(m, nn.Linear | nn.Conv1d)]
        first = linears[0].weight.numel()
        return cls(
            frozen=matmul_weights(decoder, trainable=False, lora=False),
            lora=matmul_weights(decoder, lora=True),
            trained_base=matmul_weights(decoder, trainable=True, lora=False),
            head=head.weight.numel(),
            layers=len(decoder.layers),
            attention_width=config.num_attention_heads * head_dim,
            encoder=matmul_weights(model.encoder),
            encoder_layers=len(model.encoder.blocks),
            encoder_width=model.encoder.output_size,
            encoder_trained=any(p.requires_grad for p in model.encoder.parameters()),
            projector_first=first,
            projector_rest=matmul_weights(model.projector) - first,
            downsample=model.projector.downsample,
            ctc=model.ctc_head.weight.numel() if getattr(model, "ctc_weight", 0) > 0 else 0,
        )

    def step(self, tokens: Sequence[int], scored: int, frames: Sequence[int]) -> float:
        """FLOPs of one forward and backward: `tokens`, the length of each attention segment
        (an utterance; a padded row for what the kernels execute); `scored`, positions at the
        output head; `frames`, each utterance's encoder frames (padded, for executed)."""
        total_tokens = sum(tokens)
        squares = sum(t * t for t in tokens)
        llm = (4 * self.frozen + 6 * self.lora + 6 * self.trained_base) * total_tokens
        llm += 4 * self.head * scored + 12 * self.layers * self.attention_width * squares
        encoder_pass = 2 * self.encoder * sum(frames) + 4 * self.encoder_layers * \
            self.encoder_width * sum(f * f for f in frames)
        encoder = encoder_pass * (3 if self.encoder_trained else 1)
        stacked = sum(f // self.downsample for f in frames)
        projector = (6 if self.encoder_trained else 4) * self.projector_first * stacked \
            + 6 * self.projector_rest * stacked
        ctc = (6 if self.encoder_trained else 4) * self.ctc * sum(frames)
        return float(llm + encoder + projector + ctc)

    def real(self, batch: dict[str, Any]) -> float:
        """FLOPs of the work a collated batch holds: each utterance's own lengths."""
        return self.step(batch["utterance_tokens"], batch["num_scored"], batch["feature_frames"])

    def executed(self, batch: dict[str, Any]) -> float:
        """FLOPs of the shapes the kernels run on a collated batch: padded rows, padded frames."""
        rows, width = batch["input_ids"].shape
        utterances, padded_frames = batch["features"].shape[:2]
        return self.step([width] * rows, batch["num_scored"], [padded_frames] * utterances)
