"""Make the data a recipe trains on, offline: corpus, train/dev/test shards and a tokenizer."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import soundfile as sf

from mooer.data.features import estimate_cmvn, write_kaldi_cmvn
from mooer.data.pack import pack
from mooer.data.prompts import PromptFormat
from mooer.data.text import read_table
from mooer.demo.corpus import (
    EN_VOICES,
    ZH_VOICES,
    UtteranceSpec,
    draw_specs,
    speaker_id,
    write_corpus,
)
from mooer.demo.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


# voices kept out of training, so a test set measures generalization to new speakers
UNSEEN_ZH_VOICES = ("cmn+m6", "cmn+m7", "cmn+f5")
UNSEEN_EN_VOICES = ("en-us+m6", "en-us+m7", "en-us+f5")
TRAIN_ZH_VOICES = tuple(v for v in ZH_VOICES if v not in UNSEEN_ZH_VOICES)
TRAIN_EN_VOICES = tuple(v for v in EN_VOICES if v not in UNSEEN_EN_VOICES)


def _unseen_voices(data_dir: Path, corpus: Path, test_keys: set[str], num: int, seed: int,
                   num_workers: int) -> None:
    """Test sentences again, spoken by held-out voices: test/demo_unseen_voices/."""
    texts, translations = dict(read_table(corpus / "text")), dict(read_table(corpus / "text.en"))
    rng = random.Random(seed + 1)
    chosen = rng.sample(sorted(test_keys), min(num, len(test_keys)))
    specs = []
    for index, key in enumerate(chosen):
        english = texts[key] == translations[key]
        voice = rng.choice(UNSEEN_EN_VOICES if english else UNSEEN_ZH_VOICES)
        specs.append(UtteranceSpec(
            uttid=f"{speaker_id(voice)}-unseen{index:06d}", lang="en" if english else "zh",
            text=texts[key], translation=translations[key], voice=voice,
            rate=rng.randint(140, 200), pitch=rng.randint(30, 70),
            pitch_range=rng.randint(30, 80), seed=rng.getrandbits(32)))
    kaldi = data_dir / "kaldi" / "unseen_voices"
    write_corpus(kaldi, specs, num_workers=num_workers, progress=False)
    out = data_dir / "test" / "demo_unseen_voices"
    pack(kaldi / "wav.scp", kaldi / "text", out, num_utts_per_shard=200, progress=False)
    for table in ("text", "text.en"):
        (out / table).write_bytes((kaldi / table).read_bytes())


def _write_cmvn(path: Path, corpus: Path, train_keys: list[str], seed: int,
                sample: int = 500) -> None:
    """Global CMVN of the LFR features over (a sample of) the training audio, as am.mvn."""
    paths = dict(read_table(corpus / "wav.scp"))
    keys = random.Random(seed).sample(train_keys, min(sample, len(train_keys)))
    waves = (sf.read(paths[k], dtype="float32")[0] for k in keys)
    write_kaldi_cmvn(path, *estimate_cmvn(waves))


def _subset(corpus: Path, out: Path, keys: set[str]) -> Path:
    """A Kaldi dir with the `keys` utterances of `corpus` (all of its tables)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "text", "text.en", "utt2spk"):
        rows = [(k, v) for k, v in read_table(corpus / name) if k in keys]
        (out / name).write_text("".join(f"{k} {v}\n" for k, v in rows), encoding="utf-8")
    return out


def ensure_demo_data(data_dir: str | Path, num: int = 32, seed: int = 0, dev_num: int = 0,
                     test_num: int = 0, vocab_size: int = 512, english_ratio: float = 0.3,
                     unseen_voices_num: int = 0, num_workers: int = 2,
                     shard_size: int = 200, prompt: PromptFormat | None = None) -> Path:
    """Synthesize `num` utterances into `data_dir` unless already there, split them by sentence
    (a sentence's utterances all land in one split), pack `train/`, `dev/` (`dev_num` 0: the
    training set itself, for overfitting checks) and `test/demo_test/`, and train `tokenizer/`.
    With `unseen_voices_num`, `test/demo_unseen_voices/` holds the test sentences spoken by voices
    that no training utterance uses. `shard_size`: utterances per shard. The tokenizer also
    learns the words of `prompt` (the recipe's prompt format), when given."""
    data_dir = Path(data_dir)
    done = data_dir / ".complete"
    if done.exists():
        return data_dir
    corpus = data_dir / "corpus"
    log.info("making demo data in %s (%d utterances)", data_dir, num)
    write_corpus(corpus, draw_specs(num, seed, english_ratio, TRAIN_ZH_VOICES, TRAIN_EN_VOICES),
                 num_workers=num_workers, progress=False)
    texts = dict(read_table(corpus / "text"))
    counts = Counter(texts.values())
    # held-out sentences come from the open grammar (numbers, dates...), not the few fixed
    # phrases: a test sentence is new, its words are not
    sentences = sorted(t for t, n in counts.items() if n <= 2)
    random.Random(seed).shuffle(sentences)
    held: dict[str, set[str]] = {"dev": set(), "test": set()}
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
        pack(kaldi / "wav.scp", kaldi / "text", out, num_utts_per_shard=shard_size,
             progress=False)
        for table in ("text", "text.en"):
            (out / table).write_bytes((kaldi / table).read_bytes())
    if unseen_voices_num and split_keys["test"]:
        _unseen_voices(data_dir, corpus, split_keys["test"], unseen_voices_num, seed,
                       num_workers)
    train_texts = [t for k, t in read_table(corpus / "text") if k in split_keys["train"]]
    train_texts += [t for k, t in read_table(corpus / "text.en") if k in split_keys["train"]]
    train_tokenizer(train_texts, vocab_size, out_dir=data_dir / "tokenizer",
                    prompts=prompt.texts() if prompt else ())
    _write_cmvn(data_dir / "am.mvn", corpus, sorted(split_keys["train"]), seed)
    done.write_text("ok\n")
    return data_dir
