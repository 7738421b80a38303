"""The OpenAI audio API, as mooer-serve speaks it: what a request may ask and what each response
format holds. The routes themselves live in `serve.build_app`.

    POST /v1/audio/transcriptions   (ASR)    POST /v1/audio/translations   (AST)
    GET  /v1/models

Form fields, as OpenAI's clients send them:

- `file` (required), `model` (required by OpenAI's clients, any name: the server has one model)
- `response_format`: json (default, {"text"}), text, srt, vtt, or verbose_json ({"task",
  "language", "duration", "text", "segments": [{"id", "seek", "start", "end", "text", "tokens",
  "temperature", "compression_ratio"}], "usage"}); segments are where silero-vad cut the
  recording, in seconds from its start
- `temperature`: 0 (the default) decodes greedily; other values are refused (no sampling yet)
- `language`: an ISO-639-1 code, recorded in verbose_json; the model hears what it was trained on
- `prompt`: on transcriptions, hotwords (names, terms) separated by newlines or commas, which
  bias the decoder towards them (`mooer.inference.hotwords`); refused on translations
- `hotwords` (ours, through `extra_body`): a hotword list, a word or phrase a line, optionally
  `<TAB>weight`; `hotword_score` (ours): the bonus per hotword token (default 1.5 on a
  model with a CTC head, which checks the words against the audio first; else 1.0)
- `timestamp_granularities[]`: `segment`, and `word` (verbose_json's `words`: word, start, end
  and probability, our confidence; the model needs a CTC head: `mooer.inference.align`)
- `num_beams` (ours, through the client's `extra_body`): beam search, 1 to 16 (default 1)

Errors come in OpenAI's shape: {"error": {"message", "type", "code", "param"}}.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mooer.data.hotword_list import (
    HotwordError,
    check_score,
    parse_hotwords,
    split_prompt,
)
from mooer.inference.formats import Segment, join_texts, subtitles

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ROUTES = {"/v1/audio/transcriptions": "asr", "/v1/audio/translations": "ast"}
LANGUAGE = re.compile(r"[a-z]{2,3}")


class ApiError(ValueError):
    """A request the OpenAI-style routes refuse, with what OpenAI's error names."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value",
                 status: int = 400) -> None:
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_body(message: str, status: int, code: str | None = None,
               param: str | None = None) -> dict:
    """OpenAI's error shape: a client error is an invalid_request_error, ours a server_error."""
    return {"error": {"message": message,
                      "type": "server_error" if status >= 500 else "invalid_request_error",
                      "code": code, "param": param}}


@dataclass(frozen=True)
class Options:
    """What a request asks, checked."""

    response_format: str = "json"
    language: str | None = None
    num_beams: int = 1
    hotwords: tuple[tuple[str, float | None], ...] = ()
    hotword_score: float | None = None  # None: the default (hotword_list)
    word_times: bool = False  # timestamp_granularities[] holds `word`


def _one(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(f"`{name}` must be a plain form field, not a file", name)
    return value.strip()


def parse_options(form: Mapping[str, Any], granularities: Sequence[str] = (),
                  task: str = "asr") -> Options:
    """The request's options from its form fields (`granularities`: the values of
    `timestamp_granularities[]`) for a route's `task`, or ApiError naming the field that is
    refused and why."""
    if not _one(form, "model"):
        raise ApiError("`model` is required (any name: this server has one model)", "model",
                       "missing_required_parameter")
    fmt = _one(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(f"response_format {fmt!r} is not served: choose one of "
                       f"{', '.join(RESPONSE_FORMATS)}", "response_format")
    temperature = _one(form, "temperature") or "0"
    try:
        value = float(temperature)
    except ValueError:
        raise ApiError(f"temperature must be a number, got {temperature!r}",
                       "temperature") from None
    if value != 0:
        raise ApiError(f"temperature {value:g} is not supported: this server decodes "
                       "deterministically (temperature 0: greedy, or beam search with "
                       "num_beams)", "temperature", "unsupported_value")
    prompt = _one(form, "prompt") or ""
    listed = form.get("hotwords")
    if (prompt or listed) and task != "asr":
        raise ApiError("a prompt (hotwords) biases transcripts only: translations are decoded "
                       "without one; send the request without it",
                       "prompt" if prompt else "hotwords", "unsupported_value")
    try:
        hotwords = split_prompt(prompt) + parse_hotwords(_one(form, "hotwords") or "", "hotwords")
    except HotwordError as err:
        raise ApiError(str(err), "hotwords") from None
    raw_score = _one(form, "hotword_score")
    try:
        score = None if raw_score is None else check_score(float(raw_score))
    except ValueError:  # (HotwordError is one)
        raise ApiError(f"hotword_score must be a number of at least 0, got {raw_score!r}",
                       "hotword_score") from None
    unknown = sorted(set(granularities) - {"segment", "word"})
    if unknown:
        raise ApiError(f"timestamp_granularities {unknown} are not supported: `segment` and "
                       "`word`", "timestamp_granularities", "unsupported_value")
    word_times = "word" in granularities
    if word_times and task != "asr":
        raise ApiError("word timestamps are for transcriptions: translations have none",
                       "timestamp_granularities", "unsupported_value")
    if str(form.get("stream", "false")).lower() not in ("false", "0", ""):
        raise ApiError("streaming responses are not supported: send stream=false",
                       "stream", "unsupported_value")
    language = (_one(form, "language") or "").lower() or None
    if language is not None and not LANGUAGE.fullmatch(language):
        raise ApiError(f"language must be an ISO-639-1 code such as `zh` or `en`, got "
                       f"{language!r}", "language")
    beams = _one(form, "num_beams") or "1"
    if not beams.isdigit() or not 1 <= int(beams) <= 16:
        raise ApiError(f"num_beams must be a whole number from 1 to 16, got {beams!r}",
                       "num_beams")
    if word_times and fmt != "verbose_json":
        raise ApiError("timestamp_granularities needs response_format verbose_json",
                       "timestamp_granularities")
    return Options(fmt, language, int(beams), tuple(hotwords), score, word_times)


def compression_ratio(text: str) -> float:
    """Whisper's measure of repetition: the UTF-8 text's length over its zlib-compressed
    length (above 2.4 a decoder has likely looped)."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def script_language(text: str) -> str:
    """The language a transcript is written in, told by its script: CJK characters make it
    Chinese, anything else English (the languages MooER's models write)."""
    return "chinese" if re.search(r"[\u3400-\u9fff]", text) else "english"


LANGUAGE_NAMES = {"zh": "chinese", "en": "english", "yue": "cantonese", "ja": "japanese",
                  "ko": "korean", "fr": "french", "de": "german", "es": "spanish",
                  "ru": "russian"}


def render(options: Options, task: str, segments: Sequence[Segment], duration: float,
           tokenize: Callable[[str], list[int]]) -> tuple[str | dict, str]:
    """The response body in the asked format, and its media type. `segments` hold one text
    each (the route's task); `tokenize` gives a segment text's token ids for verbose_json."""
    text = join_texts([s.texts[0] for s in segments])
    fmt = options.response_format
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        return subtitles(segments, fmt), ("text/vtt" if fmt == "vtt" else
                                          "application/x-subrip") + "; charset=utf-8"
    if task == "ast":
        language = "english"  # what a translation is written in
    elif options.language:
        language = LANGUAGE_NAMES.get(options.language, options.language)
    else:
        language = script_language(text)
    return {"task": "transcribe" if task == "asr" else "translate", "language": language,
            "duration": duration, "text": text,
            "segments": [{"id": i, "seek": round(s.start * 100), "start": s.start, "end": s.end,
                          "text": s.texts[0], "tokens": tokenize(s.texts[0]),
                          "temperature": 0.0, "compression_ratio": compression_ratio(s.texts[0]),
                          **({"flagged": s.flags[0]} if s.flags and s.flags[0] else {})}
                         for i, s in enumerate(segments)],
            **({"words": [{"word": w.text, "start": w.start, "end": w.end,
                           "probability": round(w.confidence, 4)}
                          for s in segments for w in s.words]} if options.word_times else {}),
            "usage": {"type": "duration", "seconds": duration}}, "application/json"
