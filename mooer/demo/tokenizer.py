"""Train a small Qwen-style byte-level BPE tokenizer offline (chat special tokens included)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PROMPT_WEIGHT = 10  # prompts are in every sequence: they count as this many sentences each


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000,
                    out_dir: str | Path | None = None,
                    prompts: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Byte-level BPE over `texts` plus the `prompts` the model will read (a PromptFormat's
    `texts()`; their special tokens are the tokenizer's own); pad <|endoftext|>, eos <|im_end|>.

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
    prompt_words = []
    for prompt in prompts:
        for token in SPECIAL_TOKENS:
            prompt = prompt.replace(token, " ")
        prompt_words.append(prompt)
    tokenizer.train_from_iterator(prompt_words * PROMPT_WEIGHT + list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   additional_special_tokens=["<|im_start|>"])
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
