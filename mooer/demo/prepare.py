"""Make the data a recipe trains on, offline: corpus, train/dev/test shards and a tokenizer."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from mooer.data.pack import pack
from mooer.data.text import read_table
from mooer.demo.corpus import draw_specs, write_corpus
from mooer.demo.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


def _subset(corpus: Path, out: Path, keys: set[str]) -> Path:
    """A Kaldi dir with the `keys` utterances of `corpus` (all of its tables)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "text", "text.en", "utt2spk"):
        rows = [(k, v) for k, v in read_table(corpus / name) if k in keys]
        (out / name).write_text("".join(f"{k} {v}\n" for k, v in rows), encoding="utf-8")
    return out


def ensure_demo_data(data_dir: str | Path, num: int = 32, seed: int = 0, dev_num: int = 0,
                     test_num: int = 0, vocab_size: int = 512, english_ratio: float = 0.3,
                     num_workers: int = 2) -> Path:
    """Synthesize `num` utterances into `data_dir` unless already there, split them by sentence
    (a sentence's utterances all land in one split), pack `train/`, `dev/` (`dev_num` 0: the
    training set itself, for overfitting checks) and `test/demo_test/`, and train `tokenizer/`."""
    data_dir = Path(data_dir)
    done = data_dir / ".complete"
    if done.exists():
        return data_dir
    corpus = data_dir / "corpus"
    log.info("making demo data in %s (%d utterances)", data_dir, num)
    write_corpus(corpus, draw_specs(num, seed, english_ratio), num_workers=num_workers,
                 progress=False)
    texts = dict(read_table(corpus / "text"))
    sentences = sorted(set(texts.values()))
    random.Random(seed).shuffle(sentences)
    held = {"dev": set(), "test": set()}
    for name, wanted in (("dev", dev_num), ("test", test_num)):
        while sentences and sum(texts[k] in held[name] for k in texts) < wanted:
            held[name].add(sentences.pop())
    split_keys = {name: {k for k, t in texts.items() if t in held[name]} for name in held}
    split_keys["train"] = set(texts) - split_keys["dev"] - split_keys["test"]
    for name in ("train", "dev", "test"):
        keys = split_keys[name] or (split_keys["train"] if name == "dev" else set())
        if not keys:
            continue
        kaldi = _subset(corpus, data_dir / "kaldi" / name, keys)
        out = data_dir / name if name != "test" else data_dir / "test" / "demo_test"
        pack(kaldi / "wav.scp", kaldi / "text", out, num_utts_per_shard=200, progress=False)
        for table in ("text", "text.en"):
            (out / table).write_bytes((kaldi / table).read_bytes())
    train_texts = [t for k, t in read_table(corpus / "text") if k in split_keys["train"]]
    train_texts += [t for k, t in read_table(corpus / "text.en") if k in split_keys["train"]]
    train_tokenizer(train_texts, vocab_size, out_dir=data_dir / "tokenizer")
    done.write_text("ok\n")
    return data_dir
