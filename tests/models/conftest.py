"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from tests.conftest import prompt_format
from tests.models.test_speech_llm import samples_of


@pytest.fixture(scope="session")
def samples(shards, tokenizer):
    """8 tokenized utterances of the corpus, as the pipeline gives them to the collate."""
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                          val_data_path=str(shards), val_batch_size=8, min_length=0,
                          sort_buffer=0)
    batch = next(iter(dm.val_dataloader()))
    return samples_of(batch, range(8))
