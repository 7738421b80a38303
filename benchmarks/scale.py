"""The data path at cluster scale, in one run: what each (rank, worker) process reads, and how
much of a batch is padding with fixed batches against bucketed dynamic batches.

    python benchmarks/scale.py [--ranks 8] [--workers 2] [--shards 64] [--num 320]

1. Shards and bytes each of ranks x workers processes opens in an epoch (the deal computed for
   every process without a process group), against the old way (every process read every shard).
2. Padding efficiency (real / padded frames and tokens) of fixed batch 16 against bucketed dynamic
   batching (sort buffer + frame and token budgets) at the same memory budget: the padded size a
   fixed batch of 16 reaches with the longest utterances. On the demo corpus and on a corpus with
   a long tail of durations (0.5 to 20 s). Then the tiny model's training throughput for both.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from mooer.config import compose_config, task_config
from mooer.data.audio import wav_bytes
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.data.pack import pack
from mooer.data.pipeline import read_data_list, shards_for
from mooer.demo.prepare import ensure_demo_data
from mooer.models.build import build_speech_llm
from mooer.models.llm import load_tokenizer

# the recipe's prompt format (experiment=tiny: conf/task/asr.yaml)
ASR = instantiate(task_config("asr"))

DIGITS = "零一二三四五六七八九"


def long_tail_corpus(out: Path, num: int, seed: int = 0) -> Path:
    """`num` utterances of 0.5 to 20 s (log-normal, median about 3 s): tones in noise with a
    digit transcript of about 3 characters a second; packed in shards of 20. Returns data.list."""
    if (out / "shards" / "data.list").exists():
        return out / "shards" / "data.list"
    rng = random.Random(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    scp, text = [], []
    for index in range(num):
        seconds = min(20.0, max(0.5, rng.lognormvariate(math.log(3.0), 0.8)))
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) + 0.01 * np.random.default_rng(
            index).standard_normal(len(t))
        path = out / "wav" / f"tail{index:05d}.wav"
        path.write_bytes(wav_bytes(wave.astype(np.float32), 16000))
        scp.append(f"tail{index:05d} {path}")
        text.append(f"tail{index:05d} " + "".join(rng.choice(DIGITS)
                                                  for _ in range(max(1, round(3 * seconds)))))
    (out / "wav.scp").write_text("\n".join(scp) + "\n")
    (out / "text").write_text("\n".join(text) + "\n")
    pack(out / "wav.scp", out / "text", out / "shards", num_utts_per_shard=20, progress=False)
    return out / "shards" / "data.list"


def io_table(data_list: Path, ranks: int, workers: int) -> None:
    urls = read_data_list(data_list)
    sizes = {u: Path(u).stat().st_size for u in urls}
    total = sum(sizes.values())
    per_process = [shards_for(urls, 0, 42, True, r, ranks, w, workers)
                   for r in range(ranks) for w in range(workers)]
    opened = [len(s) for s in per_process]
    read = [sum(sizes[u] for u in s) for s in per_process]
    readers = ranks * workers
    every_shard_once = sorted(u for s in per_process for u in s) == sorted(urls)
    target = total / readers + max(sizes.values())
    print(f"\n{len(urls)} shards ({total / 1e6:.1f} MB), {ranks} ranks x {workers} workers = "
          f"{readers} processes; each shard opened by exactly one process: {every_shard_once}\n")
    print("| deal | shards per process (min-max) | bytes per process, max | of the total | "
          "target: 1/16 + one shard |\n|---|---|---|---|---|")
    print(f"| every process reads every shard (before) | {len(urls)}-{len(urls)} | "
          f"{total / 1e6:.2f} MB | 100.0 % | {target / total:.1%} |")
    print(f"| by rank, then worker (now) | {min(opened)}-{max(opened)} | {max(read) / 1e6:.2f} MB "
          f"| {max(read) / total:.1%} | {target / total:.1%} |")


def longest(data_list: Path, tokenizer) -> tuple[int, int]:
    """The longest utterance's frames and LLM tokens (one unsorted pass, batch 1)."""
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, ASR, train_data_path=str(data_list),
                          batch_size=1, min_length=0, max_length=10**9, sort_buffer=0,
                          num_workers=0)
    frames = tokens = 0
    for batch in dm.loader("train"):
        frames = max(frames, batch["features"].shape[1])
        tokens = max(tokens, batch["input_ids"].shape[1])
    return frames, tokens


def batches(data_list: Path, tokenizer, dynamic: bool, max_frames: int, max_tokens: int
            ) -> list[dict]:
    options = {"dynamic_batching": True, "max_frames_in_batch": max_frames,
               "max_tokens_in_batch": max_tokens} if dynamic else {"sort_buffer": 0}
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, ASR, train_data_path=str(data_list),
                          batch_size=16, min_length=0, max_length=10**9, shuffle_buffer=500,
                          num_workers=0, **options)
    return list(dm.train_dataloader())


def padding(batch_list: list[dict]) -> tuple[float, float, int, int]:
    """Real / padded frames and tokens, padded frames of the largest batch, batches."""
    real_frames = sum(int(b["feature_lengths"].sum()) for b in batch_list)
    padded_frames = sum(b["features"].shape[0] * b["features"].shape[1] for b in batch_list)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batch_list)
    padded_tokens = sum(b["input_ids"].numel() for b in batch_list)
    peak = max(b["features"].shape[0] * b["features"].shape[1] for b in batch_list)
    return real_frames / padded_frames, real_tokens / padded_tokens, peak, len(batch_list)


def train_throughput(model, batch_list: list[dict], repeats: int) -> float:
    """Samples/s of fwd + bwd + AdamW over the batches, best of `repeats` passes."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    samples = sum(len(b["keys"]) for b in batch_list)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batch_list:
            model(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        best = max(best, samples / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--num", type=int, default=320, help="utterances per corpus")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mooer-bench-scale"))
    args = parser.parse_args()
    torch.manual_seed(0)

    tail = long_tail_corpus(args.work / "tail", max(args.num, args.shards * 20) // 20 * 20)
    io_table(tail, args.ranks, args.workers)

    ensure_demo_data(args.work / "tiny", num=args.num, seed=0, vocab_size=400, shard_size=40,
                     prompt=ASR)
    cfg, _ = compose_config("train", ["experiment=tiny", f"paths.data_dir={args.work}"])
    tokenizer = load_tokenizer(cfg.llm.tokenizer_path)
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)
    corpora = {"demo corpus": Path(cfg.data.train_data_path), "long tail 0.5-20 s": tail}
    print("\nmemory budget: padded frames and tokens of a fixed batch of 16 longest utterances\n")
    print("| corpus | batching | batches | frames real | tokens real | largest batch, padded "
          "frames | tiny model samples/s |\n|---|---|---|---|---|---|---|")
    for name, data_list in corpora.items():
        frames, tokens = longest(data_list, tokenizer)
        budget = (16 * frames, 16 * tokens)
        for label, dynamic in (("fixed 16", False), ("bucketed dynamic", True)):
            batch_list = batches(data_list, tokenizer, dynamic, *budget)
            frames_real, tokens_real, peak, count = padding(batch_list)
            rate = train_throughput(model, batch_list, args.repeats)
            print(f"| {name} | {label} | {count} | {frames_real:.1%} | {tokens_real:.1%} | "
                  f"{peak} of {budget[0]} | {rate:.1f} |")
    print(f"\ntorch threads {torch.get_num_threads()}; throughput: best of {args.repeats} passes")


if __name__ == "__main__":
    main()
