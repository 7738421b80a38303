"""Loading, in torch alone: data.list shards (or a Kaldi dir) -> collated batches, each (rank,
worker) reading its own deal, every rank ending an epoch together, skips counted and reported.
The DataModule (`mooer.data.datamodule`) and decoding (`mooer.inference`) build on it."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mooer.data import pipeline as P
from mooer.data.collate import audio_slots, collate, collate_packed
from mooer.data.features import Frontend
from mooer.data.prompts import PromptBuilder
from mooer.data.text import read_table

log = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    """How one split is read: filters, order, augmentation and batching."""

    sample_rate: int = 16000
    min_length: int = 20
    max_length: int = 2000
    training: bool = True          # shuffles shards and samples; False keeps data.list order
    seed: int = 42
    shuffle_buffer: int = 1000
    sort_buffer: int = 500         # 0: no sorting
    batch_size: int = 8
    dynamic_batching: bool = False
    max_frames_in_batch: int = 12000
    max_tokens_in_batch: int | None = None
    bucket_ratio: float = 1.1      # dynamic batching: longest / shortest utterance of a batch
    packing: bool = False          # training: several utterances a row (collate_packed)
    max_tokens_in_row: int = 4096  # packing: LLM tokens a row (audio slots + prompt + answer)
    rows_per_batch: int = 1        # packing: rows a batch
    pad_to_multiple: int = 1       # token and frame widths rounded up to this (compile buckets)
    speed_perturb: Sequence[float] = ()
    # True (defaults) or the keyword arguments of pipeline.spec_augment
    spec_augment: bool | Mapping[str, Any] = False
    inference: bool = False        # no answers: prompts only (decoding)
    keys: frozenset[str] | None = None  # only these utterances (a decoding rank's share)
    transcripts: bool = False      # also the transcript's token ids (a CTC loss needs them)
    allow_pipe: bool = False
    replace_text: dict[str, str] | None = field(default=None, repr=False)
    replace_type: str = "replace"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_frames_in_batch", "sample_rate", "max_tokens_in_row",
                     "rows_per_batch", "pad_to_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        if self.bucket_ratio <= 1:
            raise ValueError(f"data.bucket_ratio must be above 1, got {self.bucket_ratio}")
        if self.min_length > self.max_length:
            raise ValueError(f"data.min_length {self.min_length} is above data.max_length "
                             f"{self.max_length}")


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Streams collated batches from a data.list (or a raw Kaldi dir with wav.scp [+ text]);
    `set_epoch` reseeds shard and sample order."""

    def __init__(self, data_list: str | Path, frontend: Frontend, prompt_builder: PromptBuilder,
                 slots_for: Callable[[int], int], options: PipelineOptions) -> None:
        self.kaldi_dir = Path(data_list).is_dir()
        self.urls = (P.read_kaldi_dir(data_list) if self.kaldi_dir
                     else P.read_data_list(data_list))
        self.frontend, self.prompt_builder, self.slots_for = frontend, prompt_builder, slots_for
        self.options = options
        self.epoch = 0
        self.rank, self.world_size = 0, 1  # set by the loader in the main process, for workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def deal(self, rank: int, world_size: int, worker: int, num_workers: int
             ) -> tuple[list, tuple[int, int] | None]:
        """What one reader, (rank, worker), reads this epoch: (shards, utterance slot or None).

        Shards are dealt to ranks, then to each rank's workers: each shard is opened by one
        process (workers left without a shard stay idle). With fewer shards than ranks, every
        process reads every shard and keeps its slot of utterances.
        """
        o = self.options
        if len(self.urls) >= world_size:
            return P.shards_for(self.urls, self.epoch, o.seed, o.training, rank, world_size,
                                worker, num_workers), None
        everything = P.shards_for(self.urls, self.epoch, o.seed, o.training, 0, 1, 0, 1)
        return everything, (rank * num_workers + worker, world_size * num_workers)

    def shard_name(self, item: Any) -> str:
        """The name batches report a shard by (a Kaldi item's audio path)."""
        return item[2] if self.kaldi_dir else item

    def shard_size(self, item: Any) -> int | None:
        """Utterances in one shard without reading its audio; None where that cannot be told."""
        return 1 if self.kaldi_dir else P.count_utterances(item)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        o, errors = self.options, P.DataErrors()
        finished: dict[str, int] = {}  # shard name -> utterances, once read to the end
        info = get_worker_info()
        seed = o.seed * 1_000_003 + self.epoch * 1009 + (info.id if info else 0)
        shards, slot = self.deal(self.rank, self.world_size,
                                 *((info.id, info.num_workers) if info else (0, 1)))
        stages: list[Any] = [functools.partial(iter, shards)]
        if self.kaldi_dir:
            stages.append(functools.partial(P.kaldi_samples, errors=errors, finished=finished))
        else:
            stages += [functools.partial(P.open_shards, errors=errors, allow_pipe=o.allow_pipe),
                       functools.partial(P.tar_samples, errors=errors, finished=finished)]
        if slot is not None:
            stages.append(functools.partial(P.take_slot, slot=slot[0], slots=slot[1]))
        if o.keys is not None:
            stages.append(functools.partial(P.keep_keys, keys=o.keys))
        stages.append(functools.partial(P.decode, errors=errors, sample_rate=o.sample_rate))
        if not o.inference:
            stages.append(functools.partial(P.filter_length, min_frames=o.min_length,
                                            max_frames=o.max_length, errors=errors))
        stages.append(functools.partial(P.attach_targets, table=o.replace_text,
                                        replace_type=o.replace_type, errors=errors))
        if o.training and o.speed_perturb:
            stages.append(functools.partial(P.speed_perturb, speeds=tuple(o.speed_perturb),
                                            seed=seed))
        stages.append(functools.partial(P.compute_features, frontend=self.frontend))
        if o.training and o.spec_augment:
            settings = dict(o.spec_augment) if isinstance(o.spec_augment, Mapping) else {}
            stages.append(functools.partial(P.spec_augment, seed=seed + 1, **settings))
        stages.append(functools.partial(P.tokenize, prompt_builder=self.prompt_builder,
                                        slots_for=self.slots_for, epoch=self.epoch,
                                        inference=o.inference, transcripts=o.transcripts,
                                        errors=errors))
        if o.training and o.shuffle_buffer > 1:
            stages.append(functools.partial(P.shuffle, buffer_size=o.shuffle_buffer, seed=seed + 2))
        pad_id = self.prompt_builder.pad_id
        if o.packing and o.training:  # validation and decoding need padded rows (generation)
            stages.append(functools.partial(P.pack_rows, row_tokens=o.max_tokens_in_row,
                                            rows_per_batch=o.rows_per_batch,
                                            buffer_size=max(o.sort_buffer, 1), errors=errors))
            make_batch = functools.partial(collate_packed, pad_id=pad_id,
                                           row_tokens=o.max_tokens_in_row,
                                           pad_to_multiple=o.pad_to_multiple)
        else:
            if o.dynamic_batching:  # length buckets: no sort buffer needed
                stages.append(functools.partial(P.batch_dynamic, max_frames=o.max_frames_in_batch,
                                                max_tokens=o.max_tokens_in_batch,
                                                bucket_ratio=o.bucket_ratio))
            else:
                if o.sort_buffer > 1:
                    stages.append(functools.partial(P.sort_by_length, buffer_size=o.sort_buffer))
                stages.append(functools.partial(P.batch_fixed, batch_size=o.batch_size))
            make_batch = functools.partial(collate, pad_id=pad_id,
                                           pad_to_multiple=o.pad_to_multiple)
        reported, reported_shards = P.DataErrors(), set[str]()

        def news() -> dict[str, Any]:
            """What the main process has not heard yet: skips and shards read to the end."""
            fresh = {"data_errors": dict(errors - reported),
                     "finished_shards": {k: v for k, v in finished.items()
                                         if k not in reported_shards}}
            reported.update(fresh["data_errors"])
            reported_shards.update(fresh["finished_shards"])
            return fresh

        for samples in wds.DataPipeline(*stages):
            yield {**make_batch(samples), **news()}
        yield {**news(), "report_only": True}  # what happened after the last batch


_JOIN_GROUP: Any = None


def _join_group() -> Any:
    """A gloo group for the per-step join (a CPU all-reduce, whatever the training backend);
    made once, by every rank at its first pass over a loader."""
    global _JOIN_GROUP
    if _JOIN_GROUP is None:
        _JOIN_GROUP = torch.distributed.new_group(backend="gloo")
    return _JOIN_GROUP


def joined(batches: Iterable[Any], group: Any) -> Iterator[Any]:
    """WeNet's join: before each step the ranks agree (an all-reduce of 0/1) whether every one of
    them still has a batch; the first to run out ends the epoch for all, so none waits forever
    in a collective the others never reach."""
    for batch in itertools.chain(batches, [None]):
        has_batch = torch.tensor(0 if batch is None else 1)
        torch.distributed.all_reduce(has_batch, op=torch.distributed.ReduceOp.MIN, group=group)
        if not has_batch:
            return
        yield batch


class EpochDataLoader(DataLoader):
    """A DataLoader over a ShardDataset that advances the epoch on every pass, ends each pass on
    every rank together, and reports what a pass skipped for bad data or left unread."""

    dataset: ShardDataset

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, start_epoch: int = 0,
                 name: str = "train", skip_batches: int = 0, distributed: bool = True,
                 **kwargs: Any) -> None:
        """`distributed`: deal shards to the process group's ranks (training); decoding ranks
        deal utterances themselves (`keys`) and read their own."""
        super().__init__(dataset, batch_size=None, num_workers=num_workers,
                         persistent_workers=False, **kwargs)
        self.distributed = distributed
        self.next_epoch, self.name = start_epoch, name
        self.skip_batches = skip_batches  # of the first pass: where a resumed run stopped
        self.errors: P.DataErrors = P.DataErrors()  # of the last (or current) pass
        # of the last pass, summed over ranks: what the first rank to run out left unread
        self.unread: dict[str, int] = {}
        self.warned = False

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]  # batches
        epoch = self.next_epoch
        self.dataset.set_epoch(epoch)
        self.next_epoch += 1
        self.errors, self.unread = P.DataErrors(), {}
        rank, world_size = _distributed() if self.distributed else (0, 1)
        self.dataset.rank, self.dataset.world_size = rank, world_size
        self._warn_idle_readers(rank, world_size)
        finished: dict[str, int] = {}
        consumed, state = 0, {"exhausted": False}

        def batches() -> Iterator[dict[str, Any]]:
            for batch in super(EpochDataLoader, self).__iter__():
                self.errors.update(batch.pop("data_errors", {}))
                finished.update(batch.pop("finished_shards", {}))
                if not batch.get("report_only"):
                    yield batch
            state["exhausted"] = True

        group = _join_group() if world_size > 1 else None
        stream = joined(batches(), group) if group is not None else batches()
        skip, self.skip_batches = self.skip_batches, 0
        for batch in stream:
            consumed += len(batch["keys"])
            if skip:  # the same seeded order as before the interruption, minus what was seen
                skip -= 1
                continue
            yield batch
        self._report_skips(epoch)
        if group is not None:
            self._report_unread(epoch, rank, world_size, group, finished, consumed,
                                state["exhausted"])

    def _warn_idle_readers(self, rank: int, world_size: int) -> None:
        readers, shards = world_size * max(1, self.num_workers), len(self.dataset.urls)
        if self.warned or rank != 0 or shards >= readers or self.dataset.kaldi_dir:
            return
        self.warned = True
        if shards < world_size:
            log.warning("%s: %d shards for %d ranks: every process reads every shard and keeps "
                        "its share of utterances. Pack at least %d shards (mooer-pack "
                        "--num_utts_per_shard) so each shard is read by one process", self.name,
                        shards, world_size, readers)
        else:
            log.warning("%s: %d shards for %d ranks x %d workers: some workers stay idle. Pack at "
                        "least %d shards", self.name, shards, world_size, self.num_workers, readers)

    def _report_skips(self, epoch: int) -> None:
        filtered = self.errors.get("filtered by length", 0)
        skipped = {k: v for k, v in self.errors.items() if k != "filtered by length"}
        if skipped or filtered:  # a warning when data was bad; length filtering is routine
            details = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
            log.log(logging.WARNING if skipped else logging.INFO,
                    "%s epoch %d: skipped %d items for bad data%s; %d utterances filtered by "
                    "length (data.min_length..max_length)", self.name, epoch,
                    sum(skipped.values()), f" ({details})" if details else "", filtered)

    def _report_unread(self, epoch: int, rank: int, world_size: int, group: Any,
                       finished: dict[str, int], consumed: int, exhausted: bool) -> None:
        """Sum over ranks what the join left unread: utterances dealt to a rank that it neither
        trained on nor skipped, shards not read to their end, and the remote ones among those
        (their utterances cannot be counted without reading them)."""
        utterances = shards = unknown = 0
        if not exhausted:
            utterances, shards, unknown = self._unread_on_this_rank(rank, world_size, finished,
                                                                    consumed)
        totals = torch.tensor([utterances, shards, unknown])
        torch.distributed.all_reduce(totals, group=group)
        utterances, shards, unknown = (int(v) for v in totals)
        self.unread = {"utterances": utterances, "shards": shards, "uncounted_shards": unknown}
        if rank == 0 and (utterances or shards):
            log.info("%s epoch %d: the ranks ended together when the first ran out, leaving "
                     "unread %d utterances%s (%d shards not read to their end) over %d ranks; "
                     "another epoch's order reads them", self.name, epoch, utterances,
                     f" and those of {unknown} remote shards" if unknown else "", shards,
                     world_size)

    def _unread_on_this_rank(self, rank: int, world_size: int, finished: dict[str, int],
                             consumed: int) -> tuple[int, int, int]:
        dataset, workers = self.dataset, max(1, self.num_workers)
        deals = [dataset.deal(rank, world_size, w, workers) for w in range(workers)]
        names = {dataset.shard_name(u): u for shards, _ in deals for u in shards}
        sizes: dict[str, int] = {}
        unknown = 0
        for name, item in names.items():
            size = finished[name] if name in finished else dataset.shard_size(item)
            if size is None:
                unknown += 1
            sizes[name] = size or 0
        total = sum(sizes.values())
        slots_of = [slot for _, slot in deals if slot is not None]
        if slots_of:  # utterance-level dealing: this rank's slots of the whole
            total = sum(len(range(slot, total, count)) for slot, count in slots_of)
        skipped = sum(v for k, v in self.errors.items() if k != "unreadable shard")
        unread_shards = len([n for n in names if n not in finished])
        return max(0, total - consumed - skipped), unread_shards, unknown


class ReadyBatches:
    """Batches made beforehand, as a loader (for `trainer.fit` on in-memory batches: Lightning
    takes a bare list for a list of loaders)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def read_replace_table(path: str | Path | None) -> dict[str, str] | None:
    """MooER's replace_text table (`uttid label` lines), or None."""
    if not path:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"replace_text_path {path} not found (task.replace_text_path)")
    return {key: value for key, value in read_table(path) if value}


def slot_counter(encoder_convs: Sequence[Sequence[int]], downsample: int
                 ) -> Callable[[int], int]:
    """frames -> audio slots (a picklable partial of `audio_slots`, for loader workers)."""
    return functools.partial(audio_slots, convs=[list(c) for c in encoder_convs],
                             downsample=downsample)


def model_slots(model) -> Callable[[int], int]:
    """The slot arithmetic of a built SpeechLLM: its encoder's length convs, its projector's
    downsample."""
    return slot_counter(model.encoder.length_convs, model.projector.downsample)
