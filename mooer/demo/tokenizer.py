"""Train a small Qwen-style byte-level BPE tokenizer offline (chat special tokens included)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE_TEXT = ("system\nYou are a helpful assistant. user\nTranscribe speech to text. "
                      "Translate speech to english text. assistant\n")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000,
                    out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts` plus the chat prompts; pad <|endoftext|>, eos <|im_end|>.

    Saved with `save_pretrained` to `out_dir` when given, so AutoTokenizer can load it.
    """
    tokenizer = Tokenizer(models.BPE())
    # every CJK character stays its own piece (merges never join two of them), so Mandarin gets
    # character units and English word units: what small speech models learn fastest
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("[\u3400-\u9fff]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([CHAT_TEMPLATE_TEXT] * 10 + list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   additional_special_tokens=["<|im_start|>"])
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
