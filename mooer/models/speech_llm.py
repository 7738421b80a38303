"""SpeechLLM: encoder -> projector -> audio embeddings spliced into the LLM's input embeddings.

Knows nothing of Lightning. Batches come from `mooer.data.collate.collate`: audio slots, prompt
and answer in one row, `audio_slot_mask` marking where projected audio frames go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mooer.data.prompts import IGNORE_INDEX


@dataclass
class Generated:
    """Decoding output: new token ids per row (eos and padding removed) and their text."""

    token_ids: list[list[int]]
    texts: list[str]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift a row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class SpeechLLM(nn.Module):
    """Speech encoder + projector + causal LM (optionally LoRA-wrapped)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, llm: nn.Module, tokenizer=None,
                 freeze_encoder: bool = True, freeze_projector: bool = False,
                 ctc_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.projector, self.llm = encoder, projector, llm
        self.tokenizer = tokenizer
        rows = llm.get_input_embeddings().num_embeddings
        if tokenizer is not None and len(tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's embedding "
                             f"has {rows} rows: give the LLM its own tokenizer, or (random init) "
                             f"set llm.architecture.vocab_size to at least {len(tokenizer)}")
        # an auxiliary CTC head on the encoder teaches it the acoustics early (models trained
        # from scratch); its blank is the last class
        self.ctc_weight = ctc_weight
        if ctc_weight > 0:
            vocab = len(tokenizer) if tokenizer is not None else llm.config.vocab_size
            self.ctc_head = nn.Linear(encoder.output_size, vocab + 1)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        if freeze_projector:
            self.projector.requires_grad_(False)

    def train(self, mode: bool = True) -> SpeechLLM:
        super().train(mode)
        if self.freeze_encoder:  # a frozen encoder keeps dropout off
            self.encoder.eval()
        return self

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def encode_audio(self, features: torch.Tensor, lengths: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected audio embeddings [B, S, llm_dim] and valid lengths [B]."""
        return self._project(*self._encode(features, lengths))

    def _encode(self, features: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.encoder(features, lengths)

    def _project(self, states: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projector(states), self.projector.output_lengths(lengths)

    def embed(self, batch: dict[str, Any], encoded: tuple | None = None) -> torch.Tensor:
        """Token embeddings with the audio slots replaced by projected audio."""
        embeddings = self.llm.get_input_embeddings()(batch["input_ids"])
        audio, audio_lengths = self._project(
            *(encoded or self._encode(batch["features"], batch["feature_lengths"])))
        slots = batch["num_audio_slots"].tolist()
        for row, (have, want) in enumerate(zip(audio_lengths.tolist(), slots, strict=True)):
            if have < want:
                raise ValueError(f"row {row}: the encoder gives {have} audio frames but the batch "
                                 f"has {want} audio slots: the batches were made for another "
                                 "encoder (its length_convs) or projector.downsample")
        frames = torch.cat([audio[row, :n] for row, n in enumerate(slots)])
        mask = batch["audio_slot_mask"][..., None]
        return embeddings.masked_scatter(mask, frames.to(embeddings.dtype))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss over labelled positions and next-token accuracy there (plus the weighted CTC
        loss of the transcript on the encoder, when a CTC head is configured)."""
        encoded = self._encode(batch["features"], batch["feature_lengths"])
        labels = batch["labels"]
        # logits only from the first position that predicts a label on: prompts and audio are
        # most of the sequence, and [batch, positions, vocabulary] logits are the largest tensor.
        # Answers start at the collated `prompt_width` in every row: a host-side number, so the
        # GPU need not wait for the CPU to look for the first label (a .nonzero() sync per step)
        first = max(batch["prompt_width"] - 1, 0)
        out = self.llm(inputs_embeds=self.embed(batch, encoded),
                       attention_mask=batch["attention_mask"],
                       position_ids=position_ids_from_mask(batch["attention_mask"]),
                       logits_to_keep=labels.shape[1] - first)
        logits = out.logits[:, :-1]
        targets = labels[:, first + 1:]
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=IGNORE_INDEX)
        predictions = logits.argmax(-1)
        labelled = targets != IGNORE_INDEX
        correct = (predictions == targets) & labelled
        result = {"loss": loss, "llm_loss": loss,
                  "accuracy": correct.sum() / labelled.sum().clamp_min(1),
                  "num_tokens": labelled.sum()}
        if self.ctc_weight > 0 and "transcript_ids" in batch:
            result["ctc_loss"] = self.ctc_loss(*encoded, batch["transcript_ids"],
                                               batch["transcript_lengths"])
            result["loss"] = loss + self.ctc_weight * result["ctc_loss"]
        return result

    def ctc_loss(self, states: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """CTC of the transcript tokens on the encoder states (mean over utterances)."""
        log_probs = self.ctc_head(states).float().log_softmax(-1).transpose(0, 1)
        return nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths,
                                      blank=self.ctc_head.out_features - 1, zero_infinity=True)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], num_beams: int = 4, max_new_tokens: int = 200,
                 length_penalty: float = 0.8, repetition_penalty: float = 1.0,
                 eos_bias: float = -0.2, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, num_return_sequences: int = 1,
                 output_scores: bool = False, **kwargs: Any) -> Generated:
        """Decode the answers of a batch (its prompt part: columns before `prompt_width`).

        Defaults are MooER's: beam 4, length penalty 0.8, 200 new tokens, eos logit -0.2.
        """
        if self.tokenizer is None:
            raise ValueError("SpeechLLM.generate needs a tokenizer")
        width = batch["prompt_width"]
        prompt = {**batch, "input_ids": batch["input_ids"][:, :width],
                  "audio_slot_mask": batch["audio_slot_mask"][:, :width]}
        attention_mask = batch["attention_mask"][:, :width]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        options = dict(num_beams=num_beams, max_new_tokens=max_new_tokens,
                       repetition_penalty=repetition_penalty, do_sample=do_sample,
                       eos_token_id=eos, pad_token_id=pad,
                       num_return_sequences=num_return_sequences, **kwargs)
        if num_beams > 1:
            options["length_penalty"] = length_penalty
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        if eos_bias:
            options["sequence_bias"] = {(eos,): float(eos_bias)}
        if output_scores:
            options.update(output_scores=True, return_dict_in_generate=True)
        result = self.llm.generate(inputs_embeds=self.embed(prompt), attention_mask=attention_mask,
                                   **options)
        sequences = result.sequences if output_scores else result
        token_ids = []
        for row in sequences.tolist():
            ids = []
            for token in row:
                if token == eos:
                    break
                if token != pad:
                    ids.append(token)
            token_ids.append(ids)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
        generated = Generated(token_ids, texts)
        if output_scores:
            generated.scores = getattr(result, "sequences_scores", None)
        return generated
