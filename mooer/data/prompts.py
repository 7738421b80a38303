"""Prompts and labels: MooER's chat template, audio slots before the prompt, labels on the answer.

A training sequence is  [audio slots] + prompt + answer + eos,  with labels IGNORE_INDEX except on
the answer and eos. The number of audio slots is encoder frames // projector downsample.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
QWEN_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
PROMPTS = {"asr": "Transcribe speech to text. ", "ast": "Translate speech to english text. "}
CONCAT_TOKEN = "<|im_end|>"
REPLACE_TYPES = ("replace", "concat", "concat_r", "instruction")


def refine_target(transcript: str, replacement: str, replace_type: str) -> str | dict[str, str]:
    """MooER's `replace_text` modes: the label from the transcript and the uttid's table entry.

    replace: the entry; concat: transcript<|im_end|>entry; concat_r: entry<|im_end|>transcript;
    instruction: every task's label, one task drawn per utterance later.
    """
    if replace_type == "replace":
        return replacement
    if replace_type == "concat":
        return transcript + CONCAT_TOKEN + replacement
    if replace_type == "concat_r":
        return replacement + CONCAT_TOKEN + transcript
    if replace_type == "instruction":
        return {"asr": transcript, "ast": replacement,
                "asr_ast": transcript + CONCAT_TOKEN + replacement}
    raise ValueError(f"unknown replace_type {replace_type!r}; choose one of {', '.join(REPLACE_TYPES)}")


@dataclass
class Prompted:
    """Token ids of one utterance: the prompt part (after the audio slots) and the answer."""

    task: str
    prompt_ids: torch.Tensor
    answer_ids: torch.Tensor
    target: str


class PromptBuilder:
    """Tokenizes prompts once per task and answers per utterance."""

    def __init__(self, tokenizer, prompts: Mapping[str, str] | None = None,
                 template: str = QWEN_TEMPLATE, task: str = "asr", seed: int = 0,
                 task_weights: Mapping[str, float] | None = None) -> None:
        self.tokenizer = tokenizer
        self.task_weights = dict(task_weights) if task_weights else None
        if self.task_weights and (min(self.task_weights.values()) < 0
                                  or sum(self.task_weights.values()) <= 0):
            raise ValueError(f"task weights must be >= 0 with a positive sum: {self.task_weights}")
        self.prompts = dict(prompts or PROMPTS)
        if task not in self.prompts and task != "instruction":
            raise ValueError(f"task {task!r} has no prompt; prompts are given for "
                             f"{', '.join(self.prompts)}")
        unknown = sorted(set(self.task_weights or ()) - set(self.prompts))
        if unknown:  # a typo or a prompt-less task would silently change the mix
            raise ValueError(f"task weights name {', '.join(unknown)}, which have no prompt; "
                             f"prompts are given for {', '.join(self.prompts)}")
        self.task, self.seed = task, seed
        self.template = template
        self.prompt_ids = {name: torch.tensor(tokenizer.encode(template.format(text)),
                                              dtype=torch.long)
                           for name, text in self.prompts.items()}
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an eos token and a pad token")
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def choose_task(self, target: str | Mapping[str, str], key: str, epoch: int = 0) -> str:
        """The task of an utterance: fixed, or (instruction mode) drawn from (seed, epoch, key),
        uniformly or by `task_weights`."""
        if isinstance(target, str):
            return self.task
        tasks = sorted(t for t in target if t in self.prompts)
        if not tasks:
            raise ValueError(f"no prompt for any of the tasks {sorted(target)} of {key}")
        rng = random.Random(zlib.crc32(f"{self.seed}:{epoch}:{key}".encode()))
        if self.task_weights:
            weights = [self.task_weights.get(t, 0.0) for t in tasks]
            if sum(weights) > 0:
                return rng.choices(tasks, weights=weights)[0]
            raise ValueError(f"{key}: its tasks {tasks} all have weight 0 in task weights "
                             f"{self.task_weights}")
        return rng.choice(tasks)

    def __call__(self, target: str | Mapping[str, str], key: str = "", epoch: int = 0,
                 inference: bool = False) -> Prompted:
        return self.many([target], [key], epoch, inference)[0]

    def many(self, targets: Sequence[str | Mapping[str, str]], keys: Sequence[str],
             epoch: int = 0, inference: bool = False) -> list[Prompted]:
        """Prompt several utterances; their answers are tokenized in one call."""
        tasks = [self.choose_task(t, k, epoch) for t, k in zip(targets, keys, strict=True)]
        # MooER-normalized labels join Latin words with ▁
        texts = [(t if isinstance(t, str) else t[task]).replace("▁", " ")
                 for t, task in zip(targets, tasks, strict=True)]
        if inference:
            answers = [torch.zeros(0, dtype=torch.long)] * len(texts)
        else:
            answers = [torch.tensor(ids + [self.eos_id], dtype=torch.long)
                       for ids in self.tokenizer(texts)["input_ids"]]
        return [Prompted(task, self.prompt_ids[task], answer, text)
                for task, answer, text in zip(tasks, answers, texts, strict=True)]
