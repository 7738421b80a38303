"""Pack a Kaldi data dir (wav.scp + text [+ segments]) into WebDataset/WeNet tar shards.

    mooer-pack --wav_scp data/wav.scp --text data/text --write_dir data/shards \
        --write_prefix data.list --text_norm true --num_threads 8

Every shard holds `<uttid>.txt` then `<uttid>.<audio ext>` per utterance (MooER's layout);
`<write_dir>/<write_prefix>` lists the shards; `<write_dir>/rejects.tsv` lists what was left out
and why. Shards appear under their final name only once complete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from mooer.data.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    parse_pcm_wav,
    read_audio,
    resample,
    to_mono,
    wav_bytes,
)
from mooer.data.parallel import parallel_map
from mooer.data.text import normalize, read_table
from mooer.files import PARTIAL_SUFFIX, partial_path, swap_in, writable_dir

MAX_SECONDS = 20.0  # longer utterances are refused: what training drops (data.max_length: 2000)
TEXT_NORMS = {"true": "mooer", "false": "none", "mooer": "mooer", "llm": "llm", "none": "none"}


@dataclass(frozen=True)
class Item:
    """One utterance to pack: its transcript and where its audio lies (a segment when end set)."""

    uttid: str
    text: str
    path: str
    start: float = 0.0
    end: float | None = None


@dataclass
class ShardResult:
    """What one worker wrote into one shard."""

    path: str
    packed: int = 0
    audio_bytes: int = 0
    seconds: float = 0.0
    rejects: list[tuple[str, str]] = field(default_factory=list)


def str2bool(value: str) -> bool:
    """Parse MooER-style boolean flags ('true', 'false', '1', '0', 'yes', 'no')."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _keyed(rows: list[tuple[str, str]], what: str, rejects: list[tuple[str, str]]
           ) -> dict[str, str]:
    """Rows as a dict; every key seen more than once is rejected outright (no guessing which)."""
    counts = Counter(key for key, _ in rows)
    for key, count in counts.items():
        if count > 1:
            rejects.append((key, f"duplicate uttid: {count} lines in {what}"))
    return {key: value for key, value in rows if counts[key] == 1}


def _segment_sources(rows: list[tuple[str, str]], audio: dict[str, str],
                     rejects: list[tuple[str, str]]) -> dict[str, tuple[str, float, float | None]]:
    """Map segment uttids to (recording path, start, end) from Kaldi segments rows."""
    sources: dict[str, tuple[str, float, float | None]] = {}
    for key, value in _keyed(rows, "segments", rejects).items():
        fields = value.split()
        try:
            recording, start, end = fields[0], float(fields[1]), float(fields[2])
        except (IndexError, ValueError):
            rejects.append((key, f"malformed segments line: {value!r}"))
            continue
        if recording not in audio:
            rejects.append((key, f"recording {recording} of segments not in wav.scp"))
        elif end <= start:
            rejects.append((key, f"segment end {end} is not after start {start}"))
        else:
            sources[key] = (audio[recording], start, end)
    return sources


def collect_items(wav_scp: Path, text: Path, segments: Path | None, text_norm: str
                  ) -> tuple[list[Item], list[tuple[str, str]]]:
    """Join wav.scp, text and (optionally) segments; return items in text order and rejects."""
    rejects: list[tuple[str, str]] = []
    audio = _keyed(read_table(wav_scp, rejects), "wav.scp", rejects)
    transcripts = _keyed(read_table(text, rejects), "text", rejects)
    if segments is None:
        sources: dict[str, tuple[str, float, float | None]] = {
            key: (path, 0.0, None) for key, path in audio.items()}
    else:
        sources = _segment_sources(read_table(segments, rejects), audio, rejects)
    rejected = {key for key, _ in rejects}
    items = []
    for key, transcript in transcripts.items():
        if key not in sources:
            if key not in rejected:
                rejects.append((key, f"no audio: uttid not in {'segments' if segments else 'wav.scp'}"))
            continue
        path, start, end = sources[key]
        normalized = normalize(transcript, text_norm)
        if "/" in key:
            rejects.append((key, "uttid contains '/', which cannot be a tar member name"))
        elif printable(key) != key:
            rejects.append((key, "uttid contains a control character, which a tar member name "
                                 "cannot keep"))
        elif path.rstrip().endswith("|"):
            rejects.append((key, "wav.scp command pipes are not supported: extract the audio to files"))
        elif not normalized.strip():
            rejects.append((key, "empty transcript"))
        else:
            items.append(Item(key, normalized, path, start, end))
    rejects.extend((key, "no transcript: uttid not in text")
                   for key in sources if key not in transcripts and key not in rejected)
    return items, rejects


def load_audio_member(item: Item, sample_rate: int, max_seconds: float = MAX_SECONDS
                      ) -> tuple[bytes, str, float]:
    """Validated audio bytes for a shard, their extension and duration in seconds.

    The file is streamed, never read whole before its header is checked: a recording over
    `max_seconds` (or a segment of one) is refused from its header alone, and only the span a
    segment names is decoded. A mono PCM WAV already at `sample_rate` (or a mono file soundfile
    reads at that rate) is copied unchanged; anything else is decoded, mixed down, resampled and
    stored as 16-bit WAV. Errors name the file.
    """
    path = item.path
    extension = path.rsplit(".", 1)[-1].lower() if "." in Path(path).name else ""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError as err:
        raise AudioError(f"audio file not found: {path}") from err
    except OSError as err:
        raise AudioError(f"cannot read {path}: {err.strerror}") from err
    if not size:
        raise AudioError(f"zero-length audio (empty file): {path}")
    try:
        wav = parse_pcm_wav(head, size)
        whole = (wav.num_frames / wav.sample_rate if wav is not None
                 else sf.info(path).duration)
    except AudioError as err:
        raise AudioError(f"{err} ({path})") from err
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(f"unreadable audio: {err}") from err
    seconds = whole if item.end is None else min(item.end, whole) - item.start
    if seconds > max_seconds:
        raise AudioError(f"longer than --max_seconds ({seconds:.1f} s > {max_seconds:g} s): "
                         "training drops it (data.max_length); cut long recordings into "
                         f"utterances (--segments) ({path})")
    if item.end is None and wav is not None:
        if wav.num_frames == 0:
            raise AudioError(f"zero-length audio (no samples): {path}")
        if wav.sample_rate == sample_rate and wav.channels == 1 and wav.bits_per_sample == 16:
            return Path(path).read_bytes(), "wav", seconds
    try:
        samples, rate = read_audio(path, item.start, item.end)  # only this span is decoded
    except AudioError as err:
        raise AudioError(f"{err} ({path})") from err
    if len(samples) == 0:
        raise AudioError(f"zero-length audio (no samples): {path}")
    if item.end is None and rate == sample_rate and samples.shape[1] == 1 \
            and extension in AUDIO_EXTENSIONS:
        return Path(path).read_bytes(), extension, len(samples) / rate
    mono = resample(to_mono(samples), rate, sample_rate)
    return wav_bytes(mono, sample_rate), "wav", len(mono) / sample_rate


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(job: tuple[str, list[Item], int, float]) -> ShardResult:
    """Write one shard from `items` under a temporary name, then rename it into place."""
    path, items, sample_rate, max_seconds = job
    result = ShardResult(path)
    partial = partial_path(path)
    mtime = int(time.time())
    try:
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
            for item in items:
                try:
                    audio, extension, seconds = load_audio_member(item, sample_rate, max_seconds)
                except AudioError as err:
                    result.rejects.append((item.uttid, str(err)))
                    continue
                _add_member(tar, f"{item.uttid}.txt", item.text.encode("utf-8"), mtime)
                _add_member(tar, f"{item.uttid}.{extension}", audio, mtime)
                result.packed += 1
                result.audio_bytes += len(audio)
                result.seconds += seconds
    except OSError:  # a full disk: no partial left behind (a kill leaves one; the next run clears it)
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    if result.packed:
        swap_in(partial, path)
    else:
        os.remove(partial)
    return result


@dataclass
class PackSummary:
    """Totals of a packing run."""

    shards: list[str]
    packed: int
    rejects: list[tuple[str, str]]
    seconds_of_audio: float
    audio_bytes: int
    elapsed: float


def pack(wav_scp: Path, text: Path, write_dir: Path, write_prefix: str = "data.list",
         segments: Path | None = None, text_norm: str = "none", shuffle: bool = False,
         seed: int = 0, num_utts_per_shard: int = 1000, num_threads: int = 1,
         sample_rate: int = 16000, write_num: int = 1, shard_prefix: str = "shards",
         progress: bool = True, max_seconds: float = MAX_SECONDS) -> PackSummary:
    """Pack a Kaldi data dir into shards; see the module docstring for the layout."""
    started = time.perf_counter()
    list_names = _list_names(write_prefix, write_num, num_utts_per_shard)
    write_dir = writable_dir(write_dir, "--write_dir")  # before any shard is packed
    items, rejects = collect_items(wav_scp, text, segments, TEXT_NORMS.get(text_norm, text_norm))
    if shuffle:
        random.Random(seed).shuffle(items)
    for stale in write_dir.glob(f"{shard_prefix}_*.tar{PARTIAL_SUFFIX}"):
        stale.unlink()  # left by an interrupted run
    for name in list_names:  # an old list must not outlive a re-pack that rewrites its shards
        (write_dir / name).unlink(missing_ok=True)
        Path(partial_path(write_dir / name)).unlink(missing_ok=True)
    chunks = [items[i:i + num_utts_per_shard] for i in range(0, len(items), num_utts_per_shard)]
    jobs = [(str(write_dir / f"{shard_prefix}_{index:09d}.tar"), chunk, sample_rate, max_seconds)
            for index, chunk in enumerate(chunks)]
    results: list[ShardResult] = []
    with parallel_map(write_shard, jobs, min(num_threads, len(jobs))) as shard_results, \
            tqdm(total=len(items), desc="packing", unit="utt", disable=not progress) as bar:
        for result in shard_results:
            results.append(result)
            bar.update(result.packed + len(result.rejects))
    shards = [r.path for r in results if r.packed]
    for result in results:
        rejects.extend(result.rejects)
    _write_lists(write_dir, list_names, shards)
    with open(write_dir / "rejects.tsv", "w", encoding="utf-8") as f:
        f.writelines(f"{printable(uttid)}\t{reason}\n" for uttid, reason in rejects)
    return PackSummary(shards, sum(r.packed for r in results), rejects,
                       sum(r.seconds for r in results), sum(r.audio_bytes for r in results),
                       time.perf_counter() - started)


def printable(uttid: str) -> str:
    """An uttid with control characters (which a tar member name cannot keep) written as \\xNN,
    for one-line reports."""
    return "".join(c if ord(c) >= 32 and ord(c) != 127 else f"\\x{ord(c):02x}" for c in uttid)


def _list_names(write_prefix: str, write_num: int, num_utts_per_shard: int) -> list[str]:
    """The shard list file names, checked before anything is written."""
    if num_utts_per_shard <= 0:
        raise ValueError("--num_utts_per_shard must be positive")
    if write_num < 1:
        raise ValueError(f"--write_num must be at least 1, got {write_num}")
    if write_num > 1 and "#" not in write_prefix:
        raise ValueError("--write_num > 1 needs a '#' in --write_prefix (e.g. data.#.list)")
    if not write_prefix or "/" in write_prefix or write_prefix in (".", ".."):
        raise ValueError(f"--write_prefix {write_prefix!r} must be a file name in --write_dir, "
                         "without '/'")
    return [write_prefix.replace("#", str(index)) for index in range(write_num)]


def _write_lists(write_dir: Path, list_names: list[str], shards: list[str]) -> None:
    """Write the shard list(s), each atomically and only after all shards are in place."""
    per_list = -(-len(shards) // len(list_names)) if shards else 0
    for index, name in enumerate(list_names):
        part = shards[index * per_list:(index + 1) * per_list]
        partial = partial_path(write_dir / name)
        Path(partial).write_text("".join(f"{s}\n" for s in part), encoding="utf-8")
        swap_in(partial, write_dir / name)


def format_summary(summary: PackSummary, write_dir: Path) -> str:
    """A closing report: counts, hours, throughput and the rejects by reason."""
    rate = summary.packed / summary.elapsed if summary.elapsed else 0.0
    lines = [
        f"packed {summary.packed} utterances ({summary.seconds_of_audio / 3600:.2f} h, "
        f"{summary.audio_bytes / 1e6:.1f} MB) into {len(summary.shards)} shards in "
        f"{summary.elapsed:.1f} s ({rate:.0f} utt/s)",
    ]
    if summary.rejects:
        reasons = Counter(reason.split(":")[0] for _, reason in summary.rejects)
        lines.append(f"rejected {len(summary.rejects)} utterances, listed in "
                     f"{write_dir / 'rejects.tsv'}:")
        lines.extend(f"  {count:6d}  {reason}" for reason, count in reasons.most_common())
    else:
        lines.append("rejected 0 utterances")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mooer-pack", description="Pack wav.scp + text into tar shards (MooER/WeNet layout).")
    parser.add_argument("--wav_scp", type=Path, required=True, help="Kaldi wav.scp: uttid path")
    parser.add_argument("--text", type=Path, required=True, help="Kaldi text: uttid transcript")
    parser.add_argument("--write_dir", type=Path, required=True, help="where shards are written")
    parser.add_argument("--write_prefix", default="data.list",
                        help="name of the shard list in write_dir ('#' takes the index with --write_num)")
    parser.add_argument("--write_num", type=int, default=1, help="split the shard list into N files")
    parser.add_argument("--segments", type=Path, default=None,
                        help="Kaldi segments (uttid recording start end); wav.scp then keys recordings")
    parser.add_argument("--shuffle", type=str2bool, default=False,
                        help="shuffle utterances before sharding (true/false)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--text_norm", default="false", choices=sorted(TEXT_NORMS),
                        help="true/mooer: MooER's ASR normalization; llm: keep case and spaces; "
                             "false/none: as is")
    parser.add_argument("--data_type", default="shard", choices=["shard"],
                        help="only 'shard' (MooER has no other)")
    parser.add_argument("--num_threads", type=int, default=1, help="packing processes")
    parser.add_argument("--num_utts_per_shard", type=int, default=1000)
    parser.add_argument("--resample", type=int, default=16000,
                        help="sample rate of the shards; other rates are resampled")
    parser.add_argument("--shard_prefix", default="shards", help="shard file names: PREFIX_000000000.tar")
    parser.add_argument("--max_seconds", type=float, default=MAX_SECONDS,
                        help="longer utterances are refused (training drops them above "
                             "data.max_length, 20 s by default); raise both together")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, path in (("--wav_scp", args.wav_scp), ("--text", args.text),
                       ("--segments", args.segments)):
        if path is not None and not path.is_file():
            print(f"error: {flag} {path} does not exist", file=sys.stderr)
            return 2
    try:
        summary = pack(args.wav_scp, args.text, args.write_dir, args.write_prefix, args.segments,
                       args.text_norm, args.shuffle, args.seed, args.num_utts_per_shard,
                       args.num_threads, args.resample, args.write_num, args.shard_prefix,
                       progress=not args.no_progress, max_seconds=args.max_seconds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a shard that cannot be written
        print(f"error: writing shards to {args.write_dir} failed: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.write_dir.resolve()))
    if summary.packed == 0:
        print("error: nothing was packed; see the reasons above and in rejects.tsv", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
