"""Trained biasing: hotword lists in the instruction (conf/task/context), drawn per utterance in
training, the user's list in decoding, and no list = the plain prompt."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

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


def test_the_list_goes_before_the_audio_or_after_the_instruction_where_the_task_says():
    plain = prompt_format("asr_ast")
    before = prompt_format("asr_ast", context={"text": LISTED, "max_words": 2})
    assert before.prefix("asr", ["olivia", "台灯"]) == "Hotwords: olivia, 台灯. "
    assert before.prefix("asr", ["a", "b", "c"]) == "Hotwords: a, b. "  # the first max_words
    assert before.text("asr", ["olivia"]) == plain.text("asr")  # the prompt is as it was
    assert before.prefix("asr") == before.prefix("ast", ["olivia"]) == ""
    listed = prompt_format("asr_ast", context={"text": LISTED, "tasks": ["asr"],
                                               "max_words": 2, "position": "in_instruction"})
    assert listed.prefix("asr", ["olivia"]) == ""
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
    with pytest.raises(ValueError, match="keep and empty are probabilities"):
        ContextFormat(text=LISTED, empty=2)
    with pytest.raises(ValueError, match="position is one of before_audio, in_instruction"):
        ContextFormat(text=LISTED, position="after")


def test_decoding_prompts_list_the_given_words_and_no_list_is_the_plain_prompt(tokenizer):
    plain = PromptBuilder(tokenizer, prompt_format("asr"), task="asr")
    no_prefix = torch.zeros(0, dtype=torch.long)
    for position in ("before_audio", "in_instruction"):
        prompt = prompt_format("asr", context={"text": LISTED, "position": position})
        for builder in (PromptBuilder(tokenizer, prompt, task="asr"),
                        PromptBuilder(tokenizer, prompt, task="asr", hotwords=[]),
                        PromptBuilder(tokenizer, prompt, task="asr", hotwords={"b": ["x"]})):
            got = builder.many(["x"], ["a"], inference=True)[0]
            assert got.prompt_ids.tolist() == plain.prompt_ids["asr"].tolist()
            assert got.prefix_ids.tolist() == []
        shared = PromptBuilder(tokenizer, prompt, task="asr", hotwords=["二十七", "olivia"])
        listed = "Hotwords: 二十七, olivia. "
        if position == "before_audio":  # the list alone, before the audio; the prompt as it was
            expected = (tokenizer.encode(listed, add_special_tokens=False),
                        plain.prompt_ids["asr"].tolist())
        else:
            expected = ([], tokenizer.encode(prompt.template.format(
                "Transcribe speech to text. " + listed)))
        for got in shared.many(["x", "y"], ["a", "b"], inference=True):
            assert (got.prefix_ids.tolist(), got.prompt_ids.tolist()) == expected
        own = PromptBuilder(tokenizer, prompt, task="asr", hotwords={"b": ["三十"]})
        a, b = own.many(["x", "y"], ["a", "b"], inference=True)
        assert a.prompt_ids.tolist() == plain.prompt_ids["asr"].tolist()
        assert torch.equal(a.prefix_ids, no_prefix)
        assert tokenizer.decode(torch.cat([b.prefix_ids, b.prompt_ids])) == (
            "Hotwords: 三十. " + prompt.text("asr") if position == "before_audio" else
            prompt.text("asr", ["三十"]))


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
    assert [p.prefix_ids.tolist() for p in first] == [p.prefix_ids.tolist() for p in again]
    assert [p.prefix_ids.tolist() for p in first] != [p.prefix_ids.tolist() for p in later]
    for key, prompted in zip(keys, first, strict=True):
        assert tokenizer.decode(prompted.prompt_ids) == prompt.text("asr")
        words = tokenizer.decode(prompted.prefix_ids)
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
            ids, slots = batch["input_ids"][row], batch["audio_slot_mask"][row]
            columns = slots.nonzero()[:, 0]
            first = int(batch["attention_mask"][row].nonzero()[0])
            # [pad][list][audio slots][prompt][answer]: the list just before the slots
            shown = tokenizer.decode(ids[first:int(columns[0])])
            assert int(columns[-1]) - int(columns[0]) + 1 == batch["num_audio_slots"][row]
            assert tokenizer.decode(ids[int(columns[-1]) + 1:batch["prompt_width"]]) == \
                prompt.text("asr")
            assert shown.startswith("Hotwords: ") and shown.endswith(". ")
            # every word is rare at 1000: the list is the utterance's own words, all of them
            words = shown[len("Hotwords: "):-2].split(", ")
            assert sorted(words) == sorted(dict.fromkeys(context_words(texts[key])))


def test_the_recipe_composes_and_init_from_keeps_the_list(tmp_path):
    """task/context=hotwords composes with any task; a fine-tune of a run (init_from) takes the
    run's prompt format with this config's context, and the run's model with the command
    line's keys of it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mooer.config import compose_config
    from mooer.training.run import apply_init_from

    cfg, _ = compose_config("train", ["experiment=demo", "task/context=hotwords"])
    prompt = instantiate(cfg.task)
    assert prompt.context.text == LISTED and prompt.context.tasks == ("asr",)
    assert prompt.context.vocabulary[0].endswith("demo/kaldi/train/text")
    assert prompt.prefix("asr", ["olivia"]) == "Hotwords: olivia. "
    assert prompt.text("asr", ["olivia"]) == "<|im_start|>Transcribe<|im_end|>"
    default, _ = compose_config("train", [])
    assert not instantiate(default.task).context.enabled

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    trained, _ = compose_config("train", ["experiment=demo"])
    OmegaConf.save(trained, run / ".hydra" / "config.yaml")
    overrides = ["task/context=hotwords", f"init_from={run}", "encoder.freeze=true",
                 "task.context.rare=7", "projector=conv"]
    fine, _ = compose_config("train", overrides)
    taken, start = apply_init_from(fine, overrides)
    assert start == str(run / "checkpoints" / "last.ckpt")
    assert taken.task.template == "{}" and taken.task.name == "asr_ast"  # the run's format
    assert taken.task.context.text == LISTED and taken.task.context.rare == 7  # and the list
    # the command line's keys of the run's model apply again; a group choice gives way to it
    assert taken.encoder.freeze is True and not trained.encoder.freeze
    assert taken.encoder.model.output_size == trained.encoder.model.output_size
    assert taken.projector == trained.projector != fine.projector
    plain, _ = apply_init_from(compose_config("train", [f"init_from={run}"])[0])
    assert plain.task.context.get("text") is None



def test_a_run_decodes_with_the_weights_it_started_from(tmp_path, caplog):
    """A fine-tune's checkpoints hold what it trained; what it froze comes from init_from (a run
    dir, followed back; relative paths from where that run was started)."""
    from omegaconf import OmegaConf

    from mooer.inference.loading import base_weights

    def run(name: str, init: str | None, cwd: Path) -> Path:
        directory = tmp_path / name
        (directory / ".hydra").mkdir(parents=True)
        (directory / "checkpoints").mkdir()
        (directory / "checkpoints" / "last.ckpt").write_bytes(b"")
        OmegaConf.save({"init_from": init}, directory / ".hydra" / "config.yaml")
        OmegaConf.save({"hydra": {"runtime": {"cwd": str(cwd)}}},
                       directory / ".hydra" / "hydra.yaml")
        return directory

    release = tmp_path / "release"
    release.mkdir()
    first = run("first", str(release), tmp_path)
    second = run("second", "first", tmp_path)  # relative to where it was started
    third = run("third", str(second), tmp_path / "elsewhere")
    assert base_weights(third) == [release, first / "checkpoints" / "last.ckpt",
                                   second / "checkpoints" / "last.ckpt"]
    assert base_weights(first) == [release]
    assert base_weights(run("fresh", None, tmp_path)) == []
    # a base that is gone: a warning, and what the run trained still loads
    assert base_weights(run("orphan", str(tmp_path / "gone"), tmp_path)) == []
    assert "started from weights that are gone" in caplog.text
