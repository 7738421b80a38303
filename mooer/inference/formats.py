"""What decoding gives back, and how it is written: segments of a recording with their times
and texts, joined transcripts, TSV, Kaldi text, JSON, SubRip and WebVTT."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

FORMATS = ("tsv", "text", "json", "srt", "vtt")


@dataclass
class Segment:
    """A piece of a recording, in seconds from its start, and what was decoded of it (one text
    per task: asr, ast)."""

    start: float
    end: float
    texts: list[str] = field(default_factory=list)


def join_texts(texts: Sequence[str]) -> str:
    """Segment texts as one: a space between two Latin words, none between CJK characters."""
    joined = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if joined and (joined[-1].isascii() and joined[-1].isalnum() or joined[-1] in ".,?!;:")\
                and text[0].isascii():
            joined += " "
        joined += text
    return joined


def joined(segments: Sequence[Segment], num_tasks: int) -> list[str]:
    """A recording's text per task, its segments joined in time order."""
    return [join_texts([s.texts[i] for s in segments]) for i in range(num_tasks)]


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render(recordings: dict[str, list[Segment]], fmt: str, tasks: Sequence[str],
           header: bool = True) -> str:
    """Every recording's transcript in `fmt`: `tsv` (a segment a row: recording, start, end, one
    text per task; the header row unless not `header`), `text` (Kaldi text: a recording a line,
    its segments joined) or `json`."""
    if fmt == "text":
        return "".join("\t".join([name, *joined(segments, len(tasks))]) + "\n"
                       for name, segments in recordings.items())
    if fmt == "tsv":
        rows = ["\t".join(["recording", "start", "end", *tasks])] if header else []
        rows += ["\t".join([name, f"{s.start:.2f}", f"{s.end:.2f}", *s.texts])
                 for name, segments in recordings.items() for s in segments]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps({name: {**dict(zip(tasks, joined(segments, len(tasks)), strict=True)),
                                  "segments": [asdict(s) for s in segments]}
                           for name, segments in recordings.items()},
                          ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def subtitles(segments: Sequence[Segment], fmt: str) -> str:
    """One recording as SubRip (`srt`) or WebVTT (`vtt`) cues, a segment a cue (its texts, one
    line per task)."""
    separator = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    for index, s in enumerate(segments, 1):
        if fmt == "srt":
            lines.append(str(index))
        lines.append(f"{_clock(s.start, separator)} --> {_clock(s.end, separator)}")
        lines += [t for t in s.texts if t] or [""]
        lines.append("")
    return "\n".join(lines)
