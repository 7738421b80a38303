"""Long recordings: silero-vad segments, cuts at quiet points, joined texts with times, and
mooer-transcribe on a recording longer than its segment limit in every output format."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile as sf

from mooer.data.audio import read_audio, resample, to_mono
from mooer.data.text import read_table
from mooer.inference.formats import Segment, join_texts, render, subtitles
from mooer.inference.segment import SAMPLE_RATE, segment, sound_edges, split_at_quiet
from tests.conftest import TINY


def test_split_at_quiet_cuts_at_the_quietest_point_within_the_limit():
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.3, SAMPLE_RATE * 10).astype(np.float32)
    quiet = int(1.4 * SAMPLE_RATE)
    wave[quiet:quiet + 800] *= 0.001  # a 50 ms dip 1.4 s in
    pieces = split_at_quiet(wave, 0, len(wave), 2 * SAMPLE_RATE)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(wave)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous
    assert all(end - start <= 2 * SAMPLE_RATE for start, end in pieces)
    assert quiet <= pieces[0][1] <= quiet + 800  # the first cut falls in the dip
    assert split_at_quiet(wave, 100, 900, 2 * SAMPLE_RATE) == [(100, 900)]


@pytest.fixture(scope="module")
def recording(corpus, tmp_path_factory):
    """Six corpus utterances with 1.5 s of silence around each, at 22.05 kHz stereo: the
    recording, the utterances' (start, end) in seconds and their transcripts."""
    rows = read_table(corpus / "wav.scp")[:6]
    texts = dict(read_table(corpus / "text"))
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    pieces, spans, position = [silence], [], len(silence)
    for _, path in rows:
        samples, rate = read_audio(path)
        wave = resample(to_mono(samples), rate, SAMPLE_RATE)
        spans.append((position / SAMPLE_RATE, (position + len(wave)) / SAMPLE_RATE))
        pieces += [wave, silence]
        position += len(wave) + len(silence)
    wave = np.concatenate(pieces)
    path = tmp_path_factory.mktemp("long") / "meeting.flac"
    stereo = resample(wave, SAMPLE_RATE, 22050)
    sf.write(path, np.stack([stereo, stereo], 1), 22050)
    return path, wave, spans, [texts[key] for key, _ in rows]


def test_vad_segments_hold_the_speech_and_fit_the_limit(recording):
    _, wave, spans, _ = recording
    pieces = segment(wave, max_segment_s=4.0)
    assert all(end - start <= 4 * SAMPLE_RATE for start, end in pieces)
    assert all(b[0] >= a[1] for a, b in zip(pieces, pieces[1:], strict=False))  # in order
    seconds = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in pieces]
    for start, end in spans:  # every utterance's middle is inside a segment
        middle = (start + end) / 2
        assert any(a <= middle <= b for a, b in seconds), (start, end, seconds)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):  # silences stay out
        middle = (end + start) / 2
        assert not any(a < middle < b for a, b in seconds), (middle, seconds)
    assert segment(wave[:SAMPLE_RATE * 3], max_segment_s=4.0) == [(0, SAMPLE_RATE * 3)]
    assert segment(np.zeros(SAMPLE_RATE * 10, np.float32), max_segment_s=4.0) == []
    # the segments begin where the utterances' sound does (silero-vad's edges come up to 80 ms
    # late), not in the silence before: within a 5 ms frame before, 20 ms after (an onset
    # quieter than EDGE_MIN_DB stays out)
    late = []
    for start, _ in spans:
        nearest = min(pieces, key=lambda piece: abs(piece[0] / SAMPLE_RATE - start))
        late.append(nearest[0] / SAMPLE_RATE - start)
    assert min(late) >= -0.005 and max(late) <= 0.02, late


def test_segment_edges_move_out_to_where_the_sound_begins_and_ends():
    """Over the 5 ms frames louder than the noise floor next to an edge, at most EDGE_LOOK_MS,
    never into a neighbouring span; a span in silence keeps its edges."""
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(SAMPLE_RATE * 2) * 1e-4).astype(np.float32)  # -80 dBFS noise
    wave[4000:8000] += 0.1 * np.sin(np.arange(4000) * 0.3).astype(np.float32)
    wave[9000:20000] += 0.1 * np.sin(np.arange(11000) * 0.2).astype(np.float32)
    assert sound_edges(wave, [(4600, 7500)]) == [(4000, 8000)]
    assert sound_edges(wave, [(1000, 2000)]) == [(1000, 2000)]
    # the tone from 9000 reaches back 3,400 samples from 12,400: only 200 ms (3,200) are taken
    assert sound_edges(wave, [(12400, 19000)]) == [(9200, 20000)]
    # two spans: the first's end stops where the second begins
    assert sound_edges(wave, [(4600, 5000), (5200, 7000)]) == [(4000, 5200), (5200, 8000)]


def test_join_and_every_format():
    assert join_texts(["今天天气", "很好", " HELLO ", "WORLD", "", "你好"]) == \
        "今天天气很好HELLO WORLD你好"
    segments = {"a b": [Segment(0.5, 2.25, ["你好", "hello"]),
                        Segment(3723.5, 3725.0, ["再见", "bye"])]}
    tsv = render(segments, "tsv", ["asr", "ast"]).splitlines()
    assert tsv == ["recording\tstart\tend\tasr\tast", "a b\t0.50\t2.25\t你好\thello",
                   "a b\t3723.50\t3725.00\t再见\tbye"]
    assert render(segments, "text", ["asr", "ast"]) == "a b\t你好再见\thello bye\n"
    parsed = json.loads(render(segments, "json", ["asr", "ast"]))
    assert parsed["a b"]["asr"] == "你好再见" and parsed["a b"]["segments"][1]["start"] == 3723.5
    srt = subtitles(segments["a b"], "srt")
    assert srt.startswith("1\n00:00:00,500 --> 00:00:02,250\n你好\nhello\n\n2\n01:02:03,500 --> ")
    vtt = subtitles(segments["a b"], "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\n你好\nhello\n")


def test_transcribe_a_long_recording_in_segments(tiny_release, recording, tmp_path, capsys):
    from mooer.inference.transcribe import main as transcribe

    root, tokenizer_dir = tiny_release
    path, wave, spans, _ = recording
    options = ["--wav_path", str(path), "--max_segment_s", "4", "--checkpoint",
               str(root / "release"), "--device", "cpu", "--max_new_tokens", "3",
               "--num_beams", "1", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    assert transcribe([*options[:4], "--format", "tsv", *options[4:]]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["recording", "start", "end", "asr"]
    times = [(float(start), float(end)) for _, start, end, _ in rows[1:]]
    assert len(times) >= len(spans) and {name for name, *_ in rows[1:]} == {"meeting"}
    assert all(0 <= a < b <= len(wave) / SAMPLE_RATE + 0.01 and b - a <= 4.0 for a, b in times)
    assert all(b[0] >= a[1] for a, b in zip(times, times[1:], strict=False))
    assert transcribe([*options[:4], "--format", "text", *options[4:]]) == 0
    joined = capsys.readouterr().out.rstrip("\n").split("\t")
    assert joined[0] == "meeting" and joined[1] == join_texts([r[3] for r in rows[1:]])
    out_dir = tmp_path / "subs"
    assert transcribe([*options[:4], "--format", "srt", "--out_dir", str(out_dir),
                       *options[4:]]) == 0
    cues = (out_dir / "meeting.srt").read_text().strip().split("\n\n")
    assert len(cues) == len(times) and cues[0].startswith("1\n00:00:0")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE * 6, np.float32), SAMPLE_RATE)
    assert transcribe(["--wav_path", str(silent), *options[2:]]) == 2
    assert "skipped, no speech found: silent (6.0 s)" in capsys.readouterr().err


def test_evaluate_decodes_a_long_recording_of_a_kaldi_set_in_segments(tiny_release, recording,
                                                                     tmp_path, caplog):
    from mooer.config import compose_config
    from mooer.evaluation.run import evaluate
    from tests.evaluation.test_evaluate import overrides, reference_tokens

    root, tokenizer_dir = tiny_release
    path, _, _, texts = recording
    long_set = tmp_path / "test" / "long"
    long_set.mkdir(parents=True)
    (long_set / "wav.scp").write_text(f"meeting {path}\n")
    (long_set / "text").write_text(f"meeting {join_texts(texts)}\n")
    cfg, _ = compose_config("evaluate", [
        *overrides(root, tokenizer_dir), f"test_data_dir={tmp_path / 'test'}", "testsets=[]",
        "extra_testsets=[long]", "max_segment_s=4", "decoding.num_beams=1",
        f"decode_path={tmp_path / 'decode'}"])
    started = time.perf_counter()
    with caplog.at_level("INFO"):
        [result] = evaluate(cfg)
    wall = time.perf_counter() - started
    audio_s = sf.info(path).frames / sf.info(path).samplerate
    assert result.utterances == 1 and 0 < result.rtf < wall / audio_s
    lines = (tmp_path / "decode" / "long" / "text").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meeting\t")
    overall = (tmp_path / "decode" / "long" / "wer").read_text().split("Overall -> ")[1]
    assert int(overall.split("N=")[1].split()[0]) == reference_tokens(join_texts(texts)) > 0
    segments = int(caplog.text.split("1 recordings decoded in ")[1].split()[0])
    assert segments >= len(texts)  # decoded in pieces, not as one 20 s sequence


def test_hotwords_with_word_times_on_a_long_recording(tiny_release, recording, tmp_path,
                                                     capsys):
    """Hotwords, word times and a long recording together (FunASR #1210 asks for them): a
    release given a CTC head (--ctc_head), a heavy listed word biased in every segment: each
    segment's text says it, and its words (the listed one among them) carry times inside that
    segment's span of the recording, in order."""
    import torch

    from mooer.config import compose_config
    from mooer.inference.align import words_of
    from mooer.inference.transcribe import main as transcribe
    from mooer.models.build import build_speech_llm

    root, tokenizer_dir = tiny_release
    path, wave, _, _ = recording
    cfg, _ = compose_config("train", [*TINY, f"llm.tokenizer_path={tokenizer_dir}"])
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm)
    torch.manual_seed(3)
    model.train_ctc_head_only()
    torch.save({"state_dict": {f"model.ctc_head.{k}": v
                               for k, v in model.ctc_head.state_dict().items()}},
               tmp_path / "head.ckpt")
    listed = tmp_path / "list.txt"
    listed.write_text("二十七\t40\n", encoding="utf-8")
    assert transcribe(["--wav_path", str(path), "--max_segment_s", "4", "--hotwords",
                       str(listed), "--hotword_check", "off", "--word_timestamps",
                       "--format", "json", "--checkpoint", str(root / "release"), "--ctc_head",
                       str(tmp_path / "head.ckpt"), "--device", "cpu", "--max_new_tokens", "6",
                       "--num_beams", "2", "--", *TINY,
                       f"llm.tokenizer_path={tokenizer_dir}"]) == 0
    (result,) = json.loads(capsys.readouterr().out).values()
    segments = result["segments"]
    assert len(segments) >= 2 and all(s["end"] - s["start"] <= 4.0 for s in segments)
    for piece in segments:
        (text,) = piece["texts"]
        assert "二十七" in text
        words = piece["words"]
        assert [w["word"] for w in words] == [w for w, _ in words_of([text])]
        assert {"二", "十", "七"} <= {w["word"] for w in words}
        for word in words:
            assert piece["start"] - 0.01 <= word["start"] < word["end"] <= piece["end"] + 0.07
        for previous, word in zip(words, words[1:], strict=False):
            assert previous["start"] <= word["start"]
    assert segments[-1]["end"] <= len(wave) / SAMPLE_RATE + 0.01


@pytest.mark.parametrize("value", ["nan", "0.5", "-3", "abc"])
def test_a_segment_limit_that_is_not_a_duration_is_refused(value, capsys):
    """--max_segment_s nan (which compares false with everything) or under a second: a usage
    error naming the value, in both commands, before anything is read or loaded."""
    from mooer.inference.serve import main as serve
    from mooer.inference.transcribe import main as transcribe

    for command in (transcribe, serve):
        args = ["--max_segment_s", value, "--checkpoint", "/nonexistent"]
        if command is transcribe:
            args = ["--wav_path", "/nonexistent.wav", *args]
        with pytest.raises(SystemExit) as stopped:
            command(args)
        assert stopped.value.code == 2
        assert f"max_segment_s must be a number of seconds, at least 1, got {value}" in \
            capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        segment(np.zeros(SAMPLE_RATE * 10, np.float32), max_segment_s=float("nan"))


def test_a_segment_limit_too_long_for_memory_is_cut_down_with_a_warning(caplog):
    from mooer.inference.segment import MAX_SEGMENT_S, check_max_segment_s

    with caplog.at_level("WARNING"):
        assert check_max_segment_s("100000") == MAX_SEGMENT_S == 300
    assert "max_segment_s 100000 s would not fit in memory: segments are cut at 300 s" in \
        caplog.text
    assert check_max_segment_s(45) == 45.0  # a usual one stays as it is
    wave = np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE * 400).astype(np.float32)
    pieces = segment(wave, max_segment_s=5000)  # 400 s of noise: speech to silero-vad or not,
    assert all(end - start <= 300 * SAMPLE_RATE for start, end in pieces)  # no piece over 300 s
