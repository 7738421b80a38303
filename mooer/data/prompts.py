"""Prompts and labels: the prompt format of `conf/task`, audio slots before the prompt, labels on
the answer.

A training sequence is  [audio slots] + prompt + answer + eos,  with labels IGNORE_INDEX except on
the answer and eos. The number of audio slots is encoder frames // projector downsample. The
prompt text lives in `conf/task` alone: `PromptFormat` is built from it (hydra instantiate) and
handed to training, validation, evaluation, transcription and `mooer-data show`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mooer.data.context import ContextFormat
from mooer.data.text import WORD_JOINER

IGNORE_INDEX = -100
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


class PromptFormat:
    """What the LLM is asked, as `conf/task` says: the chat `template` (one `{}` for the
    instruction), one instruction per task, and where labels come from (the transcript, or
    MooER's replace_text table joined as `replace_type` says; `instruction` draws one task per
    utterance, by `weights` or uniformly). `name` is the recipe (asr, ast, asr_ast). `context`
    (`conf/task/context`) shows the LLM a hotword list (trained biasing,
    `mooer.data.context`).

    A plain class, not a dataclass: Hydra would turn a dataclass handed to `instantiate` as an
    argument back into a config."""

    def __init__(self, name: str, template: str, instructions: Mapping[str, str],
                 replace_text_path: str | None = None, replace_type: str = "replace",
                 weights: Mapping[str, float] | None = None,
                 context: ContextFormat | Mapping | None = None) -> None:
        self.name, self.template, self.instructions = name, template, dict(instructions)
        self.context = (context if isinstance(context, ContextFormat)
                        else ContextFormat(**context) if context else ContextFormat())
        self.replace_text_path, self.replace_type = replace_text_path, replace_type
        self.weights = dict(weights) if weights else None
        if template.count("{}") != 1:
            raise ValueError(f"task.template needs exactly one {{}} for the instruction, got "
                             f"{template!r}")
        if replace_type not in REPLACE_TYPES:
            raise ValueError(f"task.replace_type is one of {', '.join(REPLACE_TYPES)}, got "
                             f"{replace_type!r}")
        if replace_type != "instruction":
            self.require(name)

    @property
    def task(self) -> str:
        """The task of every utterance, or `instruction` (drawn per utterance)."""
        return "instruction" if self.replace_type == "instruction" else self.name

    def require(self, task: str) -> None:
        """Refuse a task this format has no instruction for, naming the ones it has."""
        if task not in self.instructions:
            raise ValueError(f"task {task!r} has no prompt in task={self.name} (it has "
                             f"{', '.join(self.instructions)}): choose a task recipe with one "
                             "(conf/task), or decode the run it was trained in (run_dir=)")

    def text(self, task: str, hotwords: Sequence[str] = ()) -> str:
        """The prompt of `task` as the LLM reads it, after the audio slots; with `hotwords`
        listed after the instruction where the task's context says so."""
        self.require(task)
        instruction = self.instructions[task]
        if self.context.applies(task) and self.context.position == "in_instruction":
            instruction += self.context.shown(hotwords)
        return self.template.format(instruction)

    def prefix(self, task: str, hotwords: Sequence[str] = ()) -> str:
        """What the LLM reads before the audio slots: the list of `hotwords` where the task's
        context puts it there, else nothing."""
        if self.context.applies(task) and self.context.position == "before_audio":
            return self.context.shown(hotwords)
        return ""

    def texts(self) -> list[str]:
        """Every task's prompt (what a tokenizer trained for this format should know)."""
        texts = [self.text(task) for task in self.instructions]
        if self.context.text is not None:  # and the words around a hotword list
            texts.append(self.context.text.format(self.context.separator))
        return texts


@dataclass
class Prompted:
    """Token ids of one utterance: the prompt part (after the audio slots), the answer, and
    what comes before the audio slots (a hotword list, or nothing)."""

    task: str
    prompt_ids: torch.Tensor
    answer_ids: torch.Tensor
    target: str
    prefix_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


class PromptBuilder:
    """Tokenizes a PromptFormat's prompts once per task and answers per utterance. `task`
    overrides the format's own (decoding one task of a multi-task format). Where the format
    shows hotwords (`context`), an utterance's list is `hotwords` (one list
    for all, or a list an uttid: decoding) or, in training, drawn per utterance."""

    def __init__(self, tokenizer, prompt: PromptFormat, task: str | None = None,
                 seed: int = 0,
                 hotwords: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.format = prompt
        self.hotwords = hotwords
        self.task_weights = dict(prompt.weights) if prompt.weights else None
        if self.task_weights and (min(self.task_weights.values()) < 0
                                  or sum(self.task_weights.values()) <= 0):
            raise ValueError(f"task weights must be >= 0 with a positive sum: {self.task_weights}")
        self.prompts = dict(prompt.instructions)
        self.task = task or prompt.task
        if self.task != "instruction":
            prompt.require(self.task)
        unknown = sorted(set(self.task_weights or ()) - set(self.prompts))
        if unknown:  # a typo or a prompt-less task would silently change the mix
            raise ValueError(f"task weights name {', '.join(unknown)}, which have no prompt; "
                             f"prompts are given for {', '.join(self.prompts)}")
        self.seed = seed
        self.prompt_ids = {name: torch.tensor(tokenizer.encode(prompt.text(name)),
                                              dtype=torch.long)
                           for name in self.prompts}
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

    def listed(self, key: str, task: str, transcript: str, epoch: int,
               inference: bool) -> list[str]:
        """The hotwords `key`'s prompt lists: the list given (decoding), or in training one
        drawn from (seed, epoch, key); none where the task's prompt has no list."""
        if not self.format.context.applies(task):
            return []
        if self.hotwords is not None:
            words = (self.hotwords.get(key, ()) if isinstance(self.hotwords, Mapping)
                     else self.hotwords)
            return list(words)
        if inference:
            return []
        rng = random.Random(zlib.crc32(f"{self.seed}:{epoch}:{key}:context".encode()))
        return self.format.context.sampler().draw(transcript, rng)

    def many(self, targets: Sequence[str | Mapping[str, str]], keys: Sequence[str],
             epoch: int = 0, inference: bool = False) -> list[Prompted]:
        """Prompt several utterances; their answers (and the prompts that list hotwords) are
        tokenized in one call."""
        tasks = [self.choose_task(t, k, epoch) for t, k in zip(targets, keys, strict=True)]
        # MooER-normalized labels join Latin words with ▁
        texts = [(t if isinstance(t, str) else t[task]).replace(WORD_JOINER, " ")
                 for t, task in zip(targets, tasks, strict=True)]
        if inference:
            answers = [torch.zeros(0, dtype=torch.long)] * len(texts)
        else:
            answers = [torch.tensor(ids + [self.eos_id], dtype=torch.long)
                       for ids in self.tokenizer(texts)["input_ids"]]
        prompts = [self.prompt_ids[task] for task in tasks]
        prefixes = [torch.zeros(0, dtype=torch.long)] * len(tasks)
        lists = {row: words for row, (key, task, text) in enumerate(zip(keys, tasks, texts,
                                                                        strict=True))
                 if (words := self.listed(key, task, text, epoch, inference))}
        if lists:  # the list before the audio (its own tokens), or in the prompt's text
            before = self.format.context.position == "before_audio"
            shown = self.format.prefix if before else self.format.text
            listed = self.tokenizer([shown(tasks[row], words) for row, words in lists.items()],
                                    add_special_tokens=not before)["input_ids"]
            placed = prefixes if before else prompts
            for row, ids in zip(lists, listed, strict=True):
                placed[row] = torch.tensor(ids, dtype=torch.long)
        return [Prompted(task, prompt, answer, text, prefix)
                for task, prompt, answer, text, prefix in zip(tasks, prompts, answers, texts,
                                                              prefixes, strict=True)]
