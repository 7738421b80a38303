"""Shared fixtures: a small synthesized bilingual corpus in Kaldi layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from mooer.demo.corpus import draw_specs, write_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """24 utterances (Mandarin and English) with wav.scp, text, text.en and utt2spk."""
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, draw_specs(24, seed=7, english_ratio=0.4), num_workers=1, progress=False)
    return out
