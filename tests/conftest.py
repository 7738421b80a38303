"""Shared fixtures: a small synthesized bilingual corpus in Kaldi layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one thread per worker. With torch's default of one thread per core
    # each worker (and the train.py runs it starts, which inherit this) spins on the other's core,
    # and a 27 s training test took 198 s in CI.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from mooer.demo.corpus import draw_specs, write_corpus

REPO = Path(__file__).resolve().parents[1]


class StubTokenizer:
    """What building a SpeechLLM reads of a tokenizer: its special ids and its size."""

    def __init__(self, size: int) -> None:
        self.eos_token_id, self.pad_token_id, self.size = 0, 1, size

    def __len__(self) -> int:
        return self.size


def prompt_format(task: str = "asr", **changes):
    """conf/task/<task>.yaml's PromptFormat, with `changes` (e.g. replace_text_path=...)."""
    from hydra.utils import instantiate

    from mooer.config import task_config

    cfg = task_config(task)
    for key, value in changes.items():
        cfg[key] = value
    return instantiate(cfg)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """24 utterances (Mandarin and English) with wav.scp, text, text.en and utt2spk."""
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, draw_specs(24, seed=7, english_ratio=0.4), num_workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer(corpus, tmp_path_factory):
    """A byte-level BPE tokenizer trained offline on the corpus' transcripts and translations."""
    from transformers import AutoTokenizer

    from mooer.data.text import read_table
    from mooer.demo.tokenizer import train_tokenizer

    texts = [t for _, t in read_table(corpus / "text")] + [t for _, t in read_table(corpus / "text.en")]
    out_dir = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(texts, vocab_size=600, out_dir=out_dir,
                    prompts=prompt_format("asr_ast").texts())
    return AutoTokenizer.from_pretrained(str(out_dir))  # as users load it


@pytest.fixture(scope="session")
def shards(corpus, tmp_path_factory) -> Path:
    """The corpus packed into 5 shards of at most 5 utterances; returns the data.list path."""
    from mooer.data.pack import pack

    out = tmp_path_factory.mktemp("shards")
    pack(corpus / "wav.scp", corpus / "text", out, num_utts_per_shard=5, progress=False)
    return out / "data.list"


def make_tiny_data(tmp_path_factory, num: int, vocab_size: int, shard_size: int = 200) -> Path:
    """A `paths.data_dir` for experiment=tiny: `num` corpus utterances in shards of `shard_size`,
    with their tokenizer and CMVN (mooer.demo.prepare)."""
    from mooer.demo.prepare import ensure_demo_data

    path = tmp_path_factory.mktemp("data")
    ensure_demo_data(path / "tiny", num=num, seed=0, vocab_size=vocab_size, shard_size=shard_size,
                     prompt=prompt_format("asr"))
    return path


TINY = ["encoder=paraformer_tiny", "llm=tiny"]


@pytest.fixture(scope="session")
def tiny_release(corpus, tokenizer, tmp_path_factory):
    """A test_data_dir with demo_test (shards + text + text.en) and raw (wav.scp + text), and a
    tiny model (random init, `TINY`) exported in MooER's layout: (root, tokenizer dir)."""
    import shutil

    import torch

    from mooer.checkpoints import export_mooer
    from mooer.config import compose_config
    from mooer.data.pack import pack
    from mooer.models.build import build_speech_llm

    root = tmp_path_factory.mktemp("eval")
    test_dir = root / "test"
    shard_dir, raw_dir = test_dir / "demo_test", test_dir / "raw"
    raw_dir.mkdir(parents=True)
    for name in ("wav.scp", "text"):
        shutil.copy(corpus / name, raw_dir / name)
    pack(corpus / "wav.scp", corpus / "text", shard_dir, num_utts_per_shard=7, progress=False)
    shutil.copy(corpus / "text", shard_dir / "text")
    shutil.copy(corpus / "text.en", shard_dir / "text.en")
    cfg, _ = compose_config("train", TINY)
    torch.manual_seed(0)  # the same random model whichever tests ran before on this worker
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)
    export_mooer(model, root / "release")
    # a checkpoint of every weight, as a run that trains the whole tiny model leaves
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               root / "full.ckpt")
    return root, tokenizer.name_or_path
