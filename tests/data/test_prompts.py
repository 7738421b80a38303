"""Prompt templates, MooER's replace_text modes and per-utterance task choice."""

from __future__ import annotations

import pytest

from mooer.data.prompts import PromptBuilder, PromptFormat, refine_target
from tests.conftest import prompt_format

# MooER's prompt (its src/mooer/configs/asr_config_inference.py and the chat template of
# Qwen2-Instruct), as conf/task/asr.yaml and asr_ast.yaml must give it
MOOER_ASR = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             "Transcribe speech to text. <|im_end|>\n<|im_start|>assistant\n")


def test_refine_target_modes():
    assert refine_target("你好", "hello", "replace") == "hello"
    assert refine_target("你好", "hello", "concat") == "你好<|im_end|>hello"
    assert refine_target("你好", "hello", "concat_r") == "hello<|im_end|>你好"
    assert refine_target("你好", "hello", "instruction") == {
        "asr": "你好", "ast": "hello", "asr_ast": "你好<|im_end|>hello"}
    with pytest.raises(ValueError, match="choose one of"):
        refine_target("a", "b", "swap")


def test_prompt_and_answer_tokens(tokenizer):
    builder = PromptBuilder(tokenizer, prompt_format("asr"))
    prompted = builder("I▁HAVE▁FORTY▁SIX", key="u1")
    assert tokenizer.decode(prompted.prompt_ids) == MOOER_ASR
    assert prompted.answer_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompted.answer_ids[:-1]) == "I HAVE FORTY SIX"  # ▁ -> space
    assert prompted.target == "I HAVE FORTY SIX"
    assert len(builder("x", inference=True).answer_ids) == 0


def test_many_equals_one_by_one(tokenizer):
    builder = PromptBuilder(tokenizer, prompt_format("asr"))
    targets = ["我有四十六辆车", "five hundred", "今天天气很好"]
    together = builder.many(targets, ["a", "b", "c"])
    for target, prompted in zip(targets, together, strict=True):
        assert prompted.answer_ids.tolist() == builder(target).answer_ids.tolist()


def test_instruction_task_is_seeded_per_utterance(tokenizer):
    prompt = prompt_format("asr_ast")
    builder = PromptBuilder(tokenizer, prompt, seed=3)
    target = refine_target("你好", "hello", "instruction")
    keys = [f"utt{i}" for i in range(40)]
    tasks = [builder(target, key=k, epoch=0).task for k in keys]
    assert tasks == [builder(target, key=k, epoch=0).task for k in keys]
    assert set(tasks) == {"asr", "ast"}  # asr_ast has no prompt unless one is configured
    assert tasks != [builder(target, key=k, epoch=1).task for k in keys]
    for key in keys[:6]:
        prompted = builder(target, key=key)
        expected = {"asr": "你好", "ast": "hello"}[prompted.task]
        assert tokenizer.decode(prompted.answer_ids[:-1]) == expected
        assert tokenizer.decode(prompted.prompt_ids) == prompt.text(prompted.task)
    assert prompt.text("asr") == MOOER_ASR


def test_unknown_task(tokenizer):
    with pytest.raises(ValueError, match="has no prompt"):
        PromptBuilder(tokenizer, prompt_format("asr"), task="summarize")


def test_task_weights_set_how_often_each_task_is_drawn(tokenizer):
    target = refine_target("二十", "twenty", "instruction")
    keys = [f"utt{i}" for i in range(2000)]

    def builder(weights=None) -> PromptBuilder:
        return PromptBuilder(tokenizer, prompt_format("asr_ast", weights=weights))

    weighted = builder({"asr": 0.8, "ast": 0.2})
    share = sum(weighted.choose_task(target, k) == "asr" for k in keys) / len(keys)
    assert 0.77 < share < 0.83
    uniform = builder()
    assert 0.46 < sum(uniform.choose_task(target, k) == "asr" for k in keys) / len(keys) < 0.54
    only_ast = builder({"asr": 0, "ast": 1})
    assert {only_ast.choose_task(target, k) for k in keys} == {"ast"}
    with pytest.raises(ValueError, match="task weights"):
        builder({"asr": -1, "ast": 1})
    # weight on a task without a prompt (or a typo) would silently change the mix: refused
    with pytest.raises(ValueError, match="name asr_ast, which have no prompt"):
        builder({"asr": 0, "asr_ast": 1})


def test_prompt_format_checks_itself():
    with pytest.raises(ValueError, match="exactly one"):
        PromptFormat("asr", "no place for the instruction", {"asr": "x"})
    with pytest.raises(ValueError, match="replace_type is one of"):
        PromptFormat("asr", "{}", {"asr": "x"}, replace_type="swap")
    with pytest.raises(ValueError, match="task 'ast' has no prompt in task=ast"):
        PromptFormat("ast", "{}", {"asr": "x"})
    assert PromptFormat("asr_ast", "[{}]", {"asr": "a", "ast": "b"},
                        replace_type="instruction").texts() == ["[a]", "[b]"]
