"""mooer-serve's OpenAI audio API, driven by the official `openai` client pointed at the local
server (no network): every response format, translations, our num_beams through extra_body, and
each refusal in OpenAI's error shape."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mooer.data.text import read_table
from mooer.inference.openai_api import script_language


@pytest.fixture
def client(server):
    import openai

    url, *_ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def three(corpus, tmp_path_factory) -> Path:
    """Three utterances with a second of silence around each: about 9 s, over the test
    server's --max_segment_s 4, so cut in three segments."""
    silence = np.zeros(16000, np.float32)
    pieces = [silence]
    for _, path in read_table(corpus / "wav.scp")[3:6]:
        pieces += [sf.read(path, dtype="float32")[0], silence]
    recording = tmp_path_factory.mktemp("openai") / "three.flac"
    sf.write(recording, np.concatenate(pieces), 16000)
    return recording


def clock(seconds: float, separator: str) -> str:
    whole, millis = divmod(round(seconds * 1000), 1000)
    return (f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{separator}"
            f"{millis:03d}")


def cues(document: str, fmt: str) -> list[tuple[str, str]]:
    """(time line, text) of each cue of an SRT or VTT document."""
    blocks = [b for b in document.strip().split("\n\n") if b.strip()]
    if fmt == "vtt":
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    found = []
    for number, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines[0] == str(number)
            lines = lines[1:]
        found.append((lines[0], "\n".join(lines[1:])))
    return found


def test_every_response_format_through_the_openai_client(server, client, three, tokenizer):
    _, expected, *_ = server
    want = expected.recognize(three, ["asr"], 1).segments
    assert len(want) == 3
    texts = [s.texts[0] for s in want]
    text = expected.transcribe(three, "asr", 1)["transcript"]
    assert text.strip()

    def ask(**options):
        with open(three, "rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, **options)

    assert ask().text == text  # json, the default
    assert ask(response_format="json").text == text
    assert ask(response_format="text") == text + "\n"
    for fmt, separator in (("srt", ","), ("vtt", ".")):
        got = cues(ask(response_format=fmt), fmt)
        assert got == [(f"{clock(s.start, separator)} --> {clock(s.end, separator)}", t)
                       for s, t in zip(want, texts, strict=True)], fmt
    verbose = ask(response_format="verbose_json", language="zh",
                  timestamp_granularities=["segment"])
    assert verbose.task == "transcribe" and verbose.language == "chinese"
    assert verbose.text == text
    assert verbose.duration == pytest.approx(sf.info(three).duration, abs=1e-3)
    assert [(s.id, s.start, s.end, s.text) for s in verbose.segments] == [
        (i, s.start, s.end, t) for i, (s, t) in enumerate(zip(want, texts, strict=True))]
    assert [s.seek for s in verbose.segments] == [round(s.start * 100) for s in want]
    assert [s.tokens for s in verbose.segments] == [
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [s.compression_ratio for s in verbose.segments] == pytest.approx(
        [len(t.encode()) / len(zlib.compress(t.encode())) for t in texts], abs=1e-4)
    assert all(s.temperature == 0.0 for s in verbose.segments)
    assert verbose.usage.seconds == verbose.duration
    # num_beams, ours, through the client's extra_body
    beam = expected.transcribe(three, "asr", 3)["transcript"]
    assert ask(extra_body={"num_beams": 3}).text == beam
    assert [m.id for m in client.models.list()] == ["mooer"]


def test_translations_through_the_openai_client(server, client, corpus):
    _, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    translation = expected.transcribe(wav, "ast", 1)["translation"]
    with open(wav, "rb") as f:
        assert client.audio.translations.create(model="m", file=f).text == translation
    with open(wav, "rb") as f:
        verbose = client.audio.translations.create(model="m", file=f,
                                                   response_format="verbose_json")
    assert (verbose.task, verbose.language, verbose.text) == ("translate", "english", translation)
    assert [(s.start, s.text) for s in verbose.segments] == [(0.0, translation)]


def test_refusals_come_in_openai_error_shape(server, client, corpus, tmp_path):
    """Each refused option names its field (`param`) and why, as OpenAI's API does; the
    openai client raises BadRequestError with them; the server goes on serving."""
    import httpx
    import openai

    url, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])

    def refused(**options) -> openai.BadRequestError:
        with open(options.pop("path", wav), "rb") as f, \
                pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(model="whisper-1", file=f, **options)
        assert caught.value.status_code == 400
        assert caught.value.type == "invalid_request_error"
        return caught.value

    error = refused(temperature=0.7)
    assert (error.param, error.code) == ("temperature", "unsupported_value")
    assert "temperature 0.7 is not supported" in error.message
    error = refused(extra_body={"hotwords": "ok\nA\tB\tC"})
    assert error.param == "hotwords" and "hotwords, line 2: expected" in error.message
    error = refused(prompt="二十七", extra_body={"hotword_score": "-2"})
    assert error.param == "hotword_score" and "got '-2'" in error.message
    error = refused(response_format="verbose_json", timestamp_granularities=["sentence"])
    assert error.param == "timestamp_granularities" and "['sentence']" in error.message
    error = refused(response_format="json", timestamp_granularities=["word"])
    assert error.message.endswith("timestamp_granularities needs response_format verbose_json")
    error = refused(response_format="verbose_json", timestamp_granularities=["word"])
    assert error.param == "timestamp_granularities"  # this test model has no CTC head
    assert "word timestamps need the encoder's CTC head" in error.message
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all\n" * 30)
    error = refused(path=notes)
    assert (error.param, error.code) == ("file", "invalid_file")
    assert "not audio that soundfile reads" in error.message and "/tmp" not in error.message

    def raw(data: dict, files: dict | None = None) -> dict:
        answer = httpx.post(f"{url}/v1/audio/transcriptions", data=data, files=files,
                            timeout=120)
        body = answer.json()
        assert set(body["error"]) == {"message", "type", "code", "param"}, body
        return {"status": answer.status_code, **body["error"]}

    with open(wav, "rb") as f:
        audio = {"file": (wav.name, f.read())}
    assert raw({"model": "m"}) == {
        "status": 400, "type": "invalid_request_error", "code": "missing_required_parameter",
        "param": "file", "message": "`file` is required: the recording, as a file field"}
    for field, value in (("model", ""), ("response_format", "xml"), ("language", "english"),
                         ("num_beams", "0"), ("temperature", "warm"), ("stream", "true")):
        error = raw({"model": "m", field: value}, audio)
        assert (error["status"], error["param"]) == (400, field), error
    large = tmp_path / "large.wav"
    sf.write(large, np.random.default_rng(0).normal(0, 0.1, 16000 * 19), 16000, subtype="FLOAT")
    with open(large, "rb") as f:
        error = raw({"model": "m"}, {"file": (large.name, f.read())})
    assert (error["status"], error["code"], error["type"]) == (413, "upload_too_large",
                                                               "invalid_request_error")
    assert "over the limit of 1 MB" in error["message"]
    with open(wav, "rb") as f:  # still serving
        answer = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert answer.text == expected.transcribe(wav, "asr", 1)["transcript"]


def test_the_language_of_a_transcript_is_told_by_its_script():
    assert script_language("今天天气很好") == "chinese"
    assert script_language("THE WEATHER IS FINE") == "english"
    assert script_language("") == "english"
    assert script_language("GPU 显卡") == "chinese"


def test_a_prompt_biases_transcriptions_towards_its_words(server, client, corpus):
    """OpenAI's `prompt` holds hotwords (comma-separated): the transcript of this untrained
    model takes the heavy one; our `hotwords` field (weights) through extra_body does the same;
    the same request without them gets what it got before; a prompt on translations is
    refused naming the field."""
    import openai

    url, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    plain = expected.transcribe(wav, "asr", 1)["transcript"]
    assert "二十七" not in plain
    with open(wav, "rb") as f:
        biased = client.audio.transcriptions.create(
            model="m", file=f, prompt="张伟, 二十七", extra_body={"hotword_score": "40"}).text
    assert "二十七" in biased
    with open(wav, "rb") as f:
        weighted = client.audio.transcriptions.create(
            model="m", file=f, extra_body={"hotwords": "# a list\n二十七\t40\n"}).text
    assert "二十七" in weighted
    with open(wav, "rb") as f:
        assert client.audio.transcriptions.create(model="m", file=f).text == plain
    with open(wav, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="m", file=f, prompt="二十七")
    assert (caught.value.param, caught.value.code) == ("prompt", "unsupported_value")


def test_word_timestamps_through_the_openai_client(head_server, corpus):
    """timestamp_granularities=["word"] with verbose_json on a server with a CTC head: the
    transcript's words, each with its start, end and probability, in order, inside the audio."""
    import openai
    import soundfile as sf

    from mooer.inference.align import words_of

    url, _ = head_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    wav = read_table(corpus / "wav.scp")[2][1]  # its answer has words
    with open(wav, "rb") as f:
        answer = client.audio.transcriptions.create(
            model="m", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"])
    words = answer.words
    assert words, answer.model_dump()
    assert [w.word for w in words] == [w for w, _ in words_of([answer.text])]
    duration = sf.info(wav).duration
    for previous, word in zip(words, words[1:], strict=False):
        assert previous.start <= word.start
    for word in words:
        assert 0 <= word.start < word.end <= duration + 0.06
        assert 0 <= word.model_extra["probability"] <= 1
