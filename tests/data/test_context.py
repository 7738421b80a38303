"""Trained biasing: hotword lists in the instruction (conf/task/context), drawn per utterance in
training, the user's list in decoding, and no list = the plain prompt."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mooer.data.context import ContextFormat, ContextSampler, context_words, word_counts
from mooer.data.prompts import PromptBuilder
from mooer.data.text import read_table
from tests.conftest import prompt_format

LISTED = "Hotwords: {}. "  # conf/task/context/hotwords.yaml's text


def test_words_are_latin_words_and_chinese_character_pairs():
    assert context_words("priya▁has▁eleven▁cats") == ["priya", "has", "eleven", "cats"]
    assert context_words("我三点见Olivia") == ["Olivia", "我三", "三点", "点见"]
    assert context_words("it's 42") == ["it's"]


def test_word_counts_read_kaldi_text(tmp_path):
    text = tmp_path / "text"
    text.write_text("a1 olivia has two cats\na2 Olivia 你好\n", encoding="utf-8")
    assert word_counts([text]) == Counter({"olivia": 2, "has": 1, "two": 1, "cats": 1, "你好": 1})
    with pytest.raises(FileNotFoundError, match="task.context.vocabulary: .*nowhere not found"):
        word_counts([tmp_path / "nowhere"])


def test_a_drawn_list_holds_the_utterances_rare_words_among_distractors():
    counts = {"olivia": 2, "cats": 3, "has": 500, "eleven": 80, **{f"w{i}": 1 for i in range(50)}}
    sampler = ContextSampler(counts, rare=5, keep=1.0, distractors=10, empty=0.0)
    sizes = set()
    for seed in range(40):
        listed = sampler.draw("olivia has eleven cats", random.Random(seed))
        assert {"olivia", "cats"} <= set(listed)  # its rare words, each kept (keep=1)
        assert not {"has", "eleven"} & set(listed)  # frequent words never listed
        distractors = [w for w in listed if w not in ("olivia", "cats")]
        assert len(distractors) <= 10 and all(w.startswith("w") for w in distractors)
        assert len(set(listed)) == len(listed)
        sizes.add(len(distractors))
    assert len(sizes) > 5  # 0 to 10 distractors, drawn
    # the same rng draws the same list; never a list with keep=0 and no distractors
    assert sampler.draw("olivia cats", random.Random(3)) == \
        sampler.draw("olivia cats", random.Random(3))
    assert ContextSampler(counts, rare=5, keep=0.0, distractors=0, empty=0.0).draw(
        "olivia cats", random.Random(0)) == []
    assert ContextSampler(counts, rare=5, empty=1.0).draw("olivia", random.Random(0)) == []
    with pytest.raises(ValueError, match="keep and empty are probabilities"):
        ContextSampler(counts, keep=1.5)


def test_the_instruction_lists_hotwords_only_where_the_task_says():
    plain = prompt_format("asr_ast")
    listed = prompt_format("asr_ast", context={"text": LISTED, "tasks": ["asr"],
                                               "max_words": 2})
    instruction = "Transcribe speech to text. "
    assert listed.text("asr", ["olivia", "台灯"]) == plain.template.format(
        instruction + "Hotwords: olivia, 台灯. ")
    assert listed.text("asr", ["a", "b", "c"]) == plain.template.format(
        instruction + "Hotwords: a, b. ")  # the first max_words
    assert listed.text("asr") == plain.text("asr")  # no list: the plain prompt
    assert listed.text("ast", ["olivia"]) == plain.text("ast")  # translations list nothing
    assert plain.text("asr", ["olivia"]) == plain.text("asr")  # a format without a context
    with pytest.raises(ValueError, match="exactly one"):
        ContextFormat(text="Hotwords:")


def test_decoding_prompts_list_the_given_words_and_no_list_is_the_plain_prompt(tokenizer):
    prompt = prompt_format("asr", context={"text": LISTED})
    plain = PromptBuilder(tokenizer, prompt_format("asr"), task="asr")
    for builder in (PromptBuilder(tokenizer, prompt, task="asr"),
                    PromptBuilder(tokenizer, prompt, task="asr", hotwords=[]),
                    PromptBuilder(tokenizer, prompt, task="asr", hotwords={"b": ["x"]})):
        got = builder.many(["x"], ["a"], inference=True)[0]
        assert got.prompt_ids.tolist() == plain.many(["x"], ["a"], inference=True)[0] \
            .prompt_ids.tolist()
    shared = PromptBuilder(tokenizer, prompt, task="asr", hotwords=["二十七", "olivia"])
    expected = tokenizer.encode(prompt.template.format(
        "Transcribe speech to text. Hotwords: 二十七, olivia. "))
    for got in shared.many(["x", "y"], ["a", "b"], inference=True):
        assert got.prompt_ids.tolist() == expected
    own = PromptBuilder(tokenizer, prompt, task="asr", hotwords={"b": ["三十"]})
    a, b = own.many(["x", "y"], ["a", "b"], inference=True)
    assert a.prompt_ids.tolist() == plain.prompt_ids["asr"].tolist()
    assert tokenizer.decode(b.prompt_ids).endswith("Hotwords: 三十. <|im_end|>\n"
                                                   "<|im_start|>assistant\n")


def test_training_draws_a_list_per_utterance_and_epoch(tokenizer, corpus, tmp_path):
    prompt = prompt_format("asr", context={
        "text": LISTED, "vocabulary": str(corpus / "text"), "rare": 1, "keep": 1.0,
        "distractors": 3, "empty": 0.0})
    texts = dict(read_table(corpus / "text"))
    counts = word_counts([corpus / "text"])
    builder = PromptBuilder(tokenizer, prompt, seed=5)
    keys = sorted(texts)
    first = builder.many([texts[k] for k in keys], keys, epoch=0)
    again = builder.many([texts[k] for k in keys], keys, epoch=0)
    later = builder.many([texts[k] for k in keys], keys, epoch=1)
    assert [p.prompt_ids.tolist() for p in first] == [p.prompt_ids.tolist() for p in again]
    assert [p.prompt_ids.tolist() for p in first] != [p.prompt_ids.tolist() for p in later]
    head = prompt.text("asr").split("<|im_end|>\n<|im_start|>assistant")[0]
    for key, prompted in zip(keys, first, strict=True):
        shown = tokenizer.decode(prompted.prompt_ids)
        assert shown.startswith(head)
        words = shown[len(head):].split("<|im_end|>")[0]
        assert words.startswith("Hotwords: ") and words.endswith(". ")
        listed = words[len("Hotwords: "):-2].split(", ")
        own = [w for w in dict.fromkeys(context_words(texts[key])) if counts[w.lower()] <= 1]
        assert set(own) <= set(listed)
        assert len(listed) - len(own) <= 3
        assert all(counts[w.lower()] == 1 for w in listed)  # rare words only
        # the answer is the transcript as without a list
        assert tokenizer.decode(prompted.answer_ids[:-1]) == texts[key].replace("▁", " ")


def test_training_batches_carry_the_drawn_lists(shards, tokenizer, corpus):
    from tests.data.test_datamodule import make_dm

    prompt = prompt_format("asr", context={
        "text": LISTED, "vocabulary": str(corpus / "text"), "rare": 1000, "keep": 1.0,
        "distractors": 0, "empty": 0.0})
    texts = dict(read_table(corpus / "text"))
    batches = list(make_dm(shards, tokenizer, prompt).train_dataloader())
    assert sum(len(b["keys"]) for b in batches) == 24
    for batch in batches:
        for row, key in enumerate(batch["keys"]):
            prompt_part = batch["attention_mask"][row].bool() & ~batch["audio_slot_mask"][row]
            prompt_part[batch["prompt_width"]:] = False  # the answer starts there
            shown = tokenizer.decode(batch["input_ids"][row][prompt_part])
            # every word is rare at 1000: the list is the utterance's own words, all of them
            words = shown.split("Hotwords: ")[1].split(". <|im_end|>")[0].split(", ")
            assert sorted(words) == sorted(dict.fromkeys(context_words(texts[key])))


def test_the_recipe_composes_and_init_from_keeps_the_list(tmp_path):
    """task/context=hotwords composes with any task; a fine-tune of a run (init_from) takes the
    run's prompt format with this config's context."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mooer.config import compose_config
    from mooer.training.run import apply_init_from

    cfg, _ = compose_config("train", ["experiment=demo", "task/context=hotwords"])
    prompt = instantiate(cfg.task)
    assert prompt.context.text == LISTED and prompt.context.tasks == ("asr",)
    assert prompt.context.vocabulary[0].endswith("demo/kaldi/train/text")
    assert prompt.text("asr", ["olivia"]) == "<|im_start|>Transcribe<|im_end|>Hotwords: olivia. "
    default, _ = compose_config("train", [])
    assert not instantiate(default.task).context.enabled

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    trained, _ = compose_config("train", ["experiment=demo"])
    OmegaConf.save(trained, run / ".hydra" / "config.yaml")
    fine, _ = compose_config("train", ["task/context=hotwords", f"init_from={run}"])
    taken, start = apply_init_from(fine)
    assert start == str(run / "checkpoints" / "last.ckpt")
    assert taken.task.template == "{}" and taken.task.name == "asr_ast"  # the run's format
    assert taken.task.context.text == LISTED  # and the list this run teaches
    plain, _ = apply_init_from(compose_config("train", [f"init_from={run}"])[0])
    assert plain.task.context.get("text") is None

