"""The CTC posteriors as the host reads them (`mooer.inference.posteriors`): only the columns
asked for, renumbered with the blank last, and spotting, rewriting and word times reading
those exactly as they read the whole vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mooer.inference.posteriors as posteriors_module
from mooer.inference.hotwords import ContextGraph
from mooer.inference.posteriors import Posteriors
from tests.inference.test_rewrite import CharTokenizer


@pytest.fixture
def copied(monkeypatch):
    """Posteriors on the CPU copied by columns, as from an accelerator."""
    monkeypatch.setattr(posteriors_module, "IN_PLACE", frozenset())


def batch(seed: int = 0, rows: int = 3, frames: int = 9, classes: int = 60) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, frames, classes, generator=generator) * 3).log_softmax(-1)


def test_the_host_reads_posteriors_in_place(monkeypatch):
    log_probs = batch()
    posteriors = Posteriors(log_probs, [9, 4, 0])
    host, lists = posteriors.columns([[5, 9], [40], []])
    assert host.data_ptr() == log_probs.data_ptr() and host.shape == (3, 9, 60)
    assert lists == [[5, 9], [40], []]
    rows, lists = posteriors.rows([1], [[7, 7]])
    assert rows[0].shape == (4, 60) and rows[0].data_ptr() == log_probs[1].data_ptr()
    assert lists == [[7, 7]]


def test_columns_are_copied_for_the_tokens_asked_for_with_the_blank_last(copied):
    log_probs = batch()
    posteriors = Posteriors(log_probs, torch.tensor([9, 4, 0]))
    host, lists = posteriors.columns([[40, 5, 40], [], [9]])
    assert host.shape == (3, 9, 4) and host.device.type == "cpu"
    for column, token in enumerate([5, 9, 40, 59]):  # in order, then the blank
        assert torch.equal(host[..., column], log_probs[..., token])
    assert lists == [[2, 0, 2], [], [1]]
    rows, lists = posteriors.rows([2, 1], [[33], [33, 12]])
    assert [row.shape for row in rows] == [(0, 3), (4, 3)]  # each row's own frames
    assert torch.equal(rows[1], log_probs[1, :4][:, [12, 33, 59]])
    assert lists == [[1], [1, 0]]
    with pytest.raises(ValueError, match="token 59 has no class of its own"):
        posteriors.columns([[3, 59]])  # the blank is not a token
    with pytest.raises(ValueError, match="token -1"):
        posteriors.rows([0], [[-1]])


def test_spotting_on_copied_columns_finds_what_it_finds_on_the_whole(monkeypatch):
    """`hearing` over a batch whose rows have their own lists, one of them none: the same
    scores and stretches from the columns of the sequences searched as from all 60."""
    from mooer.inference.decode import hearing

    rng = np.random.default_rng(3)
    tokenizer = CharTokenizer()

    def graph() -> ContextGraph:
        words = {"".join(rng.choice(list("ABCDEFGHIJ"), size=rng.integers(1, 4)))
                 for _ in range(40)}
        return ContextGraph.build([(word, None) for word in sorted(words)], tokenizer)

    one, other = graph(), graph()
    graphs = [one, None, other, one]
    log_probs, lengths = batch(4, rows=4), [9, 7, 5, 0]
    whole = hearing((log_probs, lengths), graphs, -4.0)
    asked = []
    original = Posteriors._index

    def spy(self, lists):
        index, renumbered = original(self, lists)
        asked.append(len(index))
        return index, renumbered

    monkeypatch.setattr(Posteriors, "_index", spy)
    monkeypatch.setattr(posteriors_module, "IN_PLACE", frozenset())
    copied = hearing((log_probs, lengths), graphs, -4.0)
    assert whole[1] is None and copied[1] is None
    for a, b in zip(whole, copied, strict=True):
        if a is not None and b is not None:
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.first, b.first)
            np.testing.assert_array_equal(a.last, b.last)
    assert sum(np.isfinite(found.scores).sum() for found in copied if found is not None) > 20
    # one copy a graph, of at most the letters A-J in either case, the space and the blank
    assert len(asked) == 2 and max(asked) <= 22


def test_decoding_reads_the_same_from_copied_columns(tokenizer, shards, monkeypatch):
    """A tiny model with a CTC head decodes with a checked list, rewriting and word times:
    the same transcripts, token ids and word times (confidence included) whether the host
    reads the posteriors whole or copies the columns it reads, and rewriting changed
    answers there (a random head hears every listed word somewhere at -1e9 nats)."""
    monkeypatch.setattr("mooer.inference.rewrite.REWRITE_DROP", 1e9)
    from mooer.data.features import ParaformerFrontend
    from mooer.inference.decode import decode, decoding_loader
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    model = tiny_model(tokenizer, 3, "encoder.ctc_weight=0.3").eval()
    loader = decoding_loader(shards, model, ParaformerFrontend(None), prompt_format("asr"),
                             "asr", 4)
    graph = ContextGraph.build([(word, 5.0) for word in ("二十七", "三十", "八", "九十九")],
                               tokenizer)
    options = {"num_beams": 2, "max_new_tokens": 6, "eos_bias": 0, "hotwords": graph,
               "hotword_check": -3.0, "timestamps": True}

    def run(**extra):
        return decode(model, loader, {**options, **extra}, torch.device("cpu"), torch.float32,
                      progress=False)

    whole = run(hotword_rewrite=-1e9)
    unwritten = run(hotword_rewrite=None)
    monkeypatch.setattr(posteriors_module, "IN_PLACE", frozenset())
    copied = run(hotword_rewrite=-1e9)
    assert copied.hypotheses == whole.hypotheses and copied.tokens == whole.tokens
    assert copied.words == whole.words
    assert sum(bool(words) for words in copied.words.values()) >= 2
    assert whole.hypotheses != unwritten.hypotheses


def test_the_posteriors_are_kept_through_the_beam_only_where_read_after_it(tokenizer, shards):
    """Checked only, nothing reads the CTC head's posteriors after the list is heard: they are
    let go before beam search (their memory free for it); rewriting or word times keep them."""
    from mooer.data.collate import move_batch
    from mooer.data.features import ParaformerFrontend
    from mooer.inference.decode import decoding_loader, generate_batch
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    model = tiny_model(tokenizer, 3, "encoder.ctc_weight=0.3").eval()
    loader = decoding_loader(shards, model, ParaformerFrontend(None), prompt_format("asr"),
                             "asr", 4)
    batch = move_batch(next(iter(loader)), torch.device("cpu"), torch.float32)
    graph = ContextGraph.build([("二十七", 5.0)], tokenizer)
    options = {"num_beams": 2, "max_new_tokens": 4, "eos_bias": 0}
    graphs = [graph] * len(batch["keys"])
    with torch.no_grad():
        checked = generate_batch(model, batch, graphs, options, -1e9, None)
        rewritten = generate_batch(model, batch, graphs, options, -1e9, -1e9)
        timed = generate_batch(model, batch, graphs, options, -1e9, None, timestamps=True)
        head, frames = model.ctc_log_probs(batch)
    assert checked[2] is None
    for kept in (rewritten[2], timed[2]):
        assert isinstance(kept, Posteriors) and kept.frames == [int(n) for n in frames]
        assert torch.equal(kept.log_probs, head)
