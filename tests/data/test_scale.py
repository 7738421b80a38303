"""The data path on several ranks (gloo, real process groups): each shard is read by one process,
uneven ranks end the epoch together (the join), and what an epoch leaves unread is counted."""

from __future__ import annotations

import io
import json
import random
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mooer.data.audio import wav_bytes
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.data.pipeline import count_utterances, read_data_list, shards_for
from mooer.data.prompts import PromptFormat

SIZES = [1, 7, 2, 5, 3, 9, 1, 4, 6, 2, 8, 1, 3, 5, 2, 6]  # 16 shards of uneven size, 65 utterances


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> Path:
    """16 shards of 1 to 9 utterances of 0.3 to 1.5 s; keys `shardNN-uMM`."""
    out = tmp_path_factory.mktemp("uneven")
    rng = random.Random(0)
    lines = []
    for index, size in enumerate(SIZES):
        path = out / f"shard{index:02d}.tar"
        with tarfile.open(path, "w") as tar:
            for utt in range(size):
                seconds = rng.uniform(0.3, 1.5)
                wave = np.sin(np.arange(int(16000 * seconds)) * rng.uniform(0.05, 0.2)) * 0.3
                for extension, data in (("txt", "一二三四".encode()),
                                        ("wav", wav_bytes(wave.astype(np.float32), 16000))):
                    info = tarfile.TarInfo(f"shard{index:02d}-u{utt:02d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        lines.append(path.name)
    (out / "data.list").write_text("\n".join(lines) + "\n")
    return out / "data.list"


def _read_epochs(rank: int, port: int, data_list: str, tokenizer_dir: str, out: str,
                 options: dict) -> None:
    """One rank: two epochs over the train loader; writes the keys it trained on and the
    unread counts the loader reported."""
    from transformers import AutoTokenizer

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=2)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = PromptFormat("asr", "{}", {"asr": "Transcribe speech to text. "})
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt, train_data_path=data_list,
                          min_length=0, shuffle_buffer=4, sort_buffer=0, downsample=2,
                          num_workers=2, seed=3, **options)
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(2):
        keys = [[k for k in batch["keys"]] for batch in loader]
        epochs.append({"batches": keys, "unread": loader.unread})
    Path(out, f"rank{rank}.json").write_text(json.dumps(epochs))
    torch.distributed.destroy_process_group()


def run_two_ranks(data_list: Path, tokenizer, tmp_path: Path, **options) -> list[list[dict]]:
    tokenizer.save_pretrained(tmp_path / "tok")
    mp.start_processes(_read_epochs, args=(_free_port(), str(data_list), str(tmp_path / "tok"),
                                           str(tmp_path), options), nprocs=2, join=True,
                       start_method="fork")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_shards_are_dealt_by_rank_then_worker(uneven_shards):
    urls = read_data_list(uneven_shards)
    for epoch in range(3):
        deals = {(r, w): shards_for(urls, epoch, 3, True, r, 8, w, 2) for r in range(8)
                 for w in range(2)}
        dealt = [u for shards in deals.values() for u in shards]
        assert sorted(dealt) == sorted(urls)  # each shard to exactly one process
        assert all(len(shards) == 1 for shards in deals.values())  # 16 shards, 16 readers
        for r in range(8):  # a rank's workers split that rank's deal
            rank_deal = shards_for(urls, epoch, 3, True, r, 8, 0, 1)
            assert sorted(deals[r, 0] + deals[r, 1]) == sorted(rank_deal)
    orders = {tuple(shards_for(urls, e, 3, True, 0, 1, 0, 1)) for e in range(3)}
    assert len(orders) == 3  # reseeded every epoch


def test_count_utterances_reads_headers(uneven_shards):
    urls = read_data_list(uneven_shards)
    assert [count_utterances(u) for u in urls] == SIZES
    assert count_utterances("http://example.invalid/a.tar") is None


@pytest.mark.parametrize("batching", [{"batch_size": 3},
                                      {"dynamic_batching": True, "max_frames_in_batch": 200}])
def test_two_ranks_two_workers_read_each_utterance_once_or_count_it_unread(
        uneven_shards, tokenizer, tmp_path, batching):
    ranks = run_two_ranks(uneven_shards, tokenizer, tmp_path, **batching)
    urls = read_data_list(uneven_shards)
    total = sum(SIZES)
    unread_seen = []
    for epoch in range(2):
        steps = [len(ranks[r][epoch]["batches"]) for r in range(2)]
        assert steps[0] == steps[1] > 0  # the ranks ended the epoch together
        keys = [k for r in range(2) for batch in ranks[r][epoch]["batches"] for k in batch]
        assert len(keys) == len(set(keys))  # nothing repeated, within or across ranks
        unread = ranks[0][epoch]["unread"]
        assert unread == ranks[1][epoch]["unread"]  # summed over ranks, known to both
        assert len(keys) + unread["utterances"] == total
        assert unread["uncounted_shards"] == 0
        unread_seen.append(unread["utterances"])
        for rank in range(2):  # a rank trains only on the shards dealt to it
            dealt = {Path(u).stem for w in range(2)
                     for u in shards_for(urls, epoch, 3, True, rank, 2, w, 2)}
            trained = {k.split("-")[0] for batch in ranks[rank][epoch]["batches"] for k in batch}
            assert trained <= dealt
    assert unread_seen[0] > 0 or unread_seen[1] > 0  # uneven shards: the join left some


def test_bucketed_dynamic_batches_hold_similar_lengths_within_budget():
    from mooer.data.pipeline import batch_dynamic, sequence_length

    rng = random.Random(1)
    samples = [{"key": i, "features": torch.zeros(int(rng.lognormvariate(3.5, 0.8)) + 1, 2),
                "num_audio_slots": 3, "prompt_ids": [0] * 5, "answer_ids": [0] * rng.randint(1, 30)}
               for i in range(500)]
    out = list(batch_dynamic(iter(samples), max_frames=2000, max_tokens=1500, bucket_ratio=1.1))
    assert sorted(s["key"] for b in out for s in b) == list(range(500))  # each exactly once
    real = padded = 0
    for batch in out:
        lengths = [len(s["features"]) for s in batch]
        assert max(lengths) * len(batch) <= 2000 or len(batch) == 1
        assert max(map(sequence_length, batch)) * len(batch) <= 1500 or len(batch) == 1
        assert max(lengths) < min(lengths) * 1.1  # one duration bucket
        real, padded = real + sum(lengths), padded + max(lengths) * len(batch)
    assert real / padded > 0.9
