"""The LightningDataModule: data.list shards -> collated batches for training, validation, test."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mooer.data import pipeline as P
from mooer.data.collate import audio_slots, collate
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
    speed_perturb: Sequence[float] = ()
    # True (defaults) or the keyword arguments of pipeline.spec_augment
    spec_augment: bool | Mapping[str, Any] = False
    inference: bool = False        # no answers: prompts only (decoding)
    transcripts: bool = False      # also the transcript's token ids (a CTC loss needs them)
    allow_pipe: bool = False
    replace_text: dict[str, str] | None = field(default=None, repr=False)
    replace_type: str = "replace"


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Streams collated batches from a data.list (or a raw Kaldi dir with wav.scp [+ text]);
    `set_epoch` reseeds shard and sample order."""

    def __init__(self, data_list: str | Path, frontend: Callable, prompt_builder: PromptBuilder,
                 slots_for: Callable[[int], int], options: PipelineOptions) -> None:
        self.kaldi_dir = Path(data_list).is_dir()
        self.urls = (P.read_kaldi_dir(data_list) if self.kaldi_dir
                     else P.read_data_list(data_list))
        self.frontend, self.prompt_builder, self.slots_for = frontend, prompt_builder, slots_for
        self.options = options
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> tuple[list, tuple[int, int] | None, bool]:
        """What this process reads this epoch: (shards, sample slot or None, equalize).

        One rank: shards are dealt to workers. Several ranks (or fewer shards than readers):
        every process reads every shard and keeps its slot of utterances, equalized so all
        ranks run the same number of steps (collectives would hang otherwise).
        """
        rank, world_size = _distributed()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        slots = world_size * num_workers
        if world_size == 1 and len(self.urls) >= slots:
            return (P.shards_for(self.urls, self.epoch, self.options.seed, self.options.training,
                                 rank, world_size, worker, num_workers), None, False)
        everything = P.shards_for(self.urls, self.epoch, self.options.seed,
                                  self.options.training, 0, 1, 0, 1)
        return everything, (rank * num_workers + worker, slots), world_size > 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        o, errors = self.options, P.DataErrors()
        info = get_worker_info()
        seed = o.seed * 1_000_003 + self.epoch * 1009 + (info.id if info else 0)
        shards, slot, equalize = self.plan()
        if equalize and o.dynamic_batching:
            raise ValueError("dynamic_batching gives ranks different numbers of batches, which "
                             "hangs distributed training: use fixed batching with several ranks")
        stages: list[Any] = [functools.partial(iter, shards)]
        if self.kaldi_dir:
            stages.append(functools.partial(P.kaldi_samples, errors=errors))
        else:
            stages += [functools.partial(P.open_shards, errors=errors, allow_pipe=o.allow_pipe),
                       functools.partial(P.tar_samples, errors=errors)]
        if slot is not None:
            stages.append(functools.partial(P.take_slot, slot=slot[0], slots=slot[1],
                                            equalize=equalize, errors=errors))
        stages.append(functools.partial(P.decode, errors=errors, sample_rate=o.sample_rate,
                                        keep_count=equalize))
        if not o.inference:
            stages.append(functools.partial(P.filter_length, min_frames=o.min_length,
                                            max_frames=o.max_length, errors=errors,
                                            keep_count=equalize))
        stages.append(functools.partial(P.attach_targets, table=o.replace_text,
                                        replace_type=o.replace_type, errors=errors,
                                        keep_count=equalize))
        if o.training and o.speed_perturb:
            stages.append(functools.partial(P.speed_perturb, speeds=tuple(o.speed_perturb),
                                            seed=seed))
        stages.append(functools.partial(P.compute_features, frontend=self.frontend))
        if o.training and o.spec_augment:
            settings = dict(o.spec_augment) if isinstance(o.spec_augment, Mapping) else {}
            stages.append(functools.partial(P.spec_augment, seed=seed + 1, **settings))
        stages.append(functools.partial(P.tokenize, prompt_builder=self.prompt_builder,
                                        slots_for=self.slots_for, epoch=self.epoch,
                                        inference=o.inference, transcripts=o.transcripts))
        if o.training and o.shuffle_buffer > 1:
            stages.append(functools.partial(P.shuffle, buffer_size=o.shuffle_buffer, seed=seed + 2))
        if o.sort_buffer > 1:
            stages.append(functools.partial(P.sort_by_length, buffer_size=o.sort_buffer))
        if o.dynamic_batching:
            stages.append(functools.partial(P.batch_dynamic, max_frames=o.max_frames_in_batch,
                                            max_tokens=o.max_tokens_in_batch))
        else:
            stages.append(functools.partial(P.batch_fixed, batch_size=o.batch_size))
        reported = P.DataErrors()
        for samples in wds.DataPipeline(*stages):
            batch = collate(samples, self.prompt_builder.pad_id)
            batch["data_errors"] = dict(errors - reported)
            reported.update(batch["data_errors"])
            yield batch
        if errors - reported:  # skips after the last batch still reach the epoch report
            yield {"data_errors": dict(errors - reported), "report_only": True}


class EpochDataLoader(DataLoader):
    """A DataLoader over a ShardDataset that advances the epoch on every pass and reports the
    items skipped for bad data at the end of each pass."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, start_epoch: int = 0,
                 name: str = "train", skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers,
                         persistent_workers=False, **kwargs)
        self.next_epoch, self.name = start_epoch, name
        self.skip_batches = skip_batches  # of the first pass: where a resumed run stopped
        self.errors: P.DataErrors = P.DataErrors()  # of the last (or current) pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(self.next_epoch)
        self.next_epoch += 1
        self.errors = P.DataErrors()
        skip, self.skip_batches = self.skip_batches, 0
        for batch in super().__iter__():
            self.errors.update(batch.pop("data_errors", {}))
            if batch.get("report_only"):
                continue
            if skip:  # the same seeded order as before the interruption, minus what was seen
                skip -= 1
                continue
            yield batch
        skipped = {k: v for k, v in self.errors.items() if k != "filtered by length"}
        if skipped:
            details = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
            log.warning("%s epoch %d: skipped %d items for bad data (%s)", self.name,
                        self.next_epoch - 1, sum(skipped.values()), details)


def read_replace_table(path: str | Path | None) -> dict[str, str] | None:
    """MooER's replace_text table (`uttid label` lines), or None."""
    if not path:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"replace_text_path {path} not found (task.replace_text_path)")
    return {key: value for key, value in read_table(path) if value}


class SpeechDataModule(pl.LightningDataModule):
    """Train / validation / test loaders over data.list shards for any encoder frontend and task."""

    def __init__(self, frontend: Callable, tokenizer, train_data_path: str | None = None,
                 val_data_path: str | None = None, test_data_path: str | None = None,
                 task: str = "asr", prompts: dict[str, str] | None = None,
                 prompt_template: str | None = None, replace_text_path: str | None = None,
                 replace_type: str = "replace", task_weights: dict[str, float] | None = None,
                 encoder_convs: Sequence[Sequence[int]] = (),
                 downsample: int = 2, batch_size: int = 8, val_batch_size: int = 8,
                 num_workers: int = 0, seed: int = 42, **options: Any) -> None:
        super().__init__()
        self.frontend, self.tokenizer = frontend, tokenizer
        self.paths = {"train": train_data_path, "val": val_data_path, "test": test_data_path}
        table = read_replace_table(replace_text_path)
        prompt_task = "instruction" if replace_type == "instruction" else task
        builder_args = {"template": prompt_template} if prompt_template else {}
        self.prompt_builder = PromptBuilder(tokenizer, prompts, task=prompt_task, seed=seed,
                                            task_weights=task_weights, **builder_args)
        self.slots_for = functools.partial(audio_slots, convs=[list(c) for c in encoder_convs],
                                           downsample=downsample)
        self.num_workers = num_workers
        self.options = {
            "train": PipelineOptions(batch_size=batch_size, seed=seed, replace_text=table,
                                     replace_type=replace_type, **options),
            "val": PipelineOptions(batch_size=val_batch_size, seed=seed, training=False,
                                   replace_text=table, replace_type=replace_type, **options),
        }
        self.options["test"] = self.options["val"]

    def loader(self, split: str, start_epoch: int = 0, skip_batches: int = 0) -> EpochDataLoader:
        path = self.paths[split]
        if not path:
            raise ValueError(f"no {split} data: set data.{split}_data_path to a data.list")
        dataset = ShardDataset(path, self.frontend, self.prompt_builder, self.slots_for,
                               self.options[split])
        return EpochDataLoader(dataset, num_workers=self.num_workers, start_epoch=start_epoch,
                               name=split, skip_batches=skip_batches)

    def train_dataloader(self) -> EpochDataLoader:
        """Starts at the trainer's epoch; a run resumed mid-epoch skips the batches it saw."""
        if self.trainer is None:
            return self.loader("train")
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return self.loader("train", start_epoch=self.trainer.current_epoch,
                           skip_batches=progress.processed)

    def val_dataloader(self) -> EpochDataLoader:
        return self.loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self.loader("test")
