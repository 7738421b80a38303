"""Hotword rewriting (`mooer.inference.rewrite`): words and spans, the CTC likelihood, which
candidates a heard word makes, the decision by the model's joint score, and decoding with it."""

from __future__ import annotations

import difflib
import itertools
import math

import numpy as np
import pytest
import torch

from mooer.data.hotword_list import (
    CHECKED_SCORE,
    REWRITE_DROP,
    REWRITE_SHARE,
    REWRITE_WEIGHT,
)
from mooer.inference.hotwords import ContextGraph
from mooer.inference.rewrite import (
    Placed,
    Try,
    candidates,
    ctc_log_likelihoods,
    glue,
    join,
    placed,
    rewrite,
    rewritings,
    substitutions,
    to_try,
    units,
)

BLANK = 59


class CharTokenizer:
    """One token a character: A=1, ..., Z=26, a space 27, a=33, ...; eos 58 (the CTC blank is
    59, past the vocabulary)."""

    eos_token_id = 58

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [27 if c == " " else ord(c) - 64 for c in text]

    def decode(self, ids: list[int], **_) -> str:
        return "".join(" " if i == 27 else chr(i + 64) for i in ids)

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(text) for text in texts]}


def posteriors(labels: list[int], frames_each: int = 1, sure: float = 0.9) -> torch.Tensor:
    """CTC log-posteriors [T, 60] whose best path spells `labels` (each for `frames_each`
    frames, a blank between), `sure` on the label of each frame."""
    path = []
    for label in labels:
        path += [label] * frames_each + [BLANK]
    probs = torch.full((len(path), 60), (1 - sure) / 59)
    for t, label in enumerate(path):
        probs[t, label] = sure
    return probs.log()


def test_encoding_many_texts_gives_the_tokenizers_ids(tokenizer):
    from mooer.inference.hotwords import encode_all, token_variants, variants_of

    texts = ["i meet priya at ten", "我们在二十七号见面", "meet 张三 at 十点", "", " a  b "]
    assert encode_all(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert encode_all(CharTokenizer(), ["AB"]) == [[1, 2]]  # a tokenizer without a Rust core
    # a list's words: each word's variants as the tokenizer's own encode spells them
    words = [f"{word}{n}" for n in range(40) for word in ("Priya", "soren", "张三")]
    found = variants_of(words, tokenizer)
    for word, variants in zip(words, found, strict=True):
        expected = []
        for form in dict.fromkeys((word, word.upper(), word.lower())):
            for text in (form, " " + form):
                ids = tokenizer.encode(text, add_special_tokens=False)
                if ids and ids not in expected:
                    expected.append(ids)
        assert variants == expected, word
    assert token_variants("Priya", tokenizer) == variants_of(["Priya"], tokenizer)[0]


def test_a_threshold_or_off():
    from mooer.data.hotword_list import threshold_or_off

    assert threshold_or_off("-8") == -8.0 and threshold_or_off(" OFF ") is None
    assert threshold_or_off("null") is None
    with pytest.raises(ValueError, match="a number of nats or 'off', got 'loud'"):
        threshold_or_off("loud")


def at_frames(text: str, frames: list[tuple[int, int]]) -> Placed:
    """`text` as `placed` gives it: its words (found by hand here: space-separated, or one
    character each where there are no spaces) with the frames given."""
    words, start = [], 0
    pieces = list(text) if all("\u4e00" <= c <= "\u9fff" for c in text) else text.split()
    for piece, (first, last) in zip(pieces, frames, strict=True):
        start = text.index(piece, start)
        words.append((piece, first, last, start, start + len(piece)))
        start += len(piece)
    return Placed(text, words)


def test_words_and_spans():
    assert units("i meet priya at ten") == ["i", "meet", "priya", "at", "ten"]
    assert units("我见priya▁lee了") == ["我", "见", "priya", "lee", "了"]
    assert join(units("我见priya▁lee了")) == "我见priya lee了"
    assert join(["ten", "o'clock"]) == "ten o'clock"
    answer = at_frames("i meet marcus at seven", [(0, 1), (3, 4), (6, 11), (13, 14), (17, 18)])
    # heard over marcus and into at: each run of up to two of the words around that overlaps
    assert set(substitutions(answer, "yusuf", 8, 13)) == {
        "i yusuf at seven", "i meet yusuf at seven", "i meet yusuf seven",
        "i meet marcus yusuf seven", "i meet marcus yusuf"}
    # heard between at and seven: put between them, or in place of one
    assert set(substitutions(answer, "yusuf", 15, 16)) == {
        "i meet marcus at yusuf seven", "i meet marcus yusuf seven", "i meet marcus at yusuf"}
    han = at_frames("我们见面", [(0, 1), (2, 3), (4, 5), (6, 7)])
    assert set(substitutions(han, "张三", 0, 3)) == {"张三们见面", "张三见面", "张三面", "我张三见面",
                                                    "我张三面"}
    assert substitutions(at_frames("yusuf", [(0, 3)]), "yusuf", 0, 3) == {}  # already said
    # each with the text it replaces ('' where it goes between two words)
    found = substitutions(answer, "yusuf", 8, 13)
    assert found["i meet yusuf at seven"] == "marcus" and found["i yusuf at seven"] == "meet marcus"
    assert found["i meet marcus yusuf seven"] == "at"
    assert substitutions(answer, "yusuf", 15, 16)["i meet marcus at yusuf seven"] == ""
    # mixed text keeps its own spacing; a Latin word gets spaces only where it touches one
    mixed = Placed("我见 marcus 了", [("我", 0, 1, 0, 1), ("见", 2, 3, 1, 2),
                                      ("marcus", 4, 8, 3, 9), ("了", 10, 11, 10, 11)])
    assert "我见 yusuf 了" in substitutions(mixed, "yusuf", 5, 7)
    assert "我yusuf marcus 了" in substitutions(mixed, "yusuf", 2, 3)
    assert glue("at", "yusuf", "seven") == "at yusuf seven"
    assert glue("我", "张三", "了") == "我张三了" and glue("", "yusuf", " at") == "yusuf at"


def test_a_respelling_shares_half_its_letters_or_as_many_han_characters():
    from mooer.inference.rewrite import respelling, similar

    assert respelling("olia", "olivia") and respelling("camile", "camille")
    assert respelling("Olia", "OLIVIA") and respelling("t bias", "tobias")  # case, spacing
    assert respelling("seventh", "seventeenth")
    assert not respelling("marcus", "priya") and not respelling("anika", "priya")
    assert not respelling("", "yusuf") and not respelling("at", "yusuf")
    assert respelling("张山", "张三") and not respelling("张", "张三")
    assert not respelling("zhang", "张三") and not respelling("张山 a", "张三")
    # the bounds settle most pairs; what they leave is difflib's ratio
    rng = np.random.default_rng(0)
    for _ in range(3000):
        old, new = ("".join(rng.choice(list("abcde"), rng.integers(1, 9))) for _ in range(2))
        expected = 2 * sum(block.size for block in difflib.SequenceMatcher(
            None, old, new, autojunk=False).get_matching_blocks()) / (len(old) + len(new))
        assert similar(old, new) == (expected >= 0.5), (old, new)


def test_words_are_placed_by_their_tokens_frames():
    tokenizer = CharTokenizer()
    ids = tokenizer.encode("AB CD")  # A B space C D
    spans = [(0, 0), (2, 3), (4, 4), (6, 6), (7, 9)]
    # the space is a token of its own here: no word's
    assert placed(ids, spans, tokenizer) == Placed("AB CD", [("AB", 0, 3, 0, 2),
                                                              ("CD", 6, 9, 3, 5)])



def test_a_word_in_bytes_is_placed_from_its_first_bytes_frames(tokenizer):
    """Rewriting places the answer's words by their tokens' frames: a Han name the tokenizer
    spells in bytes keeps its text, and runs from its first byte's frame to its last's."""
    text = "我见王芳"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    spans = [(2 * n, 2 * n + 1) for n in range(len(ids))]  # token n on frames 2n and 2n+1
    expected = []
    for at, char in enumerate(text):
        mine = [n for n, (a, b) in enumerate(offsets) if a <= at < b]
        expected.append((char, 2 * mine[0], 2 * mine[-1] + 1, at, at + 1))
    assert any(len(mine) > 1 for mine in ([n for n, (a, b) in enumerate(offsets) if a <= at < b]
                                          for at in range(len(text))))
    assert placed(ids, spans, tokenizer) == Placed(text, expected)

def _ctc_by_enumeration(log_probs: torch.Tensor, ids: list[int], blank: int) -> float:
    """log of the sum over every labelling of all frames that collapses to `ids`."""
    total = -math.inf
    for path in itertools.product(sorted({blank, *ids}), repeat=log_probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == ids:
            total = float(torch.logaddexp(torch.tensor(total), torch.tensor(
                sum(float(log_probs[t, c]) for t, c in enumerate(path)))))
    return total


def test_ctc_log_likelihood_sums_every_alignment():
    generator = torch.Generator().manual_seed(3)
    log_probs = torch.randn(6, 4, generator=generator).log_softmax(-1)  # blank 3
    lists = [[0], [1, 2], [2, 2], [0, 1, 0], []]
    found = ctc_log_likelihoods(log_probs, 5, lists)  # the first 5 frames only
    for ids, value in zip(lists, found, strict=True):
        assert float(value) == pytest.approx(_ctc_by_enumeration(log_probs[:5], ids, 3),
                                             abs=1e-4), ids
    assert ctc_log_likelihoods(log_probs, 2, [[0, 0, 1]])[0] == -math.inf  # cannot fit


def test_spotting_says_where_a_word_is_heard():
    from mooer.inference.hotwords import spot, spot_stretches

    tokenizer = CharTokenizer()
    log_probs = posteriors(tokenizer.encode("XAB YAB"), frames_each=2).numpy()
    # frames: X X - A A - B B - _ _ - Y Y - A A - B B -  (a label twice, then a blank)
    found, first, last = spot_stretches(log_probs, [[1, 2], [25, 1], [3]], BLANK)
    assert list(found) == list(spot(log_probs, [[1, 2], [25, 1], [3]], BLANK))
    # of equally good stretches, the shortest: from the last frame of the first token to the
    # first of the last
    assert found[0] == pytest.approx(0.0) and (first[0], last[0]) == (4, 6)  # the first AB
    assert found[1] == pytest.approx(0.0) and (first[1], last[1]) == (13, 15)  # Y A
    assert found[2] < -5 and 0 <= first[2] <= last[2]  # C is nowhere: the cheapest frame


def test_spotting_a_list_searches_only_what_can_reach_the_floor():
    """A list's scores are those of spotting every sequence, wherever they reach the floor
    (what is not searched could not have)."""
    from mooer.inference.hotwords import spot

    tokenizer = CharTokenizer()
    generator = torch.Generator().manual_seed(5)
    log_probs = (torch.randn(14, 60, generator=generator) * 3).log_softmax(-1).numpy()
    graph = ContextGraph.build([(w, None) for w in ("AB", "ABC", "Q", "XYZW", "B A", "CC")],
                               tokenizer)
    every = spot(log_probs, graph.sequences, BLANK)
    for floor in (-2.0, -6.0, -12.0, -40.0):
        found = graph.spotted(log_probs, BLANK, floor).scores
        for have, want in zip(found, every, strict=True):
            if want >= floor:
                assert have == pytest.approx(want)
            else:
                assert have < floor
    assert (graph.spotted(log_probs, BLANK, -6.0).scores == -np.inf).any()  # some skipped


def test_spotting_utterances_together_gives_what_each_gives_alone():
    """A batch's rows are spotted in one pass (`spotted_rows`: a whole set's list is one
    graph): each row's scores and frames are those of spotting it alone, whatever its length
    (none included) and whichever sequences the others make searched."""
    from mooer.inference.hotwords import spot_rows, spot_stretches

    tokenizer = CharTokenizer()
    generator = torch.Generator().manual_seed(8)
    rows = [(torch.randn(frames, 60, generator=generator) * 3).log_softmax(-1).numpy()
            for frames in (14, 3, 0, 9)]
    rows[1] = posteriors(tokenizer.encode("Q"), frames_each=1).numpy()  # Q only here
    graph = ContextGraph.build([(w, None) for w in ("AB", "ABC", "Q", "XYZW", "B A", "CC")],
                               tokenizer)
    for floor in (-2.0, -8.0, -40.0):
        together = graph.spotted_rows(rows, BLANK, floor)
        for log_probs, spotting in zip(rows, together, strict=True):
            alone = graph.spotted(log_probs, BLANK, floor)
            np.testing.assert_array_equal(spotting.scores, alone.scores)
            np.testing.assert_array_equal(spotting.first, alone.first)
            np.testing.assert_array_equal(spotting.last, alone.last)
    assert (together[2].scores == -np.inf).all() and (together[2].first == -1).all()
    q = graph.sequences.index(tokenizer.encode("Q"))
    assert together[1].scores[q] == pytest.approx(0.0)  # the row that holds it spells it
    found, first, last = spot_rows(rows, [[1, 2], [17]], BLANK)
    for r, log_probs in enumerate(rows):
        alone = spot_stretches(log_probs, [[1, 2], [17]], BLANK)
        for have, want in zip((found[r], first[r], last[r]), alone, strict=True):
            np.testing.assert_array_equal(have, want)


def test_a_heard_word_makes_candidates_where_it_was_heard_in_the_form_heard():
    tokenizer = CharTokenizer()
    graph = ContextGraph.build([("CD", None), ("QZ", None), ("EF", 3.0)], tokenizer)
    log_probs = posteriors(tokenizer.encode("AB cd EF"))  # a label a frame, a blank between
    spotted = graph.spotted(log_probs.numpy(), BLANK, -5.0)
    tries = to_try("AB XY", graph, spotted, -5.0, tokenizer)
    # CD in the lower case heard, where it was heard; EF with its own weight; QZ not at all
    assert tries == [("cd", pytest.approx(REWRITE_SHARE * CHECKED_SCORE * 2), 6, 8),
                     ("EF", pytest.approx(REWRITE_SHARE * 3.0 * 2), 12, 14)]
    assert [t[0] for t in to_try("AB cd", graph, spotted, -5.0, tokenizer)] == ["EF"]  # said
    asked = ContextGraph.build([("CD", None)], tokenizer, score=0.6)
    assert to_try("AB XY", asked, asked.spotted(log_probs.numpy(), BLANK, -5.0), -5.0,
                  tokenizer)[0][1] == pytest.approx(REWRITE_SHARE * 0.6 * 2)
    # in place of XY (alone or with AB); EF after XY, or in its place: each with the word, what
    # it replaces and the word's bonus
    found = candidates(at_frames("AB XY", [(0, 3), (6, 9)]), tries)
    cd, ef = tries[0][1], tries[1][1]
    assert found == {"AB cd": ("cd", "XY", cd), "cd": ("cd", "AB XY", cd),
                     "AB XY EF": ("EF", "", ef), "AB EF": ("EF", "XY", ef)}
    assert candidates(at_frames("AB XY", [(0, 3), (6, 9)]), [Try("XZ", 1.0, 6, 8)]) == {
        "AB XZ": ("XZ", "XY", 1.0), "XZ": ("XZ", "AB XY", 1.0)}


def test_a_word_is_tried_by_the_audio_or_as_a_respelling():
    """`rewritings`: a word is tried for what the audio gives it, with the bonus only where it
    may be a respelling of what it replaces; a candidate goes to the decoder where the two
    gain on the answer."""
    tokenizer = CharTokenizer()
    audio = posteriors(tokenizer.encode("AB CD"), frames_each=2)
    frames = audio.shape[0]
    spot = -20.0

    def tried(answer: str, words: list[tuple[str, float | None]]):
        from mooer.inference.align import viterbi

        graph = ContextGraph.build(words, tokenizer)
        ids = tokenizer.encode(answer)
        tries = to_try(answer, graph, graph.spotted(audio.numpy(), BLANK, spot), spot, tokenizer)
        return rewritings(answer, ids, tries, viterbi(audio, ids, BLANK), audio, tokenizer)

    def ctc(text: str) -> float:
        return float(ctc_log_likelihoods(audio, frames, [tokenizer.encode(text)])[0])

    # CD is what the audio says, the answer's XY is not: tried without the bonus (no
    # respelling), and taken to the decoder for what the audio gives it
    picked = tried("AB XY", [("CD", None)])
    assert [(text, bonus) for text, _, _, bonus in picked] == [("AB XY", 0.0), ("AB CD", 0.0)]
    assert picked[1][2] == pytest.approx(ctc("AB CD"), abs=1e-4)
    # the answer says what the audio does: a word heard worse gains nothing, unless it may be
    # a respelling (CE of CD), and then by its bonus, where that outweighs what it loses
    assert tried("AB CD", [("XY", 100.0)]) == []
    picked = tried("AB CD", [("CE", 100.0), ("XY", 100.0)])
    assert [(text, bonus) for text, _, _, bonus in picked] == [
        ("AB CD", 0.0), ("AB CE", pytest.approx(REWRITE_SHARE * 100.0 * 2))]
    assert REWRITE_WEIGHT * (ctc("AB CE") - ctc("AB CD")) < -3  # the audio was against it
    assert tried("AB CD", [("CE", 1.0)]) == []  # a bonus too small for what it loses


class FakeModel:
    """A tokenizer, and a decoder whose log-likelihood of an answer is `prior[text]` (spread
    over its tokens); records what it was asked."""

    def __init__(self, prior: dict[str, float]) -> None:
        self.tokenizer = CharTokenizer()
        self.prior = prior
        self.asked: list[tuple[str, int]] = []

    def answer_log_probs(self, batch, answers, encoded, rows, prompt_cache=None):
        result = []
        for ids, row in zip(answers, rows, strict=True):
            assert ids[-1] == self.tokenizer.eos_token_id  # the end of the answer is scored
            text = self.tokenizer.decode(ids[:-1])
            self.asked.append((text, row))
            result.append([self.prior.get(text, -1e6) / len(ids)] * len(ids))
        return result


def test_a_candidate_replaces_the_answer_only_where_the_joint_score_prefers_it(monkeypatch):
    # the decoder's own veto (REWRITE_DROP) aside: tested below
    monkeypatch.setattr("mooer.inference.rewrite.REWRITE_DROP", 1e9)
    tokenizer = CharTokenizer()
    audio = posteriors(tokenizer.encode("AB CD"), frames_each=2)
    log_probs = torch.stack([audio, audio])
    lengths = torch.tensor([audio.shape[0]] * 2)
    graph = ContextGraph.build([("CD", None), ("QZ", None)], tokenizer)
    spotted = [graph.spotted(audio.numpy(), BLANK, -5.0)] * 2

    def ctc(text: str) -> float:
        return float(ctc_log_likelihoods(audio, audio.shape[0], [tokenizer.encode(text)])[0])

    bonus = REWRITE_SHARE * CHECKED_SCORE * 2
    # the answer's CE may be a respelling of CD: what the candidate gains is the audio's and
    # the bonus
    margin = REWRITE_WEIGHT * (ctc("AB CD") - ctc("AB CE")) + bonus
    assert margin > 3
    priors = {"AB CE": 0.0, "AB CD": -(margin - 1)}  # any other candidate: -1e6
    model = FakeModel(priors)
    answer = tokenizer.encode("AB CE")
    chosen = rewrite(model, {}, (), (log_probs, lengths), ["AB CE", "AB CE"], [answer, answer],
                     [graph, None], spotted, -5.0)
    assert chosen == [("AB CD", tokenizer.encode("AB CD")), None]  # the second has no list
    assert ("AB CE", 0) in model.asked and all(row == 0 for _, row in model.asked)
    assert not any("QZ" in text for text, _ in model.asked)  # never heard, never tried
    # the decoder against it by more than the audio and the bonus for it: the answer stands
    model = FakeModel({**priors, "AB CD": -(margin + 1)})
    assert rewrite(model, {}, (), (log_probs[:1], lengths[:1]), ["AB CE"], [answer], [graph],
                   spotted[:1], -5.0) == [None]
    # an answer that already says it: nothing better, the decoder is not asked
    model = FakeModel({})
    assert rewrite(model, {}, (), (log_probs[:1], lengths[:1]), ["AB CD"],
                   [tokenizer.encode("AB CD")], [graph], spotted[:1], -5.0) == [None]
    assert model.asked == []
    # XY is no respelling of CD: no bonus, only what the audio gives
    other = tokenizer.encode("AB XY")
    audio_only = REWRITE_WEIGHT * (ctc("AB CD") - ctc("AB XY"))
    for prior, expected in ((-(audio_only - 0.5), ("AB CD", tokenizer.encode("AB CD"))),
                            (-(audio_only + 0.5), None)):
        model = FakeModel({"AB XY": 0.0, "AB CD": prior})
        assert rewrite(model, {}, (), (log_probs[:1], lengths[:1]), ["AB XY"], [other],
                       [graph], spotted[:1], -5.0) == [expected]
    # another hypothesis of the beam that the model scores higher than the candidate (which
    # beat the answer): it is written; one it scores lower changes nothing
    assert ctc("AB CF") == pytest.approx(ctc("AB CE"), abs=1e-3)  # as far from the audio
    beam_ids = tokenizer.encode("AB CF")
    for prior, expected in ((2.0, ("AB CF", beam_ids)),
                            (-2.0, ("AB CD", tokenizer.encode("AB CD")))):
        model = FakeModel({**priors, "AB CF": prior})
        assert rewrite(model, {}, (), (log_probs[:1], lengths[:1]), ["AB CE"], [answer],
                       [graph], spotted[:1], -5.0, [[beam_ids, answer, []]]) == [expected]
        assert ("AB CF", 0) in model.asked  # scored once the candidate beat the answer
        assert sum(text == "AB CE" for text, _ in model.asked) == 1
    # no candidate beats the answer: the beam's other hypotheses are not scored at all
    model = FakeModel({**priors, "AB CD": -(margin + 1), "AB CF": 0.0})
    assert rewrite(model, {}, (), (log_probs[:1], lengths[:1]), ["AB CE"], [answer], [graph],
                   spotted[:1], -5.0, [[tokenizer.encode("AB CF")]]) == [None]
    assert ("AB CD", 0) in model.asked and all(text != "AB CF" for text, _ in model.asked)


def test_a_candidate_the_decoder_finds_far_less_likely_is_not_written():
    """However much the audio gains, a candidate the decoder scores more than REWRITE_DROP
    nats below the answer is not written; one just inside it is. A vetoed candidate that beat
    the answer still puts it in doubt: the beam's other hypotheses are scored against the
    answer, and one the joint score prefers is written."""
    tokenizer = CharTokenizer()
    audio = posteriors(tokenizer.encode("AB CD"), frames_each=2)
    graph = ContextGraph.build([("CD", None)], tokenizer)
    spotted = [graph.spotted(audio.numpy(), BLANK, -5.0)]
    ctc = ctc_log_likelihoods(audio, audio.shape[0],
                              [tokenizer.encode("AB CD"), tokenizer.encode("AB XY")])
    gain = REWRITE_WEIGHT * float(ctc[0] - ctc[1])  # XY is no respelling of CD: no bonus
    assert gain > REWRITE_DROP + 1  # the joint score prefers CD either side of the line
    other = tokenizer.encode("AB XY")
    for drop, expected in ((REWRITE_DROP - 0.5, ("AB CD", tokenizer.encode("AB CD"))),
                           (REWRITE_DROP + 0.5, None)):
        model = FakeModel({"AB XY": 0.0, "AB CD": -drop})
        assert rewrite(model, {}, (), (audio[None], torch.tensor([audio.shape[0]])),
                       ["AB XY"], [other], [graph], spotted, -5.0) == [expected]
    beam = tokenizer.encode("AB CF")
    edge = REWRITE_WEIGHT * float(ctc_log_likelihoods(audio, audio.shape[0], [beam])[0] - ctc[1])
    assert edge > 1  # CF is nearer the audio than XY
    for prior, expected in ((-(edge - 0.5), ("AB CF", beam)), (-(edge + 0.5), None)):
        model = FakeModel({"AB XY": 0.0, "AB CD": -(REWRITE_DROP + 0.5), "AB CF": prior})
        assert rewrite(model, {}, (), (audio[None], torch.tensor([audio.shape[0]])),
                       ["AB XY"], [other], [graph], spotted, -5.0, [[beam]]) == [expected]
        assert ("AB CF", 0) in model.asked


def test_a_batch_is_rewritten_as_each_of_its_rows_alone():
    """The rows' answers are aligned together (padded frames), and each row's rewriting is
    what it gets decoded alone."""
    tokenizer = CharTokenizer()
    audios = [posteriors(tokenizer.encode("AB CD"), frames_each=2),
              posteriors(tokenizer.encode("QZ CD")), posteriors(tokenizer.encode("XY CD"))]
    frames = [audio.shape[0] for audio in audios]
    padded = torch.full((3, max(frames), 60), -50.0)
    for row, audio in enumerate(audios):
        padded[row, :frames[row]] = audio
    graph = ContextGraph.build([("CD", None)], tokenizer)
    spotted = [graph.spotted(audio.numpy(), BLANK, -5.0) for audio in audios]
    texts = ["AB CE", "QZ CE", "XY CE"]
    answers = [tokenizer.encode(text) for text in texts]
    # the decoder against the third's CD by more than the audio and the bonus give it
    priors = {"AB CE": 0.0, "AB CD": -1.0, "QZ CE": 0.0, "QZ CD": -1.0, "XY CE": 0.0,
              "XY CD": -30.0}
    together = rewrite(FakeModel(priors), {}, (), (padded, torch.tensor(frames)), texts,
                       answers, [graph, graph, graph], spotted, -5.0)
    alone = [rewrite(FakeModel(priors), {}, (), (audio[None], torch.tensor([n])), [text],
                     [answer], [graph], [found], -5.0)[0]
             for audio, n, text, answer, found in zip(audios, frames, texts, answers, spotted,
                                                      strict=True)]
    assert together == alone == [("AB CD", tokenizer.encode("AB CD")),
                                 ("QZ CD", tokenizer.encode("QZ CD")), None]


def test_decoding_rewrites_with_heard_words_and_keeps_ids_and_text_together(tokenizer, shards,
                                                                          monkeypatch):
    """On a tiny model with a CTC head: rewriting at a threshold nothing reaches changes
    nothing; with a CTC head that hears only the word's tokens (and blanks), so surely that
    no decoder score outweighs the audio, every answer takes the word (by the audio alone:
    the answers' random text is no respelling of it), and its token ids are the text's. (The
    random decoder finds any word unlikely: its veto, REWRITE_DROP, is off here and tested
    on its own.)"""
    monkeypatch.setattr("mooer.inference.rewrite.REWRITE_DROP", 1e9)
    from mooer.data.features import ParaformerFrontend
    from mooer.inference.decode import decode, decoding_loader
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    model = tiny_model(tokenizer, 3, "encoder.ctc_weight=0.3").eval()
    loader = decoding_loader(shards, model, ParaformerFrontend(None), prompt_format("asr"),
                             "asr", 4)
    options = {"num_beams": 2, "max_new_tokens": 6, "eos_bias": 0, "hotword_check": None}

    def run(**extra):
        return decode(model, loader, {**options, **extra}, torch.device("cpu"), torch.float32,
                      progress=False)

    word = "二十七"
    graph = ContextGraph.build([(word, 0.001)], tokenizer)  # a bonus too small to bias
    plain = run(hotwords=graph, hotword_rewrite=None)
    assert run(hotwords=graph, hotword_rewrite=1.0).hypotheses == plain.hypotheses
    heavy = ContextGraph.build([(word, 1e6)], tokenizer)
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.fill_(-100.0)
        model.ctc_head.bias[[*tokenizer.encode(word), -1]] = 100.0
    rewritten = run(hotwords=heavy, hotword_rewrite=-1e9, hotword_check=1.0)
    assert all(word in text for key, text in rewritten.hypotheses.items()
               if plain.hypotheses[key])
    for key, text in rewritten.hypotheses.items():
        assert tokenizer.decode(rewritten.tokens[key]) == text
    assert rewritten.hypotheses != plain.hypotheses
