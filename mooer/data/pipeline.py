"""The shard pipeline as small generator stages (WeNet style), composed with WebDataset.

data.list -> shard urls (seeded shuffle, split by rank and worker) -> open -> tar members grouped
on the LAST dot -> decoded audio + text -> length filter -> targets -> features -> token ids ->
shuffle -> sort -> batches. Bad items are skipped with one warning each and counted in `DataErrors`.
"""

from __future__ import annotations

import io
import logging
import math
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import torch

from mooer.data.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    decode_audio,
    parse_pcm_wav,
    resample,
    to_mono,
)
from mooer.data.collate import sequence_length
from mooer.data.features import Frontend
from mooer.data.prompts import refine_target
from mooer.data.text import WORD_JOINER, read_table

log = logging.getLogger(__name__)
Sample = dict[str, Any]
Shard = TypeVar("Shard")  # a shard's url, or a Kaldi dir's (uttid, text, path)


class DataErrors(Counter):
    """Skipped items by reason; each pipeline process keeps its own and batches carry the news."""

    def skip(self, reason: str, where: str, detail: object = "") -> None:
        self[reason] += 1
        log.warning("skipping %s: %s %s", where, reason, detail)


def read_data_list(path: str | Path) -> list[str]:
    """Shard paths or URLs of a data.list, one a line; relative paths are taken from the list's dir."""
    base = Path(path).resolve().parent
    urls = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():  # BOM or not
        line = line.strip()
        if not line:
            continue
        if "://" in line or line.startswith("pipe:") or Path(line).is_absolute():
            urls.append(line)
        else:
            urls.append(str(base / line))
    if not urls:
        raise ValueError(f"{path} lists no shards")
    return urls


def shards_for(urls: Sequence[Shard], epoch: int, seed: int, shuffle: bool, rank: int,
               world_size: int, worker: int, num_workers: int) -> list[Shard]:
    """This (rank, worker)'s shards of an epoch: one seeded permutation shared by every process,
    dealt round-robin to ranks, then each rank's deal to its workers (MooER's order), so each
    shard is read by exactly one process per epoch."""
    order = list(urls)
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[rank::world_size][worker::num_workers]


def count_utterances(url: str) -> int | None:
    """Utterances in a local shard, from its tar headers alone (member data is seeked over, not
    read), grouped as tar_samples groups them; None for a stream or an unreadable file."""
    if "://" in url or url.startswith("pipe:"):
        return None
    count, last = 0, None
    try:
        with tarfile.open(url, mode="r:") as tar:
            for member in tar:
                key = member.name.rpartition(".")[0]
                if member.isfile() and key and key != last:
                    count, last = count + 1, key
    except (tarfile.TarError, OSError, EOFError):
        return None
    return count


def open_shards(urls: Iterable[str], errors: DataErrors, allow_pipe: bool = False
                ) -> Iterator[tuple[str, Any]]:
    """(url, binary stream) per shard: local files directly, http(s)/s3/... through WebDataset's
    gopen (curl with an argument list, no shell). `pipe:` runs a shell command, so it is refused
    unless allow_pipe is set."""
    for url in urls:
        try:
            if url.startswith("pipe:") and not allow_pipe:
                raise PermissionError("pipe: urls run shell commands; set data.allow_pipe=true "
                                      "if you wrote this data.list yourself")
            if "://" in url or url.startswith("pipe:"):
                from webdataset.gopen import gopen

                stream = gopen(url, "rb")
            else:
                stream = open(url, "rb")  # noqa: SIM115 (closed by tar_samples)
        except (OSError, PermissionError, ValueError) as err:
            errors.skip("unreadable shard", url, err)
            continue
        yield url, stream


class _DamageCountingTarFile(tarfile.TarFile):
    """A TarFile read with ignore_zeros, which steps over a damaged header block by block to the
    next valid one as GNU tar does; each damaged run of blocks is recorded by its offset."""

    damaged: list[int]
    _skip_end = -1
    _run_damaged = False

    def _dbg(self, level: int, msg: str) -> None:
        if not hasattr(self, "damaged"):
            self.damaged = []
        if self.offset != self._skip_end:  # a new run of skipped blocks
            self._run_damaged = False
        self._skip_end = self.offset + tarfile.BLOCKSIZE
        # zero blocks end an archive; anything else that is not a header is damage
        if "end of file header" not in msg and not self._run_damaged:
            self._run_damaged = True
            self.damaged.append(self.offset)


def tar_samples(shards: Iterable[tuple[str, Any]], errors: DataErrors,
                finished: dict[str, int] | None = None) -> Iterator[Sample]:
    """Group each shard's members into utterances on the LAST dot of the member name
    (`spk1.utt.001.wav` -> key `spk1.utt.001`). A damaged member header is stepped over to the
    next valid one (its utterance is left incomplete, so counted); a shard cut short is read up
    to the damage. `finished[url]`: the utterances a shard gave, set once it is read to its end."""
    for url, stream in shards:
        current: Sample | None = None
        given, failure = 0, None
        tar = None
        try:
            tar = _DamageCountingTarFile.open(fileobj=stream, mode="r|*", ignore_zeros=True)
            for member in tar:
                if not member.isfile():
                    if not member.isdir():
                        errors.skip("member is not a regular file", f"{url}:{member.name}")
                    continue
                key, _, extension = member.name.rpartition(".")
                if not key:
                    errors.skip("member without extension", f"{url}:{member.name}")
                    continue
                if current is not None and current["key"] != key:
                    given += 1
                    yield current
                    current = None
                if current is None:
                    current = {"key": key, "shard": url}
                extracted = tar.extractfile(member)
                if extracted is None:  # a regular file always has its data
                    raise tarfile.ReadError(f"member {member.name} has no data")
                data = extracted.read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is truncated")
                current[extension.lower()] = data
        except (tarfile.TarError, OSError, EOFError) as err:
            failure = (f"{url}:{current['key']}" if current else url, err)
            current = None  # an utterance cut by the damage is not used
        try:
            stream.close()  # a remote stream reports here that it could not be fetched
        except Exception as err:  # noqa: BLE001 (curl's exit status comes as any error)
            errors.skip("unreadable shard", url, err)
            continue
        for offset in getattr(tar, "damaged", []):
            errors.skip("damaged tar header", url, f"at byte {offset}: the member there is lost")
        if failure is not None:
            errors.skip("damaged shard", *failure)
        if current is not None:
            given += 1
            yield current
        if finished is not None:
            finished[url] = given


def take_slot(samples: Iterable[Sample], slot: int, slots: int) -> Iterator[Sample]:
    """Every `slots`-th utterance from `slot` on: utterance-level dealing, for a data.list with
    fewer shards than ranks (every process then reads every shard)."""
    for index, sample in enumerate(samples):
        if index % slots == slot:
            yield sample


def keep_keys(samples: Iterable[Sample], keys: frozenset[str]) -> Iterator[Sample]:
    """Only the utterances whose uttid is in `keys` (before their audio is decoded)."""
    return (sample for sample in samples if sample["key"] in keys)


def utterance_seconds(source: str | Path, allow_pipe: bool = False) -> list[tuple[str, float]]:
    """(uttid, seconds) of every utterance of a data.list or Kaldi dir, from audio headers
    alone (a WAV member's first bytes; other formats are read whole), in the source's order."""
    found: list[tuple[str, float]] = []
    if Path(source).is_dir():
        for key, _, path in read_kaldi_dir(source):
            try:
                found.append((key, float(sf.info(path).duration)))
            except (RuntimeError, sf.LibsndfileError):
                found.append((key, 0.0))  # the pipeline skips and counts it
        return found
    for _, stream in open_shards(read_data_list(source), DataErrors(), allow_pipe):
        with stream, tarfile.open(fileobj=stream, mode="r|*", ignore_zeros=True) as tar:
            for member in tar:
                key, _, extension = member.name.rpartition(".")
                if not member.isfile() or extension.lower() not in AUDIO_EXTENSIONS:
                    continue
                reader = tar.extractfile(member)
                if reader is None:
                    continue
                head = reader.read(1 << 16)
                try:
                    wav = parse_pcm_wav(head, member.size)
                    seconds = (wav.num_frames / wav.sample_rate if wav is not None
                               else float(sf.info(io.BytesIO(head + reader.read())).duration))
                except (AudioError, RuntimeError, sf.LibsndfileError):
                    seconds = 0.0  # the pipeline skips and counts it; it costs its rank nothing
                found.append((key, seconds))
    return found


def kaldi_samples(items: Iterable[tuple[str, str, str]], errors: DataErrors,
                  finished: dict[str, int] | None = None) -> Iterator[Sample]:
    """Utterances of a raw Kaldi dir, (uttid, transcript, audio path) each, in the form
    tar_samples gives: {key, shard, txt, <audio ext>: bytes}; `finished[path]` as tar_samples'."""
    for key, text, path in items:
        if finished is not None:
            finished[path] = 1
        extension = path.rsplit(".", 1)[-1].lower() if "." in path else "wav"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            errors.skip("unreadable audio file", f"{path} ({key})", err)
            continue
        yield {"key": key, "shard": path, "txt": text.encode("utf-8"),
               extension if extension in AUDIO_EXTENSIONS else "wav": data}


def read_kaldi_dir(directory: str | Path) -> list[tuple[str, str, str]]:
    """(uttid, transcript, path) of `wav.scp` joined with `text` (empty text when absent)."""
    directory = Path(directory)
    texts = dict(read_table(directory / "text")) if (directory / "text").is_file() else {}
    items = [(key, texts.get(key, ""), path) for key, path in read_table(directory / "wav.scp")]
    if not items:
        raise ValueError(f"{directory / 'wav.scp'} lists no audio")
    return items


def decode(samples: Iterable[Sample], errors: DataErrors, sample_rate: int = 16000
           ) -> Iterator[Sample]:
    """Text as UTF-8 and audio as float32 mono at `sample_rate` (`wav` tensor), else skipped."""
    for sample in samples:
        where = f"{sample['shard']}:{sample['key']}"
        audio_ext = next((ext for ext in sample if ext in AUDIO_EXTENSIONS), None)
        if "txt" not in sample or audio_ext is None:
            errors.skip("incomplete utterance (needs .txt and audio)", where)
            continue
        try:
            text = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            errors.skip("text is not UTF-8", where, err)
            continue
        try:
            audio, rate = decode_audio(sample[audio_ext])
        except AudioError as err:
            errors.skip("undecodable audio", where, err)
            continue
        if len(audio) == 0:
            errors.skip("empty audio", where)
            continue
        wave = resample(to_mono(audio), rate, sample_rate)
        yield {"key": sample["key"], "shard": sample["shard"], "txt": text,
               "wav": torch.from_numpy(np.ascontiguousarray(wave)), "sample_rate": sample_rate}


def filter_length(samples: Iterable[Sample], min_frames: int, max_frames: int,
                  errors: DataErrors | None = None) -> Iterator[Sample]:
    """Keep utterances of min..max 10 ms frames (MooER's min_length/max_length)."""
    for sample in samples:
        frames = len(sample["wav"]) * 100 / sample["sample_rate"]
        if min_frames <= frames <= max_frames:
            yield sample
        elif errors is not None:
            errors["filtered by length"] += 1


def attach_targets(samples: Iterable[Sample], table: Mapping[str, str] | None, replace_type: str,
                   errors: DataErrors) -> Iterator[Sample]:
    """Set `target`: the transcript, or (with a replace_text table) MooER's refined label."""
    for sample in samples:
        if table is None:
            sample["target"] = sample["txt"]
        elif sample["key"] in table:
            sample["target"] = refine_target(sample["txt"], table[sample["key"]], replace_type)
        else:
            errors.skip("no entry in the replace_text table", f"{sample['shard']}:{sample['key']}")
            continue
        yield sample


def speed_perturb(samples: Iterable[Sample], speeds: tuple[float, ...], seed: int
                  ) -> Iterator[Sample]:
    """Resample-based speed perturbation (tempo and pitch change together, as sox `speed`)."""
    rng = random.Random(seed)
    for sample in samples:
        speed = rng.choice(speeds)
        if speed != 1.0:
            rate = sample["sample_rate"]
            wave = resample(sample["wav"].numpy(), int(round(rate * speed)), rate)
            sample["wav"] = torch.from_numpy(np.ascontiguousarray(wave))
        yield sample


def groups(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive lists of `size` samples (the last may be shorter)."""
    group: list[Sample] = []
    for sample in samples:
        group.append(sample)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def compute_features(samples: Iterable[Sample], frontend: Frontend, group_size: int = 32
                     ) -> Iterator[Sample]:
    """`features` [frames, dim] from the waveform with the encoder's frontend, `group_size`
    utterances a pass (vectorized where the frontend can be)."""
    for group in groups(samples, group_size):
        features = frontend.batch([s["wav"] for s in group], group[0]["sample_rate"])
        for sample, feature in zip(group, features, strict=True):
            sample["features"] = feature
            yield sample


def spec_augment(samples: Iterable[Sample], seed: int, num_freq_masks: int = 2,
                 max_freq_width: int = 30, num_time_masks: int = 2, max_time_width: int = 40,
                 max_time_fraction: float = 0.2, band: int | None = None) -> Iterator[Sample]:
    """Zero random frequency bands and time spans of the features (SpecAugment without warping).

    `band`: the bins of one frame in stacked features (80 for Paraformer's LFR, 7 x 80 wide): a
    frequency mask then zeroes the same bins of every stacked frame. A time mask is at most
    `max_time_width` frames and `max_time_fraction` of the utterance.
    """
    rng = random.Random(seed)
    for sample in samples:
        features = sample["features"].clone()
        frames, dim = features.shape
        bins = band if band and dim % band == 0 else dim
        banded = features.view(frames, dim // bins, bins)
        for _ in range(num_freq_masks):
            width = rng.randint(0, min(max_freq_width, bins))
            start = rng.randint(0, bins - width)
            banded[:, :, start:start + width] = 0
        for _ in range(num_time_masks):
            width = rng.randint(0, min(max_time_width, int(frames * max_time_fraction)))
            start = rng.randint(0, max(0, frames - width))
            features[start:start + width, :] = 0
        sample["features"] = features
        yield sample


def tokenize(samples: Iterable[Sample], prompt_builder, slots_for: Callable[[int], int],
             errors: DataErrors, epoch: int = 0, inference: bool = False, group_size: int = 64,
             transcripts: bool = False) -> Iterator[Sample]:
    """Prompt and answer token ids plus the number of audio slots of each utterance; answers
    of `group_size` utterances are tokenized in one call. With `transcripts`, the transcript's
    token ids too (`transcript_ids`, for a CTC loss), whatever the task's answer is. An utterance
    too short to give the encoder one audio slot is skipped."""

    def long_enough(sample: Sample) -> bool:
        if slots_for(len(sample["features"])) > 0:
            return True
        seconds = len(sample["wav"]) / sample["sample_rate"]
        errors.skip("too short for the encoder", f"{sample['shard']}:{sample['key']}",
                    f"({seconds:.3f} s)")
        return False

    for group in groups(filter(long_enough, samples), group_size):
        prompted = prompt_builder.many([s.get("target", s["txt"]) for s in group],
                                       [s["key"] for s in group], epoch, inference)
        if transcripts:
            ids = prompt_builder.tokenizer([s["txt"].replace(WORD_JOINER, " ") for s in group])
            for sample, transcript in zip(group, ids["input_ids"], strict=True):
                sample["transcript_ids"] = torch.tensor(transcript, dtype=torch.long)
        for sample, p in zip(group, prompted, strict=True):
            sample.update(task=p.task, prompt_ids=p.prompt_ids, answer_ids=p.answer_ids,
                          target=p.target, num_audio_slots=slots_for(len(sample["features"])),
                          prefix_ids=p.prefix_ids)
            yield sample


def shuffle(samples: Iterable[Sample], buffer_size: int, seed: int) -> Iterator[Sample]:
    """Reservoir-style shuffle within a buffer of `buffer_size` utterances."""
    rng = random.Random(seed)
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer


def sort_by_length(samples: Iterable[Sample], buffer_size: int) -> Iterator[Sample]:
    """Sort within buffers by feature frames, so batches pad little (bucketing)."""
    buffer: list[Sample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            buffer.sort(key=lambda s: len(s["features"]))
            yield from buffer
            buffer = []
    buffer.sort(key=lambda s: len(s["features"]))
    yield from buffer


def batch_fixed(samples: Iterable[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Batches of `batch_size` utterances (the last may be smaller)."""
    return groups(samples, batch_size)


def batch_dynamic(samples: Iterable[Sample], max_frames: int, max_tokens: int | None = None,
                  bucket_ratio: float = 1.1) -> Iterator[list[Sample]]:
    """Batches of utterances of similar length whose padded size stays within budget (length
    buckets, as lhotse's and WeNet's bucketing samplers): an utterance of f feature frames joins
    bucket floor(log f / log bucket_ratio), so a batch's durations differ by at most that ratio;
    with `max_tokens`, buckets are 2-D (NeMo's 2D bucketing), on its LLM tokens (audio slots +
    prompt + answer, what the step's memory follows) as well, so a batch pads little in either.
    A bucket's batch is given out when the next utterance would take longest frames x count
    past `max_frames` (or longest sequence x count past `max_tokens`). The partial batches follow
    at the end, shortest bucket first. An utterance over budget alone forms its own batch."""
    log_ratio = math.log(bucket_ratio)
    open_batches: dict[tuple[int, int], tuple[list[Sample], int, int]] = {}
    for sample in samples:
        frames, tokens = len(sample["features"]), sequence_length(sample)
        bucket = (int(math.log(max(frames, 1)) / log_ratio),
                  int(math.log(max(tokens, 1)) / log_ratio) if max_tokens else 0)
        batch, longest_frames, longest_tokens = open_batches.get(bucket, ([], 0, 0))
        longest_frames, longest_tokens = max(longest_frames, frames), max(longest_tokens, tokens)
        size = len(batch) + 1
        over = longest_frames * size > max_frames or (max_tokens and longest_tokens * size > max_tokens)
        if batch and over:
            yield batch
            batch, longest_frames, longest_tokens = [], frames, tokens
        batch.append(sample)
        open_batches[bucket] = (batch, longest_frames, longest_tokens)
    for bucket in sorted(open_batches):
        yield open_batches[bucket][0]


def pack_rows(samples: Iterable[Sample], row_tokens: int, rows_per_batch: int, buffer_size: int,
              errors: DataErrors | None = None) -> Iterator[list[list[Sample]]]:
    """Packed batches (`mooer.data.collate.collate_packed`): `rows_per_batch` rows of at most
    `row_tokens` LLM tokens (audio slots + prompt + answer, so the budget is the step's memory),
    each row several utterances back to back.

    Each buffer of `buffer_size` utterances is sorted longest first and dealt first-fit into
    rows (first-fit decreasing fills rows to within a few tokens), so a batch's utterances have
    similar durations and the encoder, which runs on them as a padded batch, pads little. Rows
    of a buffer that do not fill a whole batch are dealt again with the next buffer; the last
    batch of the stream may have fewer rows. An utterance longer than a row is skipped (counted).
    """
    carried: list[Sample] = []

    def deal(buffer: list[Sample]) -> list[list[Sample]]:
        rows: list[list[Sample]] = []
        room: list[int] = []
        for sample in sorted(buffer, key=sequence_length, reverse=True):
            length = sequence_length(sample)
            if length > row_tokens:
                if errors is not None:
                    errors.skip("longer than data.max_tokens_in_row", sample["key"],
                                f"({length} tokens)")
                continue
            row = next((i for i, free in enumerate(room) if free >= length), None)
            if row is None:
                rows.append([])
                room.append(row_tokens)
                row = len(rows) - 1
            rows[row].append(sample)
            room[row] -= length
        return rows

    for buffer in groups(samples, buffer_size):
        rows = deal(carried + buffer)
        whole = len(rows) - len(rows) % rows_per_batch
        for start in range(0, whole, rows_per_batch):
            yield rows[start:start + rows_per_batch]
        carried = [sample for row in rows[whole:] for sample in row]
    rows = deal(carried)
    for start in range(0, len(rows), rows_per_batch):
        yield rows[start:start + rows_per_batch]
