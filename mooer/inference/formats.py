"""What decoding gives back, and how it is written: segments of a recording with their times
and texts, joined transcripts, TSV, Kaldi text, JSON, SubRip and WebVTT."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from mooer.inference.align import Word

FORMATS = ("tsv", "text", "json", "srt", "vtt")


@dataclass
class Segment:
    """A piece of a recording, in seconds from its start, and what was decoded of it (one text
    per task: asr, ast)."""

    start: float
    end: float
    texts: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # per task: why the guard still doubts it
    words: list[Word] = field(default_factory=list)  # the transcript's words, times absolute

    def flagged(self, tasks: Sequence[str]) -> dict[str, str]:
        """{task: reason} of the texts the hallucination guard still flags."""
        return {task: reason for task, reason in zip(tasks, self.flags, strict=False) if reason}

    def marked_texts(self) -> list[str]:
        """The texts, each the guard still flags starting `[unreliable: why] ` (TSV, SRT, VTT)."""
        return [f"[unreliable: {self.flags[i]}] {text}" if i < len(self.flags) and self.flags[i]
                else text for i, text in enumerate(self.texts)]

    def as_dict(self, tasks: Sequence[str]) -> dict:
        """start, end, texts (and flagged, when any) as JSON writes them."""
        out: dict = {"start": self.start, "end": self.end, "texts": self.texts}
        if self.flagged(tasks):
            out["flagged"] = self.flagged(tasks)
        if self.words:
            out["words"] = [w.as_dict() for w in self.words]
        return out


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
           header: bool = True, word_level: bool = False) -> str:
    """Every recording's transcript in `fmt`: `tsv` (a segment a row: recording, start, end, one
    text per task; the header row unless not `header`; with `word_level` a word a row:
    recording, start, end, word, confidence, and a segment without word times stays a row of
    its transcript), `text` (Kaldi text: a recording a line, its segments joined) or `json`. A
    text the hallucination guard still flags is marked: `[unreliable: why] ` before it in TSV,
    `flagged` in JSON (Kaldi text stays plain, for scoring)."""
    if fmt == "text":
        return "".join("\t".join([name, *joined(segments, len(tasks))]) + "\n"
                       for name, segments in recordings.items())
    if fmt == "tsv" and word_level:
        rows = ["\t".join(["recording", "start", "end", "word", "confidence"])] if header else []
        for name, segments in recordings.items():
            for s in segments:
                rows += [f"{name}\t{w.start:.3f}\t{w.end:.3f}\t{w.text}\t{w.confidence:.4f}"
                         for w in s.words] or [
                    f"{name}\t{s.start:.3f}\t{s.end:.3f}\t{s.marked_texts()[0]}\t"]
        return "\n".join(rows) + "\n"
    if fmt == "tsv":
        rows = ["\t".join(["recording", "start", "end", *tasks])] if header else []
        rows += ["\t".join([name, f"{s.start:.2f}", f"{s.end:.2f}", *s.marked_texts()])
                 for name, segments in recordings.items() for s in segments]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps({name: {**dict(zip(tasks, joined(segments, len(tasks)), strict=True)),
                                  "segments": [s.as_dict(tasks) for s in segments]}
                           for name, segments in recordings.items()},
                          ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def subtitles(segments: Sequence[Segment], fmt: str, word_level: bool = False) -> str:
    """One recording as SubRip (`srt`) or WebVTT (`vtt`) cues, a segment a cue (its texts, one
    line per task; a text the hallucination guard still flags starts `[unreliable: why]`), or
    with `word_level` a word a cue (the segments' word times; a segment without them stays a
    cue)."""
    separator = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    if word_level:
        segments = [cue for s in segments
                    for cue in ([Segment(w.start, w.end, [w.text]) for w in s.words] or [s])]
    for index, s in enumerate(segments, 1):
        if fmt == "srt":
            lines.append(str(index))
        lines.append(f"{_clock(s.start, separator)} --> {_clock(s.end, separator)}")
        lines += [t for t in s.marked_texts() if t] or [""]
        lines.append("")
    return "\n".join(lines)
