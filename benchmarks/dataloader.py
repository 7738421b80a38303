"""Whole-pipeline throughput: shards -> collated batches (Paraformer frontend, ASR prompts).

    python benchmarks/dataloader.py [--num 2000]

Compares SpeechDataModule at 0 and 2 workers with a straightforward per-sample baseline in the
same run: per-frame LFR loop, prompt re-tokenized with every answer, Python-loop padding collate.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from hydra.utils import instantiate

from mooer.config import task_config
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import KaldiFbank, ParaformerFrontend, write_kaldi_cmvn
from mooer.data.pack import pack
from mooer.data.pipeline import read_data_list
from mooer.data.prompts import IGNORE_INDEX
from mooer.data.text import read_table
from mooer.demo.corpus import draw_specs, write_corpus
from mooer.demo.tokenizer import train_tokenizer


def prepare(work: Path, num: int):
    """Short utterances (numbers, ~1.3 s), their shards, a CMVN file and a tokenizer."""
    corpus, shards = work / "corpus", work / "shards"
    if not (shards / "data.list").exists():
        write_corpus(corpus, draw_specs(num, seed=11, kinds=("number",)), num_workers=2)
        pack(corpus / "wav.scp", corpus / "text", shards, num_utts_per_shard=250, num_threads=2)
    cmvn = work / "am.mvn"
    write_kaldi_cmvn(cmvn, torch.full((560,), -10.0), torch.full((560,), 0.2))
    texts = [t for _, t in read_table(corpus / "text")]
    seconds = [sf.info(p).duration for _, p in read_table(corpus / "wav.scp")]
    return shards / "data.list", cmvn, train_tokenizer(texts, 500), float(np.mean(seconds))


def lfr_per_frame(features: torch.Tensor, m: int = 7, n: int = 6) -> torch.Tensor:
    """LFR written frame by frame (as FunASR/MooER do)."""
    frames = []
    total = features.shape[0]
    out = -(-total // n)
    padded = torch.vstack([features[0].repeat((m - 1) // 2, 1), features])
    total += (m - 1) // 2
    for i in range(out):
        if m <= total - i * n:
            frames.append(padded[i * n:i * n + m].reshape(1, -1))
        else:
            frame = padded[i * n:].reshape(-1)
            for _ in range(m - (total - i * n)):
                frame = torch.hstack([frame, padded[-1]])
            frames.append(frame.reshape(1, -1))
    return torch.vstack(frames)


def baseline_batches(data_list: Path, tokenizer, cmvn, batch_size: int):
    """The straightforward per-sample loader."""
    fbank = KaldiFbank()
    shift, scale = cmvn
    prompt = instantiate(task_config("asr")).text("asr")
    batch = []
    for shard in read_data_list(data_list):
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            for txt, wav in zip(members[0::2], members[1::2], strict=True):
                text = tar.extractfile(txt).read().decode("utf-8")
                audio, _ = sf.read(tar.extractfile(wav), dtype="float32")
                features = lfr_per_frame(fbank(torch.from_numpy(audio) * 32768))
                features = (features + shift) * scale
                slots = len(features) // 2
                prompt_len = len(tokenizer.encode(prompt))
                ids = [-1] * slots + tokenizer.encode(prompt + text) + [tokenizer.eos_token_id]
                batch.append((ids, slots + prompt_len, features))
                if len(batch) == batch_size:
                    yield collate_loop(batch, tokenizer.pad_token_id)
                    batch = []
    if batch:
        yield collate_loop(batch, tokenizer.pad_token_id)


def collate_loop(batch, pad_id):
    """Padding element by element, in Python lists."""
    prompt_max = max(p for _, p, _ in batch)
    answer_max = max(len(ids) - p for ids, p, _ in batch)
    rows, labels, masks = [], [], []
    for ids, p, _ in batch:
        left = [pad_id] * (prompt_max - p)
        right = [pad_id] * (answer_max - (len(ids) - p))
        rows.append(left + ids + right)
        labels.append([IGNORE_INDEX] * (prompt_max) + ids[p:] + [IGNORE_INDEX] * len(right))
        masks.append([0] * len(left) + [1] * len(ids) + [0] * len(right))
    frames = max(len(f) for _, _, f in batch)
    features = torch.zeros(len(batch), frames, batch[0][2].shape[1])
    for i, (_, _, f) in enumerate(batch):
        for t in range(len(f)):
            features[i, t] = f[t]
    return torch.tensor(rows), torch.tensor(labels), torch.tensor(masks), features


def throughput(make_batches, repeats: int = 3) -> tuple[float, int]:
    """Best samples/s over `repeats` full passes, and the samples of a pass."""
    best = 0.0
    for _ in range(repeats):
        started, count = time.perf_counter(), 0
        for batch in make_batches():
            count += len(batch["keys"]) if isinstance(batch, dict) else len(batch[0])
        best = max(best, count / (time.perf_counter() - started))
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mooer-bench-data"))
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    data_list, cmvn_path, tokenizer, mean_seconds = prepare(args.work, args.num)
    frontend = ParaformerFrontend(cmvn_path)
    rows = []
    rate, count = throughput(lambda: baseline_batches(
        data_list, tokenizer, (frontend.shift, frontend.scale), args.batch_size))
    rows.append(("baseline, per sample, 0 workers", rate))
    for workers in (0, 2):
        dm = SpeechDataModule(frontend, tokenizer, instantiate(task_config("asr")),
                              train_data_path=str(data_list),
                              batch_size=args.batch_size, num_workers=workers,
                              shuffle_buffer=500, sort_buffer=200, min_length=0,
                              max_length=10**9)
        loader = dm.train_dataloader()
        rate, seen = throughput(lambda: loader)  # noqa: B023 (used at once)
        assert seen == count, (seen, count)
        rows.append((f"mooer SpeechDataModule, {workers} workers", rate))
    base = rows[0][1]
    print(f"\n{count} utterances, mean {mean_seconds:.2f} s, batch {args.batch_size}, best of 3, "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"| {'loader':36s} | {'samples/s':>9s} | {'vs baseline':>11s} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 13}|")
    for name, rate in rows:
        print(f"| {name:36s} | {rate:9.0f} | {rate / base:10.2f}x |")


if __name__ == "__main__":
    main()
