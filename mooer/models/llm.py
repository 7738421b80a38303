"""The LLM: any transformers causal LM from a local directory (or a config at random init),
in the configured dtype, with LoRA through peft."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

# a transformers causal LM, or peft's wrapper of one (which hands its attributes on): typed as
# Any, since peft's wrapper answers for the model's own methods only through __getattr__
CausalLM = Any

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """'bf16' -> torch.bfloat16 (also fp16, fp32 and the long names)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside the LLM weights."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} not found: set llm.path (or "
                                "llm.tokenizer_path) to a local model directory")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def build_causal_lm(path: str | Path | None = None, architecture: dict[str, Any] | None = None,
                    dtype: str = "bf16", attn_implementation: str = "sdpa") -> CausalLM:
    """Load from `path` straight into `dtype` (weights are not materialized twice), or build
    `architecture` (a config dict with `model_type`) at random init."""
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"LLM directory {path} not found: download the model once "
                                    "and set llm.path (nothing is fetched at run time)")
        return AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype(dtype), local_files_only=True,
            attn_implementation=attn_implementation)
    if not architecture:
        raise ValueError("llm: give `path` (a local model directory) or `architecture`")
    fields = dict(architecture)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype),
                                            attn_implementation=attn_implementation)


def apply_lora(model: CausalLM, r: int, alpha: int, dropout: float,
               target_modules: Sequence[str]) -> CausalLM:
    """Wrap `model` with fresh LoRA adapters (peft); base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_llm(path: str | None = None, architecture: dict[str, Any] | None = None,
              dtype: str = "bf16", freeze: bool = True, lora: dict[str, Any] | None = None,
              gradient_checkpointing: bool = False, attn_implementation: str = "sdpa"
              ) -> CausalLM:
    """The configured LLM (the `llm` group's settings): loaded or random, frozen or not, with
    LoRA when `lora.enabled`."""
    model = build_causal_lm(path, architecture, dtype, attn_implementation)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.requires_grad_(not freeze)
    if lora and lora.get("enabled", True):
        model = apply_lora(model, lora["r"], lora["alpha"], lora["dropout"],
                           lora["target_modules"])
        if not freeze:  # full fine-tuning plus adapters
            for name, parameter in model.named_parameters():
                if "lora_" not in name:
                    parameter.requires_grad_(True)
    return model
