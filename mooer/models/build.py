"""Build a SpeechLLM from the Hydra groups `encoder`, `projector` and `llm`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from mooer.config import as_dict
from mooer.models.llm import build_llm, load_tokenizer
from mooer.models.protocols import Projector, SpeechEncoder, check_contract
from mooer.models.speech_llm import SpeechLLM

# what the encoder group holds besides its model's arguments (`model`) and its frontend's
ENCODER_KEYS = ("name", "freeze", "ctc_weight", "model", "frontend")
LLM_LABELS = ("name", "tokenizer_path")  # the llm group's keys that build_llm does not take


def check_keys(group: str, node: DictConfig | dict, known: Iterable[str]) -> None:
    """A key the group does not have (a typo in a recipe) is an error naming it."""
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ValueError(f"{group}: unknown key(s) {', '.join(unknown)}; the {group} group has "
                         f"{', '.join(sorted(known))}")


def build_speech_llm(encoder: DictConfig, projector: DictConfig, llm: DictConfig,
                     tokenizer: Any = None) -> SpeechLLM:
    """Encoder (weights from its checkpoint or random) and LLM (+ LoRA), then the projector
    between them sized from the two built models (encoder.output_size -> the LLM's
    hidden_size), and the tokenizer."""
    check_keys("encoder", encoder, ENCODER_KEYS)
    llm_options = as_dict(llm)
    if tokenizer is None:
        tokenizer = load_tokenizer(llm_options.get("tokenizer_path") or llm_options["path"])
    built_encoder = instantiate(encoder.model, _convert_="all")
    check_contract("encoder.model", built_encoder, SpeechEncoder)
    built_llm = build_llm(**{k: v for k, v in llm_options.items() if k not in LLM_LABELS})
    projector_options = as_dict(projector)
    freeze_projector = projector_options.pop("freeze", False)
    built_projector = instantiate(projector_options, encoder_dim=built_encoder.output_size,
                                  llm_dim=built_llm.config.hidden_size, _convert_="all")
    check_contract("projector", built_projector, Projector)
    return SpeechLLM(
        encoder=built_encoder,
        projector=built_projector,
        llm=built_llm,
        tokenizer=tokenizer,
        freeze_encoder=encoder.freeze,
        freeze_projector=freeze_projector,
        ctc_weight=encoder.get("ctc_weight", 0.0),
    )
