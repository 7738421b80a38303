"""Word times by CTC forced alignment: the Viterbi path on posteriors whose alignment is known,
words from tokens, and word times on a tiny model with a CTC head."""

from __future__ import annotations

import math

import pytest
import torch

from mooer.inference.align import align_words, viterbi, words_of

BLANK = 9


def posteriors(frames: list[int], vocab: int = 10, sure: float = 0.9) -> torch.Tensor:
    """Log-posteriors [T, vocab]: frame t gives `frames[t]` probability `sure`, the rest
    share what is left."""
    rest = (1 - sure) / (vocab - 1)
    probs = torch.full((len(frames), vocab), rest)
    for t, token in enumerate(frames):
        probs[t, token] = sure
    return probs.log()


def test_viterbi_finds_the_known_alignment():
    b = BLANK
    log_probs = posteriors([b, b, 5, 5, 5, b, b, 7, 7, b])
    assert viterbi(log_probs, [5, 7], b) == [(2, 4), (7, 8)]
    # a repeated token needs a blank between its two emissions
    log_probs = posteriors([3, 3, b, 3, b])
    assert viterbi(log_probs, [3, 3], b) == [(0, 1), (3, 3)]
    assert viterbi(posteriors([3, 3]), [3, 3], b) is None  # two frames cannot hold 3 b 3
    assert viterbi(posteriors([b, 4, b]), [], b) == []
    # the path is forced: a token the posteriors never favour still gets its frames, in order
    spans = viterbi(posteriors([b, 5, 5, b, b, b]), [5, 6], b)
    assert spans is not None and spans[0][0] >= 1 and spans[0][1] < spans[1][0]


def test_words_are_latin_runs_and_single_cjk_characters():
    pieces = ["我", "有", " TW", "ENTY", " ONE", "本书", " O'", "CLOCK"]
    assert words_of(pieces) == [
        ("我", [0]), ("有", [1]), ("TWENTY", [2, 3]), ("ONE", [4]), ("本", [5]), ("书", [5]),
        ("O'CLOCK", [6, 7])]


def test_a_character_spelt_in_bytes_is_one_word_of_all_its_tokens(tokenizer):
    """A byte-level tokenizer spells a Han character its vocabulary lacks (a name's) in 2 or 3
    tokens. The pieces then still spell the text, and each word holds the tokens the
    tokenizer's own offsets put on its characters, the bytes of a split one included (before,
    a split character's pieces repeated the text: '我见王' for 王)."""
    from mooer.inference.align import WORD, token_pieces

    for text in ["我七点见王芳", "赵敏有三本书", "i meet 王芳 at seven 吴昊"]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        # the text holds characters spelt in bytes: tokens sharing one character's offsets
        assert any(offsets[i] == offsets[i + 1] for i in range(len(ids) - 1)), text
        pieces = token_pieces(ids, tokenizer)
        assert "".join(pieces) == text
        expected = [(m.group(), [i for i, (a, b) in enumerate(offsets)
                                 if a < m.end() and b > m.start()])
                    for m in WORD.finditer(text)]
        assert words_of(pieces) == expected


def test_an_answer_cut_inside_a_character_loses_its_unfinished_bytes(tokenizer):
    """Cut anywhere (the guard cuts looping answers), an answer keeps the tokens up to its last
    whole character: the tokenizer's offsets say where each character's last token is."""
    from mooer.inference.align import whole_characters

    text = "我见王芳有书"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    ends = {0} | {n + 1 for n in range(len(ids))
                  if n + 1 == len(ids) or offsets[n + 1] != offsets[n]}
    assert len(ends) < len(ids) + 1  # some character is spelt in several tokens
    for cut in range(len(ids) + 1):
        kept = whole_characters(ids[:cut], tokenizer)
        assert kept == ids[:max(e for e in ends if e <= cut)], cut
        assert text.startswith(tokenizer.decode(kept))


class PieceTokenizer:
    def __init__(self, pieces: dict[int, str]) -> None:
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_align_words_gives_times_and_confidence():
    """Tokens 1 ('你'), 2 (' GO'), 3 ('OD') on 60 ms frames of 10: 你 emitted on frames 1-2,
    GOOD on 4-7. 你 starts a frame before its first emission (0) and ends where GOOD starts, a
    frame before its emission (frame 3); GOOD ends 2 frames after its last (frame 10)."""
    b = BLANK
    log_probs = posteriors([b, 1, 1, b, 2, 2, 3, 3, b, b], sure=0.8)
    words = align_words(log_probs, [1, 2, 3], PieceTokenizer({1: "你", 2: " GO", 3: "OD"}), b,
                        0.06)
    assert [(w.text, w.start, w.end) for w in words] == [("你", 0.0, 0.18),
                                                          ("GOOD", 0.18, 0.6)]
    assert all(w.confidence == pytest.approx(0.8) for w in words)


def test_word_times_on_a_tiny_model_with_a_ctc_head(tokenizer, shards):
    """Every word of each transcript gets a time inside its audio, in order, with a
    confidence in [0, 1]; a model without a CTC head is refused with the reason."""
    from mooer.data.features import ParaformerFrontend
    from mooer.inference.decode import decode, decoding_loader
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    model = tiny_model(tokenizer, 3, "encoder.ctc_weight=0.3").eval()
    loader = decoding_loader(shards, model, ParaformerFrontend(None), prompt_format("asr"), "asr",
                             4)
    decoded = decode(model, loader, {"num_beams": 1, "max_new_tokens": 6, "eos_bias": 0,
                                     "timestamps": True}, torch.device("cpu"), torch.float32,
                     progress=False)
    assert set(decoded.words) == set(decoded.hypotheses)
    without = decode(model, loader, {"num_beams": 1, "max_new_tokens": 6, "eos_bias": 0},
                     torch.device("cpu"), torch.float32, progress=False)
    assert without.hypotheses == decoded.hypotheses  # the shared encoder pass changes nothing
    for key, text in decoded.hypotheses.items():
        words = decoded.words[key]
        assert [w.text for w in words] == [w for w, _ in words_of([text])], key
        for previous, word in zip(words, words[1:], strict=False):
            assert previous.start <= word.start
        for word in words:
            assert 0 <= word.start < word.end <= decoded.durations[key] + 0.06
            assert 0 <= word.confidence <= 1 and math.isfinite(word.confidence)
    plain = tiny_model(tokenizer, 3).eval()
    loader = decoding_loader(shards, plain, ParaformerFrontend(None), prompt_format("asr"), "asr",
                             4)
    with pytest.raises(ValueError, match="word times need the encoder's CTC head"):
        decode(plain, loader, {"max_new_tokens": 2, "timestamps": True}, torch.device("cpu"),
               torch.float32, progress=False)


def test_word_times_are_absolute_in_long_recordings_and_written_in_json():
    """A segment's word times are made absolute (its start added) and JSON writes them."""
    import json
    from pathlib import Path

    from mooer.inference.align import Word
    from mooer.inference.formats import render
    from mooer.inference.longform import Prepared, collect

    prepared = Prepared(Path("unused"), {"s1": ("meeting", 0.5, 2.0),
                                         "s2": ("meeting", 12.25, 14.0)}, names=["meeting"])
    words = {"s1": [Word("你", 0.06, 0.18, 0.9)], "s2": [Word("GOOD", 0.24, 0.48, 0.5)]}
    # what the guard still doubts is named by recording and time, not by segment id
    assert prepared.by_recording({"s2": "loop", "other": "x"}) == {
        "meeting 12.25-14.00s": "loop", "other": "x"}
    segments = collect(prepared, [{"s1": "你", "s2": "GOOD"}], [], words)["meeting"]
    assert [(w.text, w.start, w.end) for s in segments for w in s.words] == [
        ("你", 0.56, 0.68), ("GOOD", 12.49, 12.73)]
    data = json.loads(render({"meeting": segments}, "json", ["asr"]))
    assert data["meeting"]["segments"][1]["words"] == [
        {"word": "GOOD", "start": 12.49, "end": 12.73, "confidence": 0.5}]


def test_transcribe_refuses_word_times_without_a_ctc_head(tiny_release, corpus, capsys):
    from mooer.data.text import read_table
    from mooer.inference.transcribe import main as transcribe
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    assert transcribe(["--wav_path", read_table(corpus / "wav.scp")[0][1], "--word_timestamps",
                       "--checkpoint", str(root / "release"), "--device", "cpu", "--",
                       *TINY, f"llm.tokenizer_path={tokenizer_dir}"]) == 2
    assert "--word_timestamps needs the encoder's CTC head" in capsys.readouterr().err


def test_word_level_subtitles_and_tsv_give_a_cue_and_a_row_a_word():
    from mooer.inference.align import Word
    from mooer.inference.formats import Segment, render, subtitles

    segments = [Segment(0.5, 1.2, ["你好"], [], [Word("你", 0.5, 0.7, 0.9),
                                                 Word("好", 0.8, 1.0, 0.8)]),
                Segment(2.0, 3.0, ["GOOD"])]  # no word times: the segment stays one cue
    assert subtitles(segments, "srt", word_level=True) == (
        "1\n00:00:00,500 --> 00:00:00,700\n你\n\n2\n00:00:00,800 --> 00:00:01,000\n好\n\n"
        "3\n00:00:02,000 --> 00:00:03,000\nGOOD\n")
    assert render({"talk": segments}, "tsv", ["asr"], word_level=True) == (
        "recording\tstart\tend\tword\tconfidence\n"
        "talk\t0.500\t0.700\t你\t0.9000\ntalk\t0.800\t1.000\t好\t0.8000\n"
        "talk\t2.000\t3.000\tGOOD\t\n")


def test_transcribe_adds_a_ctc_head_trained_apart(tiny_release, corpus, capsys, tmp_path):
    """A release without a CTC head gets word times from a head given with --ctc_head (the
    checkpoint of a run of experiment=ctc_head): words inside the audio, in order."""
    import json

    import soundfile as sf

    from mooer.config import compose_config
    from mooer.data.text import read_table
    from mooer.inference.transcribe import main as transcribe
    from mooer.models.build import build_speech_llm
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("train", [*TINY, f"llm.tokenizer_path={tokenizer_dir}"])
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm)
    torch.manual_seed(3)
    model.train_ctc_head_only()
    torch.save({"state_dict": {f"model.ctc_head.{k}": v for k, v in model.ctc_head.state_dict().items()}},
               tmp_path / "last.ckpt")
    wav = read_table(corpus / "wav.scp")[0][1]
    assert transcribe(["--wav_path", wav, "--word_timestamps", "--format", "json",
                       "--max_new_tokens", "8", "--num_beams", "1",
                       "--checkpoint", str(root / "release"), "--ctc_head",
                       str(tmp_path / "last.ckpt"), "--device", "cpu", "--", *TINY,
                       f"llm.tokenizer_path={tokenizer_dir}"]) == 0
    (result,) = json.loads(capsys.readouterr().out).values()
    words = [w for segment in result["segments"] for w in segment["words"]]
    text = result["asr"]
    assert [w["word"] for w in words] == [w for w, _ in words_of([text])] and words
    duration = sf.info(wav).duration
    for previous, word in zip(words, words[1:], strict=False):
        assert previous["start"] <= word["start"]
    for word in words:
        assert 0 <= word["start"] < word["end"] <= duration + 0.06
        assert 0 <= word["confidence"] <= 1
    torch.save({"state_dict": {"model.projector.x": torch.zeros(2)}}, tmp_path / "other.ckpt")
    assert transcribe(["--wav_path", wav, "--word_timestamps", "--checkpoint",
                       str(root / "release"), "--ctc_head", str(tmp_path / "other.ckpt"),
                       "--device", "cpu", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]) == 2
    assert "other.ckpt holds no CTC head" in capsys.readouterr().err


def _best_path_by_enumeration(log_probs: torch.Tensor, tokens: list[int], blank: int):
    """The best CTC path of `tokens`, by trying every frame labelling (tiny sizes only)."""
    import itertools

    labels = sorted({blank, *tokens})
    best, best_path = -math.inf, None
    for path in itertools.product(labels, repeat=log_probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed != tokens:
            continue
        value = sum(float(log_probs[t, c]) for t, c in enumerate(path))
        if value > best:
            best, best_path = value, path
    if best_path is None:
        return None
    spans, index = [], -1
    for t, c in enumerate(best_path):
        if c != blank and (t == 0 or c != best_path[t - 1]):
            index += 1
            spans.append([t, t])
        elif c != blank:
            spans[index][1] = t
    return [tuple(s) for s in spans]


def test_batched_viterbi_finds_each_utterances_best_path():
    """A batch of utterances of different lengths and token counts (repeats, none, too many
    for the frames): each path is the best of all labellings, found by enumeration."""
    from mooer.inference.align import viterbi_batch

    generator = torch.Generator().manual_seed(0)
    blank = 4
    utterances = [(7, [1, 2]), (5, [3, 3]), (8, [1, 2, 1]), (6, []), (3, [2, 2, 2]),
                  (7, [0]), (4, [1, 3])]
    longest = max(n for n, _ in utterances)
    log_probs = torch.randn(len(utterances), longest, 5, generator=generator).log_softmax(-1)
    found = viterbi_batch(log_probs, [n for n, _ in utterances], [t for _, t in utterances],
                          blank)
    for row, (frames, tokens) in enumerate(utterances):
        expected = [] if not tokens else _best_path_by_enumeration(log_probs[row, :frames],
                                                                   tokens, blank)
        assert found[row] == expected, (row, found[row], expected)
    assert found[4] is None  # 2 2 2 needs 5 frames
