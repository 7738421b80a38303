"""The LightningDataModule: train, validation and test loaders (`mooer.data.loader`) built from
`conf/data` and the recipe's frontend, tokenizer and prompt format."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from mooer.data.features import Frontend
from mooer.data.loader import (
    EpochDataLoader,
    PipelineOptions,
    ShardDataset,
    model_slots,
    read_replace_table,
    slot_counter,
)
from mooer.data.prompts import PromptBuilder, PromptFormat


class SpeechDataModule(pl.LightningDataModule):
    """Train / validation / test loaders over data.list shards for any encoder frontend and task."""

    def __init__(self, frontend: Frontend, tokenizer, prompt: PromptFormat,
                 train_data_path: str | None = None, val_data_path: str | None = None,
                 test_data_path: str | None = None, encoder_convs: Sequence[Sequence[int]] = (),
                 downsample: int = 2, batch_size: int = 8, val_batch_size: int = 8,
                 num_workers: int = 0, seed: int = 42, **options: Any) -> None:
        """`frontend`, `tokenizer` and `prompt` (conf/task) come from the recipe, the rest from
        `conf/data`. The audio-slot arithmetic (`encoder_convs`: how the encoder shortens frames;
        the projector's `downsample`) is read from the built model with `match_model`."""
        super().__init__()
        known = {f.name for f in dataclasses.fields(PipelineOptions)} - {"training", "replace_text",
                                                                         "replace_type"}
        unknown = sorted(set(options) - known)
        if unknown:  # a typo in conf/data: say which key, and what the group takes
            named = sorted(known | {"train_data_path", "val_data_path", "test_data_path",
                                    "encoder_convs", "downsample", "batch_size", "val_batch_size",
                                    "num_workers", "seed"})
            raise ValueError(f"data: unknown key(s) {', '.join(unknown)}; the data group has "
                             f"{', '.join(named)}")
        self.frontend, self.tokenizer = frontend, tokenizer
        self.paths = {"train": train_data_path, "val": val_data_path, "test": test_data_path}
        table = read_replace_table(prompt.replace_text_path)
        self.prompt_builder = PromptBuilder(tokenizer, prompt, seed=seed)
        self.match_slots(encoder_convs, downsample)
        self.num_workers = num_workers
        self.options = {
            "train": PipelineOptions(batch_size=batch_size, seed=seed, replace_text=table,
                                     replace_type=prompt.replace_type, **options),
            "val": PipelineOptions(batch_size=val_batch_size, seed=seed, training=False,
                                   replace_text=table, replace_type=prompt.replace_type,
                                   **options),
        }
        self.options["test"] = self.options["val"]

    def match_slots(self, encoder_convs: Sequence[Sequence[int]], downsample: int) -> None:
        """Audio slots an utterance gets: its frames through the encoder's length convs, over the
        projector's downsample."""
        self.slots_for = slot_counter(encoder_convs, downsample)

    def match_model(self, model) -> None:
        """Take the slot arithmetic from a built SpeechLLM (its encoder and projector)."""
        self.slots_for = model_slots(model)

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
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:  # the checkpoint closed its epoch: Lightning goes on with the next
            return self.loader("train", start_epoch=self.trainer.current_epoch + 1)
        return self.loader("train", start_epoch=self.trainer.current_epoch,
                           skip_batches=progress.current.processed)  # type: ignore[attr-defined]

    def val_dataloader(self) -> EpochDataLoader:
        return self.loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self.loader("test")
