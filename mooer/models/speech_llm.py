"""SpeechLLM: encoder -> projector -> audio embeddings spliced into the LLM's input embeddings.

Knows nothing of Lightning. Batches come from `mooer.data.collate` (padded or packed rows): the
host-built indices there say where each projected audio frame goes and which positions are
scored, so a training step reads nothing back from the device (no host sync: it compiles with
`fullgraph=True`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from transformers.cache_utils import DynamicLayer

from mooer.data.collate import audio_slots
from mooer.models.llm import CausalLM

if TYPE_CHECKING:
    from mooer.models.protocols import EncoderModule, ProjectorModule


@dataclass
class Generated:
    """Decoding output: new token ids per row (eos and padding removed) and their text."""

    token_ids: list[list[int]]
    texts: list[str]
    scores: torch.Tensor | None = None  # each row's beam score, when asked (output_scores)
    # when asked (generate's `others`): the token ids of each row's other finished beams (eos
    # and padding removed), best first
    others: list[list[list[int]]] | None = None
    # when asked (generate's `keep_prompt`): the decoder's keys and values of each row's
    # prompt but its last position (`PromptCache`), to score answers without the prompt again
    prompt_cache: PromptCache | None = None


@dataclass
class PromptCache:
    """The decoder's keys and values over a batch's prompts but their last position, one row a
    prompt: each layer's (keys, values) [rows, kv heads, width - 1, head dim], as the decoding's
    first pass computed them (`SpeechLLM.generate`, `keep_prompt`). `answer_log_probs` then
    runs the decoder over an answer and the prompt's last position only (on a 7B decoder the
    prompt, audio included, is most of such a pass)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def kept(cls, cache: Any, rows: int, width: int, step: int) -> PromptCache | None:
        """The first `width - 1` positions of a generation's cache (transformers' DynamicCache
        over `rows` prompts, each repeated `step` times in a row: its beams, or its returned
        sequences), one row a prompt; None where the cache is of another kind or shape (a
        sliding window, a static or quantized cache: the prompt is then scored again)."""
        layers = getattr(cache, "layers", None)
        if not layers or width < 2 or any(
                type(layer) is not DynamicLayer or layer.keys is None
                or layer.keys.shape[0] != rows * step or layer.keys.shape[2] < width - 1
                for layer in layers):
            return None
        # copies, so that the generation's cache (every beam, every new token) can go
        return cls([(layer.keys[::step, :, :width - 1].clone(),
                     layer.values[::step, :, :width - 1].clone()) for layer in layers])

    @staticmethod
    def keyword(llm: Any) -> str:
        """What the decoder's forward calls a cache to read: `cache` (newer transformers,
        where `past_key_values` is deprecated) or `past_key_values` (older)."""
        kind: Any = type(llm.get_base_model() if hasattr(llm, "get_base_model") else llm)
        if kind not in _CACHE_KEYWORDS:
            _CACHE_KEYWORDS[kind] = ("cache" if "cache" in inspect.signature(kind.forward).parameters
                                     else "past_key_values")
        return _CACHE_KEYWORDS[kind]

    def select(self, rows: torch.Tensor) -> DynamicCache:
        """A fresh DynamicCache of these prompts' rows (a row again for each answer of it); the
        pass that reads it appends to it, not to this."""
        return DynamicCache(ddp_cache_data=[(keys.index_select(0, rows),
                                             values.index_select(0, rows))
                                            for keys, values in self.layers])


_CACHE_KEYWORDS: dict[Any, str] = {}  # what each decoder class's forward calls its cache


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[rows, T] segment ids -> [rows, 1, T, T] boolean mask (True: attend): causal, and only
    within a segment (one utterance of a packed row; padding is segment 0 and sees only
    padding, so no row of the mask is empty). Built on the device from the collated ids."""
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    return ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal)[:, None]


def segment_block_mask(segment_ids: torch.Tensor) -> Any:
    """The same mask as FlexAttention's block mask (`llm.attn_implementation=flex_attention`):
    blocks no query of which attends skip their work, so packed rows cost their utterances'
    attention, not whole rows'."""
    def same_segment_causal(batch, head, query, key):
        return (segment_ids[batch, query] == segment_ids[batch, key]) & (query >= key)

    rows, width = segment_ids.shape
    return create_block_mask(same_segment_causal, rows, None, width, width,
                             device=segment_ids.device)


class SpeechLLM(nn.Module):
    """Speech encoder + projector + causal LM (optionally LoRA-wrapped)."""

    encoder: EncoderModule
    projector: ProjectorModule
    llm: CausalLM
    ctc_head: nn.Linear

    def __init__(self, encoder: EncoderModule, projector: ProjectorModule, llm: CausalLM,
                 tokenizer: Any = None,
                 freeze_encoder: bool = True, freeze_projector: bool = False,
                 ctc_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.projector, self.llm = encoder, projector, llm
        layer_types = set(getattr(llm.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"the LLM has {', '.join(sorted(layer_types - {'full_attention'}))} "
                             "layers: the training step's attention masks cover full attention "
                             "only (set use_sliding_window: false)")
        self.tokenizer = tokenizer
        rows = llm.get_input_embeddings().num_embeddings
        if tokenizer is not None and len(tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's embedding "
                             f"has {rows} rows: give the LLM its own tokenizer, or (random init) "
                             f"set llm.architecture.vocab_size to at least {len(tokenizer)}")
        # an auxiliary CTC head on the encoder teaches it the acoustics early (models trained
        # from scratch); its blank is the last class
        self.ctc_weight = ctc_weight
        self.ctc_only = False  # train_ctc_head_only: the training step runs the encoder alone
        if ctc_weight > 0:
            self.add_ctc_head()
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        if freeze_projector:
            self.projector.requires_grad_(False)

    @property
    def ctc_classes(self) -> int:
        """The CTC head's outputs: the tokenizer's tokens and a blank (the last class)."""
        return (len(self.tokenizer) if self.tokenizer is not None
                else self.llm.config.vocab_size) + 1

    def add_ctc_head(self, state: dict[str, torch.Tensor] | None = None,
                     source: str = "the CTC head") -> None:
        """A CTC head on the encoder (replacing any it had): fresh, or with `state`'s `weight`
        and `bias` (a head trained apart: conf/experiment/ctc_head.yaml). Its blank is the last
        class; its shape must match this encoder's output and this tokenizer."""
        head = nn.Linear(self.encoder.output_size, self.ctc_classes)
        if state is not None:
            want = {"weight": tuple(head.weight.shape), "bias": tuple(head.bias.shape)}
            have = {k: tuple(v.shape) for k, v in state.items()}
            if have != want:
                raise ValueError(f"{source} holds {have}, but this model's CTC head is {want} "
                                 f"(encoder output {self.encoder.output_size}, "
                                 f"{self.ctc_classes - 1} tokens + blank): it was trained on "
                                 "another encoder or tokenizer")
            head.load_state_dict(state)
        first = next(self.encoder.parameters(), None)
        if first is not None:
            head.to(device=first.device, dtype=first.dtype)
        self.ctc_head = head

    def train_ctc_head_only(self) -> None:
        """Train a fresh CTC head alone on the frozen model (word times for a checkpoint
        trained without one, MooER's release included): every other weight frozen, and the
        training step runs the encoder and the CTC loss only, never the LLM."""
        self.requires_grad_(False)
        self.add_ctc_head()
        self.ctc_only = True
        self.freeze_encoder = True
        self.encoder.eval()

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

    def check_audio_slots(self, batch: dict[str, Any]) -> None:
        """On the host: each utterance has as many audio slots as this model's encoder and
        projector give its frames (batches made for another encoder would not)."""
        convs, downsample = self.encoder.length_convs, self.projector.downsample
        for utterance, (frames, want) in enumerate(zip(batch["feature_frames"],
                                                       batch["num_audio_slots"], strict=True)):
            have = audio_slots(frames, convs, downsample)
            if have < want:
                raise ValueError(f"utterance {utterance}: the encoder gives {have} audio frames "
                                 f"but the batch has {want} audio slots: the batches were made "
                                 "for another encoder (its length_convs) or projector.downsample")

    def embed(self, batch: dict[str, Any], encoded: tuple | None = None) -> torch.Tensor:
        """Token embeddings with the audio slots replaced by projected audio."""
        if not torch.compiler.is_compiling():
            self.check_audio_slots(batch)
        embeddings = self.llm.get_input_embeddings()(batch["input_ids"])
        audio, _ = self._project(
            *(encoded or self._encode(batch["features"], batch["feature_lengths"])))
        utterances, frames = batch["audio_frame_index"]
        rows, columns = batch["audio_slot_index"]
        return embeddings.index_put((rows, columns), audio[utterances, frames].to(embeddings.dtype))

    def attention(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The decoder's attention masks, ready made (a mapping by layer type, which transformers
        takes as is), and positions. None where every row is one utterance without padding:
        plain causal attention, the fastest kernels, and positions 0..T-1, which the decoder
        counts itself. (Left to build its own mask, transformers reads the positions back to
        look for packed rows: a host sync every step.)"""
        if not batch["needs_mask"]:
            return {"attention_mask": {"full_attention": None}}
        if self.llm.config._attn_implementation == "flex_attention":
            mask = segment_block_mask(batch["segment_ids"])
        else:
            mask = segment_attention_mask(batch["segment_ids"])
        return {"attention_mask": {"full_attention": mask}, "position_ids": batch["position_ids"]}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss over the scored (answer) positions, each token's loss (`token_loss`, in the
        order of `scored_targets`) and next-token accuracy there (plus the weighted CTC loss of
        the transcript on the encoder, when a CTC head is configured).

        The decoder runs without its output head; the head runs only at the scored positions
        (a tenth of a row at MooER's shapes), which the collate listed. So the LLM must be a
        decoder plus an output head, as Qwen2's and Llama's causal LMs are.
        """
        encoded = self._encode(batch["features"], batch["feature_lengths"])
        if self.ctc_only:
            return self._ctc_only_forward(batch, encoded)
        hidden = self.llm.get_decoder()(inputs_embeds=self.embed(batch, encoded), use_cache=False,
                                        **self.attention(batch)).last_hidden_state
        rows, columns = batch["scored_index"]
        logits = self.llm.get_output_embeddings()(hidden[rows, columns])
        targets = batch["scored_targets"]
        token_loss = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        loss = token_loss.mean()
        correct = (logits.argmax(-1) == targets).sum()
        result = {"loss": loss, "llm_loss": loss, "token_loss": token_loss,
                  "accuracy": correct / max(batch["num_scored"], 1),
                  "num_tokens": batch["num_scored"]}
        if self.ctc_weight > 0 and "transcript_ids" in batch:
            result["ctc_loss"] = self.ctc_loss(*encoded, batch["transcript_ids"],
                                               batch["transcript_lengths"])
            result["loss"] = loss + self.ctc_weight * result["ctc_loss"]
        return result

    def _ctc_only_forward(self, batch: dict[str, Any], encoded: tuple) -> dict[str, Any]:
        """The training step of `train_ctc_head_only`: the transcript's CTC loss on the encoder
        states; `best_path`, each utterance's greedy CTC tokens (what validation reads), and
        `accuracy`, the share of utterances whose best path is the transcript's tokens exactly
        (read on the host: a head trained alone is a small job)."""
        states, lengths = encoded
        targets, target_lengths = batch["transcript_ids"], batch["transcript_lengths"]
        log_probs = self.ctc_head(states).float().log_softmax(-1)
        loss = self._ctc_loss(log_probs, lengths, targets, target_lengths)
        best = self.best_path(log_probs, lengths)
        correct = sum(ids == row[:length] for ids, row, length in zip(
            best, targets.tolist(), target_lengths.tolist(), strict=True))
        return {"loss": loss, "ctc_loss": loss, "best_path": best,
                "accuracy": torch.tensor(correct / max(len(target_lengths), 1), device=loss.device),
                "num_tokens": int(target_lengths.sum())}

    def best_path(self, scores: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Best-path CTC decoding of the head's scores [B, T, classes]: each frame's best
        class, repeats merged, blanks dropped."""
        blank = scores.shape[-1] - 1
        decoded = []
        for row, length in zip(scores.argmax(-1).tolist(), lengths.tolist(), strict=True):
            ids, previous = [], blank
            for token in row[:length]:
                if token != previous and token != blank:
                    ids.append(token)
                previous = token
            decoded.append(ids)
        return decoded

    def ctc_loss(self, states: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> torch.Tensor:
        """CTC of the transcript tokens on the encoder states (mean over utterances)."""
        return self._ctc_loss(self.ctc_head(states).float().log_softmax(-1), lengths, targets,
                              target_lengths)

    def _ctc_loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                  target_lengths: torch.Tensor) -> torch.Tensor:
        return nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths,
                                      blank=log_probs.shape[-1] - 1, zero_infinity=True)

    @property
    def has_ctc_head(self) -> bool:
        """Whether the encoder has a CTC head (what word times are aligned on)."""
        return hasattr(self, "ctc_head")

    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's states and lengths of a batch (to share between `generate` and
        `ctc_log_probs`)."""
        return self._encode(batch["features"], batch["feature_lengths"])

    @torch.no_grad()
    def ctc_log_probs(self, batch: dict[str, Any], encoded: tuple | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The CTC head's log-posteriors on the encoder states [B, T, vocab + 1] (blank last)
        and each utterance's frames (of `encoded` when given); None for a model without a CTC
        head."""
        if not self.has_ctc_head:
            return None
        states, lengths = encoded or self.encode(batch)
        return self.ctc_head(states).float().log_softmax(-1), lengths

    @torch.no_grad()
    def answer_log_probs(self, batch: dict[str, Any], token_ids: list[list[int]],
                         encoded: tuple | None = None, rows: list[int] | None = None,
                         prompt_cache: PromptCache | None = None) -> list[list[float]]:
        """Each answer token's log-probability under the decoder, given the batch's prompt (its
        audio) and the answer's tokens before it (teacher forced, one pass, positions counted
        as `generate` counts them over left padding): the decoder's own confidence in an
        answer, without the decoding's biases (eos, repetition penalty, hotwords). `rows`: the
        batch row of each answer (None: one answer a row, in order). With the decoding's
        `prompt_cache` (`Generated.prompt_cache`), the pass reads the prompts' keys and values
        from it and runs over their last position and the answers only: the same values."""
        width = batch["prompt_width"]
        prompt = {**batch, "input_ids": batch["input_ids"][:, :width],
                  "audio_slot_mask": batch["audio_slot_mask"][:, :width]}
        embeddings = self.embed(prompt, encoded)
        mask = batch["attention_mask"][:, :width]
        index = (torch.arange(embeddings.shape[0], device=embeddings.device) if rows is None
                 else torch.tensor(rows, dtype=torch.long, device=embeddings.device))
        if rows is not None:
            embeddings, mask = embeddings[index], mask[index]
        longest = max((len(ids) for ids in token_ids), default=0)
        if not longest:
            return [[] for _ in token_ids]
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        answers = torch.full((len(token_ids), longest), pad or 0, dtype=torch.long,
                             device=embeddings.device)
        answer_mask = torch.zeros_like(answers)
        for row, ids in enumerate(token_ids):
            answers[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            answer_mask[row, :len(ids)] = 1
        attention = torch.cat([mask.to(answer_mask.dtype), answer_mask], 1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cached = {}
        if prompt_cache is not None:  # the prompt's keys and values but its last position's
            embeddings, positions = embeddings[:, width - 1:], positions[:, width - 1:]
            cached = {PromptCache.keyword(self.llm): prompt_cache.select(index),
                      "use_cache": True}
        inputs = torch.cat([embeddings, self.llm.get_input_embeddings()(answers)], 1)
        # the vocabulary's logits only where an answer token is predicted (from the prompt's
        # last position on), not over the prompt: on a 151k vocabulary that is most of the
        # pass's memory
        logits = self.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                          logits_to_keep=longest + 1, **({"use_cache": False} | cached)
                          ).logits[:, :longest]
        chosen = logits.float().log_softmax(-1).gather(-1, answers[..., None])[..., 0]
        return [chosen[row, :len(ids)].tolist() for row, ids in enumerate(token_ids)]

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], num_beams: int = 4, max_new_tokens: int = 200,
                 length_penalty: float = 0.8, repetition_penalty: float = 1.0,
                 eos_bias: float = -0.2, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, num_return_sequences: int = 1,
                 output_scores: bool = False, encoded: tuple | None = None,
                 others: bool = False, keep_prompt: bool = False, **kwargs: Any) -> Generated:
        """Decode the answers of a batch (its prompt part: columns before `prompt_width`).
        `others`: also the token ids of each row's other beams (`Generated.others`; beam search
        only), which the search holds anyway: the answers are the same. `keep_prompt`: also the
        decoder's keys and values over the prompts (`Generated.prompt_cache`), which the search
        computed anyway, for `answer_log_probs` to score answers without the prompts again.

        Defaults are MooER's: beam 4, length penalty 0.8, 200 new tokens, eos logit -0.2.
        """
        if self.tokenizer is None:
            raise ValueError("SpeechLLM.generate needs a tokenizer")
        width = batch["prompt_width"]
        if width is None:
            raise ValueError("packed batches are for training: decode padded batches "
                             "(mooer.data.collate.collate)")
        prompt = {**batch, "input_ids": batch["input_ids"][:, :width],
                  "audio_slot_mask": batch["audio_slot_mask"][:, :width]}
        attention_mask = batch["attention_mask"][:, :width]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        # transformers' own repetition penalty is always off (1.0, also over a checkpoint's
        # generation_config: Qwen2-Instruct's asks 1.05): given inputs_embeds, it skips the
        # first tokens a left-padded row generates (as many as the row's padding), so rows
        # decoded together would not get what each gets alone. Ours sees every generated token.
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        if repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
        others = others and num_beams > 1 and not do_sample and num_return_sequences == 1
        if others:
            num_return_sequences = num_beams
        options = dict(num_beams=num_beams, max_new_tokens=max_new_tokens,
                       repetition_penalty=1.0, do_sample=do_sample,
                       eos_token_id=eos, pad_token_id=pad, logits_processor=processors,
                       num_return_sequences=num_return_sequences, **kwargs)
        if num_beams > 1:
            options["length_penalty"] = length_penalty
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        if eos_bias:
            options["sequence_bias"] = {(eos,): float(eos_bias)}
        if output_scores:
            options.update(output_scores=True)
        if output_scores or keep_prompt:
            options.update(return_dict_in_generate=True)
        result = self.llm.generate(inputs_embeds=self.embed(prompt, encoded),
                                   attention_mask=attention_mask, **options)
        sequences = result.sequences if output_scores or keep_prompt else result
        kept = None
        if keep_prompt:  # the cache generate returns: `cache` in newer transformers, else
            cache = getattr(result, "cache", None)  # `past_key_values`
            if cache is None:
                cache = getattr(result, "past_key_values", None)
            kept = PromptCache.kept(cache, attention_mask.shape[0], width,
                                    num_beams if num_beams > 1 else num_return_sequences)
        token_ids = []
        for row in sequences.tolist():
            ids = []
            for token in row:
                if token == eos:
                    break
                if token != pad:
                    ids.append(token)
            token_ids.append(ids)
        scores = getattr(result, "sequences_scores", None) if output_scores else None
        n = num_return_sequences if others else 1  # the others are not decoded into text
        answers = token_ids[::n]
        return Generated(answers,
                         [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in answers],
                         None if scores is None else scores[::n],
                         [token_ids[row + 1:row + n] for row in range(0, len(token_ids), n)]
                         if others else None, kept)
