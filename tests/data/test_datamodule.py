"""The streaming pipeline and DataModule on corpus shards: layout, labels, batching, exact-once
reading across ranks and workers, epoch order, and every kind of bad data."""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mooer.data.audio import wav_bytes
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.data.pipeline import DataErrors, read_data_list, shards_for, tar_samples
from mooer.data.prompts import IGNORE_INDEX
from mooer.data.text import read_table
from tests.conftest import prompt_format


def make_dm(data_list, tokenizer, prompt=None, **kwargs) -> SpeechDataModule:
    options = {"batch_size": 4, "val_batch_size": 4, "min_length": 0, "shuffle_buffer": 8,
               "sort_buffer": 0, "downsample": 2}
    options.update(kwargs)
    return SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt or prompt_format("asr"),
                            train_data_path=str(data_list), val_data_path=str(data_list),
                            **options)


def all_keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["keys"]]


def test_batch_layout_labels_and_slots(shards, tokenizer, corpus):
    texts = dict(read_table(corpus / "text"))
    prompt = prompt_format("asr").text("asr")
    batches = list(make_dm(shards, tokenizer).val_dataloader())
    assert sum(len(b["keys"]) for b in batches) == 24
    for batch in batches:
        width = batch["prompt_width"]
        for row, key in enumerate(batch["keys"]):
            ids, labels = batch["input_ids"][row], batch["labels"][row]
            mask, slots = batch["attention_mask"][row].bool(), batch["audio_slot_mask"][row]
            frames = int(batch["feature_lengths"][row])
            assert int(slots.sum()) == batch["num_audio_slots"][row] == frames // 2
            # left padding, then audio slots, then the prompt, all before `width`
            first = int(mask.nonzero()[0])
            assert not mask[:first].any() and slots[first:first + int(slots.sum())].all()
            prompt_ids = ids[first + int(slots.sum()):width]
            assert tokenizer.decode(prompt_ids) == prompt
            # labels: only the answer (from `width` on) and eos
            labelled = labels != IGNORE_INDEX
            assert not labelled[:width].any() and labelled[width]
            answer = labels[labelled]
            assert answer[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(answer[:-1]) == texts[key] == batch["targets"][row]
            assert (ids[labelled] == answer).all()
            assert mask[labelled].all() and not mask[int(labelled.nonzero()[-1]) + 1:].any()
            assert not (batch["features"][row, frames:] != 0).any()


def test_ast_labels_from_replace_table(shards, tokenizer, corpus):
    translations = dict(read_table(corpus / "text.en"))
    prompt = prompt_format("ast", replace_text_path=str(corpus / "text.en"))
    loader = make_dm(shards, tokenizer, prompt).val_dataloader()
    for batch in loader:
        for row, key in enumerate(batch["keys"]):
            labels = batch["labels"][row]
            assert tokenizer.decode(labels[labels != IGNORE_INDEX][:-1]) == translations[key]
            start = int(batch["audio_slot_mask"][row].nonzero()[-1]) + 1
            ids = batch["input_ids"][row, start:batch["prompt_width"]]
            assert tokenizer.decode(ids) == "<|im_start|>system\nYou are a helpful assistant." \
                "<|im_end|>\n<|im_start|>user\nTranslate speech to english text. <|im_end|>\n" \
                "<|im_start|>assistant\n" == prompt.text("ast")


def test_instruction_mode_mixes_tasks(shards, tokenizer, corpus):
    prompt = prompt_format("asr_ast", replace_text_path=str(corpus / "text.en"))
    loader = make_dm(shards, tokenizer, prompt).val_dataloader()
    tasks = Counter(task for batch in loader for task in batch["tasks"])
    assert set(tasks) == {"asr", "ast"} and sum(tasks.values()) == 24


def test_dynamic_batches_stay_within_budget(shards, tokenizer):
    budget = 120
    loader = make_dm(shards, tokenizer, dynamic_batching=True, max_frames_in_batch=budget,
                     sort_buffer=24).train_dataloader()
    sizes = []
    for batch in loader:
        frames = batch["features"].shape[1] * len(batch["keys"])
        assert frames <= budget or len(batch["keys"]) == 1
        sizes.append(len(batch["keys"]))
    assert sum(sizes) == 24 and len(set(sizes)) > 1


def test_every_shard_once_across_ranks_and_workers(shards):
    """The deal; tests/data/test_scale.py reads it with real process groups."""
    urls = read_data_list(shards)
    for epoch in range(3):
        dealt = [u for rank in range(2) for worker in range(2)
                 for u in shards_for(urls, epoch, 7, True, rank, 2, worker, 2)]
        assert sorted(dealt) == sorted(urls)


def test_epoch_order_is_seeded_and_resumable(shards, tokenizer):
    first = make_dm(shards, tokenizer, seed=5).train_dataloader()
    epoch0, epoch1 = all_keys(first), all_keys(first)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    resumed = make_dm(shards, tokenizer, seed=5).loader("train", start_epoch=1)
    assert all_keys(resumed) == epoch1  # a resumed run replays epoch 1 exactly
    assert all_keys(make_dm(shards, tokenizer, seed=6).train_dataloader()) != epoch0
    # validation reads data.list's shards in order and each tar's members in order, every pass
    members = []
    for line in Path(shards).read_text().split():
        with tarfile.open(Path(shards).parent / line) as tar:
            members += [m.name.rpartition(".")[0] for m in tar.getmembers()
                        if m.name.endswith(".wav")]
    assert len(members) == 24
    val = make_dm(shards, tokenizer).val_dataloader()
    assert all_keys(val) == members
    assert all_keys(val) == members


def test_workers_read_the_same_utterances(shards, tokenizer):
    serial = all_keys(make_dm(shards, tokenizer).val_dataloader())
    parallel = all_keys(make_dm(shards, tokenizer, num_workers=2).val_dataloader())
    assert sorted(serial) == sorted(parallel) and len(serial) == 24


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bad_data_is_skipped_counted_and_reported(tmp_path, tokenizer, caplog):
    wav = wav_bytes(np.sin(np.arange(16000) / 5).astype(np.float32) * 0.3, 16000)
    good = _tar(tmp_path / "good.tar", [("spk1.utt.001.txt", "一二三".encode()),
                                       ("spk1.utt.001.wav", wav),
                                       ("b.txt", b"four five"), ("b.wav", wav)])
    corrupt = _tar(tmp_path / "corrupt.tar", [("c.txt", b"six"), ("c.wav", b"RIFF" + b"\0" * 60),
                                             ("d.txt", "七".encode()), ("d.wav", wav)])
    non_utf8 = _tar(tmp_path / "text.tar", [("e.txt", b"\xff\xfe bad"), ("e.wav", wav),
                                           ("f.txt", b"only text")])
    truncated = tmp_path / "truncated.tar"
    whole = _tar(tmp_path / "whole.tar", [("g.txt", b"eight"), ("g.wav", wav),
                                         ("h.txt", b"nine"), ("h.wav", wav)]).read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    data_list = tmp_path / "data.list"
    data_list.write_text("\n".join([str(good), str(corrupt), str(non_utf8), str(truncated),
                                    str(tmp_path / "missing.tar")]) + "\n")
    loader = make_dm(data_list, tokenizer).val_dataloader()
    with caplog.at_level(logging.WARNING):
        keys = all_keys(loader)
    assert sorted(keys) == ["b", "d", "g", "spk1.utt.001"]  # grouped on the LAST dot
    assert loader.errors == Counter({"undecodable audio": 1, "text is not UTF-8": 1,
                                     "incomplete utterance (needs .txt and audio)": 1,
                                     "damaged shard": 1, "unreadable shard": 1})
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{corrupt}:c" in messages and f"{non_utf8}:e" in messages
    assert str(tmp_path / "missing.tar") in messages
    assert "val epoch 0: skipped 5 items for bad data" in messages


def test_pipe_urls_need_permission(tmp_path, shards, tokenizer):
    first = read_data_list(shards)[0]
    piped = tmp_path / "piped.list"
    piped.write_text(f"pipe:cat {first}\n")
    refused = make_dm(piped, tokenizer).val_dataloader()
    assert all_keys(refused) == [] and refused.errors["unreadable shard"] == 1
    allowed = make_dm(piped, tokenizer, allow_pipe=True).val_dataloader()
    with tarfile.open(first) as tar:
        expected = sorted({m.name.rsplit(".", 1)[0] for m in tar.getmembers()})
    assert sorted(all_keys(allowed)) == expected


def test_relative_paths_in_data_list(tmp_path, shards):
    (tmp_path / "a.tar").write_bytes(b"")
    listing = tmp_path / "data.list"
    listing.write_text("a.tar\n\n/abs/b.tar\nhttps://host/c.tar\n")
    assert read_data_list(listing) == [str(tmp_path / "a.tar"), "/abs/b.tar", "https://host/c.tar"]
    listing.write_bytes(b"\xef\xbb\xbf/abs/b.tar\r\na.tar\r\n")  # a BOM and CRLF: Notepad's
    assert read_data_list(listing) == ["/abs/b.tar", str(tmp_path / "a.tar")]
    listing.write_text("\n")
    with pytest.raises(ValueError, match="lists no shards"):
        read_data_list(listing)


def test_tar_grouping_on_last_dot(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("a.b.c.txt", b"x"), ("a.b.c.flac", b"y"),
                                     ("a.b.txt", b"z"), ("a.b.wav", b"w")])
    with open(shard, "rb") as stream:
        samples = list(tar_samples([(str(shard), stream)], DataErrors()))
    assert [(s["key"], sorted(k for k in s if k not in ("key", "shard"))) for s in samples] == [
        ("a.b.c", ["flac", "txt"]), ("a.b", ["txt", "wav"])]


def test_speed_perturb_and_spec_augment_change_training_features(shards, tokenizer):
    plain = next(iter(make_dm(shards, tokenizer, shuffle_buffer=0).train_dataloader()))
    augmented = next(iter(make_dm(shards, tokenizer, shuffle_buffer=0, spec_augment=True)
                          .train_dataloader()))
    assert plain["keys"] == augmented["keys"]
    assert (augmented["features"] == 0).sum() > (plain["features"] == 0).sum()
    faster = next(iter(make_dm(shards, tokenizer, shuffle_buffer=0, speed_perturb=[1.5])
                       .train_dataloader()))
    assert faster["keys"] == plain["keys"]
    assert torch.all(faster["feature_lengths"] < plain["feature_lengths"])


@pytest.mark.parametrize("task", ["asr", "ast", "asr_ast"])
def test_datamodule_from_composed_config(task, shards, tokenizer, corpus):
    from hydra.utils import instantiate

    from tests.test_config import _compose

    cfg, _ = _compose("train", [f"task={task}", f"data.train_data_path={shards}",
                                f"data.val_data_path={shards}", "data.num_workers=0",
                                f"task.replace_text_path={corpus / 'text.en'}",
                                "encoder.frontend.cmvn_path=null"])
    if task == "asr":
        cfg.task.replace_text_path = None
    datamodule = instantiate(cfg.data, frontend=instantiate(cfg.encoder.frontend),
                             tokenizer=tokenizer, prompt=instantiate(cfg.task), _convert_="all")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["features"].shape[-1] == 560
    assert batch["num_audio_slots"] == (batch["feature_lengths"] // 2).tolist()
    expected = {"asr": {"asr"}, "ast": {"ast"}, "asr_ast": {"asr", "ast"}}[task]
    assert set(batch["tasks"]) <= expected


def test_spec_augment_masks_the_same_bins_of_every_stacked_frame():
    from mooer.data.pipeline import spec_augment

    features = torch.randn(50, 7 * 80) + 5  # no zeros of its own
    [sample] = spec_augment([{"features": features}], seed=3, num_freq_masks=1,
                            max_freq_width=10, num_time_masks=0, band=80)
    zero_columns = (sample["features"] == 0).all(0).view(7, 80)
    assert 0 < zero_columns[0].sum() <= 10
    assert torch.equal(zero_columns, zero_columns[:1].expand(7, 80))  # one band, 7 frames
    assert not (sample["features"] == 0).all(1).any()  # no time mask asked for
    [timed] = spec_augment([{"features": features}], seed=3, num_freq_masks=0,
                           num_time_masks=1, max_time_width=40, max_time_fraction=0.1)
    masked_rows = (timed["features"] == 0).all(1).sum()
    assert masked_rows <= 5  # at most a tenth of 50 frames
    assert not (features == 0).any()  # the input is not changed in place


def test_packed_training_batches_hold_each_utterance_once_within_the_row_budget(shards, tokenizer,
                                                                                 corpus):
    texts = dict(read_table(corpus / "text"))
    dm = make_dm(shards, tokenizer, packing=True, max_tokens_in_row=256, rows_per_batch=2,
                 sort_buffer=12)
    batches = list(dm.train_dataloader())
    assert sorted(all_keys(batches)) == sorted(texts)  # each utterance exactly once
    used = []
    for batch in batches:
        assert batch["input_ids"].shape[1] == 256 and batch["input_ids"].shape[0] <= 2
        assert batch["prompt_width"] is None
        for row in range(batch["input_ids"].shape[0]):
            segments = batch["segment_ids"][row]
            used.append(int((segments > 0).sum()))
            # each utterance of the row starts at position 0 with its audio slots
            starts = (batch["position_ids"][row] == 0) & (segments > 0)
            assert batch["audio_slot_mask"][row][starts].all()
            assert int(starts.sum()) == int(segments.max())
        answers = {}
        for target, utterance in zip(batch["scored_targets"].tolist(),
                                     batch["scored_utterance"].tolist(), strict=True):
            answers.setdefault(utterance, []).append(target)
        for utterance, key in enumerate(batch["keys"]):
            assert answers[utterance][-1] == tokenizer.eos_token_id
            assert tokenizer.decode(answers[utterance][:-1]) == texts[key]
    # first-fit decreasing fills the rows: all but the last few close to the budget
    assert sorted(used)[len(used) // 2] > 0.8 * 256, used
    validation = next(iter(dm.val_dataloader()))  # decoding needs padded rows
    assert isinstance(validation["prompt_width"], int)
