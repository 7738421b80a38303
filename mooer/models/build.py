"""Build a SpeechLLM from the Hydra groups `encoder`, `projector` and `llm`."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mooer.models.llm import build_llm, load_tokenizer
from mooer.models.speech_llm import SpeechLLM


def build_speech_llm(encoder: DictConfig, projector: DictConfig, llm: DictConfig,
                     tokenizer: Any = None) -> SpeechLLM:
    """Encoder (weights from its checkpoint or random), projector, LLM (+ LoRA) and tokenizer."""
    llm_options = OmegaConf.to_container(llm, resolve=True)
    if tokenizer is None:
        tokenizer = load_tokenizer(llm_options.get("tokenizer_path") or llm_options["path"])
    return SpeechLLM(
        encoder=instantiate(encoder.model, _convert_="all"),
        projector=instantiate(projector, _convert_="all"),
        llm=build_llm(**llm_options),
        tokenizer=tokenizer,
        freeze_encoder=encoder.freeze,
        freeze_projector=projector.get("freeze", False),
        ctc_weight=encoder.get("ctc_weight", 0.0),
    )
