"""Prompt templates, MooER's replace_text modes and per-utterance task choice."""

from __future__ import annotations

import pytest

from mooer.data.prompts import PROMPTS, QWEN_TEMPLATE, PromptBuilder, refine_target


def test_refine_target_modes():
    assert refine_target("你好", "hello", "replace") == "hello"
    assert refine_target("你好", "hello", "concat") == "你好<|im_end|>hello"
    assert refine_target("你好", "hello", "concat_r") == "hello<|im_end|>你好"
    assert refine_target("你好", "hello", "instruction") == {
        "asr": "你好", "ast": "hello", "asr_ast": "你好<|im_end|>hello"}
    with pytest.raises(ValueError, match="choose one of"):
        refine_target("a", "b", "swap")


def test_prompt_and_answer_tokens(tokenizer):
    builder = PromptBuilder(tokenizer)
    prompted = builder("I▁HAVE▁FORTY▁SIX", key="u1")
    assert tokenizer.decode(prompted.prompt_ids) == QWEN_TEMPLATE.format(PROMPTS["asr"])
    assert prompted.answer_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompted.answer_ids[:-1]) == "I HAVE FORTY SIX"  # ▁ -> space
    assert prompted.target == "I HAVE FORTY SIX"
    assert len(builder("x", inference=True).answer_ids) == 0


def test_many_equals_one_by_one(tokenizer):
    builder = PromptBuilder(tokenizer)
    targets = ["我有四十六辆车", "five hundred", "今天天气很好"]
    together = builder.many(targets, ["a", "b", "c"])
    for target, prompted in zip(targets, together, strict=True):
        assert prompted.answer_ids.tolist() == builder(target).answer_ids.tolist()


def test_instruction_task_is_seeded_per_utterance(tokenizer):
    builder = PromptBuilder(tokenizer, task="instruction", seed=3)
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
        assert tokenizer.decode(prompted.prompt_ids) == QWEN_TEMPLATE.format(PROMPTS[prompted.task])


def test_unknown_task(tokenizer):
    with pytest.raises(ValueError, match="has no prompt"):
        PromptBuilder(tokenizer, task="summarize")


def test_task_weights_set_how_often_each_task_is_drawn(tokenizer):
    target = refine_target("二十", "twenty", "instruction")
    keys = [f"utt{i}" for i in range(2000)]
    weighted = PromptBuilder(tokenizer, task="instruction", task_weights={"asr": 0.8, "ast": 0.2})
    share = sum(weighted.choose_task(target, k) == "asr" for k in keys) / len(keys)
    assert 0.77 < share < 0.83
    uniform = PromptBuilder(tokenizer, task="instruction")
    assert 0.46 < sum(uniform.choose_task(target, k) == "asr" for k in keys) / len(keys) < 0.54
    only_ast = PromptBuilder(tokenizer, task="instruction", task_weights={"asr": 0, "ast": 1})
    assert {only_ast.choose_task(target, k) for k in keys} == {"ast"}
    with pytest.raises(ValueError, match="task weights"):
        PromptBuilder(tokenizer, task="instruction", task_weights={"asr": -1, "ast": 1})
    # weight on a task without a prompt (or a typo) would silently change the mix: refused
    with pytest.raises(ValueError, match="name asr_ast, which have no prompt"):
        PromptBuilder(tokenizer, task="instruction", task_weights={"asr": 0, "asr_ast": 1})
